//! The alias tables of the edge nodes one source has seen born, and their stored form (the
//! `source_state` rows `sparkplug/<source>/<group>/<edge_node>`). No I/O but [`load`].
//!
//! # What a node record holds
//!
//! One record per edge node: the metrics its last NBIRTH declared, and per device the metrics
//! that device's last DBIRTH declared. Each declared metric keeps its name, its alias when the
//! birth gave one, and its datatype (data messages usually carry neither name nor datatype,
//! and a signed integer cannot be read without its datatype). An NBIRTH replaces the whole
//! record (node and devices: a rebirth restarts the node); a DBIRTH replaces one device's part.
//!
//! # Node record v1 (value of `source_state`, little-endian)
//!
//! ```text
//! u8   version = 1
//! u32  device count D
//! table              the node's own metrics
//! D x { u16 name length, name bytes (UTF-8), table }   devices, in name order
//! table = u32 count N, N x {
//!     u8  flags          bit 0: an alias follows in use; other bits 0
//!     u64 alias          0 when bit 0 is clear
//!     u32 datatype       the DataType number of the birth (0 when it gave none)
//!     u16 name length, name bytes (UTF-8)
//! }
//! ```
//!
//! Stability: a new layout gets a new version byte; [`NodeRecord::decode`] refuses versions it
//! does not know (the source then starts without that node's aliases and says so in the log:
//! its data dead-letter as unknown aliases until the node is born again).
//!
//! # Bounds
//!
//! A record holds at most [`MAX_METRICS_PER_NODE`] metrics (node and devices together), each
//! name at most [`MAX_NAME_LEN`] bytes, so a record is at most about 4.5 MB and an edge node
//! costs at most that much memory; the number of nodes per source is capped by the caller
//! (`state::MAX_NODES`).

use std::collections::BTreeMap;

use redb::{Database, ReadableDatabase};

use crate::store::codec::{ByteReader, ByteWriter, Truncated};
use crate::store::tables::SOURCE_STATE;
use crate::store::StoreError;

/// Version byte of the node record.
pub const RECORD_VERSION: u8 = 1;
/// Metrics declared by one edge node's births (node and devices together).
pub const MAX_METRICS_PER_NODE: usize = 16_384;
/// Bytes of a metric, device or node name the agent keeps.
pub const MAX_NAME_LEN: usize = 256;

/// One metric a birth declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub alias: Option<u64>,
    pub datatype: u32,
}

/// The metrics one birth certificate declared, looked up by alias or by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    declared: Vec<Declared>,
    by_alias: BTreeMap<u64, usize>,
    by_name: BTreeMap<String, usize>,
}

impl Table {
    /// Builds a table; a later declaration of the same alias or name wins.
    pub fn new(declared: Vec<Declared>) -> Table {
        let mut by_alias = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for (i, d) in declared.iter().enumerate() {
            if let Some(alias) = d.alias {
                by_alias.insert(alias, i);
            }
            by_name.insert(d.name.clone(), i);
        }
        Table {
            declared,
            by_alias,
            by_name,
        }
    }

    pub fn by_alias(&self, alias: u64) -> Option<&Declared> {
        self.by_alias
            .get(&alias)
            .and_then(|&i| self.declared.get(i))
    }

    pub fn by_name(&self, name: &str) -> Option<&Declared> {
        self.by_name.get(name).and_then(|&i| self.declared.get(i))
    }

    pub fn len(&self) -> usize {
        self.declared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    fn encode(&self, out: &mut ByteWriter) {
        out.u32(self.declared.len() as u32);
        for d in &self.declared {
            out.u8(u8::from(d.alias.is_some()))
                .u64(d.alias.unwrap_or(0))
                .u32(d.datatype)
                .bytes_u16(d.name.as_bytes());
        }
    }

    fn decode(r: &mut ByteReader<'_>, budget: &mut usize) -> Result<Table, BadRecord> {
        let n = r.u32()? as usize;
        if n > *budget {
            return Err(BadRecord::TooMany);
        }
        *budget -= n;
        let mut declared = Vec::with_capacity(n);
        for _ in 0..n {
            let flags = r.u8()?;
            if flags > 1 {
                return Err(BadRecord::Flags(flags));
            }
            let alias = r.u64()?;
            let datatype = r.u32()?;
            let name = text(r.bytes_u16()?)?;
            declared.push(Declared {
                name,
                alias: (flags == 1).then_some(alias),
                datatype,
            });
        }
        Ok(Table::new(declared))
    }
}

/// Everything one edge node's births declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: Table,
    pub devices: BTreeMap<String, Table>,
}

