//! A simulated Modbus device without I/O: its register map, how it answers a request, and
//! which fault (if any) a request meets. [`super::modbus`] puts devices behind a TCP or RTU
//! server and updates their values on a clock.
//!
//! # Register map
//!
//! A device has `channels` channels, each following a sensor model ([`super::models`]). Channel
//! `i` is served at register address `i * width` in two tables that hold the same words:
//! holding registers (function 0x03) and input registers (0x04). The register type decides
//! `width` and the encoding:
//!
//! | `--register-type` | width | encoding |
//! | --- | --- | --- |
//! | `f32` | 2 | IEEE 754 single, big-endian: the high word first, each word's high byte first (the agent's `type = "f32"` with the default word and byte order) |
//! | `u16` | 1 | the model's value rounded to the nearest integer and clamped to `0..=65535` (`type = "u16"`) |
//!
//! The value a channel holds is the encoded one: [`DeviceRegisters::values`] returns what a
//! client decodes (an `f32`, or the rounded integer as `f32`), and that is what the ledger
//! records.
//!
//! A read inside `0..channels * width` (any start and count, also splitting an `f32`) returns
//! the words. A read past the end is answered with `IllegalDataAddress`, a count of 0 or above
//! 125 with `IllegalDataValue`, and every other function (coils, discrete inputs, writes) with
//! `IllegalFunction`: the device is read-only.
//!
//! # Faults
//!
//! Each request draws one fault from the device's seeded random stream, in this order:
//! dropped (`--drop-rate`: no answer at all, so the client times out), exception
//! (`--exception-rate`: answered with `ServerDeviceBusy`, 0x06), slow (`--slow-rate`: answered
//! `--slow-ms` late). A request meets at most one of them.

use tokio_modbus::{ExceptionCode, Request, Response};

use super::models::{Model, ModelSpec};
use super::rng::Rng;

/// Most registers one read may ask for.
pub const MAX_READ: u16 = 125;

/// How a channel's value becomes register words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegisterType {
    /// IEEE 754 single precision in two registers, big-endian words and bytes.
    F32,
    /// An unsigned 16-bit integer in one register (rounded, clamped).
    U16,
}

impl RegisterType {
    /// Registers per channel.
    pub fn width(self) -> u16 {
        match self {
            RegisterType::F32 => 2,
            RegisterType::U16 => 1,
        }
    }

    /// The agent's `type` for this encoding.
    pub fn name(self) -> &'static str {
        match self {
            RegisterType::F32 => "f32",
            RegisterType::U16 => "u16",
        }
    }

    /// The value as served (what a client decodes) and its words.
    pub fn encode(self, value: f32) -> (f32, [u16; 2]) {
        match self {
            RegisterType::F32 => {
                let bits = value.to_bits();
                (value, [(bits >> 16) as u16, bits as u16])
            }
            RegisterType::U16 => {
                // `as` saturates (NaN to 0), so the clamp is implicit.
                let word = value.round() as u16;
                (f32::from(word), [word, 0])
            }
        }
    }
}

/// One device's channels: models, the values they hold now, and the words served.
#[derive(Debug)]
pub struct DeviceRegisters {
    register_type: RegisterType,
    models: Vec<Model>,
    values: Vec<f32>,
    words: Vec<u16>,
    rng: Rng,
}

impl DeviceRegisters {
    /// A device of `channels` channels (channel `i` follows `specs[i % len]`), all at 0 until
    /// the first [`DeviceRegisters::update`].
    pub fn new(
        specs: &[ModelSpec],
        channels: u8,
        register_type: RegisterType,
        mut rng: Rng,
    ) -> DeviceRegisters {
        let default = [ModelSpec::Sine {
            offset: 20.0,
            amplitude: 5.0,
            period_s: 60.0,
            noise: 0.2,
        }];
        let specs = if specs.is_empty() {
            &default[..]
        } else {
            specs
        };
        let models = (0..usize::from(channels))
            .map(|i| Model::new(specs[i % specs.len()], &mut rng))
            .collect();
        let channels = usize::from(channels);
        DeviceRegisters {
            register_type,
            models,
            values: vec![0.0; channels],
            words: vec![0; channels * usize::from(register_type.width())],
            rng,
        }
    }

    /// Samples every channel at `t_s` seconds and installs the new values.
    pub fn update(&mut self, t_s: f64) {
        let width = usize::from(self.register_type.width());
        for (i, model) in self.models.iter_mut().enumerate() {
            let (served, words) = self.register_type.encode(model.sample(t_s, &mut self.rng));
            self.values[i] = served;
            self.words[i * width..(i + 1) * width].copy_from_slice(&words[..width]);
        }
    }

