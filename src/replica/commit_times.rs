//! When each commit was made, to the millisecond: a short timeline per
//! database of when walsync saw its commit frames, so that a restore to a
//! time T holds exactly the commits made at or before T (README "Point in
//! time"), whatever the sync interval.
//!
//! On each write event for a `-wal` file (the watcher's thread calls
//! `CommitTimes::on_write`), the frame headers appended since the last look
//! are read (24 bytes each, stepping by the frame size; a header that does
//! not carry the WAL header's salts ends the look). A commit frame counts
//! only once its page is there too: the frame is checked against the chain
//! value stored in the frame before it, so one page is read per commit and
//! no other page body. The time is taken after that read, so it is at or
//! after the moment SQLite finished writing the commit frame: an upper
//! bound, and tight, since the event comes right after the write. A look
//! that finds commits adds one `Mark` (the WAL offset after the last of
//! them, and the time).
//!
//! When a sync ships commits, each gets the time of the first mark at or
//! after its commit frame, or the time of the sync's own read when no mark
//! covers it (a commit made while walsync was stopped, or before it first
//! looked at the database): both are upper bounds, and the earlier one is
//! kept (`commit_times`, pure). Marks up to what was shipped are dropped,
//! a new WAL (other salts) drops them all, and a timeline never holds more
//! than `MAX_MARKS` (it thins itself: fewer marks only make times later,
//! never earlier), so thousands of databases cost a few hundred bytes each.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::wal::{self, Checksum, WalHeader, WalPos};

/// Marks one timeline keeps at most.
const MAX_MARKS: usize = 256;
/// Frame headers one look reads at most (a huge WAL seen for the first
/// time is not read to its end on the watcher's thread: its commits get
/// the sync's time).
const MAX_FRAMES_PER_LOOK: usize = 100_000;

/// Every commit in the WAL with these salts whose commit frame ends at or
/// before `end` was written before `time_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub salts: (u32, u32),
    pub end: u64,
    pub time_ms: u64,
}

/// Random access to a WAL's bytes (a file; a vector in tests).
pub trait WalBytes {
    /// Fills `buf` from `offset` on; returns fewer bytes at the end.
    fn fill_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl WalBytes for File {
    fn fill_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

impl WalBytes for [u8] {
    fn fill_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let from = (offset as usize).min(self.len());
        let n = buf.len().min(self.len() - from);
        buf[..n].copy_from_slice(&self[from..from + n]);
        Ok(n)
    }
}

/// What one look found: the WAL's salts, where the next look starts, and
/// the offset after the last whole commit frame seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub salts: (u32, u32),
    pub next: u64,
    pub commit_end: Option<u64>,
}

/// One database's timeline.
#[derive(Debug, Default)]
pub struct Timeline {
    /// The salts of the WAL `next` is in (`None`: not known yet).
    salts: Option<(u32, u32)>,
    /// The first frame not read yet.
    next: u64,
    marks: Vec<Mark>,
}

impl Timeline {
    /// A timeline that starts reading at `from` (what is before it is
    /// shipped), or at the start of the WAL.
    pub fn starting_at(from: Option<WalPos>) -> Timeline {
        Timeline {
            salts: from.map(|p| (p.salt1, p.salt2)),
            next: from.map_or(0, |p| p.offset),
            marks: Vec::new(),
        }
    }

