//! One writer per prefix across machines (ARCHITECTURE.md invariant 13):
//! the lease object `<prefix>/lease`, what it says, and the decisions about
//! it. Pure: times and the liveness of a process are parameters; the I/O
//! (conditional writes, the probe, the per-database claim) is `claim`.
//!
//! A `watch` writes into a prefix only while it holds that prefix's lease:
//! created with `If-None-Match: *`, renewed and taken over with `If-Match`
//! on the ETag it last saw, so two processes can never both believe they
//! wrote it last. The lease is renewed only when its holder is about to
//! write and half its TTL has gone by (`before_write`): an idle database
//! costs no request for its lease, a busy one at most one PUT per half TTL.
//!
//! Whether a lease someone else holds has expired is judged on the
//! server's clock where the server gives one (the `Date` of the answer
//! against the object's `Last-Modified`, both whole seconds, so one second
//! is added to the age's doubt), else on the reader's clock against the
//! writer's (`renewed_ms`), where clock skew between the hosts counts
//! fully. The holder counts its own lease's time on its monotonic clock
//! from before the request that wrote it, so it gives up writing before
//! any other host can see the lease expire, whatever the wall clocks say.

pub mod claim;

use std::time::Duration;

/// The key of the lease of the database at `prefix`.
pub fn lease_key(prefix: &str) -> String {
    format!("{prefix}/lease")
}

/// The key the probe of conditional writes uses (`claim::probe`), removed
/// after it.
pub fn probe_key(prefix: &str) -> String {
    format!("{prefix}/lease.probe")
}

/// Whether `key`, under `<prefix>/`, is the lease or its probe (so not a
/// stray object).
pub fn is_lease_object(prefix: &str, key: &str) -> bool {
    key == lease_key(prefix) || key == probe_key(prefix)
}

/// Who holds (or wants) a lease: a process on a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The host name (or `WALSYNC_HOSTNAME`).
    pub host: String,
    pub pid: u32,
    /// The host name, the boot id and the pid namespace: equal only for
    /// processes whose pids can be compared (`""`: not known).
    pub machine: String,
    /// When this holder first took the lease (its clock, ms since the epoch).
    pub since_ms: u64,
}

impl Holder {
    /// The same process: same machine and pid (`since_ms` aside).
    pub fn same_process(&self, other: &Holder) -> bool {
        self.host == other.host && self.pid == other.pid && self.machine == other.machine
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {:?}, pid {}, since {}",
            self.host,
            self.pid,
            crate::time::format_rfc3339(self.since_ms)
        )
    }
}

/// What the lease object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: Holder,
    /// When the holder wrote it (its clock).
    pub renewed_ms: u64,
    /// How long it holds after it was written; 0: given up.
    pub ttl_ms: u64,
}

const MAGIC: &str = "walsync-lease 1";

/// The lease as stored: a few `key=value` lines.
pub fn encode(lease: &Lease) -> String {
    let h = &lease.holder;
    format!(
        "{MAGIC}\nhost={}\npid={}\nmachine={}\nsince_ms={}\nrenewed_ms={}\nttl_ms={}\n",
        one_line(&h.host),
        h.pid,
        one_line(&h.machine),
        h.since_ms,
        lease.renewed_ms,
        lease.ttl_ms
    )
}

fn one_line(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Reads a stored lease; the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Lease, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_owned())?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("it does not start with {MAGIC:?}"));
    }
    let mut fields = std::collections::HashMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once('=') {
            fields.insert(k, v);
        }
    }
    let text_field = |k: &str| {
        fields
            .get(k)
            .map(|v| (*v).to_owned())
            .ok_or_else(|| format!("it has no {k}"))
    };
    let number = |k: &str| -> Result<u64, String> {
        text_field(k)?
            .parse()
            .map_err(|_| format!("its {k} is not a number"))
    };
    Ok(Lease {
        holder: Holder {
            host: text_field("host")?,
            pid: u32::try_from(number("pid")?).map_err(|_| "its pid is too large".to_owned())?,
            machine: text_field("machine")?,
            since_ms: number("since_ms")?,
        },
        renewed_ms: number("renewed_ms")?,
        ttl_ms: number("ttl_ms")?,
    })
}

/// A lease as read, with the times that date it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub lease: Lease,
    /// The object's `Last-Modified`, on the server's clock.
    pub modified_ms: Option<u64>,
    /// The server's time when it answered (`Date`).
    pub server_now_ms: Option<u64>,
    /// The reader's time when it read.
    pub local_now_ms: u64,
    /// Whether the holder's process is alive, asked only when it runs on
    /// the reader's machine (`None`: not asked, or not known).
    pub holder_alive: Option<bool>,
}

