//! Fuzzes `Partial::decode` and `Aggregate::decode` (the envelope the consumer reads from Kafka).
//!
//! Checks, beyond "never panics": whatever decodes passes its invariants, re-encodes within the
//! stated bound to bytes that decode to the same value (postcard also accepts over-long varints,
//! so the input bytes themselves need not come back), and its quantiles are answerable.
#![no_main]

use edge_protocol::aggregate::{self, Aggregate};
use edge_protocol::partial::{self, Partial};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Partial::decode(data) {
        let mut buf = [0u8; partial::MAX_ENCODED_LEN];
        let n = p.encode(&mut buf).expect("a decoded partial fits the bound");
        assert_eq!(Partial::decode(&buf[..n]).as_ref(), Ok(&p), "stable round trip");
        assert!(p.window_start_ms < p.window_end_ms);
        let _ = p.aggregate.quantile(0.99);
    }
    if let Ok(a) = Aggregate::decode(data) {
        let mut buf = [0u8; aggregate::MAX_ENCODED_LEN];
        let n = a.encode(&mut buf).expect("a decoded aggregate fits the bound");
        assert_eq!(Aggregate::decode(&buf[..n]).as_ref(), Ok(&a), "stable round trip");
        let _ = (a.quantile(0.5), a.stddev());
    }
});