    pub fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// Reads the frames appended since the last look (changes nothing).
    /// `None`: the WAL has no valid header.
    pub fn look(&self, wal: &(impl WalBytes + ?Sized)) -> io::Result<Option<Look>> {
        let mut hb = [0u8; wal::HEADER_SIZE];
        if wal.fill_at(0, &mut hb)? < wal::HEADER_SIZE {
            return Ok(None);
        }
        let Ok(h) = wal::parse_header(&hb) else {
            return Ok(None);
        };
        let salts = (h.salt1, h.salt2);
        let fs = h.frame_size();
        let first = wal::HEADER_SIZE as u64;
        let mut at = if self.salts == Some(salts) && self.next >= first {
            self.next
        } else {
            first
        };
        // Off the frame grid (cannot happen for a position walsync read):
        // start over rather than read page bytes as headers.
        if !(at - first).is_multiple_of(fs) {
            at = first;
        }
        let mut head = [0u8; wal::FRAME_HEADER_SIZE];
        let mut frame = vec![0u8; fs as usize];
        let mut before: Option<Checksum> = None;
        let mut commit_end = None;
        for _ in 0..MAX_FRAMES_PER_LOOK {
            if wal.fill_at(at, &mut head)? < head.len() {
                break;
            }
            let Some(f) = wal::frame_head(&head).filter(|f| f.belongs_to(&h)) else {
                break;
            };
            if f.commit_size != 0 {
                if !whole_frame(wal, &h, at, before, &mut frame)? {
                    break;
                }
                commit_end = Some(at + fs);
            }
            before = Some(f.checksum);
            at += fs;
        }
        Ok(Some(Look {
            salts,
            next: at,
            commit_end,
        }))
    }

    /// Records a look; `now_ms` is taken after it.
    pub fn record(&mut self, look: Look, now_ms: u64) {
        if self.salts != Some(look.salts) {
            // A new WAL: no commit of the old one can be read any more.
            self.marks.clear();
        }
        self.salts = Some(look.salts);
        self.next = look.next;
        if let Some(end) = look.commit_end {
            if self.marks.last().is_some_and(|m| m.end >= end) {
                return;
            }
            self.marks.push(Mark {
                salts: look.salts,
                end,
                time_ms: now_ms,
            });
            if self.marks.len() > MAX_MARKS {
                thin(&mut self.marks);
            }
        }
    }

    /// Drops the marks that only cover commits up to `pos` (shipped).
    pub fn shipped(&mut self, pos: &WalPos) {
        self.marks
            .retain(|m| m.salts != (pos.salt1, pos.salt2) || m.end > pos.offset);
    }
}

/// Whether the frame at `at` is whole: header and page, checked against
/// the chain value before it (`before` if the look read that frame, else
/// read from its header, or the WAL header's for the first frame).
fn whole_frame(
    wal: &(impl WalBytes + ?Sized),
    h: &WalHeader,
    at: u64,
    before: Option<Checksum>,
    frame: &mut [u8],
) -> io::Result<bool> {
    let first = wal::HEADER_SIZE as u64;
    let prev = match before {
        Some(c) => c,
        None if at == first => h.checksum,
        None => {
            let mut head = [0u8; wal::FRAME_HEADER_SIZE];
            if wal.fill_at(at - h.frame_size(), &mut head)? < head.len() {
                return Ok(false);
            }
            match wal::frame_head(&head) {
                Some(f) if f.belongs_to(h) => f.checksum,
                _ => return Ok(false),
            }
        }
    };
    Ok(wal.fill_at(at, frame)? == frame.len() && h.check_frame(prev, frame).is_some())
}

/// Halves the marks, keeping the newest: a commit whose mark goes gets the
/// next one's time, which is later, so still an upper bound.
fn thin(marks: &mut Vec<Mark>) {
    let n = marks.len();
    let mut i = 0;
    marks.retain(|_| {
        i += 1;
        (n - i).is_multiple_of(2)
    });
}

/// The time of each commit of one run, read from the WAL with `salts`, in
/// WAL order (`ends`: the offset after each commit frame): the first mark
/// at or after the commit frame, else `scan_ms` (taken after the sync's
/// read that found the commits), whichever is earlier, and never earlier
/// than the commit before (`floor_ms` for the first). Each is an upper
/// bound on when its commit was made.
pub fn commit_times(
    marks: &[Mark],
    salts: (u32, u32),
    ends: &[u64],
    scan_ms: u64,
    floor_ms: u64,
) -> Vec<u64> {
    let mut marks = marks.iter().filter(|m| m.salts == salts).peekable();
    let mut t = floor_ms;
    ends.iter()
        .map(|&end| {
            while marks.next_if(|m| m.end < end).is_some() {}
            let seen = marks.peek().map_or(scan_ms, |m| m.time_ms.min(scan_ms));
            t = t.max(seen);
            t
        })
        .collect()
}

