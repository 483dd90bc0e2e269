//! Register words to values: the one place that knows the byte and word orders. No I/O.
//!
//! A Modbus register is a 16-bit word sent high byte first; tokio-modbus hands it over as a
//! `u16`. A value wider than one register spans `width` consecutive registers. Written as bytes
//! with the most significant first (`A B C D` for 32 bits, `A` .. `H` for 64):
//!
//! | `word_order` | `byte_order` | registers, in address order | name in device manuals |
//! | --- | --- | --- | --- |
//! | big | big | `AB CD` | ABCD, big-endian (Modbus's own order; the default) |
//! | little | big | `CD AB` | CDAB, "word swapped", low word first |
//! | big | little | `BA DC` | BADC, "byte swapped" |
//! | little | little | `DC BA` | DCBA, little-endian |
//!
//! The bytes put back in `A B C D ...` order are read as a big-endian integer or IEEE-754
//! float. `u64` values above 2^53 lose precision in the `f64` a reading holds.

use crate::config::modbus::{DataType, Order};

/// The value of `words` (exactly `data_type.width()` registers, in address order); `None` for
/// any other count. `bool` is a register that is not zero.
pub fn decode(
    words: &[u16],
    data_type: DataType,
    byte_order: Order,
    word_order: Order,
) -> Option<f64> {
    let width = usize::from(data_type.width());
    if words.len() != width {
        return None;
    }
    let mut bytes = [0u8; 8];
    for (i, word) in words.iter().enumerate() {
        let position = match word_order {
            Order::Big => i,
            Order::Little => width - 1 - i,
        };
        let [high, low] = word.to_be_bytes();
        let pair = match byte_order {
            Order::Big => [high, low],
            Order::Little => [low, high],
        };
        bytes[2 * position..2 * position + 2].copy_from_slice(&pair);
    }
    let b2 = [bytes[0], bytes[1]];
    let b4 = [bytes[0], bytes[1], bytes[2], bytes[3]];
    Some(match data_type {
        DataType::U16 => f64::from(u16::from_be_bytes(b2)),
        DataType::I16 => f64::from(i16::from_be_bytes(b2)),
        DataType::Bool => f64::from(u8::from(u16::from_be_bytes(b2) != 0)),
        DataType::U32 => f64::from(u32::from_be_bytes(b4)),
        DataType::I32 => f64::from(i32::from_be_bytes(b4)),
        DataType::F32 => f64::from(f32::from_be_bytes(b4)),
        DataType::U64 => u64::from_be_bytes(bytes) as f64,
        DataType::F64 => f64::from_be_bytes(bytes),
    })
}

/// The registers' bytes as sent (high byte first), for a dead letter's payload.
pub fn wire_bytes(words: &[u16]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;
    use Order::{Big, Little};

    /// Registers for `bytes` (most significant first) laid out in each of the four orders, as
    /// a device would send them.
    fn layouts(bytes: &[u8]) -> [(Order, Order, Vec<u16>); 4] {
        let words: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let swapped: Vec<u16> = words.iter().map(|w| w.swap_bytes()).collect();
        let reversed = |w: &[u16]| w.iter().rev().copied().collect::<Vec<u16>>();
        [
            (Big, Big, words.clone()),
            (Little, Big, reversed(&words)),
            (Big, Little, swapped.clone()),
            (Little, Little, reversed(&swapped)),
        ]
    }

    fn check(data_type: DataType, bytes: &[u8], expected: f64) {
        for (word_order, byte_order, words) in layouts(bytes) {
            let got = decode(&words, data_type, byte_order, word_order);
            assert_eq!(
                got.map(f64::to_bits),
                Some(expected.to_bits()),
                "{data_type:?} words {words:04x?} word_order {word_order:?} byte_order {byte_order:?}: {got:?}"
            );
        }
    }

    #[test]
    fn every_type_decodes_in_all_four_orders() {
        check(U16, &0xBEEFu16.to_be_bytes(), 48_879.0);
        check(I16, &(-1234i16).to_be_bytes(), -1234.0);
        check(U32, &4_000_000_000u32.to_be_bytes(), 4_000_000_000.0);
        check(I32, &(-123_456_789i32).to_be_bytes(), -123_456_789.0);
        check(U64, &(1u64 << 52).to_be_bytes(), (1u64 << 52) as f64);
        check(F32, &21.5f32.to_be_bytes(), 21.5);
        check(F32, &(-0.1f32).to_be_bytes(), f64::from(-0.1f32));
        check(F64, &(-12_345.678_9f64).to_be_bytes(), -12_345.678_9);
        check(Bool, &1u16.to_be_bytes(), 1.0);
        check(Bool, &0u16.to_be_bytes(), 0.0);
    }

    #[test]
    fn the_word_orders_read_a_known_device_layout() {
        // 123456.0f32 is 0x47F12000: a CDAB device sends 0x2000 then 0x47F1.
        assert_eq!(decode(&[0x2000, 0x47F1], F32, Big, Little), Some(123_456.0));
        assert_eq!(decode(&[0x47F1, 0x2000], F32, Big, Big), Some(123_456.0));
        // -2 as i32 is 0xFFFFFFFE: low word first is 0xFFFE, 0xFFFF.
        assert_eq!(decode(&[0xFFFE, 0xFFFF], I32, Big, Little), Some(-2.0));
        // A byte-swapped u16.
        assert_eq!(
            decode(&[0x3412], U16, Little, Big),
            Some(f64::from(0x1234u16))
        );
    }

    #[test]
    fn a_wrong_number_of_words_is_refused() {
        assert_eq!(decode(&[1], U32, Big, Big), None);
        assert_eq!(decode(&[1, 2, 3], F64, Big, Big), None);
        assert_eq!(decode(&[], U16, Big, Big), None);
    }

    #[test]
    fn a_nan_register_pair_decodes_to_nan_for_the_mapping_to_refuse() {
        let nan = decode(&[0x7FC0, 0x0000], F32, Big, Big).expect("two words");
        assert!(nan.is_nan());
    }

    #[test]
    fn wire_bytes_are_high_byte_first() {
        assert_eq!(wire_bytes(&[0x1234, 0xABCD]), [0x12, 0x34, 0xAB, 0xCD]);
    }
}
