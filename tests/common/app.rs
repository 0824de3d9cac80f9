//! The application side of a test: what a test reads back from a real
//! SQLite database (its rows, its `integrity_check`). Every test database
//! has the table `t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)`.

use std::path::Path;

use rusqlite::Connection;

/// Every row of `t`, by id.
pub fn rows(path: &Path) -> Vec<(i64, String)> {
    let c = Connection::open(path).unwrap();
    let mut s = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// What `PRAGMA integrity_check` says of the database ("ok" when sound).
pub fn integrity(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Inserts row `id` into `t`, retrying while walsync briefly holds the
/// write lock. Returns once the row is committed.
pub fn insert(c: &Connection, id: i64) {
    insert_value(
        c,
        id,
        &format!("row {id} {}", "x".repeat((id % 97) as usize * 20)),
    );
}

/// Inserts row `id` with value `v` into `t`, as `insert` does.
pub fn insert_value(c: &Connection, id: i64, v: &str) {
    loop {
        match c.execute("INSERT INTO t(id, v) VALUES (?1, ?2)", (id, v)) {
            Ok(_) => return,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => panic!("insert {id}: {e}"),
        }
    }
}

/// The application's checkpoint in `mode`: (busy, frames in the WAL,
/// frames backfilled).
pub fn app_checkpoint(c: &Connection, mode: &str) -> (i64, i64, i64) {
    c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap()
}