/// The timelines of the databases walsync replicates, shared by the
/// watcher's thread (which records) and the syncs (which read and prune).
#[derive(Debug, Default)]
pub struct CommitTimes {
    timelines: Mutex<HashMap<PathBuf, Timeline>>,
}

impl CommitTimes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Timeline>> {
        // A panic elsewhere cannot leave a timeline wrong, only late.
        self.timelines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The application wrote to the WAL of `db`: if walsync replicates it,
    /// look at what was appended and record when. A few small reads, on the
    /// watcher's thread; any failure only leaves the commits to the sync's
    /// time.
    pub fn on_write(&self, db: &Path) {
        let mut map = self.lock();
        let Some(t) = map.get_mut(db) else { return };
        let Ok(file) = File::open(crate::sqlite::wal_path(db)) else {
            return;
        };
        if let Ok(Some(look)) = t.look(&file) {
            t.record(look, crate::time::now_ms());
        }
    }

    /// Starts a timeline for `db` (if it has none) from `from`.
    pub(super) fn track(&self, db: &Path, from: Option<WalPos>) {
        self.lock()
            .entry(db.to_path_buf())
            .or_insert_with(|| Timeline::starting_at(from));
    }

    /// `commit_times` with the marks of `db`.
    pub(super) fn times(
        &self,
        db: &Path,
        salts: (u32, u32),
        ends: &[u64],
        scan_ms: u64,
        floor_ms: u64,
    ) -> Vec<u64> {
        let map = self.lock();
        let marks = map.get(db).map_or(&[][..], Timeline::marks);
        commit_times(marks, salts, ends, scan_ms, floor_ms)
    }

    /// Everything up to `pos` in `db`'s WAL is shipped.
    pub(super) fn shipped(&self, db: &Path, pos: &WalPos) {
        if let Some(t) = self.lock().get_mut(db) {
            t.shipped(pos);
        }
    }

    /// `db` is no longer replicated.
    pub fn forget(&self, db: &Path) {
        self.lock().remove(db);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{checksum, parse_header};

    const PAGE: u32 = 512;

    /// A WAL of little-endian checksums with salts (7, 9) and, for each
    /// entry of `commits`, a transaction of that many frames.
    fn wal_bytes(commits: &[u32]) -> Vec<u8> {
        wal_with((7, 9), commits)
    }

    fn wal_with(salts: (u32, u32), commits: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x377f_0682u32.to_be_bytes());
        b.extend_from_slice(&3_007_000u32.to_be_bytes());
        b.extend_from_slice(&PAGE.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&salts.0.to_be_bytes());
        b.extend_from_slice(&salts.1.to_be_bytes());
        let mut sum = checksum(false, &b, Checksum::default());
        b.extend_from_slice(&sum.0.to_be_bytes());
        b.extend_from_slice(&sum.1.to_be_bytes());
        let mut page_no = 1u32;
        for &frames in commits {
            for i in 0..frames {
                let commit = if i + 1 == frames { page_no } else { 0 };
                let mut f = Vec::new();
                f.extend_from_slice(&page_no.to_be_bytes());
                f.extend_from_slice(&commit.to_be_bytes());
                f.extend_from_slice(&salts.0.to_be_bytes());
                f.extend_from_slice(&salts.1.to_be_bytes());
                let page = vec![page_no as u8; PAGE as usize];
                sum = checksum(false, &f[..8], sum);
                sum = checksum(false, &page, sum);
                f.extend_from_slice(&sum.0.to_be_bytes());
                f.extend_from_slice(&sum.1.to_be_bytes());
                f.extend_from_slice(&page);
                b.extend_from_slice(&f);
                page_no += 1;
            }
        }
        b
    }

    const FS: u64 = 24 + PAGE as u64;
    fn end_of(frame: u64) -> u64 {
        32 + frame * FS
    }

