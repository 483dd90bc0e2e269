//! Sources: turn bytes from the outside into readings, each batch with the ack it owes.
//!
//! | module | does |
//! | --- | --- |
//! | `payload` | message bodies (JSON, SenML, number) to raw values; no I/O |

pub mod payload;
