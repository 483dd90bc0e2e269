//! Fuzzes what edge-consumer decodes from Kafka: partials (the postcard envelope or its JSON
//! form, `records::decode`) and its own changelog records (`changelog::decode_entry`, key and
//! value as a restore reads them). Beyond "never panics": a decoded partial has a non-empty
//! window and an aggregate that passes its own checks, so a bad record is dead-lettered, never
//! merged.
#![no_main]

use edge_consumer::changelog::decode_entry;
use edge_consumer::records::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(partial) = decode(data) {
        assert!(partial.window_start_ms < partial.window_end_ms);
        assert!(partial.aggregate.validate().is_ok());
    }
    // The first byte splits the input into a key and a value (a tombstone when it is odd).
    if let Some((&split, rest)) = data.split_first() {
        let at = usize::from(split).min(rest.len());
        let (key, value) = rest.split_at(at);
        let value = (split % 2 == 0).then_some(value);
        let _ = decode_entry("in", 0, key, value);
    }
});
