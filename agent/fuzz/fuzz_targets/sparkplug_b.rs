//! Fuzzes the Sparkplug B decoder and state machine with arbitrary message sequences: the input
//! is a list of `[topic index u8][body length u16 LE][body]` records, fed in order to one
//! source's state (births, data by alias, deaths, on node and device topics, and a foreign
//! topic). Checks, beyond "never panics": every value is finite, the node count stays within
//! its bound, and every node record a birth would store decodes back to itself.
#![no_main]

use edge_agent::source::sparkplug::aliases::NodeRecord;
use edge_agent::source::sparkplug::state::{Nodes, MAX_NODES};
use libfuzzer_sys::fuzz_target;

const MAX_BYTES: usize = 4096;

const TOPICS: [&str; 10] = [
    "spBv1.0/g/NBIRTH/n",
    "spBv1.0/g/DBIRTH/n/d",
    "spBv1.0/g/NDATA/n",
    "spBv1.0/g/DDATA/n/d",
    "spBv1.0/g/NDEATH/n",
    "spBv1.0/g/DDEATH/n/d",
    "spBv1.0/g/NBIRTH/m",
    "spBv1.0/g/DDATA/m/e",
    "spBv1.0/g/NCMD/n",
    "plant/other",
];

fuzz_target!(|input: &[u8]| {
    let mut nodes = Nodes::default();
    let mut rest = input;
    while let [topic, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let topic = TOPICS[usize::from(*topic) % TOPICS.len()];
        let effect = nodes.handle(topic, body, MAX_BYTES);
        for v in &effect.values {
            assert!(v.value.is_finite(), "a value is finite: {v:?}");
        }
        if let Some(bytes) = &effect.write {
            let record = NodeRecord::decode(bytes).expect("a stored record decodes");
            assert_eq!(&record.encode(), bytes, "and encodes to the same bytes");
        }
        assert!(nodes.len() <= MAX_NODES);
    }
});
