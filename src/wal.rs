//! SQLite WAL parsing: the 32-byte header, 24-byte frame headers and the
//! cumulative checksum chain (https://www.sqlite.org/fileformat2.html#walformat).
//!
//! Pure: functions take bytes and return values; no file is opened here.
//! Upholds ARCHITECTURE.md invariant 3 (every frame is checked: salts and the
//! cumulative checksum; the first frame that fails ends the readable WAL) and
//! the first half of invariant 2 (`scan` only ever returns whole transactions,
//! each ending at a commit frame).

use std::fmt;

pub const HEADER_SIZE: usize = 32;
pub const FRAME_HEADER_SIZE: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const FORMAT_VERSION: u32 = 3_007_000;

/// The running checksum pair of the WAL checksum chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checksum(pub u32, pub u32);

/// A parsed and verified WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums are computed over big-endian words (magic 0x377f0683).
    pub big_endian: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Checksum of the header's first 24 bytes: the seed of the frame chain.
    pub checksum: Checksum,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalError {
    TooShort(usize),
    BadMagic(u32),
    BadVersion(u32),
    BadPageSize(u32),
    BadHeaderChecksum,
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::TooShort(n) => write!(f, "WAL header is {n} bytes, needs {HEADER_SIZE}"),
            WalError::BadMagic(m) => write!(f, "not a SQLite WAL (magic {m:#010x})"),
            WalError::BadVersion(v) => write!(f, "unsupported WAL format version {v}"),
            WalError::BadPageSize(p) => write!(f, "invalid WAL page size {p}"),
            WalError::BadHeaderChecksum => write!(f, "WAL header checksum does not match"),
        }
    }
}

impl std::error::Error for WalError {}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether `n` is a page size SQLite can use.
pub fn valid_page_size(n: u32) -> bool {
    (512..=65536).contains(&n) && n.is_power_of_two()
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing `seed`.
pub fn checksum(big_endian: bool, data: &[u8], seed: Checksum) -> Checksum {
    debug_assert!(
        data.len().is_multiple_of(8),
        "WAL checksums cover whole 8-byte words"
    );
    let (mut s0, mut s1) = (seed.0, seed.1);
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (
                u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s0 = s0.wrapping_add(a).wrapping_add(s1);
        s1 = s1.wrapping_add(b).wrapping_add(s0);
    }
    Checksum(s0, s1)
}

/// Parses and verifies the 32-byte WAL header at the start of `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<WalHeader, WalError> {
    if bytes.len() < HEADER_SIZE {
        return Err(WalError::TooShort(bytes.len()));
    }
    let magic = be32(bytes, 0);
    let big_endian = match magic {
        MAGIC_LE => false,
        MAGIC_BE => true,
        m => return Err(WalError::BadMagic(m)),
    };
    let version = be32(bytes, 4);
    if version != FORMAT_VERSION {
        return Err(WalError::BadVersion(version));
    }
    let page_size = be32(bytes, 8);
    if !valid_page_size(page_size) {
        return Err(WalError::BadPageSize(page_size));
    }
    let stored = Checksum(be32(bytes, 24), be32(bytes, 28));
    if checksum(big_endian, &bytes[..24], Checksum::default()) != stored {
        return Err(WalError::BadHeaderChecksum);
    }
    Ok(WalHeader {
        big_endian,
        page_size,
        checkpoint_seq: be32(bytes, 12),
        salt1: be32(bytes, 16),
        salt2: be32(bytes, 20),
        checksum: stored,
    })
}

impl WalHeader {
    /// Bytes of one frame (header + page).
    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE as u64 + u64::from(self.page_size)
    }

    /// The position just after this header: nothing of this WAL read yet.
    pub fn start(&self) -> WalPos {
        WalPos {
            salt1: self.salt1,
            salt2: self.salt2,
            offset: HEADER_SIZE as u64,
            checksum: self.checksum,
        }
    }

    /// Verifies one frame (`frame` is exactly `frame_size()` bytes) against the
    /// salts and the chain value `prev`. `None` means the frame is not valid,
    /// which ends the readable WAL.
    pub fn check_frame(&self, prev: Checksum, frame: &[u8]) -> Option<Frame> {
        if frame.len() as u64 != self.frame_size() {
            return None;
        }
        let page_no = be32(frame, 0);
        let commit_size = be32(frame, 4);
        if page_no == 0 || be32(frame, 8) != self.salt1 || be32(frame, 12) != self.salt2 {
            return None;
        }
        let sum = checksum(self.big_endian, &frame[..8], prev);
        let sum = checksum(self.big_endian, &frame[FRAME_HEADER_SIZE..], sum);
        if sum != Checksum(be32(frame, 16), be32(frame, 20)) {
            return None;
        }
        Some(Frame {
            page_no,
            commit_size,
            checksum: sum,
        })
    }
}

