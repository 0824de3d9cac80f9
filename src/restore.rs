//! Restore: rebuilds a database file from its snapshot and segments.
//!
//! Upholds ARCHITECTURE.md invariant 6 (atomic restore): everything is written to
//! a temporary file next to the output, fsynced, verified (every object's
//! CRC32 — including the unread rest of a segment a point-in-time restore
//! stops inside —, the page count, `PRAGMA integrity_check`) and only then
//! renamed into place. A failed restore leaves nothing at the output path and
//! never replaces an existing file unless asked to (`force`). Downloads are
//! streamed: memory is one page plus decoder buffers (invariant 7).
//!
//! The temporary file is a copy of the database, made as `crate::spool`
//! makes its files: `.<name>.walsync-restore-<token>`, created exclusively,
//! never through a symlink, mode 0600, locked while the restore runs. The
//! restored file keeps mode 0600, or with `force` takes the permission bits
//! of the file it replaces. `remove_leftover_temps` removes what a killed
//! restore left beside an output.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Scope;
use std::time::Instant;

use crate::format::segment::SegmentDecoder;
use crate::format::snapshot::SnapshotDecoder;
use crate::format::{sealed, FormatError};
use crate::keyfile::Key;
use crate::keys::{self, ObjectKind};
use crate::plan::{self, PlanError, Target};
use crate::storage::fetch::{self, Fetcher};
use crate::storage::{ObjectMeta, Storage, StorageError};

#[derive(Debug)]
pub enum RestoreError {
    /// The output exists and `force` was not given.
    OutputExists(PathBuf),
    /// The output path cannot be used (a directory, no parent, …).
    BadOutput {
        path: PathBuf,
        reason: String,
    },
    NoBackup {
        prefix: String,
        location: String,
    },
    Plan {
        prefix: String,
        source: PlanError,
    },
    Storage(StorageError),
    Corrupt {
        key: String,
        source: FormatError,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// The restored file failed verification.
    Verify {
        prefix: String,
        detail: String,
    },
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::OutputExists(p) => write!(
                f,
                "{} already exists; pass --force to replace it, or choose another output",
                p.display()
            ),
            RestoreError::BadOutput { path, reason } => write!(f, "{}: {reason}", path.display()),
            RestoreError::NoBackup { prefix, location } => {
                write!(
                    f,
                    "no backup of prefix {prefix:?} in {location}; check the prefix and the bucket"
                )
            }
            RestoreError::Plan { prefix, source } => write!(f, "prefix {prefix:?}: {source}"),
            RestoreError::Storage(e) => e.fmt(f),
            RestoreError::Corrupt { key, source } => {
                write!(
                    f,
                    "object {key:?}: {source}; nothing was written to the output"
                )
            }
            RestoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            RestoreError::Verify { prefix, detail } => {
                write!(
                    f,
                    "prefix {prefix:?}: the restored database failed verification: {detail}"
                )
            }
        }
    }
}

impl std::error::Error for RestoreError {}

