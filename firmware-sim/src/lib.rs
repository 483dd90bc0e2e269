//! `firmware-sim`: sensor firmware simulated on a PC.
//!
//! The core is `no_std` and allocation-free, as it would be on a microcontroller; the runner
//! (feature `std`) drives many simulated devices over a serial port or MQTT.
//!
//! # Map (modules arrive with the sensor-link issue)
//!
//! | module | holds |
//! | --- | --- |
//! | `device` | the device state machine, no I/O: sample, pack frames, ring of unacked frames, retransmit |
//! | `runner` (std) | sensor models, serial and MQTT transports, fault injection, the ledger of what was sent |
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