/// A frame header as it stands in the file, before any check: what its 24
/// bytes say. Cheap to read without the page (`Timeline` in
/// `replica/commit_times.rs` steps through a WAL this way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub page_no: u32,
    /// Database size in pages after this commit; 0 for other frames.
    pub commit_size: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// The chain value after this frame, as stored.
    pub checksum: Checksum,
}

/// The header at the start of `b`, or `None` if `b` is shorter than one.
pub fn frame_head(b: &[u8]) -> Option<FrameHead> {
    (b.len() >= FRAME_HEADER_SIZE).then(|| FrameHead {
        page_no: be32(b, 0),
        commit_size: be32(b, 4),
        salt1: be32(b, 8),
        salt2: be32(b, 12),
        checksum: Checksum(be32(b, 16), be32(b, 20)),
    })
}

impl FrameHead {
    /// Whether the header was written into the WAL of `h` (its salts), as
    /// opposed to a leftover of an earlier WAL or bytes never written.
    pub fn belongs_to(&self, h: &WalHeader) -> bool {
        self.page_no != 0 && self.salt1 == h.salt1 && self.salt2 == h.salt2
    }
}

/// A verified frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub page_no: u32,
    /// Database size in pages after this commit; 0 for frames that do not end a transaction.
    pub commit_size: u32,
    /// The chain value after this frame.
    pub checksum: Checksum,
}

/// A place in one WAL: the salts that identify the WAL, the byte offset just
/// past the last frame consumed, and the chain value there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPos {
    pub salt1: u32,
    pub salt2: u32,
    pub offset: u64,
    pub checksum: Checksum,
}

impl WalPos {
    pub fn same_wal(&self, header: &WalHeader) -> bool {
        self.salt1 == header.salt1 && self.salt2 == header.salt2
    }
}

/// Bytes of the wal-index header at the start of the `-shm` file: two
/// copies of the 48-byte header SQLite keeps (it writes the second, then
/// the first, and a reader trusts them only when they agree).
pub const INDEX_HEADER_BYTES: usize = 96;
const INDEX_VERSION: u32 = 3_007_000;

/// The wal-index header, as a reader of the `-shm` file sees it
/// (https://www.sqlite.org/walformat.html#the_wal_index_file_format):
/// what the WAL holds, as the connections share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalIndexHeader {
    /// `iChange`: the commits written since the wal-index was built (it
    /// counts each commit, never a checkpoint or a WAL restart; a recovery
    /// starts it again at 0).
    pub commits: u32,
    pub page_size: u32,
    /// `mxFrame`: the valid frames of the WAL (0: the next frame written is
    /// frame 1, with `salt1` and `salt2`).
    pub frames: u32,
    /// The salts of the WAL (or, with `frames` 0, of the next one, as the
    /// last checkpoint that restarted it chose them).
    pub salt1: u32,
    pub salt2: u32,
}

/// Parses the wal-index header from the first `INDEX_HEADER_BYTES` of a
/// `-shm` file, written in this machine's byte order. `None` unless both
/// copies agree, the header is initialised and its checksum holds (a
/// writer was in the middle of updating it: read again).
pub fn parse_index_header(bytes: &[u8]) -> Option<WalIndexHeader> {
    let (a, b) = (bytes.get(..48)?, bytes.get(48..96)?);
    let ne = |at: usize| u32::from_ne_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]]);
    let stored = Checksum(ne(40), ne(44));
    let big = cfg!(target_endian = "big");
    if a != b
        || ne(0) != INDEX_VERSION
        || a[12] != 1
        || checksum(big, &a[..40], Checksum::default()) != stored
    {
        return None;
    }
    let page_size = match u32::from(u16::from_ne_bytes([a[14], a[15]])) {
        1 => 65536,
        n => n,
    };
    Some(WalIndexHeader {
        commits: ne(8),
        page_size,
        frames: ne(16),
        salt1: be32(a, 32),
        salt2: be32(a, 36),
    })
}

/// One whole transaction found in the WAL: frames `start..end` (byte offsets),
/// the last of which is the commit frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnSpan {
    pub start: u64,
    /// The chain value before the transaction's first frame.
    pub start_checksum: Checksum,
    /// Position after the commit frame (where the next transaction starts).
    pub end: WalPos,
    pub frame_count: u32,
    /// Database size in pages after the commit.
    pub db_pages: u32,
}

