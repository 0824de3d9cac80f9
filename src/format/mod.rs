//! The encodings of walsync's objects: WAL segments (`segment`) and database
//! snapshots (`snapshot`).
//!
//! Pure: encoders write to any `Write`, decoders read from any `Read`, and
//! neither opens a file or a socket. Every object is
//! `header | LZ4 frame | CRC32 trailer`, where the trailer is the CRC32
//! (crc32fast) of every byte before it (DESIGN.md invariant 4). Decoders verify
//! the trailer when the object has been read to its end (`finish`) and never
//! trust a length field for an allocation (invariant 9): pages are read one at
//! a time into a buffer of the page size, which itself is checked.

use std::fmt;
use std::io::{self, Read, Write};

pub mod segment;
pub mod snapshot;

/// Errors decoding an object. The caller adds the object's key.
#[derive(Debug)]
pub enum FormatError {
    Io(io::Error),
    /// The object is not of the expected kind or version.
    BadMagic,
    UnsupportedVersion(u8),
    /// A field holds a value that cannot be right.
    Invalid(String),
    /// The object ended early.
    Truncated,
    /// The CRC32 trailer does not match the bytes.
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    /// Bytes after the end of the compressed body.
    TrailingData,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Io(e) => write!(f, "read failed: {e}"),
            FormatError::BadMagic => write!(f, "not a walsync object of this kind"),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "written by a newer walsync (format version {v}); upgrade walsync")
            }
            FormatError::Invalid(what) => write!(f, "corrupt: {what}"),
            FormatError::Truncated => write!(f, "truncated: the object ends early"),
            FormatError::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch: stored CRC32 {stored:08x}, computed {computed:08x}; the object is corrupt"
            ),
            FormatError::TrailingData => write!(f, "corrupt: data after the end of the object"),
        }
    }
}

impl std::error::Error for FormatError {}

impl From<io::Error> for FormatError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FormatError::Truncated
        } else {
            FormatError::Io(e)
        }
    }
}

/// A writer that computes the CRC32 of everything written through it.
pub struct CrcWriter<W: Write> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> CrcWriter<W> {
    pub fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            hasher: crc32fast::Hasher::new(),
            written: 0,
        }
    }

    /// Appends the CRC32 trailer and returns the inner writer, the object's
    /// total length and the CRC32 of the whole object (trailer included),
    /// which is what `x-amz-checksum-crc32` declares.
    pub fn finish(mut self) -> io::Result<(W, u64, u32)> {
        let trailer = self.hasher.clone().finalize().to_be_bytes();
        self.write_all(&trailer)?;
        self.inner.flush()?;
        Ok((self.inner, self.written, self.hasher.finalize()))
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that yields an object's bytes except the last four, computing
/// their CRC32, and holds the last four back as the trailer.
pub struct CrcReader<R: Read> {
    inner: R,
    hasher: crc32fast::Hasher,
    /// Bytes read from `inner` and not yet given out; the last four of the
    /// stream stay here.
    held: Vec<u8>,
    eof: bool,
}

const TRAILER: usize = 4;

impl<R: Read> CrcReader<R> {
    pub fn new(inner: R) -> Self {
        CrcReader {
            inner,
            hasher: crc32fast::Hasher::new(),
            held: Vec::with_capacity(64 * 1024),
            eof: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        while !self.eof && self.held.len() <= TRAILER {
            let old = self.held.len();
            self.held.resize(old + 64 * 1024, 0);
            let n = loop {
                match self.inner.read(&mut self.held[old..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.held.truncate(old);
                    return Err(e);
                }
            };
            self.held.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Reads the rest of the stream; checks there is nothing but the trailer
    /// left when `expect_end` and that the trailer matches.
    pub fn finish(mut self, expect_end: bool) -> Result<(), FormatError> {
        let mut rest = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if expect_end {
                return Err(FormatError::TrailingData);
            }
            rest.extend_from_slice(&buf[..n]);
            rest.clear();
        }
        if self.held.len() != TRAILER {
            return Err(FormatError::Truncated);
        }
        let stored = u32::from_be_bytes([self.held[0], self.held[1], self.held[2], self.held[3]]);
        let computed = self.hasher.finalize();
        if stored != computed {
            return Err(FormatError::ChecksumMismatch { stored, computed });
        }
        Ok(())
    }
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let avail = self.held.len().saturating_sub(TRAILER);
        let n = avail.min(buf.len());
        buf[..n].copy_from_slice(&self.held[..n]);
        self.hasher.update(&buf[..n]);
        self.held.drain(..n);
        Ok(n)
    }
}

/// Fixed-width big-endian field helpers for headers.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.at += 1;
        self.bytes[self.at - 1]
    }
    pub(crate) fn u32(&mut self) -> u32 {
        let b = &self.bytes[self.at..self.at + 4];
        self.at += 4;
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    pub(crate) fn u64(&mut self) -> u64 {
        let b = &self.bytes[self.at..self.at + 8];
        self.at += 8;
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

/// Reads exactly `buf.len()` bytes, or reports how the object ended early.
pub(crate) fn read_exact_or_truncated(
    r: &mut impl Read,
    buf: &mut [u8],
) -> Result<(), FormatError> {
    r.read_exact(buf).map_err(FormatError::from)
}

/// The WAL position a segment ends at / a snapshot was taken at, as stored
/// in object headers (24 bytes).
pub(crate) fn put_pos(out: &mut Vec<u8>, pos: Option<crate::wal::WalPos>) {
    let p = pos.unwrap_or(crate::wal::WalPos {
        salt1: 0,
        salt2: 0,
        offset: 0,
        checksum: crate::wal::Checksum(0, 0),
    });
    put_u32(out, p.salt1);
    put_u32(out, p.salt2);
    put_u64(out, p.offset);
    put_u32(out, p.checksum.0);
    put_u32(out, p.checksum.1);
}

pub(crate) fn get_pos(f: &mut Fields<'_>) -> Option<crate::wal::WalPos> {
    let salt1 = f.u32();
    let salt2 = f.u32();
    let offset = f.u64();
    let checksum = crate::wal::Checksum(f.u32(), f.u32());
    (offset != 0).then_some(crate::wal::WalPos {
        salt1,
        salt2,
        offset,
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_trailer_round_trip_and_detects_flips() {
        let mut w = CrcWriter::new(Vec::new());
        w.write_all(b"hello walsync").unwrap();
        let (bytes, len, _) = w.finish().unwrap();
        assert_eq!(len as usize, bytes.len());
        let mut r = CrcReader::new(&bytes[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello walsync");
        r.finish(true).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            let mut r = CrcReader::new(&b[..]);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert!(matches!(
                r.finish(true),
                Err(FormatError::ChecksumMismatch { .. })
            ));
        }
        let mut r = CrcReader::new(&bytes[..2]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert!(matches!(r.finish(true), Err(FormatError::Truncated)));
    }
}
