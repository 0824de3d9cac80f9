//! WAL segments: a run of whole transactions read from one WAL, in commit order.
//!
//! ```text
//! header (96 bytes, big-endian)
//!   magic "WSEG", version u8 = 1, reserved [u8; 3]
//!   page_size u32, commit_count u32
//!   first_txid u64, last_txid u64, first_time_ms u64, last_time_ms u64
//!   start WalPos (salt1 u32, salt2 u32, offset u64, cksum u32 u32)   where reading began
//!   end   WalPos                                                     after the last commit frame
//! LZ4 frame of commit_count commits, each:
//!   txid u64, time_ms u64, db_pages u32, page_count u32,
//!   page_count × (page_no u32, page bytes[page_size])
//! CRC32 of all of the above (u32)
//! ```
//! A segment always ends at a commit (ARCHITECTURE.md invariant 2): the encoder only
//! takes whole commits, and restore truncates the file to each commit's
//! `db_pages`.

use std::io::{Read, Write};

use lz4_flex::frame::{FrameDecoder, FrameEncoder};

use super::{get_pos, put_pos, put_u32, put_u64, CrcReader, CrcWriter, Fields, FormatError};
use crate::wal::{valid_page_size, WalPos};

const MAGIC: &[u8; 4] = b"WSEG";
const VERSION: u8 = 1;
pub const HEADER_SIZE: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub page_size: u32,
    pub commit_count: u32,
    pub first_txid: u64,
    pub last_txid: u64,
    pub first_time_ms: u64,
    pub last_time_ms: u64,
    pub start: WalPos,
    pub end: WalPos,
}

/// One transaction inside a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRecord {
    pub txid: u64,
    /// Wall-clock time (ms since the Unix epoch, UTC) at which walsync read it.
    pub time_ms: u64,
    /// Database size in pages after this commit.
    pub db_pages: u32,
    pub page_count: u32,
}

impl SegmentHeader {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_SIZE);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&[VERSION, 0, 0, 0]);
        put_u32(&mut h, self.page_size);
        put_u32(&mut h, self.commit_count);
        put_u64(&mut h, self.first_txid);
        put_u64(&mut h, self.last_txid);
        put_u64(&mut h, self.first_time_ms);
        put_u64(&mut h, self.last_time_ms);
        put_pos(&mut h, Some(self.start));
        put_pos(&mut h, Some(self.end));
        debug_assert_eq!(h.len(), HEADER_SIZE);
        h
    }

    fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self, FormatError> {
        let mut f = Fields::after_head(b, MAGIC, VERSION)?;
        let page_size = f.u32();
        let commit_count = f.u32();
        let first_txid = f.u64();
        let last_txid = f.u64();
        let first_time_ms = f.u64();
        let last_time_ms = f.u64();
        let start = get_pos(&mut f);
        let end = get_pos(&mut f);
        if !valid_page_size(page_size) {
            return Err(FormatError::Invalid(format!("page size {page_size}")));
        }
        if commit_count == 0
            || last_txid < first_txid
            || last_txid - first_txid + 1 != u64::from(commit_count)
        {
            return Err(FormatError::Invalid(format!(
                "txids {first_txid}..={last_txid} do not match {commit_count} commits"
            )));
        }
        if last_time_ms < first_time_ms {
            return Err(FormatError::Invalid("commit times go backwards".into()));
        }
        let (Some(start), Some(end)) = (start, end) else {
            return Err(FormatError::Invalid("missing WAL position".into()));
        };
        Ok(SegmentHeader {
            page_size,
            commit_count,
            first_txid,
            last_txid,
            first_time_ms,
            last_time_ms,
            start,
            end,
        })
    }
}

/// Writes one segment. Call `commit` for each transaction, then `page` exactly
/// `page_count` times, then `finish`.
pub struct SegmentEncoder<W: Write> {
    lz: FrameEncoder<CrcWriter<W>>,
    header: SegmentHeader,
    commits_written: u32,
    pages_left: u32,
}

