//! Sources: turn bytes from the outside into readings, each batch with the ack it owes.
//!
//! | module | does |
//! | --- | --- |
//! | `payload` | message bodies (JSON, SenML, number) to raw values; no I/O |
//! | `mqtt` | one broker connection: poller task + acker task; acks only from the ingest commit |
//! | `serial` | one serial line: link frames (Hello, Ack after commit, TimeSync) or text lines |
//! | `link_acks` | the link's cumulative-ack rule as a state machine; no I/O |

pub mod link_acks;
pub mod mqtt;
pub mod payload;
pub mod serial;
