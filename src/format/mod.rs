//! The encodings of walsync's objects: WAL segments (`segment`) and database
//! snapshots (`snapshot`).
//!
//! Pure: encoders write to any `Write`, decoders read from any `Read`, and
//! neither opens a file or a socket. Every object is
//! `header | LZ4 frame | CRC32 trailer`, where the trailer is the CRC32
//! (crc32fast) of every byte before it (ARCHITECTURE.md invariant 4). Decoders verify
//! the trailer when the object has been read to its end (`finish`) and never
//! trust a length field for an allocation (invariant 9): pages are read one at
//! a time into a buffer of the page size, which itself is checked.

use std::fmt;
use std::io::{self, Read, Write};

pub mod mark;
pub mod sealed;
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
    /// A sealed object that cannot be opened: no key for it, or its
    /// authentication failed (`sealed`).
    Sealed(sealed::SealError),
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
            FormatError::Sealed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FormatError {}

impl From<io::Error> for FormatError {
    fn from(e: io::Error) -> Self {
        // A sealed object's opener fails reads with its own error inside.
        if e.get_ref()
            .is_some_and(|inner| inner.is::<sealed::SealError>())
        {
            return FormatError::Sealed(sealed::SealError::from(e));
        }
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

    /// The inner writer, the length written and the CRC32 of it all, with
    /// no trailer: what `x-amz-checksum-crc32` declares for a sealed object.
    pub fn into_parts(mut self) -> io::Result<(W, u64, u32)> {
        self.inner.flush()?;
        Ok((self.inner, self.written, self.hasher.finalize()))
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
    /// Bytes read from `inner`; `held[start..end]` are not yet given out,
    /// and the last four of the stream stay there. Zeroed once: each read
    /// fills the free tail, no byte is zeroed or moved per read but the few
    /// held back.
    held: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

const TRAILER: usize = 4;

/// What `CrcReader` reads from its source at once, at most.
const READ_AT_ONCE: usize = 64 * 1024;

impl<R: Read> CrcReader<R> {
    pub fn new(inner: R) -> Self {
        CrcReader {
            inner,
            hasher: crc32fast::Hasher::new(),
            held: vec![0; READ_AT_ONCE + TRAILER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        while !self.eof && self.end - self.start <= TRAILER {
            // The at most four bytes held back go to the front.
            self.held.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let n = loop {
                match self.inner.read(&mut self.held[self.end..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.end += n;
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Reads the rest of the stream; checks there is nothing but the trailer
    /// left when `expect_end` and that the trailer matches.
    pub fn finish(mut self, expect_end: bool) -> Result<(), FormatError> {
        let mut buf = [0u8; 8192];
        // What is left is read (into the checksum) and dropped.
        while self.read(&mut buf)? != 0 {
            if expect_end {
                return Err(FormatError::TrailingData);
            }
        }
        let held = &self.held[self.start..self.end];
        if held.len() != TRAILER {
            return Err(FormatError::Truncated);
        }
        let stored = u32::from_be_bytes([held[0], held[1], held[2], held[3]]);
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
        let avail = (self.end - self.start).saturating_sub(TRAILER);
        let n = avail.min(buf.len());
        buf[..n].copy_from_slice(&self.held[self.start..self.start + n]);
        self.hasher.update(&buf[..n]);
        self.start += n;
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
    /// The fields after the head every object starts with: `magic`, a
    /// version byte that must be `version`, three reserved bytes.
    pub(crate) fn after_head(
        bytes: &'a [u8],
        magic: &[u8; 4],
        version: u8,
    ) -> Result<Self, FormatError> {
        if &bytes[..4] != magic {
            return Err(FormatError::BadMagic);
        }
        let mut f = Fields::new(&bytes[4..]);
        let v = f.u8();
        if v != version {
            return Err(FormatError::UnsupportedVersion(v));
        }
        f.at += 3;
        Ok(f)
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

    /// A source that gives at most `sizes[i % len]` bytes per read, and is
    /// interrupted before every third read.
    struct Chunky<'a> {
        bytes: &'a [u8],
        sizes: &'a [usize],
        reads: usize,
    }

    impl Read for Chunky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.reads.is_multiple_of(3) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.sizes[self.reads % self.sizes.len()]
                .min(buf.len())
                .min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn crc_reader_gives_every_byte_however_source_and_reader_cut_them() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut w = CrcWriter::new(Vec::new());
        w.write_all(&payload).unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        for (sizes, buf_len) in [
            (&[1usize][..], 3usize),
            (&[3, 1, 5, 2][..], 7),
            (&[65_536][..], 65_536),
            (&[70_000, 2, 65_535][..], 100_000),
            (&[4, 4, 4][..], 1),
            (&[100_000][..], 8192),
        ] {
            let mut r = CrcReader::new(Chunky {
                bytes: &bytes,
                sizes,
                reads: 0,
            });
            let mut out = Vec::new();
            let mut buf = vec![0u8; buf_len];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert!(out == payload, "{sizes:?} {buf_len}");
            r.finish(true).unwrap();
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Property-style robustness: the decoders get valid objects with random
    //! bytes flipped, inserted, removed and cut, and pure garbage; they must
    //! return a value or an error, never panic, and never hand back a
    //! corrupted object as valid.
    use super::segment::{CommitRecord, SegmentDecoder, SegmentEncoder, SegmentHeader};
    use super::snapshot::{SnapshotDecoder, SnapshotEncoder, SnapshotHeader};
    use crate::wal::{Checksum, WalPos};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn segment() -> Vec<u8> {
        let pos = WalPos {
            salt1: 1,
            salt2: 2,
            offset: 32,
            checksum: Checksum(3, 4),
        };
        let header = SegmentHeader {
            page_size: 512,
            commit_count: 3,
            first_txid: 5,
            last_txid: 7,
            first_time_ms: 10,
            last_time_ms: 12,
            start: pos,
            end: WalPos {
                offset: 9000,
                ..pos
            },
        };
        let mut e = SegmentEncoder::new(Vec::new(), header).unwrap();
        for i in 0..3u64 {
            e.commit(&CommitRecord {
                txid: 5 + i,
                time_ms: 10 + i,
                db_pages: 4,
                page_count: 2,
            })
            .unwrap();
            e.page(1, &[i as u8; 512]).unwrap();
            e.page(3, &[7; 512]).unwrap();
        }
        e.finish().unwrap().0
    }

    fn snapshot() -> Vec<u8> {
        let h = SnapshotHeader {
            page_size: 512,
            page_count: 4,
            txid: 9,
            time_ms: 99,
            pos: None,
        };
        let mut e = SnapshotEncoder::new(Vec::new(), h).unwrap();
        for p in 0..4u8 {
            e.page(&[p; 512]).unwrap();
        }
        e.finish().unwrap().0
    }

    fn decode_segment(b: impl std::io::Read) -> bool {
        let Ok(mut d) = SegmentDecoder::new(b) else {
            return false;
        };
        let mut buf = vec![0u8; 65536];
        loop {
            match d.next_commit() {
                Ok(Some(c)) => {
                    for _ in 0..c.page_count {
                        if d.next_page(&mut buf).is_err() {
                            return false;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        d.finish().is_ok()
    }

    fn mark() -> Vec<u8> {
        super::mark::Mark {
            page_size: 4096,
            db_pages: Some(3),
            fingerprint: super::mark::Fingerprint {
                len: 12288,
                crc: 7,
                mix: 9,
            },
            pos: None,
        }
        .encode()
        .0
    }

    const SEALED_KEY: &str = "db/app/00000001/0000000000000009.snap";

    fn sealing_key() -> crate::keyfile::Key {
        crate::keyfile::Key::from_secret([7; 32])
    }

    /// The snapshot, sealed in 1 KiB chunks: two and a short last one.
    fn sealed() -> Vec<u8> {
        use std::io::Write;
        let snap = snapshot();
        let mut w = super::sealed::SealWriter::with_chunk_shift(
            Vec::new(),
            &sealing_key(),
            SEALED_KEY,
            [3; 16],
            10,
        )
        .unwrap();
        for _ in 0..2048 / snap.len() + 1 {
            w.write_all(&snap).unwrap();
        }
        w.finish().unwrap().0
    }

    /// Opens a sealed object to its end (the opener is what fuzzing targets;
    /// the snapshot decoder behind it has its own loops).
    fn open_sealed(b: &[u8]) -> bool {
        use std::io::Read;
        let Ok(mut r) = super::sealed::OpenReader::new(b, &[sealing_key()], SEALED_KEY) else {
            return false;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// The segment as walsync uploads it with a key: through the envelope.
    fn sealed_segment() -> Vec<u8> {
        let seg = segment();
        let seal = Some((&sealing_key(), [5; 16]));
        super::sealed::envelope_bytes(seg, 0, seal, SEALED_KEY)
            .unwrap()
            .0
    }

    /// An object as restore reads it from the bucket: plain or sealed, told
    /// by its first bytes (`sealed::open`), then decoded as a segment.
    fn restore_segment(b: &[u8]) -> bool {
        match super::sealed::open(b, &[sealing_key()], SEALED_KEY) {
            Ok(r) => decode_segment(r),
            Err(_) => false,
        }
    }

    fn decode_mark(b: &[u8]) -> bool {
        super::mark::Mark::decode(b).is_ok()
    }

    fn decode_snapshot(b: &[u8]) -> bool {
        let Ok(mut d) = SnapshotDecoder::new(b) else {
            return false;
        };
        let mut buf = vec![0u8; 65536];
        loop {
            match d.next_page(&mut buf) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => return false,
            }
        }
        d.finish().is_ok()
    }

    fn mutate(rng: &mut Rng, good: &[u8]) -> Vec<u8> {
        let mut b = good.to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(b.len());
                    b.insert(i, rng.next() as u8);
                }
                2 if b.len() > 1 => {
                    let i = rng.below(b.len());
                    b.remove(i);
                }
                _ => {
                    let cut = rng.below(b.len() + 1);
                    b.truncate(cut);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        b
    }

    /// Inputs tried by one decoder in one fuzz loop, and what came of them.
    #[derive(Default)]
    struct Tally {
        inputs: u64,
        accepted: u64,
        panics: u64,
    }

    impl Tally {
        fn try_one(&mut self, decode: impl FnOnce() -> bool) {
            self.inputs += 1;
            if crate::testing::counting_panics(&mut self.panics, decode) == Some(true) {
                self.accepted += 1;
            }
        }

        /// One line for `bench/fuzz.sh` to collect.
        fn report(&self, decoder: &str, kind: &str) {
            eprintln!(
                "fuzz: {decoder}: {} {kind} inputs, {} panics, {} accepted",
                self.inputs, self.panics, self.accepted
            );
        }
    }

    #[test]
    fn mutated_objects_are_rejected_never_accepted_or_panicking() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (seg, snap, mrk, sea) = (segment(), snapshot(), mark(), sealed());
        let sealed_seg = sealed_segment();
        assert!(decode_segment(&seg[..]) && decode_snapshot(&snap) && decode_mark(&mrk));
        assert!(open_sealed(&sea));
        assert!(restore_segment(&sealed_seg) && restore_segment(&seg));
        let mut restored = Tally::default();
        let (mut segments, mut snapshots, mut marks, mut seals) = (
            Tally::default(),
            Tally::default(),
            Tally::default(),
            Tally::default(),
        );
        for _ in 0..crate::testing::fuzz_iters(3000) {
            let b = mutate(&mut rng, &sea);
            if b != sea {
                seals.try_one(|| open_sealed(&b));
            }
            let b = mutate(&mut rng, &sealed_seg);
            if b != sealed_seg {
                restored.try_one(|| restore_segment(&b));
            }
            let b = mutate(&mut rng, &mrk);
            if b != mrk {
                marks.try_one(|| decode_mark(&b));
            }
            let b = mutate(&mut rng, &seg);
            if b != seg {
                segments.try_one(|| decode_segment(&b[..]));
            }
            let b = mutate(&mut rng, &snap);
            if b != snap {
                snapshots.try_one(|| decode_snapshot(&b));
            }
        }
        segments.report("segment decoder", "mutated");
        snapshots.report("snapshot decoder", "mutated");
        marks.report("mark decoder", "mutated");
        seals.report("sealed opener", "mutated");
        restored.report("sealed segment as restored", "mutated");
        for t in [&segments, &snapshots, &marks, &seals, &restored] {
            assert_eq!(t.panics, 0, "a decoder panicked");
            assert_eq!(t.accepted, 0, "a mutated object was accepted");
        }
    }

    #[test]
    fn garbage_and_lying_headers_never_panic() {
        let mut rng = Rng(0x0bad_cafe_0000_0042);
        let mut restored = Tally::default();
        let (mut segments, mut snapshots, mut marks, mut seals, mut keys) = (
            Tally::default(),
            Tally::default(),
            Tally::default(),
            Tally::default(),
            Tally::default(),
        );
        for _ in 0..crate::testing::fuzz_iters(3000) {
            let n = rng.below(400);
            let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            // Half the time, a plausible header: the right magic and version.
            if rng.below(2) == 0 && b.len() >= 8 {
                b[..4].copy_from_slice([b"WSEG", b"WSNP", b"WMRK", b"WSEA"][rng.below(4)]);
                b[4] = 1;
                // A sealed header: a known algorithm (either), chunk size and key id.
                if &b[..4] == b"WSEA" && b.len() >= 20 {
                    b[8] = 1 + rng.below(2) as u8;
                    b[9] = 10 + rng.below(11) as u8;
                    b[12..20].copy_from_slice(&sealing_key().id().0);
                }
            }
            segments.try_one(|| decode_segment(&b[..]));
            restored.try_one(|| restore_segment(&b));
            snapshots.try_one(|| decode_snapshot(&b));
            marks.try_one(|| decode_mark(&b));
            seals.try_one(|| open_sealed(&b));
            keys.try_one(|| {
                matches!(
                    crate::keys::parse_key("p", &String::from_utf8_lossy(&b)),
                    Ok(Some(_))
                )
            });
        }
        segments.report("segment decoder", "garbage");
        snapshots.report("snapshot decoder", "garbage");
        marks.report("mark decoder", "garbage");
        seals.report("sealed opener", "garbage");
        restored.report("sealed segment as restored", "garbage");
        keys.report("key parser", "garbage");
        for t in [&segments, &snapshots, &marks, &seals, &restored, &keys] {
            assert_eq!(t.panics, 0, "a decoder panicked on garbage");
        }
        // Random bytes never carry a valid CRC32 in practice (2^-32 each).
        // Nor a valid Poly1305 tag (2^-128).
        assert_eq!(
            segments.accepted + snapshots.accepted + marks.accepted + seals.accepted,
            0
        );
        // A snapshot claiming 4 billion pages of 64 KiB: read page by page,
        // so it fails at the first missing byte without allocating for it.
        let mut lying = snapshot();
        lying[8..12].copy_from_slice(&65536u32.to_be_bytes());
        lying[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(!decode_snapshot(&lying));
    }
}