    #[test]
    fn a_look_finds_the_last_whole_commit_and_stops_before_a_torn_one() {
        let wal = wal_bytes(&[1, 2, 3]);
        let t = Timeline::default();
        let look = t.look(&wal[..]).unwrap().unwrap();
        assert_eq!(look.commit_end, Some(end_of(6)));
        assert_eq!(look.next, end_of(6));
        // The last commit frame's header is written, its page not yet.
        let torn = &wal[..wal.len() - 100];
        let look = t.look(torn).unwrap().unwrap();
        assert_eq!(look.commit_end, Some(end_of(3)));
        assert_eq!(look.next, end_of(5), "the next look reads it again");
        // Its page is there but holds other bytes (a WAL being rewritten).
        let mut stale = wal.clone();
        let n = stale.len();
        stale[n - 1] ^= 1;
        assert_eq!(
            t.look(&stale[..]).unwrap().unwrap().commit_end,
            Some(end_of(3))
        );
        // No header, or not a WAL: nothing.
        assert_eq!(t.look(&wal[..20]).unwrap(), None);
        assert_eq!(t.look(&[0u8; 64][..]).unwrap(), None);
    }

    #[test]
    fn looks_go_on_where_the_last_stopped_and_check_against_the_frame_before() {
        let wal = wal_bytes(&[2, 2, 2]);
        let mut t = Timeline::default();
        let look = t.look(&wal[..end_of(3) as usize]).unwrap().unwrap();
        assert_eq!((look.commit_end, look.next), (Some(end_of(2)), end_of(3)));
        t.record(look, 100);
        // The next look starts at frame 4, a commit frame checked against
        // frame 3's stored chain value, read from its header.
        let look = t.look(&wal[..]).unwrap().unwrap();
        assert_eq!(look.commit_end, Some(end_of(6)));
        t.record(look, 130);
        assert_eq!(
            t.marks(),
            [
                Mark {
                    salts: (7, 9),
                    end: end_of(2),
                    time_ms: 100
                },
                Mark {
                    salts: (7, 9),
                    end: end_of(6),
                    time_ms: 130
                },
            ]
        );
        // Nothing new: no mark.
        let look = t.look(&wal[..]).unwrap().unwrap();
        assert_eq!(look.commit_end, None);
        t.record(look, 200);
        assert_eq!(t.marks().len(), 2);
        t.shipped(&WalPos {
            salt1: 7,
            salt2: 9,
            offset: end_of(4),
            checksum: Checksum::default(),
        });
        assert_eq!(t.marks().len(), 1);
    }

    #[test]
    fn a_new_wal_drops_the_old_marks_and_is_read_from_its_start() {
        let wal = wal_bytes(&[1, 1]);
        let mut t = Timeline::starting_at(Some(WalPos {
            salt1: 1,
            salt2: 2,
            offset: end_of(40),
            checksum: Checksum::default(),
        }));
        t.marks.push(Mark {
            salts: (1, 2),
            end: end_of(41),
            time_ms: 5,
        });
        let look = t.look(&wal[..]).unwrap().unwrap();
        assert_eq!(look.commit_end, Some(end_of(2)));
        t.record(look, 50);
        assert_eq!(
            t.marks(),
            [Mark {
                salts: (7, 9),
                end: end_of(2),
                time_ms: 50
            }]
        );
        // Frames of an older WAL after the new one's end are not its own.
        let mut old_tail = wal.clone();
        let other = wal_with((1, 2), &[1, 1, 1]);
        old_tail.extend_from_slice(&other[end_of(2) as usize..]);
        assert_eq!(t.look(&old_tail[..]).unwrap().unwrap().next, end_of(2));
    }

