//! Fuzzes what devices send that the agent decodes itself: `sensor,ts_ms,value` lines of a
//! serial line source, and Modbus register words of every data type in every byte and word
//! order. (The link protocol has its own target in protocol/fuzz; the metrics listener's HTTP is
//! parsed by hyper, not by us.) Beyond "never panics": a parsed line has a non-empty sensor and
//! a finite value, a blank line is the only `Ok(None)`, and a register decode needs exactly
//! the type's width in words.
#![no_main]

use edge_agent::config::modbus::{DataType, Order};
use edge_agent::source::modbus::decode::decode;
use edge_agent::source::serial::parse_line;
use libfuzzer_sys::fuzz_target;

const TYPES: [DataType; 8] = [
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::F32,
    DataType::F64,
    DataType::Bool,
];

fuzz_target!(|data: &[u8]| {
    match parse_line(data) {
        Ok(Some(raw)) => {
            assert!(raw.value.is_finite(), "{raw:?}");
            assert!(raw.sensor.as_deref().is_some_and(|s| !s.is_empty()), "{raw:?}");
        }
        Ok(None) => assert!(
            std::str::from_utf8(data).is_ok_and(|t| t.trim().is_empty()),
            "only a blank line is nothing"
        ),
        Err(_) => {}
    }
    let words: Vec<u16> = data
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    for data_type in TYPES {
        for byte_order in [Order::Big, Order::Little] {
            for word_order in [Order::Big, Order::Little] {
                let value = decode(&words, data_type, byte_order, word_order);
                assert_eq!(
                    value.is_some(),
                    words.len() == usize::from(data_type.width()),
                    "{data_type:?} takes exactly its width"
                );
            }
        }
    }
});
