//! Parallel ranged downloads, read back in order.
//!
//! A restore reads a list of objects (one snapshot, then segments) strictly
//! in order through sequential decoders. Downloading them as one stream at a
//! time leaves the link idle while the decoder works and caps throughput at
//! one connection's. `Fetcher` cuts the objects into ranges of at most
//! `chunk_bytes`, lets a few worker threads fetch ranges ahead of the reader
//! with `Storage::get_range` (each range retried whole by the backend), and
//! hands them to the reader in order through `ObjectStream`, which is a plain
//! `Read` for the decoders. Memory is bounded: at most `ahead_bytes` (or one
//! chunk, whichever is more) are fetched or in flight beyond what the reader
//! has taken, and never more than `ahead_chunks` ranges.
//!
//! The caller owns the threads (`std::thread::scope`): it spawns
//! `Fetcher::workers()` threads running `run_worker`, reads, and calls `stop`
//! (or drops a `StopGuard`) so that workers waiting for room end.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{ObjectMeta, Storage, StorageError};

/// How a restore downloads: ranges of 2 MiB, 8 at a time, at most 16 MiB
/// ahead of the decoder. Each range waits out the link's first-byte
/// latency: through 30 ms and 80 MB/s a connection spends about half its
/// time waiting, and 8 restored 512 MiB 12 % faster than 4 (BENCHMARKS.md
/// "As across a network").
pub const DEFAULT: Limits = Limits {
    workers: 8,
    chunk_bytes: 2 << 20,
    ahead_bytes: 16 << 20,
    ahead_chunks: 64,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub workers: usize,
    pub chunk_bytes: u64,
    pub ahead_bytes: u64,
    pub ahead_chunks: usize,
}

/// One range of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub object: usize,
    pub start: u64,
    pub len: u64,
}

/// The ranges that cover `objects` in order, each at most `chunk_bytes`
/// (an empty object has none). Pure.
pub fn chunks(objects: &[ObjectMeta], chunk_bytes: u64) -> Vec<Chunk> {
    let chunk_bytes = chunk_bytes.max(1);
    let mut out = Vec::new();
    for (object, meta) in objects.iter().enumerate() {
        let mut start = 0;
        while start < meta.size {
            let len = chunk_bytes.min(meta.size - start);
            out.push(Chunk { object, start, len });
            start += len;
        }
    }
    out
}

struct State {
    /// The next chunk a worker will take.
    next: usize,
    /// The next chunk the reader will take.
    taken: usize,
    /// Bytes of the chunks in `taken..next` (fetched, or being fetched).
    ahead: u64,
    done: BTreeMap<usize, Result<Vec<u8>, StorageError>>,
    stopped: bool,
}

pub struct Fetcher<'s> {
    storage: &'s dyn Storage,
    objects: Vec<ObjectMeta>,
    chunks: Vec<Chunk>,
    /// Index of each object's first chunk; one extra entry at the end.
    first_chunk: Vec<usize>,
    limits: Limits,
    state: Mutex<State>,
    changed: Condvar,
    /// The first storage error a stream met, for the caller to report as
    /// such rather than as a decoding error.
    failure: Mutex<Option<StorageError>>,
}

impl<'s> Fetcher<'s> {
    pub fn new(storage: &'s dyn Storage, objects: Vec<ObjectMeta>, limits: Limits) -> Self {
        let chunks = chunks(&objects, limits.chunk_bytes);
        let mut first_chunk = vec![chunks.len(); objects.len() + 1];
        for (i, c) in chunks.iter().enumerate().rev() {
            first_chunk[c.object] = i;
        }
        // An empty object starts where the next one does.
        for o in (0..objects.len()).rev() {
            first_chunk[o] = first_chunk[o].min(first_chunk[o + 1]);
        }
        Fetcher {
            storage,
            objects,
            chunks,
            first_chunk,
            limits,
            state: Mutex::new(State {
                next: 0,
                taken: 0,
                ahead: 0,
                done: BTreeMap::new(),
                stopped: false,
            }),
            changed: Condvar::new(),
            failure: Mutex::new(None),
        }
    }