/// Finds the whole transactions in `bytes`, which hold the WAL from `from.offset`
/// on (at least; a torn or invalid tail is fine). Stops at the first invalid
/// frame; frames after the last commit frame are not returned (an open or
/// rolled-back transaction). `from` must be a position in the WAL of `header`.
pub fn scan(header: &WalHeader, from: WalPos, bytes: &[u8]) -> Vec<TxnSpan> {
    scan_until(header, from, bytes).0
}

/// `scan`, also telling whether it stopped at an invalid frame (`true`: the
/// readable WAL ends there, more bytes would not help) or because the bytes
/// ran out (`false`: more bytes may hold more transactions).
pub fn scan_until(header: &WalHeader, from: WalPos, bytes: &[u8]) -> (Vec<TxnSpan>, bool) {
    let frame_size = header.frame_size() as usize;
    let mut txns = Vec::new();
    let mut chain = from.checksum;
    let mut txn_start = from.offset;
    let mut txn_start_checksum = from.checksum;
    let mut frames_in_txn = 0u32;
    let mut at = 0usize;
    while at + frame_size <= bytes.len() {
        let Some(frame) = header.check_frame(chain, &bytes[at..at + frame_size]) else {
            return (txns, true);
        };
        chain = frame.checksum;
        at += frame_size;
        frames_in_txn += 1;
        if frame.commit_size != 0 {
            let end = WalPos {
                salt1: header.salt1,
                salt2: header.salt2,
                offset: from.offset + at as u64,
                checksum: chain,
            };
            txns.push(TxnSpan {
                start: txn_start,
                start_checksum: txn_start_checksum,
                end,
                frame_count: frames_in_txn,
                db_pages: frame.commit_size,
            });
            txn_start = end.offset;
            txn_start_checksum = chain;
            frames_in_txn = 0;
        }
    }
    (txns, false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a WAL image the way SQLite does, for tests.
    pub(crate) struct WalBuilder {
        pub header: WalHeader,
        pub bytes: Vec<u8>,
        chain: Checksum,
    }

    impl WalBuilder {
        pub fn new(big_endian: bool, page_size: u32, salt1: u32, salt2: u32) -> Self {
            let mut b = Vec::new();
            b.extend_from_slice(&(if big_endian { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
            b.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
            b.extend_from_slice(&page_size.to_be_bytes());
            b.extend_from_slice(&7u32.to_be_bytes());
            b.extend_from_slice(&salt1.to_be_bytes());
            b.extend_from_slice(&salt2.to_be_bytes());
            let sum = checksum(big_endian, &b, Checksum::default());
            b.extend_from_slice(&sum.0.to_be_bytes());
            b.extend_from_slice(&sum.1.to_be_bytes());
            let header = parse_header(&b).expect("builder writes a valid header");
            WalBuilder {
                header,
                bytes: b,
                chain: sum,
            }
        }

        pub fn frame(&mut self, page_no: u32, commit_size: u32, fill: u8) -> &mut Self {
            let mut f = Vec::new();
            f.extend_from_slice(&page_no.to_be_bytes());
            f.extend_from_slice(&commit_size.to_be_bytes());
            f.extend_from_slice(&self.header.salt1.to_be_bytes());
            f.extend_from_slice(&self.header.salt2.to_be_bytes());
            let page = vec![fill; self.header.page_size as usize];
            let sum = checksum(self.header.big_endian, &f[..8], self.chain);
            let sum = checksum(self.header.big_endian, &page, sum);
            f.extend_from_slice(&sum.0.to_be_bytes());
            f.extend_from_slice(&sum.1.to_be_bytes());
            f.extend_from_slice(&page);
            self.chain = sum;
            self.bytes.extend_from_slice(&f);
            self
        }
    }

    /// A wal-index header as SQLite writes it (`walIndexWriteHdr`): both
    /// copies, native byte order, salts as in the WAL header.
    pub(crate) fn index_header(
        commits: u32,
        page_size: u32,
        frames: u32,
        salts: (u32, u32),
    ) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&INDEX_VERSION.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h.extend_from_slice(&commits.to_ne_bytes());
        h.push(1);
        h.push(0);
        let sz = (page_size & 0xff00) | (page_size >> 16);
        h.extend_from_slice(&(sz as u16).to_ne_bytes());
        h.extend_from_slice(&frames.to_ne_bytes());
        h.extend_from_slice(&9u32.to_ne_bytes());
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&salts.0.to_be_bytes());
        h.extend_from_slice(&salts.1.to_be_bytes());
        let sum = checksum(cfg!(target_endian = "big"), &h, Checksum::default());
        h.extend_from_slice(&sum.0.to_ne_bytes());
        h.extend_from_slice(&sum.1.to_ne_bytes());
        let copy = h.clone();
        h.extend_from_slice(&copy);
        h
    }

    #[test]
    fn the_wal_index_header_is_read_only_when_whole_and_agreed() {
        for page_size in [512, 4096, 65536] {
            let b = index_header(17, page_size, 3, (0xdead_beef, 5));
            assert_eq!(
                parse_index_header(&b),
                Some(WalIndexHeader {
                    commits: 17,
                    page_size,
                    frames: 3,
                    salt1: 0xdead_beef,
                    salt2: 5
                })
            );
        }
        let b = index_header(17, 4096, 3, (1, 2));
        // Any bit of the first copy flipped: it disagrees with the second
        // (or fails its checksum when both are flipped alike).
        for bit in 0..48 * 8 {
            let mut one = b.clone();
            one[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(parse_index_header(&one), None, "bit {bit}");
            let mut both = one.clone();
            both[48 + bit / 8] ^= 1 << (bit % 8);
            assert_eq!(parse_index_header(&both), None, "bit {bit} in both copies");
        }
        assert_eq!(parse_index_header(&b[..95]), None);
        assert_eq!(parse_index_header(&[]), None);
    }

    #[test]
    fn header_round_trip_both_byte_orders() {
        for be in [false, true] {
            let w = WalBuilder::new(be, 4096, 11, 22);
            let h = parse_header(&w.bytes).unwrap();
            assert_eq!(h.big_endian, be);
            assert_eq!(
                (h.page_size, h.salt1, h.salt2, h.checkpoint_seq),
                (4096, 11, 22, 7)
            );
        }
    }

    #[test]
    fn header_rejects_every_single_bit_flip() {
        let w = WalBuilder::new(false, 1024, 1, 2);
        for bit in 0..HEADER_SIZE * 8 {
            let mut b = w.bytes[..HEADER_SIZE].to_vec();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_header(&b).is_err(), "bit {bit} flip accepted");
        }
        assert_eq!(parse_header(&w.bytes[..31]), Err(WalError::TooShort(31)));
    }

    #[test]
    fn scan_cuts_at_commit_frames_and_ignores_open_transaction() {
        for be in [false, true] {
            let mut w = WalBuilder::new(be, 512, 5, 6);
            w.frame(1, 0, 1)
                .frame(2, 2, 2)
                .frame(3, 3, 3)
                .frame(1, 0, 4);
            let h = w.header;
            let txns = scan(&h, h.start(), &w.bytes[HEADER_SIZE..]);
            assert_eq!(txns.len(), 2);
            assert_eq!(txns[0].frame_count, 2);
            assert_eq!(txns[0].db_pages, 2);
            assert_eq!(txns[1].start, txns[0].end.offset);
            assert_eq!(txns[1].end.offset, HEADER_SIZE as u64 + 3 * h.frame_size());
            // Resuming from the first transaction's end finds the second only.
            let from = txns[0].end;
            let rest = scan(&h, from, &w.bytes[from.offset as usize..]);
            assert_eq!(rest, vec![txns[1].clone()]);
        }
    }

    #[test]
    fn scan_stops_at_torn_or_corrupt_frame() {
        let mut w = WalBuilder::new(false, 512, 5, 6);
        w.frame(1, 1, 1).frame(2, 2, 2).frame(3, 3, 3);
        let h = w.header;
        let body = &w.bytes[HEADER_SIZE..];
        let fs = h.frame_size() as usize;
        // Torn last frame.
        assert_eq!(scan(&h, h.start(), &body[..3 * fs - 1]).len(), 2);
        // A flipped byte anywhere in frame 2 ends the WAL after frame 1.
        for i in fs..2 * fs {
            let mut b = body.to_vec();
            b[i] ^= 0x40;
            assert_eq!(scan(&h, h.start(), &b).len(), 1, "flip at {i}");
        }
    }

    #[test]
    fn scan_tells_an_invalid_frame_from_running_out_of_bytes() {
        let mut w = WalBuilder::new(false, 512, 5, 6);
        w.frame(1, 0, 1).frame(2, 2, 2);
        let h = w.header;
        let fs = h.frame_size() as usize;
        let body = &w.bytes[HEADER_SIZE..];
        // Half a transaction: more bytes would help.
        assert_eq!(scan_until(&h, h.start(), &body[..fs]), (vec![], false));
        // A stale frame of an older WAL after it: the end of the readable WAL.
        let mut stale = body[..fs].to_vec();
        stale.extend_from_slice(
            &WalBuilder::new(false, 512, 4, 9).frame(2, 2, 2).bytes[HEADER_SIZE..],
        );
        assert_eq!(scan_until(&h, h.start(), &stale), (vec![], true));
        assert!(!scan_until(&h, h.start(), body).1);
    }

    #[test]
    fn scan_rejects_frames_of_another_wal() {
        let mut old = WalBuilder::new(false, 512, 5, 6);
        old.frame(1, 1, 1);
        let new = WalBuilder::new(false, 512, 6, 99);
        // Frames with the old salts after the new header are stale.
        assert!(scan(&new.header, new.header.start(), &old.bytes[HEADER_SIZE..]).is_empty());
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut w = WalBuilder::new(false, 512, 1, 2);
        w.frame(1, 1, 9).frame(2, 2, 8);
        let good = scan(
            &parse_header(&w.bytes).unwrap(),
            w.header.start(),
            &w.bytes[HEADER_SIZE..],
        );
        let (mut inputs, mut panics, mut beyond) = (0u64, 0u64, 0u64);
        for _ in 0..crate::testing::fuzz_iters(2000) {
            let mut b = w.bytes.clone();
            let n = (next() % 8) as usize;
            for _ in 0..n {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            b.truncate(cut);
            inputs += 1;
            let found = crate::testing::counting_panics(&mut panics, || {
                parse_header(&b)
                    .ok()
                    .map(|h| scan(&h, h.start(), &b[HEADER_SIZE.min(b.len())..]).len())
            });
            // Damage can only end the readable WAL earlier, never add a
            // transaction the checksums did not vouch for.
            if found.flatten().is_some_and(|n| n > good.len()) {
                beyond += 1;
            }
        }
        eprintln!(
            "fuzz: WAL header and frame scanner: {inputs} damaged inputs, {panics} panics, \
             {beyond} accepted beyond the valid frames"
        );
        assert_eq!(panics, 0, "the WAL scanner panicked");
        assert_eq!(beyond, 0);

        // The wal-index header (read from the -shm file, which any process
        // can write): damaged or cut, it is refused or read, never a panic,
        // and a copy that disagrees with the other is never read.
        let good = index_header(17, 4096, 3, (0xdead_beef, 5));
        let (mut inputs, mut panics, mut disagreeing) = (0u64, 0u64, 0u64);
        for _ in 0..crate::testing::fuzz_iters(2000) {
            let mut b = good.clone();
            for _ in 0..(next() % 8) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            b.truncate((next() as usize) % (b.len() + 1));
            inputs += 1;
            let read = crate::testing::counting_panics(&mut panics, || parse_index_header(&b));
            if read.flatten().is_some() && b[..48] != b[48..96] {
                disagreeing += 1;
            }
        }
        eprintln!(
            "fuzz: wal-index header: {inputs} damaged inputs, {panics} panics, \
             {disagreeing} read with copies that disagree"
        );
        assert_eq!(panics, 0, "the wal-index header parser panicked");
        assert_eq!(disagreeing, 0);
    }

    /// A WAL written by SQLite itself: every transaction is found, in order,
    /// and a torn tail loses only the torn transaction.
    #[test]
    fn parses_a_wal_written_by_sqlite() {
        let dir = crate::testing::fresh_dir("wal-test");
        let db = dir.join("t.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x);",
        )
        .unwrap();
        for i in 0..50 {
            c.execute("INSERT INTO t VALUES (?1)", [format!("{i:0>600}")])
                .unwrap();
        }
        // One transaction of many pages.
        c.execute_batch("BEGIN; INSERT INTO t SELECT x || x FROM t; COMMIT;")
            .unwrap();
        let bytes = std::fs::read(dir.join("t.db-wal")).unwrap();
        let h = parse_header(&bytes).unwrap();
        assert_eq!(h.page_size, 1024);
        assert!(
            !h.big_endian,
            "SQLite writes native (little-endian) checksums on x86"
        );
        let txns = scan(&h, h.start(), &bytes[HEADER_SIZE..]);
        assert_eq!(
            txns.len(),
            1 + 50 + 1,
            "CREATE TABLE, 50 inserts, one big transaction"
        );
        assert!(txns.last().unwrap().frame_count > 10);
        assert_eq!(txns.last().unwrap().end.offset, bytes.len() as u64);
        let pages: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert_eq!(txns.last().unwrap().db_pages, pages);
        // Tear the last frame: the big transaction is gone, the rest stands.
        let torn = &bytes[HEADER_SIZE..bytes.len() - 100];
        assert_eq!(scan(&h, h.start(), torn).len(), 51);
        drop(c);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
