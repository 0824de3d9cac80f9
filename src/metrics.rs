//! Monitoring: a Prometheus text page served by one plain blocking thread.
//!
//! The dispatcher publishes each database's figures into a `Registry`
//! after every sync; `render` (pure) turns a registry snapshot into the text
//! exposition format, and `serve` answers `GET /metrics` on a listener of its
//! own. No async runtime, no HTTP library: one request per connection.
//!
//! With `[metrics] per_database = false` the page has no series per
//! database, only the process's totals and a histogram of the databases'
//! replication lag (`render_totals`): 10,000 databases times 13 series is
//! more than most Prometheus setups want.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One database's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseMetrics {
    pub path: String,
    pub prefix: String,
    pub last_sync_ms: Option<u64>,
    pub last_success_ms: Option<u64>,
    /// Since when committed changes have been waiting to be shipped (`None`:
    /// nothing is known to be waiting).
    pub pending_since_ms: Option<u64>,
    /// WAL bytes past what was shipped, at the last look.
    pub lag_bytes: u64,
    pub last_txid: u64,
    pub syncs: u64,
    pub errors: u64,
    pub commits: u64,
    pub snapshots: u64,
    pub generations: u64,
    pub puts: u64,
    pub uploaded_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Registry {
    databases: Mutex<BTreeMap<String, DatabaseMetrics>>,
    started_ms: u64,
    /// Series per database on the page (`[metrics] per_database`), or only
    /// totals and the lag histogram.
    per_database: bool,
}

impl Registry {
    /// A registry whose page has series per database.
    pub fn new(started_ms: u64) -> Registry {
        Registry::with_per_database(started_ms, true)
    }

    /// A registry whose page has series per database if `per_database`,
    /// otherwise only totals and the lag histogram.
    pub fn with_per_database(started_ms: u64, per_database: bool) -> Registry {
        Registry {
            databases: Mutex::new(BTreeMap::new()),
            started_ms,
            per_database,
        }
    }

    /// The page now (`now_ms`, wall clock).
    pub fn page(&self, now_ms: u64) -> String {
        let dbs = self.snapshot();
        if self.per_database {
            render(&dbs, self.started_ms, now_ms)
        } else {
            render_totals(&dbs, self.started_ms, now_ms)
        }
    }

    /// Changes one database's figures (creating them on first use).
    pub fn update(&self, prefix: &str, path: &str, f: impl FnOnce(&mut DatabaseMetrics)) {
        let mut dbs = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        let m = dbs
            .entry(prefix.to_string())
            .or_insert_with(|| DatabaseMetrics {
                path: path.to_string(),
                prefix: prefix.to_string(),
                ..DatabaseMetrics::default()
            });
        f(m);
    }

