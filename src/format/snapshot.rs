//! Snapshots: a full image of the database at one commit.
//!
//! ```text
//! header (56 bytes, big-endian)
//!   magic "WSNP", version u8 = 1, reserved [u8; 3]
//!   page_size u32, page_count u32, txid u64, time_ms u64
//!   WalPos (salt1 u32, salt2 u32, offset u64, cksum u32 u32)  the WAL position
//!          the image corresponds to (offset 0: the WAL was empty)
//! LZ4 frame of page_count pages of page_size bytes, page 1 first
//! CRC32 of all of the above (u32)
//! ```
//! Encoding and decoding stream page by page: memory is one page plus the
//! LZ4 window, whatever the database size (ARCHITECTURE.md invariant 7).

use std::io::{Read, Write};

use lz4_flex::frame::{FrameDecoder, FrameEncoder};

use super::{get_pos, put_pos, put_u32, put_u64, CrcReader, CrcWriter, Fields, FormatError};
use crate::wal::{valid_page_size, WalPos};

const MAGIC: &[u8; 4] = b"WSNP";
const VERSION: u8 = 1;
pub const HEADER_SIZE: usize = 56;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub page_size: u32,
    pub page_count: u32,
    pub txid: u64,
    pub time_ms: u64,
    /// Where in the WAL the image stands; `None` if the WAL was empty.
    pub pos: Option<WalPos>,
}

impl SnapshotHeader {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_SIZE);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&[VERSION, 0, 0, 0]);
        put_u32(&mut h, self.page_size);
        put_u32(&mut h, self.page_count);
        put_u64(&mut h, self.txid);
        put_u64(&mut h, self.time_ms);
        put_pos(&mut h, self.pos);
        debug_assert_eq!(h.len(), HEADER_SIZE);
        h
    }

    fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self, FormatError> {
        let mut f = Fields::after_head(b, MAGIC, VERSION)?;
        let h = SnapshotHeader {
            page_size: f.u32(),
            page_count: f.u32(),
            txid: f.u64(),
            time_ms: f.u64(),
            pos: get_pos(&mut f),
        };
        if !valid_page_size(h.page_size) {
            return Err(FormatError::Invalid(format!("page size {}", h.page_size)));
        }
        if h.page_count == 0 {
            return Err(FormatError::Invalid("no pages".into()));
        }
        Ok(h)
    }
}

/// Writes a snapshot: `page` exactly `page_count` times, in page order.
pub struct SnapshotEncoder<W: Write> {
    lz: FrameEncoder<CrcWriter<W>>,
    header: SnapshotHeader,
    pages_written: u32,
}

impl<W: Write> SnapshotEncoder<W> {
    pub fn new(out: W, header: SnapshotHeader) -> std::io::Result<Self> {
        let mut crc = CrcWriter::new(out);
        crc.write_all(&header.encode())?;
        Ok(SnapshotEncoder {
            lz: FrameEncoder::new(crc),
            header,
            pages_written: 0,
        })
    }

    pub fn page(&mut self, data: &[u8]) -> std::io::Result<()> {
        assert_eq!(
            data.len(),
            self.header.page_size as usize,
            "invariant: whole pages"
        );
        assert!(
            self.pages_written < self.header.page_count,
            "invariant: page_count pages"
        );
        self.lz.write_all(data)?;
        self.pages_written += 1;
        Ok(())
    }

    /// Ends the object: returns the writer, the object's length and its CRC32.
    pub fn finish(self) -> std::io::Result<(W, u64, u32)> {
        assert_eq!(
            self.pages_written, self.header.page_count,
            "invariant: page_count pages"
        );
        let crc = self.lz.finish().map_err(std::io::Error::other)?;
        crc.finish()
    }
}

/// Reads a snapshot page by page.
pub struct SnapshotDecoder<R: Read> {
    lz: FrameDecoder<CrcReader<R>>,
    pub header: SnapshotHeader,
    pages_read: u32,
}

impl<R: Read> SnapshotDecoder<R> {
    pub fn new(inner: R) -> Result<Self, FormatError> {
        let mut crc = CrcReader::new(inner);
        let mut h = [0u8; HEADER_SIZE];
        super::read_exact_or_truncated(&mut crc, &mut h)?;
        let header = SnapshotHeader::decode(&h)?;
        Ok(SnapshotDecoder {
            lz: FrameDecoder::new(crc),
            header,
            pages_read: 0,
        })
    }

    /// Reads the next page into `buf` (page_size bytes); `false` after the last.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<bool, FormatError> {
        if self.pages_read == self.header.page_count {
            return Ok(false);
        }
        super::read_exact_or_truncated(&mut self.lz, &mut buf[..self.header.page_size as usize])?;
        self.pages_read += 1;
        Ok(true)
    }

    /// Checks that every page was read, nothing follows, and the CRC32 matches.
    pub fn finish(mut self) -> Result<(), FormatError> {
        let mut buf = vec![0u8; self.header.page_size as usize];
        while self.next_page(&mut buf)? {}
        let mut probe = [0u8; 1];
        if self.lz.read(&mut probe)? != 0 {
            return Err(FormatError::TrailingData);
        }
        self.lz.into_inner().finish(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pages: u32) -> Vec<u8> {
        let h = SnapshotHeader {
            page_size: 1024,
            page_count: pages,
            txid: 42,
            time_ms: 77,
            pos: None,
        };
        let mut e = SnapshotEncoder::new(Vec::new(), h).unwrap();
        for p in 0..pages {
            e.page(&[p as u8; 1024]).unwrap();
        }
        e.finish().unwrap().0
    }

    #[test]
    fn snapshot_round_trip() {
        let bytes = sample(5);
        let mut d = SnapshotDecoder::new(&bytes[..]).unwrap();
        assert_eq!(d.header.txid, 42);
        assert_eq!(d.header.pos, None);
        let mut buf = vec![0u8; 1024];
        let mut n = 0;
        while d.next_page(&mut buf).unwrap() {
            assert_eq!(buf[100], n as u8);
            n += 1;
        }
        assert_eq!(n, 5);
        d.finish().unwrap();
    }

    #[test]
    fn corrupted_snapshot_is_detected() {
        let bytes = sample(3);
        let check = |b: &[u8]| -> Result<(), FormatError> {
            let mut d = SnapshotDecoder::new(b)?;
            let mut buf = vec![0u8; 1024];
            while d.next_page(&mut buf)? {}
            d.finish()
        };
        check(&bytes).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(check(&b).is_err(), "flip at {i} not detected");
        }
        for cut in 0..bytes.len() {
            assert!(check(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