    #[test]
    fn commit_times_take_the_first_mark_at_or_after_each_commit() {
        let m = |end, time_ms| Mark {
            salts: (7, 9),
            end,
            time_ms,
        };
        let marks = [m(100, 10), m(300, 30), m(500, 50)];
        // (ends, scan_ms, floor_ms) -> times
        let rows: &[(&[u64], u64, u64, &[u64])] = &[
            (&[100, 200, 300, 400, 500], 99, 0, &[10, 30, 30, 50, 50]),
            (&[50], 99, 0, &[10]),
            (&[600, 700], 99, 0, &[99, 99]),
            // The scan's own time when earlier than a (late) mark.
            (&[400], 40, 0, &[40]),
            // Never before the commit before.
            (&[100, 200], 99, 20, &[20, 30]),
            (&[], 99, 0, &[]),
        ];
        for (ends, scan, floor, want) in rows {
            assert_eq!(
                commit_times(&marks, (7, 9), ends, *scan, *floor),
                *want,
                "ends {ends:?} scan {scan} floor {floor}"
            );
        }
        // Marks of another WAL never count.
        assert_eq!(commit_times(&marks, (7, 8), &[100], 99, 0), [99]);
    }

    /// Property: whatever the marks kept (thinned or not), every time is
    /// at or after the true one, and times never go back.
    #[test]
    fn thinning_keeps_every_time_an_upper_bound() {
        let mut rng = crate::testing::Rng(0x9e37_79b9_7f4a_7c15);
        let mut next = || rng.next();
        for _ in 0..200 {
            let mut t = Timeline::default();
            let (mut end, mut ms) = (32u64, 1000u64);
            let mut truth = Vec::new();
            for _ in 0..(next() % 1000) {
                end += FS * (1 + next() % 3);
                ms += next() % 5;
                truth.push((end, ms));
                if next() % 4 != 0 {
                    t.record(
                        Look {
                            salts: (7, 9),
                            next: end,
                            commit_end: Some(end),
                        },
                        ms,
                    );
                }
            }
            assert!(t.marks().len() <= MAX_MARKS);
            let scan = ms + 7;
            let ends: Vec<u64> = truth.iter().map(|c| c.0).collect();
            let times = commit_times(t.marks(), (7, 9), &ends, scan, 0);
            for (i, ((_, made), got)) in truth.iter().zip(&times).enumerate() {
                assert!(got >= made && *got <= scan, "commit {i}: {got} vs {made}");
            }
            assert!(times.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    /// A WAL written by SQLite: one look finds its last commit, and its
    /// header's salts are the ones recorded.
    #[test]
    fn reads_a_wal_written_by_sqlite() {
        let dir = crate::testing::fresh_dir("ct-test");
        let db = dir.join("t.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);
             INSERT INTO t VALUES (randomblob(9000));",
        )
        .unwrap();
        let bytes = std::fs::read(crate::sqlite::wal_path(&db)).unwrap();
        let h = parse_header(&bytes).unwrap();
        let look = Timeline::default().look(&bytes[..]).unwrap().unwrap();
        assert_eq!(look.salts, (h.salt1, h.salt2));
        assert_eq!(look.commit_end, Some(bytes.len() as u64));
        let file = File::open(crate::sqlite::wal_path(&db)).unwrap();
        assert_eq!(Timeline::default().look(&file).unwrap(), Some(look));
        drop(c);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    mod fuzz {
        use super::*;

        /// Damaged WALs: a look never panics and never vouches for a
        /// commit beyond the last whole one.
        #[test]
        fn damaged_wals_never_panic_nor_add_commits() {
            let good = wal_bytes(&[1, 3, 2, 1]);
            let last = good.len() as u64;
            let iters = crate::testing::fuzz_iters(3000);
            let mut rng = crate::testing::Rng(0x2545_f491_4f6c_dd1d);
            let mut next = || rng.next();
            let mut panics = 0;
            for _ in 0..iters {
                let mut b = good.clone();
                for _ in 0..(1 + next() % 4) {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
                b.truncate((next() as usize) % (b.len() + 1));
                let found = crate::testing::counting_panics(&mut panics, || {
                    Timeline::default().look(&b[..]).ok().flatten()
                });
                if let Some(Some(l)) = found {
                    assert!(l
                        .commit_end
                        .is_none_or(|e| e <= last && e <= b.len() as u64));
                }
            }
            eprintln!("fuzz: commit timeline look: {iters} damaged inputs, {panics} panics");
            assert_eq!(panics, 0);
        }
    }
}