impl From<StorageError> for RestoreError {
    fn from(e: StorageError) -> Self {
        RestoreError::Storage(e)
    }
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreReport {
    pub generation: u64,
    /// The last transaction applied.
    pub txid: u64,
    /// When walsync read that transaction (ms since the epoch).
    pub time_ms: u64,
    pub pages: u32,
    pub bytes: u64,
    pub objects: usize,
    pub downloaded_bytes: u64,
    pub seconds: f64,
    /// The objects under the prefix that are not walsync's (ignored).
    pub stray: Vec<keys::StrayObject>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes the temporary file (and any -wal/-shm SQLite made beside it) on drop.
struct TempOutput {
    path: PathBuf,
    /// Holds the file's `flock` (see `crate::spool`) until it is removed.
    lock: File,
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        // The side files first: a kill in between leaves the main file,
        // which `remove_leftover_temps` knows to take them with.
        for side in sidecars(&self.path) {
            let _ = fs::remove_file(side);
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// How the temporary files of restores to `<dir>/<name>` begin.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.walsync-restore-")
}

/// Removes what killed restores left in `dir`: temporary files (of outputs
/// named `name`, or of every output) that no running restore holds, with
/// the `-wal`, `-shm` and `-journal` SQLite made beside them. Returns how
/// many temporary files went. Nothing else is touched; a file that cannot
/// be removed is logged and left.
pub fn remove_leftover_temps(dir: &Path, name: Option<&str>) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let wanted = name.map(temp_prefix);
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        let ours = match &wanted {
            Some(p) => n.strip_prefix(p.as_str()),
            None => n
                .strip_prefix('.')
                .and_then(|n| n.rsplit_once(".walsync-restore-"))
                .map(|(_, rest)| rest),
        };
        let Some(rest) = ours else {
            continue;
        };
        let path = entry.path();
        if crate::spool::is_token(rest) {
            match crate::spool::remove_if_unlocked(&path) {
                Ok(true) => {
                    log::info!(
                        "removed {}, left by a restore that was killed",
                        path.display()
                    );
                    removed += 1;
                    for side in sidecars(&path) {
                        let _ = fs::remove_file(side);
                    }
                }
                Ok(false) => {}
                Err(e) => log::warn!(
                    "{}: cannot remove a leftover of a restore: {e}",
                    path.display()
                ),
            }
        } else if let Some(main) = ["-wal", "-shm", "-journal"]
            .iter()
            .find_map(|s| rest.strip_suffix(s).filter(|t| crate::spool::is_token(t)))
        {
            // A side file whose main file is gone: the restore that made it
            // died while removing them (a live one removes its main file last).
            let main_path = dir.join(&n[..n.len() - rest.len() + main.len()]);
            if fs::symlink_metadata(&main_path).is_err() {
                let _ = fs::remove_file(&path);
            }
        }
    }
    removed
}

/// Restores the database backed up under `prefix` to `output`; `keys`
/// open its encrypted objects.
pub fn restore(
    storage: &dyn Storage,
    prefix: &str,
    output: &Path,
    target: Target,
    force: bool,
    keys: &[Key],
) -> Result<RestoreReport, RestoreError> {
    check_output(output, force)?;
    let listing = storage.list(&keys::database_root(prefix))?;
    let how = How {
        force,
        durable: true,
        limits: fetch::DEFAULT,
        keys,
    };
    restore_listed(storage, prefix, &listing, output, target, how)
}

/// How [`restore_listed`] restores.
#[derive(Debug, Clone, Copy)]
pub struct How<'a> {
    /// Replace an output that exists.
    pub force: bool,
    /// fsync the file and its directory before returning; `verify`, which
    /// deletes the file at once, does without.
    pub durable: bool,
    /// How the objects are downloaded.
    pub limits: fetch::Limits,
    /// The keys that open encrypted objects (a plain object needs none).
    pub keys: &'a [Key],
}

