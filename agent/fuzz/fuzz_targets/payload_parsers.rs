//! Fuzzes the MQTT payload parsers (JSON with pointers, SenML, plain number) with arbitrary
//! bodies. Checks, beyond "never panics": every reading a parser returns has a finite value, and
//! the size cap is enforced before parsing.
#![no_main]

use std::sync::OnceLock;

use edge_agent::config::PayloadConfig;
use edge_agent::source::payload::PayloadParser;
use libfuzzer_sys::fuzz_target;

const MAX_BYTES: usize = 4096;

fn parsers() -> &'static [PayloadParser] {
    static PARSERS: OnceLock<Vec<PayloadParser>> = OnceLock::new();
    PARSERS.get_or_init(|| {
        [
            r#"format = "json"
               value = "/v"
               timestamp = "/ts"
               sensor = "/name"
               seq = "/seq""#,
            r#"format = "json"
               value = "/data/temp/value"
               timestamp = "/data/temp/time"
               timestamp_unit = "s""#,
            r#"format = "senml""#,
            r#"format = "number""#,
        ]
        .iter()
        .map(|text| {
            let config: PayloadConfig = toml::from_str(text).expect("a valid payload config");
            PayloadParser::new(&config, MAX_BYTES)
        })
        .collect()
    })
}

fuzz_target!(|body: &[u8]| {
    for parser in parsers() {
        match parser.parse(body, 1_700_000_000_000) {
            Ok(readings) => {
                assert!(body.len() <= MAX_BYTES, "the size cap holds");
                for r in readings {
                    assert!(r.value.is_finite(), "a parsed value is finite: {r:?}");
                }
            }
            Err(_) => {}
        }
    }
});