impl<W: Write> SegmentEncoder<W> {
    pub fn new(out: W, header: SegmentHeader) -> std::io::Result<Self> {
        let mut crc = CrcWriter::new(out);
        crc.write_all(&header.encode())?;
        Ok(SegmentEncoder {
            lz: FrameEncoder::new(crc),
            header,
            commits_written: 0,
            pages_left: 0,
        })
    }

    pub fn commit(&mut self, c: &CommitRecord) -> std::io::Result<()> {
        assert_eq!(
            self.pages_left, 0,
            "invariant: every page of the previous commit was written"
        );
        let mut b = Vec::with_capacity(24);
        put_u64(&mut b, c.txid);
        put_u64(&mut b, c.time_ms);
        put_u32(&mut b, c.db_pages);
        put_u32(&mut b, c.page_count);
        self.lz.write_all(&b)?;
        self.commits_written += 1;
        self.pages_left = c.page_count;
        Ok(())
    }

    pub fn page(&mut self, page_no: u32, data: &[u8]) -> std::io::Result<()> {
        assert!(
            self.pages_left > 0,
            "invariant: pages are written inside a commit"
        );
        assert_eq!(
            data.len(),
            self.header.page_size as usize,
            "invariant: whole pages"
        );
        self.lz.write_all(&page_no.to_be_bytes())?;
        self.lz.write_all(data)?;
        self.pages_left -= 1;
        Ok(())
    }

    /// Ends the object: returns the writer, the object's length and its CRC32.
    pub fn finish(self) -> std::io::Result<(W, u64, u32)> {
        assert_eq!(self.pages_left, 0, "invariant: the last commit is complete");
        assert_eq!(
            self.commits_written, self.header.commit_count,
            "invariant: the header counts the commits written"
        );
        let crc = self.lz.finish().map_err(std::io::Error::other)?;
        crc.finish()
    }
}

/// Reads a segment commit by commit, page by page, with memory of one page.
pub struct SegmentDecoder<R: Read> {
    lz: FrameDecoder<CrcReader<R>>,
    pub header: SegmentHeader,
    commits_read: u32,
    pages_left: u32,
    last_txid: Option<u64>,
    last_time: u64,
}

impl<R: Read> SegmentDecoder<R> {
    pub fn new(inner: R) -> Result<Self, FormatError> {
        let mut crc = CrcReader::new(inner);
        let mut h = [0u8; HEADER_SIZE];
        super::read_exact_or_truncated(&mut crc, &mut h)?;
        let header = SegmentHeader::decode(&h)?;
        Ok(SegmentDecoder {
            lz: FrameDecoder::new(crc),
            header,
            commits_read: 0,
            pages_left: 0,
            last_txid: None,
            last_time: header.first_time_ms,
        })
    }

    /// The next commit's record, or `None` after the last one. Pages of the
    /// previous commit that were not read are skipped.
    pub fn next_commit(&mut self) -> Result<Option<CommitRecord>, FormatError> {
        let mut skip = vec![0u8; self.header.page_size as usize];
        while self.pages_left > 0 {
            self.next_page(&mut skip)?;
        }
        if self.commits_read == self.header.commit_count {
            return Ok(None);
        }
        let mut b = [0u8; 24];
        super::read_exact_or_truncated(&mut self.lz, &mut b)?;
        let mut f = Fields::new(&b);
        let c = CommitRecord {
            txid: f.u64(),
            time_ms: f.u64(),
            db_pages: f.u32(),
            page_count: f.u32(),
        };
        let expected = self.last_txid.map_or(self.header.first_txid, |t| t + 1);
        if c.txid != expected {
            return Err(FormatError::Invalid(format!(
                "commit txid {} where {expected} was expected",
                c.txid
            )));
        }
        if c.time_ms < self.last_time || c.time_ms > self.header.last_time_ms {
            return Err(FormatError::Invalid(format!(
                "commit {} time out of order",
                c.txid
            )));
        }
        if c.db_pages == 0 || c.page_count == 0 {
            return Err(FormatError::Invalid(format!(
                "commit {} has no pages",
                c.txid
            )));
        }
        self.last_txid = Some(c.txid);
        self.last_time = c.time_ms;
        self.commits_read += 1;
        self.pages_left = c.page_count;
        Ok(Some(c))
    }