    /// How many worker threads are worth starting (never more than chunks).
    pub fn workers(&self) -> usize {
        self.limits.workers.max(1).min(self.chunks.len())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a thread panicked, which aborts the process
        // in release builds; in tests, carrying on is the useful thing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a worker may start on chunk `s.next` now.
    fn room(&self, s: &State) -> bool {
        let chunk = &self.chunks[s.next];
        s.next == s.taken
            || (s.next - s.taken < self.limits.ahead_chunks
                && s.ahead + chunk.len <= self.limits.ahead_bytes)
    }

    /// Fetches chunks until all are taken or `stop` is called.
    pub fn run_worker(&self) {
        let mut s = self.lock();
        loop {
            if s.stopped || s.next >= self.chunks.len() {
                return;
            }
            if !self.room(&s) {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let i = s.next;
            let chunk = self.chunks[i];
            s.next += 1;
            s.ahead += chunk.len;
            drop(s);
            let key = &self.objects[chunk.object].key;
            let result = self.storage.get_range(key, chunk.start, chunk.len);
            s = self.lock();
            if i < s.taken {
                // The reader moved past it (it gave up on that object).
                s.ahead -= chunk.len;
            } else {
                s.done.insert(i, result);
            }
            self.changed.notify_all();
        }
    }

    /// Ends the workers: those waiting return, those fetching return after
    /// their current range.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// A guard that calls `stop` when dropped, also on an early return.
    pub fn stop_guard(&self) -> StopGuard<'_, 's> {
        StopGuard(self)
    }

    /// Waits for chunk `i` (the reader's next) and takes it.
    fn take(&self, i: usize) -> Result<Vec<u8>, StorageError> {
        let mut s = self.lock();
        loop {
            if let Some(result) = s.done.remove(&i) {
                s.taken = i + 1;
                s.ahead -= self.chunks[i].len;
                // Chunks the reader skipped (it gave up on an object) go too.
                let skipped: Vec<usize> = s.done.range(..i).map(|(k, _)| *k).collect();
                for k in skipped {
                    s.done.remove(&k);
                    s.ahead -= self.chunks[k].len;
                }
                self.changed.notify_all();
                return result;
            }
            if s.stopped {
                return Err(StorageError::Transport {
                    location: self.storage.location(),
                    detail: "the download was stopped".into(),
                    os_error: None,
                });
            }
            if s.next <= i && s.next == s.taken {
                // Nobody will fetch it (no workers): fetch it here.
                let chunk = self.chunks[i];
                s.next = i + 1;
                s.taken = i + 1;
                drop(s);
                let key = &self.objects[chunk.object].key;
                return self.storage.get_range(key, chunk.start, chunk.len);
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A reader over object `object`'s bytes. Objects must be read in order,
    /// each at most once.
    pub fn stream(&self, object: usize) -> ObjectStream<'_, 's> {
        ObjectStream {
            fetcher: self,
            next: self.first_chunk[object],
            end: self.first_chunk[object + 1],
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The storage error that broke a stream, if one did. A decoder sees it
    /// only as an I/O error; the caller reports this instead.
    pub fn take_failure(&self) -> Option<StorageError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

pub struct StopGuard<'f, 's>(&'f Fetcher<'s>);

impl Drop for StopGuard<'_, '_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// One object's bytes, chunk after chunk.
pub struct ObjectStream<'f, 's> {
    fetcher: &'f Fetcher<'s>,
    next: usize,
    end: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ObjectStream<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.next >= self.end {
                return Ok(0);
            }
            match self.fetcher.take(self.next) {
                Ok(bytes) => {
                    self.buf = bytes;
                    self.pos = 0;
                    self.next += 1;
                }
                Err(e) => {
                    let message = e.to_string();
                    let mut failure = self
                        .fetcher
                        .failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    failure.get_or_insert(e);
                    return Err(io::Error::other(message));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Body, ObjectReader};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// In-memory objects; counts ranged reads and the most at once.
    struct Mem {
        objects: HashMap<String, Vec<u8>>,
        fail_key: Option<String>,
        /// How long each ranged read takes.
        delay_ms: u64,
        active: AtomicUsize,
        peak: AtomicUsize,
        calls: AtomicUsize,
    }

    impl Mem {
        fn new(objects: &[(&str, Vec<u8>)]) -> Mem {
            Mem {
                objects: objects
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                fail_key: None,
                delay_ms: 0,
                active: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
            }
        }

        fn metas(&self, keys: &[&str]) -> Vec<ObjectMeta> {
            keys.iter()
                .map(|k| ObjectMeta {
                    key: k.to_string(),
                    size: self.objects[*k].len() as u64,
                })
                .collect()
        }
    }

    impl Storage for Mem {
        fn put(&self, _: &str, _: Body<'_>, _: u32) -> Result<(), StorageError> {
            unreachable!("not used")
        }
        fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
            Ok(Box::new(io::Cursor::new(self.objects[key].clone())))
        }
        fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(self.delay_ms));
            self.active.fetch_sub(1, Ordering::SeqCst);
            if self.fail_key.as_deref() == Some(key) {
                return Err(StorageError::Server {
                    location: "mem".into(),
                    key: key.into(),
                    status: 500,
                    detail: "injected".into(),
                });
            }
            let o = &self.objects[key];
            Ok(o[start as usize..(start + len) as usize].to_vec())
        }
        fn list(&self, _: &str) -> Result<Vec<ObjectMeta>, StorageError> {
            unreachable!("not used")
        }
        fn delete(&self, _: &[String]) -> Result<(), StorageError> {
            unreachable!("not used")
        }
        fn location(&self) -> String {
            "mem".into()
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    fn limits(workers: usize, chunk_bytes: u64) -> Limits {
        Limits {
            workers,
            chunk_bytes,
            ahead_bytes: 4 * chunk_bytes,
            ahead_chunks: 8,
        }
    }

    /// Reads every object in order with `workers` threads.
    fn read_all(
        mem: &Mem,
        keys: &[&str],
        l: Limits,
    ) -> (Vec<Result<Vec<u8>, String>>, Option<String>) {
        let fetcher = Fetcher::new(mem, mem.metas(keys), l);
        std::thread::scope(|scope| {
            for _ in 0..fetcher.workers() {
                scope.spawn(|| fetcher.run_worker());
            }
            let _stop = fetcher.stop_guard();
            let mut out = Vec::new();
            for i in 0..keys.len() {
                let mut v = Vec::new();
                out.push(
                    fetcher
                        .stream(i)
                        .read_to_end(&mut v)
                        .map(|_| v)
                        .map_err(|e| e.to_string()),
                );
            }
            (out, fetcher.take_failure().map(|e| e.to_string()))
        })
    }

    #[test]
    fn chunks_cover_every_byte_in_order() {
        let metas = |sizes: &[u64]| -> Vec<ObjectMeta> {
            sizes
                .iter()
                .map(|&size| ObjectMeta {
                    key: "k".into(),
                    size,
                })
                .collect()
        };
        for sizes in [&[0u64][..], &[1], &[10], &[9, 0, 11, 30], &[3, 3, 3]] {
            for chunk in [1u64, 2, 3, 10, 100] {
                let cs = chunks(&metas(sizes), chunk);
                for (o, &size) in sizes.iter().enumerate() {
                    let mine: Vec<_> = cs.iter().filter(|c| c.object == o).collect();
                    let mut at = 0;
                    for c in &mine {
                        assert_eq!(c.start, at);
                        assert!(c.len >= 1 && c.len <= chunk);
                        at += c.len;
                    }
                    assert_eq!(at, size, "sizes {sizes:?} chunk {chunk}");
                }
                assert!(cs.windows(2).all(|w| w[0].object <= w[1].object));
            }
        }
    }

    #[test]
    fn objects_come_back_whole_and_in_order_whatever_the_workers() {
        let objects = [
            ("a", bytes(1000, 1)),
            ("empty", Vec::new()),
            ("b", bytes(1, 2)),
            ("c", bytes(4097, 3)),
        ];
        let mem = Mem::new(&objects);
        let keys: Vec<&str> = objects.iter().map(|(k, _)| *k).collect();
        for workers in [0, 1, 2, 4, 16] {
            for chunk in [1u64, 7, 64, 5000] {
                if chunk == 1 && workers > 4 {
                    continue;
                }
                let (got, failure) = read_all(&mem, &keys, limits(workers, chunk));
                assert_eq!(failure, None);
                for ((_, want), got) in objects.iter().zip(got) {
                    assert_eq!(&got.unwrap(), want, "workers {workers} chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn downloads_run_in_parallel_but_stay_within_the_window() {
        let objects: Vec<(String, Vec<u8>)> =
            (0..6).map(|i| (format!("o{i}"), bytes(256, i))).collect();
        let refs: Vec<(&str, Vec<u8>)> = objects
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut mem = Mem::new(&refs);
        mem.delay_ms = 5;
        let keys: Vec<&str> = refs.iter().map(|(k, _)| *k).collect();
        let l = Limits {
            workers: 6,
            chunk_bytes: 64,
            ahead_bytes: 192,
            ahead_chunks: 8,
        };
        let (got, _) = read_all(&mem, &keys, l);
        assert!(got.iter().all(|r| r.is_ok()));
        assert_eq!(mem.calls.load(Ordering::SeqCst), 24);
        let peak = mem.peak.load(Ordering::SeqCst);
        // 3 chunks of 64 fit in 192 bytes ahead, plus the one the reader
        // fetches itself when nothing is ahead; 6 unbounded workers would
        // do 6 or 7.
        assert!((2..=4).contains(&peak), "peak {peak}");
    }

    #[test]
    fn a_failed_range_is_reported_as_the_storage_error() {
        let objects = [("a", bytes(100, 1)), ("bad", bytes(100, 2))];
        let mut mem = Mem::new(&objects);
        mem.fail_key = Some("bad".into());
        let (got, failure) = read_all(&mem, &["a", "bad"], limits(2, 30));
        assert!(got[0].is_ok());
        assert!(got[1].as_ref().unwrap_err().contains("injected"));
        assert!(failure.unwrap().contains("\"bad\""));
    }

    #[test]
    fn stopping_early_ends_the_workers() {
        let mem = Mem::new(&[("a", bytes(10_000, 1))]);
        let fetcher = Fetcher::new(&mem, mem.metas(&["a"]), limits(3, 10));
        std::thread::scope(|scope| {
            for _ in 0..fetcher.workers() {
                scope.spawn(|| fetcher.run_worker());
            }
            let _stop = fetcher.stop_guard();
            let mut first = [0u8; 15];
            fetcher.stream(0).read_exact(&mut first).unwrap();
        });
        // The scope joined: the workers saw the stop. Only the window was
        // fetched, not all 1,000 ranges.
        assert!(mem.calls.load(Ordering::SeqCst) < 20);
    }
}
