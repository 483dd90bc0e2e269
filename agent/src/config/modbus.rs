//! `[[modbus]]`: one Modbus device (TCP or RTU) and the register blocks the agent polls on it
//! (see [`crate::source::modbus`] for the poll loop).
//!
//! ```toml
//! [[modbus]]
//! name = "boiler"              # unique among all sources
//! tcp = "plc.plant7.example:502"         # or: serial = "/dev/ttyUSB0", baud, parity, stop_bits (RTU)
//! unit = 1                     # unit (slave) id, default 1
//! timeout_ms = 1000            # per request, default 1000
//!
//! [[modbus.block]]
//! kind = "holding"             # holding | input | coils | discrete
//! address = 100                # first address read
//! count = 10                   # registers (at most 125) or bits (at most 2000)
//! period_ms = 1000             # one read of the whole block per period, default 1000
//!
//! [[modbus.block.register]]
//! name = "supply_temp"         # `[[sensor]] register = "supply_temp"`, `{register}` in `id`
//! address = 100                # absolute address, inside the block
//! type = "f32"                 # u16 i16 u32 i32 u64 f32 f64 (bool: coils and discrete)
//! word_order = "little"        # big (default) | little: which register holds the high word
//! byte_order = "big"           # big (default) | little: byte order inside each register
//! ```
//!
//! # Rules (checked by [`validate_modbus`], each refused with its line and field)
//!
//! - exactly one of `tcp` and `serial`; `tcp` is `host:port`; `baud`, `parity`, `stop_bits`
//!   only with `serial`; `stop_bits` is 1 or 2; `timeout_ms` at least 10;
//! - at least one block, each with at least one register; `count` at least 1 and at most 125
//!   (registers) or 2,000 (bits), the block inside the 16-bit address space; `period_ms` at
//!   least 10; two blocks of the same kind never overlap;
//! - `type = "bool"` exactly on coils and discrete inputs; every register lies wholly inside
//!   its block (a `u32` at the block's last address is refused); register names are unique
//!   within the device;
//! - a serial port serves one source: two `[[modbus]]` devices (or a `[[modbus]]` and a
//!   `[[serial]]` source) on one port are refused (checked with the other sources).

use std::ops::Range;

use edge_config_toml::defaults;
use serde::Deserialize;
use toml::Spanned;

use super::validate::{at_least, name};
use super::Invalid;

type Failure = (Range<usize>, Invalid);

/// Most registers one read may ask for (Modbus: 125 holding or input registers).
pub const MAX_REGISTERS: u16 = 125;
/// Most bits one read may ask for (Modbus: 2,000 coils or discrete inputs).
pub const MAX_BITS: u16 = 2000;
/// The `type`s of holding and input registers.
const REGISTER_TYPES: &[&str] = &["u16", "i16", "u32", "i32", "u64", "f32", "f64"];
/// The `type` of coils and discrete inputs.
const BIT_TYPES: &[&str] = &["bool"];

/// `[[modbus]]`: one device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSource {
    /// Unique among all sources; `[[sensor]]` tables refer to it.
    pub name: Spanned<String>,
    /// Modbus TCP: `host:port`.
    pub tcp: Option<Spanned<String>>,
    /// Modbus RTU: the serial port's path.
    pub serial: Option<Spanned<String>>,
    /// RTU only; default 19,200.
    pub baud: Option<Spanned<u32>>,
    /// RTU only; default `even` (the Modbus specification's default).
    pub parity: Option<Spanned<Parity>>,
    /// RTU only; 1 or 2, default 1.
    pub stop_bits: Option<Spanned<u8>>,
    /// The unit (slave) id asked; default 1.
    #[serde(default = "defaults::u8::<1>")]
    pub unit: Spanned<u8>,
    /// How long one request may wait for its answer; default 1,000 ms.
    #[serde(default = "defaults::u64::<1000>")]
    pub timeout_ms: Spanned<u64>,
    #[serde(default)]
    pub block: Vec<ModbusBlock>,
}

/// How the agent reaches a device (after validation: exactly one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModbusTransport {
    Tcp(String),
    Rtu {
        path: String,
        baud: u32,
        parity: Parity,
        stop_bits: u8,
    },
}