/// Whether a reader may take the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Written by this very process.
    Mine,
    /// Given up, expired, or its holder's process is gone: may be taken
    /// (with `If-Match` on the ETag read).
    Free(FreeBecause),
    /// Someone else holds it for at least `expires_in` more.
    Held { expires_in: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeBecause {
    Released,
    Expired,
    HolderGone,
}

/// Judges a lease read by `me`. Whole-second `Last-Modified` and `Date`
/// make the age uncertain by a second: the lease counts one second older
/// only once it surely is.
pub fn standing(seen: &Seen, me: &Holder) -> Standing {
    let lease = &seen.lease;
    if lease.holder.same_process(me) {
        return Standing::Mine;
    }
    if lease.ttl_ms == 0 {
        return Standing::Free(FreeBecause::Released);
    }
    if !me.machine.is_empty()
        && lease.holder.machine == me.machine
        && seen.holder_alive == Some(false)
    {
        return Standing::Free(FreeBecause::HolderGone);
    }
    let age_ms = match (seen.server_now_ms, seen.modified_ms) {
        (Some(now), Some(modified)) => now.saturating_sub(modified).saturating_sub(1000),
        _ => seen.local_now_ms.saturating_sub(lease.renewed_ms),
    };
    if age_ms >= lease.ttl_ms {
        Standing::Free(FreeBecause::Expired)
    } else {
        Standing::Held {
            expires_in: Duration::from_millis(lease.ttl_ms - age_ms),
        }
    }
}

/// What a holder does before a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeWrite {
    /// Write: more than half the TTL is left, enough for any one upload.
    Write,
    /// Renew first (`If-Match` on the ETag it wrote): half the TTL or more
    /// has gone by since the request that wrote the lease was sent. A
    /// renewal after the lease expired still succeeds exactly when nobody
    /// wrote the lease meanwhile.
    Renew,
}

/// `since_written`: monotonic time since the request that last wrote the
/// lease was sent (the server stamped it later than that).
pub fn before_write(since_written: Duration, ttl: Duration) -> BeforeWrite {
    if since_written < ttl / 2 {
        BeforeWrite::Write
    } else {
        BeforeWrite::Renew
    }
}

/// What the answers of the probe of conditional writes say (`claim::probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAnswers {
    /// A second `If-None-Match: *` PUT on the existing probe key was refused.
    pub refused_create_over_existing: bool,
    /// A PUT with `If-Match` on an ETag the object does not have was refused.
    pub refused_wrong_etag: bool,
}

