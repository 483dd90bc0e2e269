//! `firmware-sim`: sensor firmware simulated on a PC.
//!
//! The core is `no_std` and allocation-free, as it would be on a microcontroller; the runner
//! (feature `std`, on by default) drives many simulated devices over a serial port, a
//! pseudo-terminal or MQTT, and plays Modbus devices (TCP or RTU) whose registers change over
//! time. `cargo build -p firmware-sim --no-default-features --lib --target
//! thumbv7em-none-eabihf` builds the core alone.
//!
//! # Map
//!
//! | module | holds |
//! | --- | --- |
//! | [`device`] | the device state machine, no I/O: sample, pack frames, ring of unacked frames, retransmit |
//! | [`runner`] (std) | sensor models, serial, MQTT and Modbus transports, fault injection, the ledger of what was sent or served, a minimal link peer |
//!
//! The binary (`src/bin/firmware-sim.rs`) only parses the command line and picks a transport.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

pub mod device;
#[cfg(feature = "std")]
pub mod runner;