impl ModbusSource {
    /// The transport of a validated source.
    pub fn transport(&self) -> ModbusTransport {
        match (&self.tcp, &self.serial) {
            (Some(tcp), _) => ModbusTransport::Tcp(tcp.get_ref().clone()),
            (None, serial) => ModbusTransport::Rtu {
                path: serial
                    .as_ref()
                    .map_or(String::new(), |s| s.get_ref().clone()),
                baud: self.baud.as_ref().map_or(19_200, |b| *b.get_ref()),
                parity: self.parity.as_ref().map_or(Parity::Even, |p| *p.get_ref()),
                stop_bits: self.stop_bits.as_ref().map_or(1, |s| *s.get_ref()),
            },
        }
    }

    /// Every register of every block, with its block.
    pub fn registers(&self) -> impl Iterator<Item = (&ModbusBlock, &ModbusRegister)> {
        self.block
            .iter()
            .flat_map(|b| b.register.iter().map(move |r| (b, r)))
    }
}

/// RTU parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// `[[modbus.block]]`: one read request, repeated every `period_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusBlock {
    pub kind: Spanned<BlockKind>,
    /// First address read.
    pub address: Spanned<u16>,
    /// Registers (or bits) read.
    pub count: Spanned<u16>,
    /// Default 1,000 ms.
    #[serde(default = "defaults::u64::<1000>")]
    pub period_ms: Spanned<u64>,
    #[serde(default)]
    pub register: Vec<ModbusRegister>,
}

/// The four Modbus tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Holding registers (function 0x03).
    Holding,
    /// Input registers (0x04).
    Input,
    /// Coils (0x01).
    Coils,
    /// Discrete inputs (0x02).
    Discrete,
}

impl BlockKind {
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Holding => "holding",
            BlockKind::Input => "input",
            BlockKind::Coils => "coils",
            BlockKind::Discrete => "discrete",
        }
    }

    /// Coils and discrete inputs are bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, BlockKind::Coils | BlockKind::Discrete)
    }
}

/// `[[modbus.block.register]]`: one value inside a block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusRegister {
    /// Unique within the device; `[[sensor]] register` names it, `{register}` in `id`.
    pub name: Spanned<String>,
    /// Absolute address of its first register (or its bit).
    pub address: Spanned<u16>,
    #[serde(rename = "type")]
    pub data_type: Spanned<DataType>,
    #[serde(default)]
    pub byte_order: Order,
    #[serde(default)]
    pub word_order: Order,
}

/// How a register's words become a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    F32,
    F64,
    /// A coil or discrete input: 1.0 or 0.0.
    Bool,
}

impl DataType {
    pub fn name(self) -> &'static str {
        match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::Bool => "bool",
        }
    }

    /// Registers (or, for `bool`, bits) the value spans.
    pub fn width(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bool => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::F64 => 4,
        }
    }
}

/// Byte order inside a register, or word order across registers. Modbus itself is big-endian
/// (the default); many devices put the low word of a 32-bit value first (`word_order =
/// "little"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    Big,
    Little,
}

fn at<T>(spanned: &Spanned<T>, problem: Invalid) -> Failure {
    (spanned.span(), problem)
}

/// The rules of the module doc, for one `[[modbus]]` table (its name was checked with the other
/// source names).
pub fn validate_modbus(source: &ModbusSource) -> Result<(), Failure> {
    transport(source)?;
    at_least(&source.timeout_ms, "timeout_ms", 10)?;
    if source.block.is_empty() {
        return Err(at(&source.name, Invalid::Empty { field: "block" }));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, block) in source.block.iter().enumerate() {
        block_rules(block)?;
        if let Some(other) = source.block[..i]
            .iter()
            .find(|o| o.kind.get_ref() == block.kind.get_ref() && overlap(o, block))
        {
            return Err(at(
                &block.address,
                Invalid::OverlappingBlocks {
                    kind: block.kind.get_ref().name(),
                    address: *other.address.get_ref(),
                    count: *other.count.get_ref(),
                },
            ));
        }
        for register in &block.register {
            name(&register.name, "register.name")?;
            if names.contains(&register.name.get_ref().as_str()) {
                return Err(at(
                    &register.name,
                    Invalid::DuplicateRegister {
                        name: register.name.get_ref().clone(),
                    },
                ));
            }
            names.push(register.name.get_ref());
            register_rules(block, register)?;
        }
    }
    Ok(())
}