    pub fn remove(&self, prefix: &str) {
        self.databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prefix);
    }

    pub fn snapshot(&self) -> Vec<DatabaseMetrics> {
        self.databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The page, in the Prometheus text exposition format (version 0.0.4).
pub fn render(dbs: &[DatabaseMetrics], started_ms: u64, now_ms: u64) -> String {
    let mut out = String::new();
    type Getter = fn(&DatabaseMetrics, u64) -> Option<String>;
    let families: [(&str, &str, &str, Getter); 13] = [
        (
            "walsync_database_last_sync_timestamp_seconds",
            "gauge",
            "When the last sync of the database ended.",
            |m, _| m.last_sync_ms.map(seconds),
        ),
        (
            "walsync_database_last_success_timestamp_seconds",
            "gauge",
            "When the last successful sync ended.",
            |m, _| m.last_success_ms.map(seconds),
        ),
        (
            "walsync_database_replication_lag_seconds",
            "gauge",
            "How long committed changes have been waiting to be shipped (0: none known).",
            |m, now| {
                Some(seconds(
                    m.pending_since_ms.map_or(0, |p| now.saturating_sub(p)),
                ))
            },
        ),
        (
            "walsync_database_replication_lag_bytes",
            "gauge",
            "WAL bytes past what was shipped, at the last look.",
            |m, _| Some(m.lag_bytes.to_string()),
        ),
        (
            "walsync_database_last_txid",
            "gauge",
            "Newest transaction id shipped.",
            |m, _| Some(m.last_txid.to_string()),
        ),
        (
            "walsync_database_syncs_total",
            "counter",
            "Syncs run.",
            |m, _| Some(m.syncs.to_string()),
        ),
        (
            "walsync_database_errors_total",
            "counter",
            "Syncs that failed.",
            |m, _| Some(m.errors.to_string()),
        ),
        (
            "walsync_database_commits_total",
            "counter",
            "Transactions shipped.",
            |m, _| Some(m.commits.to_string()),
        ),
        (
            "walsync_database_snapshots_total",
            "counter",
            "Snapshots uploaded.",
            |m, _| Some(m.snapshots.to_string()),
        ),
        (
            "walsync_database_generations_total",
            "counter",
            "Generations started.",
            |m, _| Some(m.generations.to_string()),
        ),
        (
            "walsync_database_puts_total",
            "counter",
            "Objects uploaded.",
            |m, _| Some(m.puts.to_string()),
        ),
        (
            "walsync_database_uploaded_bytes_total",
            "counter",
            "Bytes uploaded.",
            |m, _| Some(m.uploaded_bytes.to_string()),
        ),
        (
            "walsync_database_up",
            "gauge",
            "1 if the last sync succeeded.",
            |m, _| {
                Some(
                    u8::from(m.last_sync_ms.is_some() && m.last_sync_ms == m.last_success_ms)
                        .to_string(),
                )
            },
        ),
    ];
    // Each database's labels, escaped once rather than once per family:
    // with 10,000 databases that was most of the page's time.
    let labels: Vec<String> = dbs
        .iter()
        .map(|m| {
            format!(
                "{{prefix=\"{}\",path=\"{}\"}} ",
                label(&m.prefix),
                label(&m.path)
            )
        })
        .collect();
    // About 13 lines of 100 bytes per database.
    out.reserve(dbs.len() * 13 * 100);
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (m, labels) in dbs.iter().zip(&labels) {
            if let Some(v) = get(m, now_ms) {
                out.push_str(name);
                out.push_str(labels);
                out.push_str(&v);
                out.push('\n');
            }
        }
    }
    let total = |f: fn(&DatabaseMetrics) -> u64| dbs.iter().map(f).sum::<u64>();
    let _ = writeln!(out, "# HELP walsync_databases Databases being replicated.\n# TYPE walsync_databases gauge\nwalsync_databases {}", dbs.len());
    let _ = writeln!(out, "# HELP walsync_puts_total Objects uploaded by the process.\n# TYPE walsync_puts_total counter\nwalsync_puts_total {}", total(|m| m.puts));
    let _ = writeln!(out, "# HELP walsync_uploaded_bytes_total Bytes uploaded by the process.\n# TYPE walsync_uploaded_bytes_total counter\nwalsync_uploaded_bytes_total {}", total(|m| m.uploaded_bytes));
    let _ = writeln!(out, "# HELP walsync_errors_total Failed syncs in the process.\n# TYPE walsync_errors_total counter\nwalsync_errors_total {}", total(|m| m.errors));
    let _ = writeln!(out, "# HELP walsync_start_time_seconds When the process started.\n# TYPE walsync_start_time_seconds gauge\nwalsync_start_time_seconds {}", seconds(started_ms));
    out
}

/// The upper bounds (seconds) of the lag histogram's buckets: from within
/// a sync interval to a day behind.
const LAG_BUCKETS_SECONDS: [u64; 9] = [1, 5, 15, 60, 300, 900, 3_600, 21_600, 86_400];