/// [`restore`] from a listing made already (`crate::fleet::slice`: what
/// listing `<prefix>/` gives). Makes no LIST.
pub fn restore_listed(
    storage: &dyn Storage,
    prefix: &str,
    listing: &[ObjectMeta],
    output: &Path,
    target: Target,
    how: How<'_>,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let How {
        force,
        durable,
        limits,
        keys: open_keys,
    } = how;
    check_output(output, force)?;

    // An object walsync did not write is named and left out: it cannot be
    // part of any restore, and it must not stop one.
    let stray = keys::stray_objects(prefix, listing);
    for s in &stray {
        log::warn!("prefix {prefix:?}: {s}");
    }
    let (objects, _) = keys::parse_listing_lenient(prefix, listing);
    if objects.is_empty() {
        return Err(RestoreError::NoBackup {
            prefix: prefix.to_string(),
            location: storage.location(),
        });
    }
    let plan = plan::plan_restore(&objects, target).map_err(|source| RestoreError::Plan {
        prefix: prefix.to_string(),
        source,
    })?;

    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("restore");
    let prefix_of_temp = temp_prefix(name);
    let (file, path) = crate::spool::create_locked(dir, &|t| format!("{prefix_of_temp}{t}"))
        .map_err(io_err(dir))?;
    let temp = TempOutput {
        lock: file.try_clone().map_err(io_err(&path))?,
        path,
    };
    // A WAL or journal beside the temp name (which is new, so only if
    // something planted one) must not be replayed onto the restored file
    // when it is verified.
    for side in sidecars(&temp.path) {
        match fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&side)(e)),
        }
    }

    let downloaded = plan.snapshot.size + plan.segments.iter().map(|s| s.size).sum::<u64>();
    let objects = std::iter::once(&plan.snapshot)
        .chain(&plan.segments)
        .map(|o| ObjectMeta {
            key: o.key.clone(),
            size: o.size,
        })
        .collect();
    let fetcher = Fetcher::new(storage, objects, limits);
    let (pages, page_size, applied, applied_time) = std::thread::scope(|scope| {
        for _ in 0..fetcher.workers() {
            scope.spawn(|| fetcher.run_worker());
        }
        let _stop = fetcher.stop_guard();
        apply(scope, &fetcher, &plan, &file, &temp.path, open_keys)
    })?;

    if durable {
        file.sync_all().map_err(io_err(&temp.path))?;
    }
    drop(file);
    verify(&temp.path, prefix, pages, page_size)?;

    if force {
        // The file replaced keeps its permission bits (who may read the
        // database was decided for it); a new one stays 0600.
        if let Ok(old) = fs::symlink_metadata(output) {
            if old.is_file() {
                temp.lock
                    .set_permissions(fs::Permissions::from_mode(old.mode() & 0o777))
                    .map_err(io_err(&temp.path))?;
            }
        }
        // Replacing: the old database's WAL and journal go with it, or
        // SQLite would replay them onto the restored file.
        for side in sidecars(output) {
            match fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&side)(e)),
            }
        }
        fs::rename(&temp.path, output).map_err(io_err(output))?;
    } else {
        // Not replacing: a file that appeared at the output since the check
        // must survive, so link (which fails if the name exists) rather
        // than rename; the temp name goes when `temp` drops.
        match fs::hard_link(&temp.path, output) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RestoreError::OutputExists(output.to_path_buf()))
            }
            // A filesystem without hard links: the earlier check stands.
            Err(_) => {
                if fs::symlink_metadata(output).is_ok() {
                    return Err(RestoreError::OutputExists(output.to_path_buf()));
                }
                fs::rename(&temp.path, output).map_err(io_err(output))?;
            }
        }
    }
    if durable {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    let bytes = u64::from(pages) * u64::from(page_size);
    Ok(RestoreReport {
        generation: plan.generation,
        txid: applied,
        time_ms: applied_time,
        pages,
        bytes,
        objects: 1 + plan.segments.len(),
        downloaded_bytes: downloaded,
        seconds: started.elapsed().as_secs_f64(),
        stray,
    })
}

/// Writes the plan's snapshot, then its segments commit by commit up to the
/// target, into `file`, reading the objects in order from `fetcher`; a
/// large encrypted object is opened on a thread of `scope` (`open_ahead`).
/// Returns (pages, page size, last txid applied, its time).
fn apply<'scope, 'f: 'scope>(
    scope: &'scope Scope<'scope, '_>,
    fetcher: &'f Fetcher<'_>,
    plan: &plan::RestorePlan,
    file: &File,
    path: &Path,
    keys: &'f [Key],
) -> Result<(u32, u32, u64, u64), RestoreError> {
    // A decoder sees a failed download as an I/O error; report the storage
    // error itself rather than call the object corrupt.
    let corrupt = |key: &str| {
        let key = key.to_string();
        move |source| match fetcher.take_failure() {
            Some(e) => RestoreError::Storage(e),
            None => RestoreError::Corrupt { key, source },
        }
    };

    // The snapshot, streamed page by page into the file.
    let snap_key = &plan.snapshot.key;
    let ObjectKind::Snapshot {
        txid: snap_txid,
        time_ms: snap_time,
    } = plan.snapshot.kind
    else {
        unreachable!("the plan's snapshot is a snapshot")
    };
    let opened = sealed::open(fetcher.stream(0), keys, snap_key);
    let opened = opened.map_err(|e| corrupt(snap_key)(FormatError::Sealed(e)))?;
    let opened = open_ahead(scope, opened, plan.snapshot.size);
    let mut d = SnapshotDecoder::new(opened).map_err(corrupt(snap_key))?;
    if d.header.txid != snap_txid {
        return Err(corrupt(snap_key)(FormatError::Invalid(format!(
            "header says txid {}, the key says {snap_txid}",
            d.header.txid
        ))));
    }
    let page_size = d.header.page_size;
    let mut pages = d.header.page_count;
    let mut buf = vec![0u8; page_size as usize];
    {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        while d.next_page(&mut buf).map_err(corrupt(snap_key))? {
            w.write_all(&buf).map_err(io_err(path))?;
        }
        w.flush().map_err(io_err(path))?;
    }
    d.finish().map_err(corrupt(snap_key))?;

    // Segments, commit by commit, up to the target.
    let mut applied = snap_txid;
    let mut applied_time = snap_time;
    for (i, seg) in plan.segments.iter().enumerate() {
        let key = &seg.key;
        let opened = sealed::open(fetcher.stream(i + 1), keys, key);
        let opened = opened.map_err(|e| corrupt(key)(FormatError::Sealed(e)))?;
        let opened = open_ahead(scope, opened, seg.size);
        let mut d = SegmentDecoder::new(opened).map_err(corrupt(key))?;
        if d.header.page_size != page_size {
            return Err(corrupt(key)(FormatError::Invalid(format!(
                "page size {} differs from the snapshot's {page_size}",
                d.header.page_size
            ))));
        }
        if let ObjectKind::Segment {
            first_txid,
            last_txid,
            ..
        } = seg.kind
        {
            if d.header.first_txid != first_txid || d.header.last_txid != last_txid {
                return Err(corrupt(key)(FormatError::Invalid(
                    "header txids differ from the object's name".into(),
                )));
            }
        }
        while let Some(c) = d.next_commit().map_err(corrupt(key))? {
            if c.txid <= applied {
                continue;
            }
            if c.txid != applied + 1 {
                return Err(corrupt(key)(FormatError::Invalid(format!(
                    "commit {} follows {applied}: transactions are missing",
                    c.txid
                ))));
            }
            if c.txid > plan.max_txid || plan.max_time_ms.is_some_and(|t| c.time_ms > t) {
                break;
            }
            for _ in 0..c.page_count {
                let page_no = d.next_page(&mut buf).map_err(corrupt(key))?;
                file.write_all_at(&buf, u64::from(page_no - 1) * u64::from(page_size))
                    .map_err(io_err(path))?;
            }
            // Invariant 2: the file ends where the commit says it does.
            file.set_len(u64::from(c.db_pages) * u64::from(page_size))
                .map_err(io_err(path))?;
            pages = c.db_pages;
            applied = c.txid;
            applied_time = c.time_ms;
        }
        // Read and check the rest even when the target stopped us inside.
        d.finish().map_err(corrupt(key))?;
    }
    Ok((pages, page_size, applied, applied_time))
}