    /// The values the channels hold now, as a client decodes them.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The answer to `request` (see the module doc).
    pub fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        match *request {
            Request::ReadHoldingRegisters(address, count) => self
                .read(address, count)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(address, count) => {
                self.read(address, count).map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn read(&self, address: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > MAX_READ {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let start = usize::from(address);
        self.words
            .get(start..start + usize::from(count))
            .map(<[u16]>::to_vec)
            .ok_or(ExceptionCode::IllegalDataAddress)
    }
}

/// The faults to inject into Modbus answers (command-line options).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct ModbusFaultConfig {
    /// Probability that a request gets no answer at all (the client times out).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub drop_rate: f64,
    /// Probability that a request is answered with the exception ServerDeviceBusy (0x06).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub exception_rate: f64,
    /// Probability that a request is answered `--slow-ms` late.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub slow_rate: f64,
    /// How late a slow answer comes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub slow_ms: u64,
}

fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a probability in [0, 1]")),
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Dropped,
    Exception,
    Slow,
}

impl ModbusFaultConfig {
    /// The fault one request meets, drawn from `rng`.
    pub fn draw(&self, rng: &mut Rng) -> Fault {
        if rng.chance(self.drop_rate) {
            Fault::Dropped
        } else if rng.chance(self.exception_rate) {
            Fault::Exception
        } else if rng.chance(self.slow_rate) {
            Fault::Slow
        } else {
            Fault::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> ModelSpec {
        ModelSpec::Counter {
            start: 1.5,
            increment: 1.0,
            wrap: 1e6,
        }
    }

    #[test]
    fn an_f32_channel_is_two_big_endian_words_at_twice_its_index() {
        let mut device = DeviceRegisters::new(&[counter()], 3, RegisterType::F32, Rng::new(1, 0));
        device.update(0.0);
        assert_eq!(device.values(), &[1.5, 1.5, 1.5]);
        // 1.5f32 = 0x3FC0_0000.
        let words = device
            .answer(&Request::ReadHoldingRegisters(2, 4))
            .expect("inside the map");
        assert_eq!(
            words,
            Response::ReadHoldingRegisters(vec![0x3FC0, 0, 0x3FC0, 0])
        );
        device.update(1.0);
        assert_eq!(device.values(), &[2.5, 2.5, 2.5]);
        assert_eq!(
            device.answer(&Request::ReadInputRegisters(5, 1)),
            Ok(Response::ReadInputRegisters(vec![0]))
        );
    }

    #[test]
    fn a_u16_channel_is_the_rounded_value_in_one_register() {
        let mut device = DeviceRegisters::new(&[counter()], 2, RegisterType::U16, Rng::new(1, 0));
        device.update(0.0);
        device.update(0.0);
        // 2.5 rounds away from zero.
        assert_eq!(device.values(), &[3.0, 3.0]);
        assert_eq!(
            device.answer(&Request::ReadHoldingRegisters(0, 2)),
            Ok(Response::ReadHoldingRegisters(vec![3, 3]))
        );
        assert_eq!(RegisterType::U16.encode(-4.0), (0.0, [0, 0]));
        assert_eq!(RegisterType::U16.encode(1e9), (65535.0, [65535, 0]));
    }

    #[test]
    fn reads_outside_the_map_and_other_functions_are_exceptions() {
        let device = DeviceRegisters::new(&[counter()], 2, RegisterType::F32, Rng::new(1, 0));
        let answer = |r: Request<'static>| device.answer(&r);
        assert_eq!(
            answer(Request::ReadHoldingRegisters(3, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            answer(Request::ReadHoldingRegisters(u16::MAX, 125)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            answer(Request::ReadInputRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            answer(Request::ReadCoils(0, 1)),
            Err(ExceptionCode::IllegalFunction)
        );
        assert_eq!(
            answer(Request::WriteSingleRegister(0, 1)),
            Err(ExceptionCode::IllegalFunction)
        );
    }

    #[test]
    fn faults_come_at_their_rates_and_one_at_a_time() {
        let config = ModbusFaultConfig {
            drop_rate: 0.1,
            exception_rate: 0.2,
            slow_rate: 0.5,
            slow_ms: 10,
        };
        let mut rng = Rng::new(4, 0);
        let mut seen = [0u32; 4];
        for _ in 0..10_000 {
            let i = match config.draw(&mut rng) {
                Fault::None => 0,
                Fault::Dropped => 1,
                Fault::Exception => 2,
                Fault::Slow => 3,
            };
            seen[i] += 1;
        }
        // Expected: dropped 1,000; exception 0.9 * 0.2 = 1,800; slow 0.72 * 0.5 = 3,600.
        assert!((850..1150).contains(&seen[1]), "{seen:?}");
        assert!((1600..2000).contains(&seen[2]), "{seen:?}");
        assert!((3350..3850).contains(&seen[3]), "{seen:?}");
        let clean = ModbusFaultConfig::default();
        assert!((0..100).all(|_| clean.draw(&mut rng) == Fault::None));
    }
}
