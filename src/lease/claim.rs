//! The lease's I/O: who this process is (`Leases`, one per process), the
//! probe of conditional writes (once per process), and each database's
//! `Claim` on its prefix: taken before the database is opened, renewed
//! before a write when half its TTL has gone by, given up at a stop.
//! `Leased` is a `Storage` that asks the claim before every put and delete,
//! so no segment, snapshot, mark or retention delete goes into a prefix
//! this process does not hold. The decisions are the pure ones of
//! `crate::lease`.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    before_write, decode, encode, ignored_condition, lease_key, probe_key, standing, BeforeWrite,
    FreeBecause, Holder, Lease, ProbeAnswers, Seen, Standing,
};
use crate::storage::{
    Body, ObjectMeta, ObjectReader, PutIf, PutIfOutcome, Storage, StorageError, Tagged,
};

/// Why a database's prefix is not this process's to write.
#[derive(Debug)]
pub enum LeaseError {
    /// Another process holds the lease.
    Refused {
        prefix: String,
        holder: Holder,
        expires_in: Duration,
    },
    /// This process held it, and another wrote it meanwhile (took it
    /// over after it expired while this one was idle; `None`: removed it).
    /// What this process knows of the backup is stale from then on.
    Lost {
        prefix: String,
        holder: Option<Holder>,
    },
    /// The object under the lease's key is not a lease.
    Unreadable {
        key: String,
        detail: String,
    },
    Storage(StorageError),
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Refused {
                prefix,
                holder,
                expires_in,
            } => write!(
                f,
                "prefix {prefix:?} is held by another walsync ({holder}); this database is not \
                 replicated by this process. Its lease is taken over when it expires (in {}s at \
                 the latest unless renewed) or at once when that walsync stops; if both are meant \
                 to run, give one of the databases another prefix",
                expires_in.as_secs().max(1)
            ),
            LeaseError::Lost { prefix, holder } => {
                match holder {
                    Some(holder) => write!(
                        f,
                        "prefix {prefix:?} was taken over by another walsync ({holder}) after \
                         this process's lease expired"
                    )?,
                    None => write!(
                        f,
                        "the lease of prefix {prefix:?} was removed while this process held it"
                    )?,
                }
                write!(
                    f,
                    "; this process no longer replicates this database. Stop one of the two, or \
                     give one database another prefix, then restart walsync"
                )
            }
            LeaseError::Unreadable { key, detail } => write!(
                f,
                "object {key:?} is not a walsync lease ({detail}); remove it if nothing but \
                 walsync writes under this prefix"
            ),
            LeaseError::Storage(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LeaseError {}

impl From<StorageError> for LeaseError {
    fn from(e: StorageError) -> Self {
        LeaseError::Storage(e)
    }
}

/// This process as a lease holder, the TTL, and whether the storage honours
/// conditional writes (probed once).
#[derive(Debug)]
pub struct Leases {
    me: Holder,
    ttl: Duration,
    /// `None` until probed; `Some(false)`: the storage ignores them, and
    /// walsync goes on without leases (warned once).
    honoured: Mutex<Option<bool>>,
}

impl Leases {
    /// This process: the host name (`WALSYNC_HOSTNAME` if set), its pid,
    /// and its machine (host name, boot id, pid namespace).
    pub fn for_this_process(ttl: Duration) -> Arc<Leases> {
        let host = std::env::var("WALSYNC_HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(host_name);
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let machine = if boot.trim().is_empty() || pidns.is_empty() {
            String::new()
        } else {
            format!("{host}/{}/{pidns}", boot.trim())
        };
        Arc::new(Leases {
            me: Holder {
                host,
                pid: std::process::id(),
                machine,
                since_ms: 0,
            },
            ttl,
            honoured: Mutex::new(None),
        })
    }

    /// The claim of the database at `prefix`, not yet taken.
    pub fn claim(self: &Arc<Self>, prefix: &str) -> Claim {
        Claim {
            leases: Arc::clone(self),
            prefix: prefix.to_owned(),
            state: Mutex::new(State::Free),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the storage honours conditional writes: probed at the first
    /// call (under `prefix`), warned about once if not.
    fn honoured(&self, storage: &dyn Storage, prefix: &str) -> Result<bool, StorageError> {
        let mut known = lock(&self.honoured);
        if let Some(h) = *known {
            return Ok(h);
        }
        let honoured = match probe(storage, prefix)? {
            None => {
                log::warn!(
                    "{}: this storage cannot write conditionally; walsync goes on without \
                     leases, so nothing keeps a second walsync (another host, or a restored \
                     machine) from writing into the same prefix (README \"One writer per prefix\")",
                    storage.location()
                );
                false
            }
            Some(answers) => match ignored_condition(answers) {
                None => true,
                Some(ignored) => {
                    log::warn!(
                        "{}: the server ignores {ignored} on PutObject; walsync goes on without \
                         leases, so nothing keeps a second walsync (another host, or a restored \
                         machine) from writing into the same prefix (README \"One writer per \
                         prefix\")",
                        storage.location()
                    );
                    false
                }
            },
        };
        *known = Some(honoured);
        Ok(honoured)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether process `pid` of this pid namespace is alive.
fn process_alive(pid: u32) -> Option<bool> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return Some(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Some(false),
        Some(libc::EPERM) => Some(true),
        _ => None,
    }
}

/// Probes the storage's conditional writes on `probe_key(prefix)`: a
/// create over an existing object and an `If-Match` on a wrong ETag must
/// both be refused (412). `None`: the storage has no conditional writes at
/// all. Four requests, once per process.
pub fn probe(storage: &dyn Storage, prefix: &str) -> Result<Option<ProbeAnswers>, StorageError> {
    let key = probe_key(prefix);
    let body = b"walsync probe of conditional writes; removed after it\n";
    if storage.put_if(&key, body, PutIf::Absent)? == PutIfOutcome::Unsupported {
        return Ok(None);
    }
    // The object exists now (made above, or left by an earlier probe).
    let again = storage.put_if(&key, body, PutIf::Absent)?;
    let wrong = storage.put_if(&key, body, PutIf::Matches("\"walsync-no-such-etag\""))?;
    storage.delete(&[key])?;
    Ok(Some(ProbeAnswers {
        refused_create_over_existing: again == PutIfOutcome::Refused,
        refused_wrong_etag: wrong == PutIfOutcome::Refused,
    }))
}

#[derive(Debug)]
enum State {
    /// Not held (not yet, or given up).
    Free,
    Held {
        etag: String,
        /// When the request that wrote it was sent.
        written_at: Instant,
        since_ms: u64,
    },
    /// Written by another meanwhile: this process writes no more here.
    Lost(Option<Holder>),
    /// The storage has no conditional writes: today's behaviour.
    Off,
}

/// One database's hold on its prefix.
#[derive(Debug)]
pub struct Claim {
    leases: Arc<Leases>,
    prefix: String,
    state: Mutex<State>,
}

impl Claim {
    /// Makes sure this process holds the prefix before a write: takes the
    /// lease if it does not hold it, renews it if half its TTL has gone by;
    /// no request otherwise.
    pub fn ensure(&self, storage: &dyn Storage) -> Result<(), LeaseError> {
        let mut state = lock(&self.state);
        match &*state {
            State::Off => Ok(()),
            State::Lost(holder) => Err(LeaseError::Lost {
                prefix: self.prefix.clone(),
                holder: holder.clone(),
            }),
            State::Held {
                etag,
                written_at,
                since_ms,
            } => match before_write(written_at.elapsed(), self.leases.ttl) {
                BeforeWrite::Write => Ok(()),
                BeforeWrite::Renew => {
                    let (etag, since_ms) = (etag.clone(), *since_ms);
                    self.renew(storage, &mut state, &etag, since_ms)
                }
            },
            State::Free => {
                if !self.leases.honoured(storage, &self.prefix)? {
                    *state = State::Off;
                    return Ok(());
                }
                self.take(storage, &mut state)
            }
        }
    }

    /// The error to report if another process took the prefix over from
    /// this one (which then writes no more under it).
    pub fn lost(&self) -> Option<LeaseError> {
        match &*lock(&self.state) {
            State::Lost(holder) => Some(LeaseError::Lost {
                prefix: self.prefix.clone(),
                holder: holder.clone(),
            }),
            _ => None,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Gives the lease up (a stop): writes it with TTL 0, so another
    /// process may take it at once. Failures are logged, not returned: the
    /// lease then expires by itself.
    pub fn give_up(&self, storage: &dyn Storage) {
        let mut state = lock(&self.state);
        let State::Held { etag, since_ms, .. } = &*state else {
            return;
        };
        let lease = self.lease(*since_ms, 0);
        match storage.put_if(
            &lease_key(&self.prefix),
            encode(&lease).as_bytes(),
            PutIf::Matches(etag),
        ) {
            Ok(PutIfOutcome::Written { .. }) => {
                log::debug!("{}: lease given up", self.prefix)
            }
            Ok(other) => log::debug!("{}: giving up the lease: {other:?}", self.prefix),
            Err(e) => log::warn!(
                "{}: could not give up the lease ({e}); it expires by itself within {}s",
                self.prefix,
                self.leases.ttl.as_secs()
            ),
        }
        *state = State::Free;
    }

    fn lease(&self, since_ms: u64, ttl_ms: u64) -> Lease {
        Lease {
            holder: Holder {
                since_ms,
                ..self.leases.me.clone()
            },
            renewed_ms: crate::time::now_ms(),
            ttl_ms,
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.leases.ttl.as_millis() as u64
    }

    /// Writes our lease under `condition`; `Some(state)` when written.
    fn write(
        &self,
        storage: &dyn Storage,
        condition: PutIf<'_>,
        since_ms: u64,
    ) -> Result<Option<State>, LeaseError> {
        let lease = self.lease(since_ms, self.ttl_ms());
        let written_at = Instant::now();
        match storage.put_if(
            &lease_key(&self.prefix),
            encode(&lease).as_bytes(),
            condition,
        )? {
            PutIfOutcome::Written { etag } => Ok(Some(State::Held {
                etag,
                written_at,
                since_ms,
            })),
            PutIfOutcome::Refused => Ok(None),
            PutIfOutcome::Unsupported => Ok(Some(State::Off)),
        }
    }

    fn renew(
        &self,
        storage: &dyn Storage,
        state: &mut State,
        etag: &str,
        since_ms: u64,
    ) -> Result<(), LeaseError> {
        if let Some(next) = self.write(storage, PutIf::Matches(etag), since_ms)? {
            *state = next;
            return Ok(());
        }
        // The lease was written since we wrote it. By us (a PUT retried
        // after its answer was lost): adopt it. By another process: it
        // held the prefix meanwhile, so what this one knows of the backup
        // is stale; even if that lease is free again, this process writes
        // no more here (said by the daemon, once: `Outcome::Refused`).
        let key = lease_key(&self.prefix);
        let found = match storage.get_tagged(&key) {
            Ok(found) => Some(found),
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let mut holder = None;
        if let Some(found) = &found {
            let seen = self.seen(&key, found)?;
            if standing(&seen, &self.leases.me) == Standing::Mine {
                if let Some(next) = self.write(storage, PutIf::Matches(&found.etag), since_ms)? {
                    *state = next;
                    return Ok(());
                }
            }
            holder = Some(seen.lease.holder);
        }
        *state = State::Lost(holder.clone());
        Err(LeaseError::Lost {
            prefix: self.prefix.clone(),
            holder,
        })
    }

    /// Takes the lease: creates it, or takes one that is free or ours.
    fn take(&self, storage: &dyn Storage, state: &mut State) -> Result<(), LeaseError> {
        let key = lease_key(&self.prefix);
        let me = &self.leases.me;
        let now_ms = crate::time::now_ms();
        // Twice: a lease created or taken between our read and our write
        // is read again once.
        let mut last = None;
        for _ in 0..2 {
            let found = match storage.get_tagged(&key) {
                Ok(t) => t,
                Err(StorageError::NotFound { .. }) => {
                    if let Some(next) = self.write(storage, PutIf::Absent, now_ms)? {
                        log::info!(
                            "{}: lease taken ({})",
                            self.prefix,
                            self.lease(now_ms, 0).holder
                        );
                        *state = next;
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let seen = self.seen(&key, &found)?;
            match standing(&seen, me) {
                Standing::Held { expires_in } => {
                    last = Some((seen.lease.holder, expires_in));
                    break;
                }
                mine_or_free => {
                    let since_ms = match mine_or_free {
                        Standing::Mine => seen.lease.holder.since_ms,
                        _ => now_ms,
                    };
                    if let Some(next) =
                        self.write(storage, PutIf::Matches(&found.etag), since_ms)?
                    {
                        if let Standing::Free(why) = mine_or_free {
                            let why = match why {
                                FreeBecause::Released => "it gave the lease up",
                                FreeBecause::Expired => "its lease expired",
                                FreeBecause::HolderGone => "its process is gone",
                            };
                            log::info!(
                                "{}: lease taken over from {} ({why})",
                                self.prefix,
                                seen.lease.holder
                            );
                        }
                        *state = next;
                        return Ok(());
                    }
                    last = Some((seen.lease.holder, self.leases.ttl));
                }
            }
        }
        let (holder, expires_in) = last.unwrap_or_else(|| (me.clone(), self.leases.ttl));
        Err(LeaseError::Refused {
            prefix: self.prefix.clone(),
            holder,
            expires_in,
        })
    }

    fn seen(&self, key: &str, found: &Tagged) -> Result<Seen, LeaseError> {
        let lease = decode(&found.bytes).map_err(|detail| LeaseError::Unreadable {
            key: key.to_owned(),
            detail,
        })?;
        let me = &self.leases.me;
        let holder_alive = (!me.machine.is_empty() && lease.holder.machine == me.machine)
            .then(|| process_alive(lease.holder.pid))
            .flatten();
        Ok(Seen {
            lease,
            modified_ms: found.modified_ms,
            server_now_ms: found.server_now_ms,
            local_now_ms: crate::time::now_ms(),
            holder_alive,
        })
    }
}

/// A `Storage` that writes only while its claim holds the prefix: every
/// put and delete asks `Claim::ensure` first (no request while the lease is
/// fresh). A claim that fails is a `StorageError::Server` with status 412
/// whose message is the lease's; `Claim::lost` tells it apart.
pub struct Leased<'a> {
    pub inner: &'a dyn Storage,
    pub claim: &'a Claim,
}

impl Leased<'_> {
    fn ensure(&self, key: &str) -> Result<(), StorageError> {
        self.claim.ensure(self.inner).map_err(|e| match e {
            LeaseError::Storage(e) => e,
            other => StorageError::Server {
                location: self.inner.location(),
                key: key.to_owned(),
                status: 412,
                detail: other.to_string(),
            },
        })
    }
}

impl Storage for Leased<'_> {
    fn put(&self, key: &str, body: Body<'_>, crc32: u32) -> Result<(), StorageError> {
        self.ensure(key)?;
        self.inner.put(key, body, crc32)
    }

    fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        self.inner.get_range(key, start, len)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.inner.list(prefix)
    }

    fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        if let Some(first) = keys.first() {
            self.ensure(first)?;
        }
        self.inner.delete(keys)
    }

    fn put_if(
        &self,
        key: &str,
        bytes: &[u8],
        condition: PutIf<'_>,
    ) -> Result<PutIfOutcome, StorageError> {
        self.inner.put_if(key, bytes, condition)
    }

    fn get_tagged(&self, key: &str) -> Result<Tagged, StorageError> {
        self.inner.get_tagged(key)
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn put_does(&self) -> &'static str {
        self.inner.put_does()
    }
}

#[cfg(test)]
mod tests {
    //! The claim against the directory backend (two processes of one
    //! host, as far as the lease can tell: two holders in one process).
    use super::*;
    use crate::storage::dir::DirStorage;
    use crate::testing::fresh_dir;

    fn leases(host: &str, ttl: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            me: Holder {
                host: host.to_owned(),
                pid: 7,
                machine: format!("{host}/boot/ns"),
                since_ms: 0,
            },
            ttl,
            honoured: Mutex::new(None),
        })
    }

    /// Makes the lease look `by` older to its readers (its mtime), as if
    /// that long had gone by without a renewal.
    fn age(root: &std::path::Path, by: Duration) {
        let f = std::fs::File::options()
            .write(true)
            .open(root.join("db/lease"))
            .expect("the lease file");
        f.set_modified(std::time::SystemTime::now() - by)
            .expect("mtime");
    }

    #[test]
    fn a_prefix_is_refused_taken_over_given_up_and_lost_on_a_directory() {
        let root = fresh_dir("lease-claim");
        let dir = DirStorage::new(&root).expect("dir storage");
        let minute = Duration::from_secs(60);
        let a = leases("a", minute).claim("db");
        let b = leases("b", minute).claim("db");

        a.ensure(&dir).expect("a takes the new lease");
        a.ensure(&dir).expect("a holds it: no request");
        match b.ensure(&dir) {
            Err(LeaseError::Refused {
                holder, expires_in, ..
            }) => {
                assert_eq!((holder.host.as_str(), holder.pid), ("a", 7));
                assert!(
                    expires_in <= minute && expires_in > minute / 2,
                    "{expires_in:?}"
                );
            }
            other => panic!("b is refused: {other:?}"),
        }
        let written = Leased {
            inner: &dir,
            claim: &b,
        }
        .put("db/x", Body::Bytes(b"b's"), 0);
        assert!(
            written
                .as_ref()
                .is_err_and(|e| e.to_string().contains("held by another walsync")),
            "{written:?}"
        );
        assert!(
            dir.list("db/x").expect("list").is_empty(),
            "b wrote nothing"
        );

        // a gives it up: b takes it at once.
        a.give_up(&dir);
        b.ensure(&dir).expect("b takes the given-up lease");
        assert!(matches!(a.ensure(&dir), Err(LeaseError::Refused { .. })));

        // b's lease expires (a minute without renewal, as a reads it): a
        // takes it over; b, renewing after half its TTL, finds it lost.
        age(&root, minute * 2);
        a.ensure(&dir).expect("a takes over the expired lease");
        let b_short = leases("b", Duration::from_millis(200)).claim("db");
        b_short.ensure(&dir).expect_err("refused: a holds it");
        age(&root, minute * 2);
        b_short.ensure(&dir).expect("b takes over again");
        let a_lease = std::fs::read(root.join("db/lease")).expect("lease");
        assert_eq!(decode(&a_lease).expect("a lease").holder.host, "b");
        age(&root, minute * 2);
        let c = leases("c", minute).claim("db");
        c.ensure(&dir).expect("c takes over b's expired lease");
        // Even once c has given it up, b, which knows nothing of what c
        // wrote, does not take it again.
        c.give_up(&dir);
        std::thread::sleep(Duration::from_millis(120));
        match b_short.ensure(&dir) {
            Err(LeaseError::Lost {
                holder: Some(holder),
                ..
            }) => assert_eq!(holder.host, "c"),
            other => panic!("b lost it to c: {other:?}"),
        }
        assert!(b_short.lost().is_some());
        // Lost is for good, and costs no request.
        assert!(matches!(b_short.ensure(&dir), Err(LeaseError::Lost { .. })));
        // A lease removed under its holder is lost too.
        let e = leases("e", Duration::from_millis(200)).claim("db");
        e.ensure(&dir).expect("e takes the given-up lease");
        std::fs::remove_file(root.join("db/lease")).expect("remove the lease");
        std::thread::sleep(Duration::from_millis(120));
        let err = e.ensure(&dir).expect_err("lost");
        assert!(
            err.to_string()
                .contains("was removed while this process held it"),
            "{err}"
        );

        // Not a lease: named, with what to do.
        std::fs::write(root.join("db/lease"), b"hello").expect("write");
        let d = leases("d", minute).claim("db");
        let err = d.ensure(&dir).expect_err("unreadable");
        assert!(
            err.to_string()
                .contains("\"db/lease\" is not a walsync lease"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_directory_honours_both_conditions_and_the_probe_says_so() {
        let root = fresh_dir("lease-dir-put-if");
        let dir = DirStorage::new(&root).expect("dir storage");
        let PutIfOutcome::Written { etag } =
            dir.put_if("p/k", b"one", PutIf::Absent).expect("create")
        else {
            panic!("a create of a new key is written")
        };
        // (condition, bytes, outcome is a write)
        let cases: [(PutIf<'_>, &[u8], bool); 4] = [
            (PutIf::Absent, b"two", false),
            (PutIf::Matches("\"nope\""), b"three", false),
            (PutIf::Matches(&etag), b"four", true),
            (PutIf::Matches(&etag), b"five", false),
        ];
        for (condition, bytes, written) in cases {
            let outcome = dir.put_if("p/k", bytes, condition).expect("put_if");
            assert_eq!(
                matches!(outcome, PutIfOutcome::Written { .. }),
                written,
                "{condition:?}: {outcome:?}"
            );
        }
        let tagged = dir.get_tagged("p/k").expect("tagged");
        assert_eq!(tagged.bytes, b"four");
        assert_ne!(tagged.etag, etag);
        assert!(tagged.modified_ms.is_some() && tagged.server_now_ms.is_some());
        assert_eq!(
            dir.list("p/").expect("list"),
            vec![ObjectMeta {
                key: "p/k".to_owned(),
                size: 4
            }],
            "no temporary file is left"
        );
        let answers = probe(&dir, "p").expect("probe").expect("supported");
        assert_eq!(ignored_condition(answers), None);
        assert!(
            dir.get_tagged("p/lease.probe").is_err(),
            "the probe object is removed"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
