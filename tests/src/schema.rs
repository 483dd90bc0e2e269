//! The published JSON Schemas of `protocol/schemas/` applied to records the suites read from
//! Kafka: every final, reading and JSON partial a test looks at is checked against its schema,
//! so the schemas cannot drift from what the code writes.

use std::path::Path;
use std::sync::OnceLock;

use jsonschema::Validator;

/// A record kind with a published schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// `edge.final.v1`: `final.v1.schema.json`.
    Final,
    /// `edge.reading` and `edge.late`: `reading.v1.schema.json`.
    Reading,
    /// `edge.partial` in its JSON form: `partial.v1.schema.json`.
    Partial,
}

impl Schema {
    fn file(self) -> &'static str {
        match self {
            Schema::Final => "final.v1.schema.json",
            Schema::Reading => "reading.v1.schema.json",
            Schema::Partial => "partial.v1.schema.json",
        }
    }

    fn validator(self) -> &'static Validator {
        static VALIDATORS: [OnceLock<Validator>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        VALIDATORS[self as usize].get_or_init(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../protocol/schemas")
                .join(self.file());
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let schema: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()))
        })
    }

    /// Every violation of `json` (bytes of one record value), or a parse error; empty when
    /// it is valid.
    pub fn violations(self, json: &[u8]) -> Vec<String> {
        let value: serde_json::Value = match serde_json::from_slice(json) {
            Ok(v) => v,
            Err(e) => return vec![format!("not JSON: {e}")],
        };
        self.validator()
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Panics, naming the schema, the violations and the record, unless `json` is valid.
    pub fn check(self, json: &[u8]) {
        let violations = self.violations(json);
        assert!(
            violations.is_empty(),
            "record violates {}: {violations:?}\n{}",
            self.file(),
            String::from_utf8_lossy(json)
        );
    }
}