    /// Reads the next page of the current commit into `buf` (page_size
    /// bytes) and returns its page number.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<u32, FormatError> {
        assert!(
            self.pages_left > 0,
            "invariant: next_page only inside a commit"
        );
        let mut n = [0u8; 4];
        super::read_exact_or_truncated(&mut self.lz, &mut n)?;
        let page_no = u32::from_be_bytes(n);
        if page_no == 0 {
            return Err(FormatError::Invalid("page number 0".into()));
        }
        super::read_exact_or_truncated(&mut self.lz, &mut buf[..self.header.page_size as usize])?;
        self.pages_left -= 1;
        Ok(page_no)
    }

    /// Reads the rest of the segment and checks its CRC32 trailer. Call this
    /// even when a restore stops inside the segment: no part of an object
    /// whose checksum fails may stand.
    pub fn finish(mut self) -> Result<(), FormatError> {
        while self.next_commit()?.is_some() {}
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
    use crate::wal::Checksum;

    fn pos(offset: u64) -> WalPos {
        WalPos {
            salt1: 1,
            salt2: 2,
            offset,
            checksum: Checksum(3, 4),
        }
    }

    fn sample(commits: &[(u32, u32)]) -> Vec<u8> {
        let header = SegmentHeader {
            page_size: 512,
            commit_count: commits.len() as u32,
            first_txid: 10,
            last_txid: 10 + commits.len() as u64 - 1,
            first_time_ms: 1000,
            last_time_ms: 1000 + commits.len() as u64 - 1,
            start: pos(32),
            end: pos(5000),
        };
        let mut e = SegmentEncoder::new(Vec::new(), header).unwrap();
        for (i, &(db_pages, n)) in commits.iter().enumerate() {
            e.commit(&CommitRecord {
                txid: 10 + i as u64,
                time_ms: 1000 + i as u64,
                db_pages,
                page_count: n,
            })
            .unwrap();
            for p in 0..n {
                e.page(p + 1, &[(i as u8) ^ (p as u8); 512]).unwrap();
            }
        }
        let (bytes, len, crc) = e.finish().unwrap();
        assert_eq!(len as usize, bytes.len());
        assert_eq!(crc, crc32fast::hash(&bytes));
        bytes
    }

    type Decoded = Vec<(CommitRecord, Vec<(u32, u8)>)>;

    fn decode_all(bytes: &[u8]) -> Result<Decoded, FormatError> {
        let mut d = SegmentDecoder::new(bytes)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 512];
        while let Some(c) = d.next_commit()? {
            let mut pages = Vec::new();
            for _ in 0..c.page_count {
                let n = d.next_page(&mut buf)?;
                pages.push((n, buf[0]));
            }
            out.push((c, pages));
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn segment_round_trip() {
        let bytes = sample(&[(3, 2), (4, 1), (4, 3)]);
        let got = decode_all(&bytes).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.txid, 10);
        assert_eq!(got[2].0.db_pages, 4);
        assert_eq!(got[2].1, vec![(1, 2), (2, 3), (3, 0)]);
    }

    #[test]
    fn corrupted_segment_is_detected() {
        let bytes = sample(&[(3, 2), (4, 1)]);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_all(&b).is_err(), "flip at byte {i} not detected");
        }
        for cut in 0..bytes.len() {
            assert!(
                decode_all(&bytes[..cut]).is_err(),
                "cut at {cut} not detected"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_all(&longer).is_err());
    }

    #[test]
    fn stopping_early_still_verifies_the_checksum() {
        let bytes = sample(&[(3, 2), (4, 1)]);
        let mut b = bytes.clone();
        let last = b.len() - 10;
        b[last] ^= 1;
        let mut d = SegmentDecoder::new(&b[..]).unwrap();
        d.next_commit().unwrap();
        assert!(d.finish().is_err());
    }
}