/// Why stored bytes are not a node record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("record ends early")]
    Truncated,
    #[error("unknown node record version {0}")]
    Version(u8),
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    #[error("a name is not UTF-8 or too long")]
    Name,
    #[error("more metrics than a node may declare")]
    TooMany,
    #[error("{0} bytes after the record")]
    Trailing(usize),
}

impl From<Truncated> for BadRecord {
    fn from(_: Truncated) -> Self {
        BadRecord::Truncated
    }
}

fn text(bytes: &[u8]) -> Result<String, BadRecord> {
    if bytes.len() > MAX_NAME_LEN {
        return Err(BadRecord::Name);
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| BadRecord::Name)
}

impl NodeRecord {
    /// Metrics declared, node and devices together.
    pub fn metrics(&self) -> usize {
        self.node.len() + self.devices.values().map(Table::len).sum::<usize>()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = ByteWriter::with_capacity(64);
        out.u8(RECORD_VERSION).u32(self.devices.len() as u32);
        self.node.encode(&mut out);
        for (name, table) in &self.devices {
            out.bytes_u16(name.as_bytes());
            table.encode(&mut out);
        }
        out.into_vec()
    }

    /// Reads a node record v1; never panics, never allocates past the record's bounds.
    pub fn decode(bytes: &[u8]) -> Result<NodeRecord, BadRecord> {
        let mut r = ByteReader::new(bytes);
        r.version(RECORD_VERSION, BadRecord::Version)?;
        let devices = r.u32()? as usize;
        let mut budget = MAX_METRICS_PER_NODE;
        let node = Table::decode(&mut r, &mut budget)?;
        let mut record = NodeRecord {
            node,
            devices: BTreeMap::new(),
        };
        for _ in 0..devices {
            let name = text(r.bytes_u16()?)?;
            let table = Table::decode(&mut r, &mut budget)?;
            record.devices.insert(name, table);
        }
        r.finish().map_err(BadRecord::Trailing)?;
        Ok(record)
    }
}

/// The `source_state` key of a node: `sparkplug/<source>/<group>/<edge_node>`. Source names
/// hold no `/` (configuration rule), group and node are single topic levels, so keys of
/// different sources and nodes never share a prefix ending in `/`.
pub fn key(source: &str, group: &str, node: &str) -> String {
    format!("sparkplug/{source}/{group}/{node}")
}

/// Why the stored tables could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the Sparkplug B alias tables: {0}")]
    Store(#[from] StoreError),
}

crate::store::redb_errors_into!(LoadError);

/// Every stored node record of `source`, as `((group, node), record)`; records that do not
/// decode are returned as errors beside the others (logged by the caller, never fatal).
#[allow(clippy::type_complexity)]
pub fn load(
    db: &Database,
    source: &str,
) -> Result<Vec<((String, String), Result<NodeRecord, BadRecord>)>, LoadError> {
    let prefix = format!("sparkplug/{source}/");
    let txn = db.begin_read()?;
    let table = match txn.open_table(SOURCE_STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.range(prefix.as_str()..)? {
        let (k, v) = row?;
        let Some(rest) = k.value().strip_prefix(prefix.as_str()) else {
            break;
        };
        let Some((group, node)) = rest.split_once('/') else {
            continue;
        };
        out.push((
            (group.to_owned(), node.to_owned()),
            NodeRecord::decode(v.value()),
        ));
    }
    Ok(out)
}