fn transport(source: &ModbusSource) -> Result<(), Failure> {
    match (&source.tcp, &source.serial) {
        (Some(_), Some(serial)) => Err(at(serial, Invalid::ModbusTransport)),
        (None, None) => Err(at(&source.name, Invalid::ModbusTransport)),
        (Some(tcp), None) => {
            let ok = tcp
                .get_ref()
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(at(tcp, Invalid::BadModbusAddress));
            }
            if let Some(baud) = &source.baud {
                return Err(at(baud, Invalid::RtuOnly { field: "baud" }));
            }
            if let Some(parity) = &source.parity {
                return Err(at(parity, Invalid::RtuOnly { field: "parity" }));
            }
            if let Some(stop_bits) = &source.stop_bits {
                return Err(at(stop_bits, Invalid::RtuOnly { field: "stop_bits" }));
            }
            Ok(())
        }
        (None, Some(serial)) => {
            if serial.get_ref().is_empty() {
                return Err(at(serial, Invalid::Empty { field: "serial" }));
            }
            if let Some(baud) = &source.baud {
                at_least(baud, "baud", 1)?;
            }
            if let Some(stop_bits) = &source.stop_bits {
                if !matches!(stop_bits.get_ref(), 1 | 2) {
                    return Err(at(
                        stop_bits,
                        Invalid::BadStopBits {
                            stop_bits: *stop_bits.get_ref(),
                        },
                    ));
                }
            }
            Ok(())
        }
    }
}

fn block_rules(block: &ModbusBlock) -> Result<(), Failure> {
    let kind = *block.kind.get_ref();
    at_least(&block.count, "count", 1)?;
    let most = if kind.is_bits() {
        MAX_BITS
    } else {
        MAX_REGISTERS
    };
    if *block.count.get_ref() > most {
        return Err(at(
            &block.count,
            Invalid::BlockTooLarge {
                kind: kind.name(),
                most,
            },
        ));
    }
    if end(block) > 65_536 {
        return Err(at(&block.count, Invalid::BlockPastAddressSpace));
    }
    at_least(&block.period_ms, "period_ms", 10)?;
    if block.register.is_empty() {
        return Err(at(&block.address, Invalid::Empty { field: "register" }));
    }
    Ok(())
}

fn register_rules(block: &ModbusBlock, register: &ModbusRegister) -> Result<(), Failure> {
    let kind = *block.kind.get_ref();
    let data_type = *register.data_type.get_ref();
    if kind.is_bits() != (data_type == DataType::Bool) {
        return Err(at(
            &register.data_type,
            Invalid::BadRegisterType {
                data_type: data_type.name(),
                kind: kind.name(),
                allowed: if kind.is_bits() {
                    BIT_TYPES
                } else {
                    REGISTER_TYPES
                },
            },
        ));
    }
    let first = u32::from(*register.address.get_ref());
    if first < u32::from(*block.address.get_ref())
        || first + u32::from(data_type.width()) > end(block)
    {
        return Err(at(
            &register.address,
            Invalid::RegisterOutsideBlock {
                name: register.name.get_ref().clone(),
                width: data_type.width(),
                first: *block.address.get_ref(),
                last: end(block).saturating_sub(1).min(65_535) as u16,
            },
        ));
    }
    Ok(())
}

/// One past the block's last address (up to 65,536 + 65,535 before validation).
fn end(block: &ModbusBlock) -> u32 {
    u32::from(*block.address.get_ref()) + u32::from(*block.count.get_ref())
}

fn overlap(a: &ModbusBlock, b: &ModbusBlock) -> bool {
    let (a0, b0) = (
        u32::from(*a.address.get_ref()),
        u32::from(*b.address.get_ref()),
    );
    a0 < end(b) && b0 < end(a)
}
