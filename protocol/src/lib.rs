//! `edge-protocol`: the wire formats every part of edge-ingest shares.
//!
//! `no_std`, no allocator: the same code runs in sensor firmware (see `firmware-sim`), in the
//! gateway agent and in the server-side consumer. CI builds it for `thumbv7em-none-eabihf`.
//!
//! # Map
//!
//! | module | holds |
//! | --- | --- |
//! | `link` | serial link frames (`Hello`, `Readings`, `Ack`, `TimeSync`), CRC, COBS framing, the streaming decoder |
//! | `link_acks` | the receiver's cumulative-ack rule of the link for one boot (a state machine, fixed memory), shared by the agent and the simulator's peer |
//! | `aggregate` | mergeable aggregate state: count, sum, min, max, mean/variance, first/last, quantile sketch |
//! | `sketch` | the DDSketch-style quantile sketch inside an aggregate (1 % relative error, bounded size) |
//! | `partial` | the versioned partial-aggregate envelope the agent sends to Kafka |
//! | `contract` | the Kafka record contract: header names, `schema` values, the finals' JSON record (`std`) |
//! | `backoff` | capped exponential backoff, the retry pacing of every loop (a pure value, no clock) |
//!
//! Every format is written down beside its code with golden byte vectors checked by tests.
#![no_std]
#![forbid(unsafe_code)]

// The host-only parts (`std` feature: error impls, the finals' JSON record) and the tests.
#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod aggregate;
pub mod backoff;
pub mod contract;
pub mod link;
pub mod link_acks;
pub mod partial;
pub mod sketch;
