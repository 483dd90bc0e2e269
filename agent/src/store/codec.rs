//! The one little-endian byte codec every stored record (and the progress marker) is written
//! and read with.
//!
//! [`ByteWriter`] appends fixed-width little-endian integers and length-prefixed byte strings;
//! [`ByteReader`] takes them back, never panicking: a read past the end is [`Truncated`], which
//! each format's own error type converts from (`From<Truncated>`), so a decoder reads as a list
//! of `r.u8()?`, `r.u64()?`, ... and ends with [`ByteReader::finish`] (no trailing bytes).
//!
//! Big-endian appears in one place only, the `dedupe` keys, whose integers must sort as bytes
//! (`FORMAT.md`); those write `to_be_bytes()` with [`ByteWriter::bytes`]. Never host-endian.

/// A read ran past the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

/// Appends little-endian fields to a byte vector.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ByteWriter(Vec<u8>);

impl ByteWriter {
    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> ByteWriter {
        ByteWriter(Vec::with_capacity(capacity))
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// IEEE-754 bits, little-endian.
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }

    /// Raw bytes, no length.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    /// A `u16` LE length, then the bytes. The caller bounds `v` to `u16::MAX` bytes.
    pub fn bytes_u16(&mut self, v: &[u8]) -> &mut Self {
        self.u16(v.len() as u16).bytes(v)
    }

    /// A `u32` LE length, then the bytes. The caller bounds `v` to `u32::MAX` bytes.
    pub fn bytes_u32(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32).bytes(v)
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

/// Takes little-endian fields from the front of a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct ByteReader<'a>(&'a [u8]);

impl<'a> ByteReader<'a> {
    pub fn new(bytes: &'a [u8]) -> ByteReader<'a> {
        ByteReader(bytes)
    }

    /// The version byte every record starts with: `Ok` when it is `expected`, otherwise the
    /// format's own error made by `unknown` from the byte read.
    pub fn version<E: From<Truncated>>(
        &mut self,
        expected: u8,
        unknown: impl FnOnce(u8) -> E,
    ) -> Result<(), E> {
        match self.u8()? {
            v if v == expected => Ok(()),
            v => Err(unknown(v)),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.0.len() < n {
            return Err(Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let (head, tail) = self.0.split_first_chunk::<N>().ok_or(Truncated)?;
        self.0 = tail;
        Ok(*head)
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    pub fn i64(&mut self) -> Result<i64, Truncated> {
        self.array().map(i64::from_le_bytes)
    }

    pub fn f64(&mut self) -> Result<f64, Truncated> {
        self.u64().map(f64::from_bits)
    }

    /// A `u16` LE length, then that many bytes.
    pub fn bytes_u16(&mut self) -> Result<&'a [u8], Truncated> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A `u32` LE length, then that many bytes.
    pub fn bytes_u32(&mut self) -> Result<&'a [u8], Truncated> {
        let len = self.u32()?;
        self.take(len as usize)
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// `Ok` when every byte was read; otherwise how many are left.
    pub fn finish(self) -> Result<(), usize> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_writer_writes_the_reader_reads_back() {
        let mut w = ByteWriter::default();
        w.u8(1).u16(0x0203).u32(0x0405_0607).u64(8).i64(-1).f64(1.5);
        w.bytes_u16(b"ab")
            .bytes_u32(b"cde")
            .bytes(&0x0102u16.to_be_bytes());
        let bytes = w.into_vec();
        let mut r = ByteReader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.u64(), Ok(8));
        assert_eq!(r.i64(), Ok(-1));
        assert_eq!(r.f64(), Ok(1.5));
        assert_eq!(r.bytes_u16(), Ok(&b"ab"[..]));
        assert_eq!(r.bytes_u32(), Ok(&b"cde"[..]));
        assert_eq!(r.array::<2>(), Ok([1, 2]));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn reading_past_the_end_is_truncated() {
        let mut r = ByteReader::new(&[5, 0, 1]);
        assert_eq!(r.bytes_u16(), Err(Truncated));
        assert_eq!(r.rest(), &[1]);
        assert_eq!(r.u64(), Err(Truncated));
        assert_eq!(r.finish(), Err(1));
    }

    #[test]
    fn an_unknown_version_is_the_formats_own_error() {
        #[derive(Debug, PartialEq)]
        enum E {
            Truncated,
            Version(u8),
        }
        impl From<Truncated> for E {
            fn from(_: Truncated) -> E {
                E::Truncated
            }
        }
        assert_eq!(ByteReader::new(&[1]).version(1, E::Version), Ok(()));
        assert_eq!(
            ByteReader::new(&[2]).version(1, E::Version),
            Err(E::Version(2))
        );
        assert_eq!(
            ByteReader::new(&[]).version(1, E::Version),
            Err(E::Truncated)
        );
    }
}