/// Buffers an encrypted object's opener may fill ahead of its decoder.
const OPEN_AHEAD_BUFFERS: usize = 4;
/// The size of each: one sealed chunk's plaintext.
const OPEN_AHEAD_BUFFER_BYTES: usize = 64 << 10;

/// The object `opened` as its decoder reads it. An encrypted one larger than
/// a few chunks is opened (read, authenticated, decrypted) on a thread of
/// its own, at most `OPEN_AHEAD_BUFFERS` chunks ahead of the decoder, so
/// that decryption is off the restore's critical path where a core is free
/// (BENCHMARKS.md "Encryption: cost"); memory stays bounded (invariant 7).
/// A plain object, and a small one, is read as it is.
fn open_ahead<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    opened: sealed::Opened<R>,
    size: u64,
) -> Box<dyn Read + 'scope> {
    let worth_a_thread = (OPEN_AHEAD_BUFFERS * OPEN_AHEAD_BUFFER_BYTES) as u64;
    if opened.sealed_with().is_none() || size <= worth_a_thread {
        return Box::new(opened);
    }
    Box::new(ReadAhead::spawn(
        scope,
        Box::new(opened),
        OPEN_AHEAD_BUFFERS,
        OPEN_AHEAD_BUFFER_BYTES,
    ))
}

/// A reader that reads `inner` on a thread of its own into a fixed set of
/// `buffers` buffers, which go back and forth between the two threads. The
/// reader sees exactly the bytes, and the error, `inner` gave. Dropped
/// early, the thread ends once its current read returns.
struct ReadAhead {
    shared: Arc<(Mutex<Handover>, Condvar)>,
    buf: Vec<u8>,
    at: usize,
    len: usize,
    /// What was given out after the last byte: the end (`Some(false)`), or
    /// an error (`Some(true)`: reading on gives another, never an end).
    ended: Option<bool>,
}

/// What the two threads of a `ReadAhead` hand each other.
struct Handover {
    /// Filled buffers and how much of each holds bytes, in order.
    full: VecDeque<(Vec<u8>, usize)>,
    /// Buffers to fill.
    empty: Vec<Vec<u8>>,
    /// After the last full buffer: the end (`Ok`), or the error.
    end: Option<io::Result<()>>,
    /// The reader is gone: the thread stops.
    gone: bool,
}