/// The page without series per database (`[metrics] per_database =
/// false`): the process's totals, and how far behind the databases are as
/// a histogram, so that its size does not grow with their number.
pub fn render_totals(dbs: &[DatabaseMetrics], started_ms: u64, now_ms: u64) -> String {
    let mut out = String::new();
    let total = |f: fn(&DatabaseMetrics) -> u64| dbs.iter().map(f).sum::<u64>();
    let failing = dbs
        .iter()
        .filter(|m| m.last_sync_ms.is_some() && m.last_sync_ms != m.last_success_ms)
        .count();
    type Total = (&'static str, &'static str, &'static str, String);
    let totals: [Total; 11] = [
        (
            "walsync_databases",
            "gauge",
            "Databases being replicated.",
            dbs.len().to_string(),
        ),
        (
            "walsync_databases_failing",
            "gauge",
            "Databases whose last sync failed.",
            failing.to_string(),
        ),
        (
            "walsync_replication_lag_bytes",
            "gauge",
            "WAL bytes past what was shipped, summed over the databases, at their last look.",
            total(|m| m.lag_bytes).to_string(),
        ),
        (
            "walsync_syncs_total",
            "counter",
            "Syncs run by the process.",
            total(|m| m.syncs).to_string(),
        ),
        (
            "walsync_errors_total",
            "counter",
            "Failed syncs in the process.",
            total(|m| m.errors).to_string(),
        ),
        (
            "walsync_commits_total",
            "counter",
            "Transactions shipped by the process.",
            total(|m| m.commits).to_string(),
        ),
        (
            "walsync_snapshots_total",
            "counter",
            "Snapshots uploaded by the process.",
            total(|m| m.snapshots).to_string(),
        ),
        (
            "walsync_generations_total",
            "counter",
            "Generations started by the process.",
            total(|m| m.generations).to_string(),
        ),
        (
            "walsync_puts_total",
            "counter",
            "Objects uploaded by the process.",
            total(|m| m.puts).to_string(),
        ),
        (
            "walsync_uploaded_bytes_total",
            "counter",
            "Bytes uploaded by the process.",
            total(|m| m.uploaded_bytes).to_string(),
        ),
        (
            "walsync_start_time_seconds",
            "gauge",
            "When the process started.",
            seconds(started_ms),
        ),
    ];
    for (name, kind, help, value) in totals {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let mut counts = [0u64; LAG_BUCKETS_SECONDS.len()];
    let mut sum_ms = 0u64;
    for m in dbs {
        let lag_ms = m.pending_since_ms.map_or(0, |p| now_ms.saturating_sub(p));
        sum_ms += lag_ms;
        // Buckets are cumulative: counted in the first that holds it here,
        // summed below.
        if let Some(i) = LAG_BUCKETS_SECONDS
            .iter()
            .position(|&le| lag_ms <= le * 1000)
        {
            counts[i] += 1;
        }
    }
    let name = "walsync_replication_lag_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long the databases' committed changes have been waiting to be shipped (0: none known).\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (le, n) in LAG_BUCKETS_SECONDS.iter().zip(counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", dbs.len());
    let _ = writeln!(out, "{name}_sum {}", seconds(sum_ms));
    let _ = writeln!(out, "{name}_count {}", dbs.len());
    out
}

/// Serves `GET /metrics` on `listen` from a thread of its own.
pub fn serve(listen: SocketAddr, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("walsync-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
            // Read the request head whole: a client may send it in pieces.
            let mut buf = [0u8; 2048];
            let mut n = 0;
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let first = head.lines().next().unwrap_or_default();
            let (status, body, ctype) = if first.starts_with("GET /metrics ") || first.starts_with("GET /metrics?") {
                let body = registry.page(crate::time::now_ms());
                ("200 OK", body, "text/plain; version=0.0.4; charset=utf-8")
            } else if first.starts_with("GET ") {
                ("404 Not Found", "walsync serves /metrics\n".to_string(), "text/plain")
            } else {
                ("405 Method Not Allowed", "GET only\n".to_string(), "text/plain")
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the text exposition format: comments, or `name{labels} value`
    /// with a valid metric name, well-formed labels and a float value.
    pub(crate) fn parse_prometheus(text: &str) -> Result<usize, String> {
        let mut samples = 0;
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            value
                .parse::<f64>()
                .map_err(|_| format!("bad value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (
                    n,
                    Some(
                        rest.strip_suffix('}')
                            .ok_or(format!("unclosed labels: {line}"))?,
                    ),
                ),
                None => (series, None),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(format!("bad name: {line}"));
            }
            if let Some(mut rest) = labels {
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").ok_or(format!("bad label: {line}"))?;
                    if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("bad label name: {line}"));
                    }
                    let mut end = None;
                    let mut esc = false;
                    for (i, c) in after.char_indices() {
                        match (esc, c) {
                            (true, _) => esc = false,
                            (false, '\\') => esc = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.ok_or(format!("unterminated label value: {line}"))?;
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
            }
            samples += 1;
        }
        Ok(samples)
    }

    #[test]
    fn page_parses_and_escapes_labels() {
        let r = Registry::new(1_000);
        r.update("tenants/acme", "/data/a\"b\\c.db", |m| {
            m.syncs = 3;
            m.last_sync_ms = Some(5_000);
            m.last_success_ms = Some(5_000);
            m.pending_since_ms = Some(9_000);
            m.puts = 2;
            m.uploaded_bytes = 100;
        });
        r.update("services/auth", "/data/auth.db", |m| m.errors = 1);
        let text = render(&r.snapshot(), 1_000, 10_500);
        // 13 families for 2 databases, less the two timestamps auth never had, plus 5 totals.
        assert_eq!(parse_prometheus(&text), Ok(13 * 2 - 2 + 5));
        assert!(text.contains("walsync_database_replication_lag_seconds{prefix=\"tenants/acme\",path=\"/data/a\\\"b\\\\c.db\"} 1.500"));
        assert!(text.contains("walsync_puts_total 2"));
        assert!(parse_prometheus("bad line").is_err());
    }

    #[test]
    fn without_series_per_database_the_page_has_totals_and_a_lag_histogram() {
        let r = Registry::with_per_database(1_000, false);
        // Lags of 0 (nothing waiting), 0.5 s, 10 s, 2 h and 2 days.
        let now = 1_000_000_000;
        for (i, pending) in [
            None,
            Some(500),
            Some(10_000),
            Some(7_200_000),
            Some(172_800_000),
        ]
        .into_iter()
        .enumerate()
        {
            r.update(&format!("db/{i}"), &format!("/data/{i}.db"), |m| {
                m.syncs = 2;
                m.commits = 5;
                m.lag_bytes = 100;
                m.pending_since_ms = pending.map(|ago| now - ago);
                m.last_sync_ms = Some(now);
                m.last_success_ms = Some(if i == 4 { now - 1 } else { now });
            });
        }
        let text = r.page(now);
        assert!(!text.contains("prefix="), "no series per database: {text}");
        // 11 totals, 10 buckets, the sum and the count.
        assert_eq!(parse_prometheus(&text), Ok(11 + 10 + 2));
        for line in [
            "walsync_databases 5",
            "walsync_databases_failing 1",
            "walsync_replication_lag_bytes 500",
            "walsync_syncs_total 10",
            "walsync_commits_total 25",
            "walsync_start_time_seconds 1.000",
            "walsync_replication_lag_seconds_bucket{le=\"1\"} 2",
            "walsync_replication_lag_seconds_bucket{le=\"5\"} 2",
            "walsync_replication_lag_seconds_bucket{le=\"15\"} 3",
            "walsync_replication_lag_seconds_bucket{le=\"3600\"} 3",
            "walsync_replication_lag_seconds_bucket{le=\"21600\"} 4",
            "walsync_replication_lag_seconds_bucket{le=\"86400\"} 4",
            "walsync_replication_lag_seconds_bucket{le=\"+Inf\"} 5",
            "walsync_replication_lag_seconds_sum 180010.500",
            "walsync_replication_lag_seconds_count 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
        }
        // The default page keeps its series per database.
        let r = Registry::new(0);
        r.update("p", "/p.db", |m| m.commits = 7);
        assert!(r
            .page(0)
            .contains("walsync_database_commits_total{prefix=\"p\",path=\"/p.db\"} 7"));
    }

    #[test]
    fn serves_the_page_over_http() {
        let r = Arc::new(Registry::new(0));
        r.update("p", "/p.db", |m| m.commits = 7);
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&r)).unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        // In pieces, as a client may send it.
        for piece in [
            &b"GET "[..],
            &b"/metrics HTTP/1.1\r\n"[..],
            &b"Host: x\r\n\r\n"[..],
        ] {
            c.write_all(piece).unwrap();
            c.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        assert!(parse_prometheus(body).unwrap() > 10);
        assert!(body.contains("walsync_database_commits_total{prefix=\"p\",path=\"/p.db\"} 7"));
    }
}
