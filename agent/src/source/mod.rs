//! Sources: turn bytes from the outside into readings, each batch with the ack it owes.
//!
//! | module | does |
//! | --- | --- |
//! | `payload` | message bodies (JSON, SenML, number) to raw values; no I/O |
//! | `mqtt` | one broker connection: poller task + acker task; acks only from the ingest commit |

pub mod mqtt;
pub mod payload;