fn lock(m: &Mutex<Handover>) -> MutexGuard<'_, Handover> {
    // Poisoned only if a thread panicked, which aborts a release build.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads `r` into `b` until it is full or `r` ends or fails: the bytes
/// read, and the error.
fn fill(r: &mut dyn Read, b: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < b.len() {
        match r.read(&mut b[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

impl ReadAhead {
    fn spawn<'scope>(
        scope: &'scope Scope<'scope, '_>,
        mut inner: Box<dyn Read + Send + 'scope>,
        buffers: usize,
        buffer_bytes: usize,
    ) -> ReadAhead {
        let shared = Arc::new((
            Mutex::new(Handover {
                full: VecDeque::with_capacity(buffers),
                empty: (0..buffers).map(|_| vec![0; buffer_bytes]).collect(),
                end: None,
                gone: false,
            }),
            Condvar::new(),
        ));
        let pump = Arc::clone(&shared);
        scope.spawn(move || loop {
            let (m, changed) = &*pump;
            let mut b = {
                let mut h = lock(m);
                loop {
                    if h.gone {
                        return;
                    }
                    if let Some(b) = h.empty.pop() {
                        break b;
                    }
                    h = changed.wait(h).unwrap_or_else(|e| e.into_inner());
                }
            };
            let (n, error) = fill(&mut *inner, &mut b);
            let more = n == b.len() && error.is_none();
            let mut h = lock(m);
            if n > 0 {
                h.full.push_back((b, n));
            }
            if !more {
                h.end = Some(error.map_or(Ok(()), Err));
            }
            changed.notify_all();
            if !more {
                return;
            }
        });
        ReadAhead {
            shared,
            buf: Vec::new(),
            at: 0,
            len: 0,
            ended: None,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.len && !out.is_empty() {
            match self.ended {
                Some(false) => return Ok(0),
                Some(true) => {
                    return Err(io::Error::other(
                        "the object could not be read (see the error before)",
                    ))
                }
                None => {}
            }
            let (m, changed) = &*self.shared;
            let mut h = lock(m);
            let used = std::mem::take(&mut self.buf);
            if !used.is_empty() {
                h.empty.push(used);
                changed.notify_all();
            }
            loop {
                if let Some((buf, len)) = h.full.pop_front() {
                    (self.buf, self.len, self.at) = (buf, len, 0);
                    break;
                }
                if let Some(end) = h.end.take() {
                    self.ended = Some(end.is_err());
                    return end.map(|()| 0);
                }
                h = changed.wait(h).unwrap_or_else(|e| e.into_inner());
            }
        }
        let n = (self.len - self.at).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        let (m, changed) = &*self.shared;
        lock(m).gone = true;
        changed.notify_all();
    }
}

/// Where `restore-all` puts the database of `prefix`: `<output_dir>/<prefix>.db`,
/// with its parent folders created. The prefix comes from a config or from
/// a bucket listing (untrusted), so it is validated, and the created parent
/// must still lie inside `output_dir` once symlinks are resolved
/// (ARCHITECTURE.md invariant 9).
pub fn output_path_for(output_dir: &Path, prefix: &str) -> Result<PathBuf, RestoreError> {
    let bad = |reason: String| RestoreError::BadOutput {
        path: output_dir.join(prefix),
        reason,
    };
    crate::config::validate_prefix(prefix)
        .map_err(|e| bad(format!("prefix {prefix:?} cannot name a file: {e}")))?;
    let path = output_dir.join(format!("{prefix}.db"));
    let parent = path
        .parent()
        .expect("invariant: a joined path has a parent");
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let root = fs::canonicalize(output_dir).map_err(io_err(output_dir))?;
    let real_parent = fs::canonicalize(parent).map_err(io_err(parent))?;
    if !real_parent.starts_with(&root) {
        return Err(bad(format!(
            "{} leads outside the output directory (a symlink?); refusing to write there",
            parent.display()
        )));
    }
    Ok(path)
}

fn check_output(output: &Path, force: bool) -> Result<(), RestoreError> {
    let bad = |reason: &str| RestoreError::BadOutput {
        path: output.to_path_buf(),
        reason: reason.to_string(),
    };
    if output.file_name().is_none() {
        return Err(bad("not a file name"));
    }
    match fs::symlink_metadata(output) {
        Ok(m) if m.is_dir() => return Err(bad("is a directory")),
        Ok(_) if !force => return Err(RestoreError::OutputExists(output.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(output)(e)),
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(bad("its directory does not exist"));
    }
    // A -wal (or -journal) left beside the output belongs to an earlier
    // database at that path, and SQLite would apply it to the restored file.
    for side in sidecars(output) {
        if fs::symlink_metadata(&side).is_ok() && !force {
            return Err(RestoreError::BadOutput {
                path: side,
                reason: "exists, and SQLite would apply it to the restored database; remove it (with the \
                         database it belongs to) or pass --force to replace both"
                    .into(),
            });
        }
    }
    Ok(())
}

/// The files SQLite keeps beside a database.
fn sidecars(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| {
            let mut p = db.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
        })
        .collect()
}

/// Opens the restored file with SQLite and checks it.
///
/// Read-write with `query_only`, not read-only: SQLite drops a table's CHECK
/// constraints when it loads the schema of a read-only database, and
/// `integrity_check` then silently skips them.
fn verify(path: &Path, prefix: &str, pages: u32, page_size: u32) -> Result<(), RestoreError> {
    let fail = |detail: String| RestoreError::Verify {
        prefix: prefix.to_string(),
        detail,
    };
    crate::sqlite::configure_process();
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| fail(format!("cannot open: {e}")))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| fail(e.to_string()))?;
    let count: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(|e| fail(e.to_string()))?;
    let size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| fail(e.to_string()))?;
    if count != i64::from(pages) || size != i64::from(page_size) {
        return Err(fail(format!(
            "SQLite sees {count} pages of {size} bytes, the backup says {pages} of {page_size}"
        )));
    }
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| fail(e.to_string()))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| fail(e.to_string()))?;
    if rows != ["ok"] {
        return Err(fail(format!("integrity_check: {}", rows.join("; "))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_killed_restores_go_and_live_or_foreign_files_stay() {
        let dir = crate::testing::fresh_dir("leftovers");
        let t = crate::spool::token;
        let dead_a = dir.join(format!(".a.db.walsync-restore-{}", t()));
        let dead_b = dir.join(format!(".b.db.walsync-restore-{}", t()));
        let orphan = dir.join(format!(".a.db.walsync-restore-{}-shm", t()));
        for p in [&dead_a, &dead_b, &orphan] {
            fs::write(p, b"x").unwrap();
        }
        let mut side = dead_b.as_os_str().to_owned();
        side.push("-wal");
        fs::write(&side, b"x").unwrap();
        // A restore running now holds its temp file and its side files.
        let (held, live) =
            crate::spool::create_locked(&dir, &|t| format!(".c.db.walsync-restore-{t}")).unwrap();
        let live_wal = sidecars(&live).remove(0);
        fs::write(&live_wal, b"x").unwrap();
        // Not ours: another name, and no token.
        let foreign = [
            dir.join("a.db"),
            dir.join(".a.db.walsync-restore-1234"),
            dir.join(".a.db.walsync-restore-notatoken000000"),
        ];
        for p in &foreign {
            fs::write(p, b"x").unwrap();
        }

        // One output's: only its own.
        assert_eq!(remove_leftover_temps(&dir, Some("a.db")), 1);
        assert!(!dead_a.exists() && !orphan.exists() && dead_b.exists());
        // Every output's (restore-all).
        assert_eq!(remove_leftover_temps(&dir, None), 1);
        assert!(!dead_b.exists() && !PathBuf::from(&side).exists());
        assert!(live.exists() && live_wal.exists());
        assert!(foreign.iter().all(|p| p.exists()));
        drop(held);
        assert_eq!(remove_leftover_temps(&dir, None), 1);
        assert!(!live.exists() && !live_wal.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_paths_stay_inside_the_output_directory() {
        let dir = crate::testing::fresh_dir("outpath");
        assert_eq!(
            output_path_for(&dir, "tenants/acme").unwrap(),
            dir.join("tenants/acme.db")
        );
        assert!(dir.join("tenants").is_dir());
        for hostile in [
            "../x",
            "a/../../x",
            "/etc/x",
            "a//b",
            "",
            "a/./b",
            "a/",
            "x\0y",
        ] {
            assert!(
                matches!(
                    output_path_for(&dir, hostile),
                    Err(RestoreError::BadOutput { .. })
                ),
                "{hostile:?} accepted"
            );
        }
        let outside = dir.with_extension("outside");
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        assert!(matches!(
            output_path_for(&dir, "link/x"),
            Err(RestoreError::BadOutput { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    /// A reader that gives `data` in slices of at most `step` bytes, then
    /// `fail` (if any) instead of its end.
    struct Slices {
        data: Vec<u8>,
        at: usize,
        step: usize,
        fail: bool,
    }

    impl Read for Slices {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() && self.fail {
                return Err(io::Error::other("broken"));
            }
            let n = self.step.min(out.len()).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    /// Bytes LZ4 cannot shrink (xorshift).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn read_ahead_gives_exactly_the_bytes_then_the_end_or_the_error() {
        for len in [0, 1, 6, 7, 8, 20, 21, 22, 1000] {
            for step in [1, 3, 7, 50] {
                for fail in [false, true] {
                    let inner = Slices {
                        data: bytes(len),
                        at: 0,
                        step,
                        fail,
                    };
                    std::thread::scope(|scope| {
                        let mut r = ReadAhead::spawn(scope, Box::new(inner), 3, 7);
                        let mut got = Vec::new();
                        let mut out = [0u8; 5];
                        let end = loop {
                            match r.read(&mut out) {
                                Ok(0) => break Ok(()),
                                Ok(n) => got.extend_from_slice(&out[..n]),
                                Err(e) => break Err(e),
                            }
                        };
                        assert_eq!(got, bytes(len), "len {len} step {step}");
                        assert_eq!(end.is_err(), fail, "len {len} step {step}");
                        // After an error, never an end; after the end, the end.
                        assert_eq!(r.read(&mut out).is_err(), fail);
                        assert_eq!(r.read(&mut out).is_err(), fail);
                    });
                }
            }
        }
    }

    #[test]
    fn read_ahead_dropped_early_lets_its_thread_end() {
        // The scope returns only once the thread has ended.
        std::thread::scope(|scope| {
            let inner = Slices {
                data: bytes(10_000),
                at: 0,
                step: 100,
                fail: false,
            };
            let mut r = ReadAhead::spawn(scope, Box::new(inner), 2, 64);
            let mut out = [0u8; 10];
            r.read_exact(&mut out).unwrap();
            assert_eq!(out[..], bytes(10)[..]);
        });
    }

    #[test]
    fn a_large_sealed_object_opened_ahead_decodes_and_fails_as_when_read_inline() {
        use crate::format::snapshot::{SnapshotEncoder, SnapshotHeader};
        let key = Key::from_secret([7; 32]);
        let object =
            "db/generations/0000000000000001/snapshots/0000000000000001-0000000000000001.snap";
        let h = SnapshotHeader {
            page_size: 4096,
            page_count: 200,
            txid: 1,
            time_ms: 1,
            pos: None,
        };
        let seal = sealed::Envelope::new(Vec::new(), Some((&key, [1; 16])), object).unwrap();
        let mut e = SnapshotEncoder::new(seal, h).unwrap();
        for p in 0..200 {
            e.page(&noise(4096, p)).unwrap();
        }
        let (seal, len, crc) = e.finish().unwrap();
        let sealed_bytes = seal.finish((len, crc)).unwrap().0;
        assert!(sealed_bytes.len() as u64 > (OPEN_AHEAD_BUFFERS * OPEN_AHEAD_BUFFER_BYTES) as u64);
        let decode = |b: &[u8]| -> Result<u64, FormatError> {
            std::thread::scope(|scope| {
                let opened = sealed::open(b, std::slice::from_ref(&key), object)
                    .map_err(FormatError::Sealed)?;
                let r = open_ahead(scope, opened, b.len() as u64);
                let mut d = SnapshotDecoder::new(r)?;
                let mut page = vec![0u8; 4096];
                let mut n = 0u64;
                while d.next_page(&mut page)? {
                    assert_eq!(page, noise(4096, n));
                    n += 1;
                }
                d.finish()?;
                Ok(n)
            })
        };
        assert_eq!(decode(&sealed_bytes).unwrap(), 200);
        // A flipped bit late in the object: the opener's own error, whole.
        let mut bad = sealed_bytes.clone();
        let at = bad.len() - 100;
        bad[at] ^= 1;
        let err = decode(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Sealed(sealed::SealError::Authentication { .. })
            ),
            "{err}"
        );
    }
}