/// `None` when the server honours both conditions; else which one it
/// ignores, for the warning.
pub fn ignored_condition(answers: ProbeAnswers) -> Option<&'static str> {
    match (
        answers.refused_create_over_existing,
        answers.refused_wrong_etag,
    ) {
        (true, true) => None,
        (false, true) => Some("If-None-Match: *"),
        (true, false) => Some("If-Match"),
        (false, false) => Some("If-None-Match: * and If-Match"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, pid: u32, machine: &str) -> Holder {
        Holder {
            host: host.to_owned(),
            pid,
            machine: machine.to_owned(),
            since_ms: 1_000,
        }
    }

    #[test]
    fn leases_round_trip_and_bad_ones_are_named() {
        let lease = Lease {
            holder: holder("db-1.example", 4242, "db-1.example/boot/pidns:[4026531836]"),
            renewed_ms: 1_764_000_000_123,
            ttl_ms: 900_000,
        };
        assert_eq!(decode(encode(&lease).as_bytes()), Ok(lease.clone()));
        let mut odd = lease.clone();
        odd.holder.host = "a\nttl_ms=0".to_owned();
        let back = decode(encode(&odd).as_bytes()).expect("decodes");
        assert_eq!(
            (back.holder.host.as_str(), back.ttl_ms),
            ("attl_ms=0", 900_000)
        );
        for (bytes, says) in [
            (&b"\xff"[..], "UTF-8"),
            (b"hello", "does not start"),
            (b"walsync-lease 1\nhost=a\n", "no pid"),
            (b"walsync-lease 1\nhost=a\npid=x\n", "pid is not a number"),
            (b"walsync-lease 1\nhost=a\npid=99999999999\n", "too large"),
        ] {
            let err = decode(bytes).expect_err("refused");
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn who_may_take_a_lease() {
        use FreeBecause::*;
        let me = holder("b", 20, "b/boot-b/ns");
        let secs = |s: u64| Duration::from_secs(s);
        let other = holder("a", 10, "a/boot-a/ns");
        let same_machine = holder("b", 11, "b/boot-b/ns");
        let unknown_machine = holder("b", 11, "");
        let me_restarted = Holder {
            since_ms: 99,
            ..me.clone()
        };
        // (holder, ttl s, modified, server now, local now, renewed, alive, standing)
        #[rustfmt::skip]
        let cases = [
            // By the server's clock: Date - Last-Modified - 1 s of doubt.
            (&other, 60, Some(100_000), Some(130_000), 0, 0, None, Standing::Held { expires_in: secs(31) }),
            (&other, 60, Some(100_000), Some(160_000), 0, 0, None, Standing::Held { expires_in: secs(1) }),
            (&other, 60, Some(100_000), Some(161_000), 0, 0, None, Standing::Free(Expired)),
            // The writer's and the reader's clocks disagree by an hour: the
            // server's clock decides.
            (&other, 60, Some(100_000), Some(130_000), 3_700_000, 0, None, Standing::Held { expires_in: secs(31) }),
            // A server time before Last-Modified (another server of a
            // cluster, a bit behind): the lease is as young as can be.
            (&other, 60, Some(100_000), Some(90_000), 0, 0, None, Standing::Held { expires_in: secs(60) }),
            // No server times: the reader's clock against the writer's.
            (&other, 60, None, Some(130_000), 150_000, 100_000, None, Standing::Held { expires_in: secs(10) }),
            (&other, 60, Some(1), None, 160_000, 100_000, None, Standing::Free(Expired)),
            (&other, 60, None, None, 90_000, 100_000, None, Standing::Held { expires_in: secs(60) }),
            // Given up.
            (&other, 0, Some(100_000), Some(100_000), 0, 0, None, Standing::Free(Released)),
            // This process (since_ms aside).
            (&me_restarted, 60, Some(100_000), Some(100_000), 0, 0, None, Standing::Mine),
            // Same machine: a dead holder's lease is free at once, a live
            // one's is held; not asked: held.
            (&same_machine, 60, Some(100_000), Some(100_000), 0, 0, Some(false), Standing::Free(HolderGone)),
            (&same_machine, 60, Some(100_000), Some(100_000), 0, 0, Some(true), Standing::Held { expires_in: secs(60) }),
            (&same_machine, 60, Some(100_000), Some(100_000), 0, 0, None, Standing::Held { expires_in: secs(60) }),
            // Another machine, or one not known: a pid says nothing.
            (&other, 60, Some(100_000), Some(100_000), 0, 0, Some(false), Standing::Held { expires_in: secs(60) }),
            (&unknown_machine, 60, Some(100_000), Some(100_000), 0, 0, Some(false), Standing::Held { expires_in: secs(60) }),
        ];
        for (i, (h, ttl, modified, server, local, renewed, alive, want)) in
            cases.into_iter().enumerate()
        {
            let seen = Seen {
                lease: Lease {
                    holder: h.clone(),
                    renewed_ms: renewed,
                    ttl_ms: ttl * 1000,
                },
                modified_ms: modified,
                server_now_ms: server,
                local_now_ms: local,
                holder_alive: alive,
            };
            assert_eq!(standing(&seen, &me), want, "case {i}");
        }
        let unknown_me = holder("b", 20, "");
        let seen = Seen {
            lease: Lease {
                holder: unknown_machine.clone(),
                renewed_ms: 0,
                ttl_ms: 60_000,
            },
            modified_ms: Some(0),
            server_now_ms: Some(0),
            local_now_ms: 0,
            holder_alive: Some(false),
        };
        assert!(matches!(
            standing(&seen, &unknown_me),
            Standing::Held { .. }
        ));
    }

    #[test]
    fn a_holder_renews_once_half_the_ttl_has_gone_by() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (since written, ttl, decision)
        for (since, ttl, want) in [
            (s(0), s(900), BeforeWrite::Write),
            (s(449), s(900), BeforeWrite::Write),
            (s(450), s(900), BeforeWrite::Renew),
            (s(899), s(900), BeforeWrite::Renew),
            (s(3600), s(900), BeforeWrite::Renew),
            (ms(1499), s(3), BeforeWrite::Write),
            (ms(1500), s(3), BeforeWrite::Renew),
            (s(0), s(0), BeforeWrite::Renew),
        ] {
            assert_eq!(before_write(since, ttl), want, "{since:?} of {ttl:?}");
        }
    }

    #[test]
    fn the_probe_names_the_condition_a_server_ignores() {
        let answers = |a, b| ProbeAnswers {
            refused_create_over_existing: a,
            refused_wrong_etag: b,
        };
        assert_eq!(ignored_condition(answers(true, true)), None);
        assert_eq!(
            ignored_condition(answers(false, true)),
            Some("If-None-Match: *")
        );
        assert_eq!(ignored_condition(answers(true, false)), Some("If-Match"));
        assert_eq!(
            ignored_condition(answers(false, false)),
            Some("If-None-Match: * and If-Match")
        );
    }

    #[test]
    fn lease_objects_are_named_apart_from_the_backup() {
        assert_eq!(lease_key("app/db"), "app/db/lease");
        assert!(is_lease_object("app/db", "app/db/lease"));
        assert!(is_lease_object("app/db", "app/db/lease.probe"));
        assert!(!is_lease_object("app/db", "app/db/x/lease"));
        assert!(!is_lease_object("app", "app/db/lease"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn stored_leases_never_panic() {
        fuzz_text(
            "lease",
            0x1EA5E,
            3000,
            &["walsync-lease 1\nhost=a\npid=1\nmachine=m\nsince_ms=1\nrenewed_ms=2\nttl_ms=3\n"],
            |text| decode(text.as_bytes()).is_ok(),
        );
    }
}
