//! The values at a few JSON pointers (RFC 6901), picked in one pass over the body without
//! building the document. Issue 18: parsing the benchmark's `{"v":..,"ts":..}` into a
//! `serde_json::Value` and reading two pointers took 0.75 us of the agent's 7-8 us of CPU per
//! MQTT reading, most of it allocating the map and its keys; picking takes 0.16 us.
//!
//! # Invariants
//!
//! - **Same answers as `serde_json::Value::pointer` on the parsed document.** Every value is
//!   still parsed with `deserialize_any` (numbers converted, strings unescaped and checked), so
//!   a body the `Value` parse rejects is rejected here with the same error; only the values at
//!   the pointers are kept. A key that appears twice counts in its last appearance, as in
//!   `Value`'s map. Array indices follow `Value::pointer`: no `+`, no leading zero. A pointer
//!   that is neither empty nor starts with `/` matches nothing. `payload/tests.rs` checks all of
//!   this against `Value` on generated documents.
//! - **Bounded.** Nesting is limited by serde_json's recursion limit (128), as for `Value`; the
//!   only allocation is a picked string, never the rest of the document.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// What a pointer found: scalars as they were, containers only as "something else".
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Null,
    Bool,
    Number(Number),
    String(String),
    /// An array or an object.
    Container,
}

/// At most this many pointers per pick (value, timestamp, sensor, seq).
pub const MAX_POINTERS: usize = 4;

/// A compiled pointer: its reference tokens, or `None` when it can match nothing.
#[derive(Debug, Clone)]
pub struct Pointer(Option<Vec<Token>>);

#[derive(Debug, Clone)]
struct Token {
    /// The unescaped token, compared with object keys.
    key: String,
    /// The token as an array index, when `Value::pointer` would take it as one.
    index: Option<usize>,
}

impl Pointer {
    /// A pointer that matches nothing (an option not configured).
    pub fn nothing() -> Pointer {
        Pointer(None)
    }

    pub fn new(pointer: &str) -> Pointer {
        if pointer.is_empty() {
            return Pointer(Some(Vec::new()));
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            return Pointer(None);
        };
        let tokens = rest
            .split('/')
            .map(|t| {
                let key = t.replace("~1", "/").replace("~0", "~");
                let index = (!key.starts_with('+') && (!key.starts_with('0') || key.len() == 1))
                    .then(|| key.parse().ok())
                    .flatten();
                Token { key, index }
            })
            .collect();
        Pointer(Some(tokens))
    }

    fn tokens(&self) -> Option<&[Token]> {
        self.0.as_deref()
    }
}

/// Parses the whole of `body` as one JSON document and returns what each of `pointers` found
/// (`None`: nothing there), in their order.
pub fn pick(
    body: &[u8],
    pointers: &[Pointer; MAX_POINTERS],
) -> Result<[Option<Found>; MAX_POINTERS], serde_json::Error> {
    let mut found: [Option<Found>; MAX_POINTERS] = Default::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    Node {
        pointers,
        found: &mut found,
        depth: 0,
        // A pointer that matches nothing has no tokens, so it never lands nor goes deeper.
        active: Mask::MAX,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

/// Bit `k`: pointer `k` matches the path from the root to the current node.
type Mask = u8;

/// One value of the document at `depth`, with the pointers whose first `depth` tokens led here.
struct Node<'a> {
    pointers: &'a [Pointer],
    found: &'a mut [Option<Found>; MAX_POINTERS],
    depth: usize,
    active: Mask,
}

impl Node<'_> {
    /// Records `what` for the active pointers that end at this node.
    fn land(&mut self, what: impl Fn() -> Found) {
        for (k, p) in self.pointers.iter().enumerate() {
            let ends_here =
                self.active & (1 << k) != 0 && p.tokens().is_some_and(|t| t.len() == self.depth);
            if ends_here {
                self.found[k] = Some(what());
            }
        }
    }

    /// The child node that the pointers in `mask` lead into; what they found before is cleared
    /// (of duplicate keys the last counts, as in `Value`'s map).
    fn enter(&mut self, mask: Mask) -> Node<'_> {
        for (k, found) in self.found.iter_mut().enumerate() {
            if mask & (1 << k) != 0 {
                *found = None;
            }
        }
        Node {
            pointers: self.pointers,
            found: self.found,
            depth: self.depth + 1,
            active: mask,
        }
    }
}

/// Of the pointers in `active`, those whose token at `depth` `hit` accepts.
fn matching(
    pointers: &[Pointer],
    depth: usize,
    active: Mask,
    hit: impl Fn(&Token) -> bool,
) -> Mask {
    let mut mask = 0;
    for (k, p) in pointers.iter().enumerate() {
        let accepted =
            active & (1 << k) != 0 && p.tokens().and_then(|t| t.get(depth)).is_some_and(&hit);
        if accepted {
            mask |= 1 << k;
        }
    }
    mask
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.land(|| Found::Null);
        Ok(())
    }

    fn visit_bool<E>(mut self, _: bool) -> Result<(), E> {
        self.land(|| Found::Bool);
        Ok(())
    }

    fn visit_u64<E>(mut self, n: u64) -> Result<(), E> {
        self.land(|| Found::Number(n.into()));
        Ok(())
    }

    fn visit_i64<E>(mut self, n: i64) -> Result<(), E> {
        self.land(|| Found::Number(n.into()));
        Ok(())
    }

    fn visit_f64<E>(mut self, n: f64) -> Result<(), E> {
        // As `Value` does: a non-finite float (serde_json hands over none) would be null.
        self.land(|| Number::from_f64(n).map_or(Found::Null, Found::Number));
        Ok(())
    }

    fn visit_str<E>(mut self, s: &str) -> Result<(), E> {
        self.land(|| Found::String(s.to_owned()));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.land(|| Found::Container);
        let mut index = 0usize;
        loop {
            let mask = matching(self.pointers, self.depth, self.active, |t| {
                t.index == Some(index)
            });
            if seq.next_element_seed(self.enter(mask))?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.land(|| Found::Container);
        loop {
            let key = Key {
                pointers: self.pointers,
                depth: self.depth,
                active: self.active,
            };
            let Some(mask) = map.next_key_seed(key)? else {
                return Ok(());
            };
            map.next_value_seed(self.enter(mask))?;
        }
    }
}

/// An object key: which active pointers' token at `depth` it equals.
struct Key<'a> {
    pointers: &'a [Pointer],
    depth: usize,
    active: Mask,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Mask;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Mask, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Mask;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Mask, E> {
        Ok(matching(self.pointers, self.depth, self.active, |t| {
            t.key == key
        }))
    }
}
