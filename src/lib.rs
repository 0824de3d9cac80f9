//! walsync: continuous backup of many SQLite databases (WAL mode) to
//! S3-compatible storage from one small synchronous process, and exact
//! restore of any of them to the newest transaction or a point in time.
//!
//! The pure core (`wal`, `format`, `keys`, `plan`, `time`, `file_pattern`,
//! `backoff`'s arithmetic, and the decision modules `daemon::schedule`,
//! `replica::sync_plan`, `replica::continuity`, `storage::s3::answers`) does
//! no I/O; the edges (`storage`, `sqlite`, `spool`, `replica`, `restore`,
//! `daemon`, `cmd`) do. docs/ARCHITECTURE.md maps the code and numbers the
//! invariants that comments cite as "ARCHITECTURE.md invariant N".

pub mod backoff;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod file_pattern;
pub mod fleet;
pub mod format;
pub mod keyfile;
pub mod keys;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod replica;
pub mod restore;
pub mod retention;
pub mod signals;
pub mod spool;
pub mod sqlite;
pub mod storage;
pub mod time;
pub mod wal;

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// An empty directory of this test run's own under the system's
    /// temporary directory (`walsync-<name>-<pid>`), whatever an earlier run
    /// left there.
    pub(crate) fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("walsync-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// How many inputs each fuzz loop tries: `WALSYNC_FUZZ_ITERS` if set
    /// (`bench/fuzz.sh` sets a large count), else the loop's `default`, small
    /// enough for every `cargo test`.
    pub(crate) fn fuzz_iters(default: u64) -> u64 {
        match std::env::var("WALSYNC_FUZZ_ITERS") {
            Ok(v) => v
                .trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("WALSYNC_FUZZ_ITERS={v:?} is not a count")),
            Err(_) => default,
        }
    }

    /// Runs `f`; a panic is counted in `panics` (the loop goes on, and the
    /// test fails at the end with the total) instead of ending the loop.
    pub(crate) fn counting_panics<T>(panics: &mut u64, f: impl FnOnce() -> T) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => Some(v),
            Err(_) => {
                *panics += 1;
                None
            }
        }
    }

    /// xorshift64: fixed seeds, so a failing input comes back on every run.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    /// Characters that break parsers written for ASCII: one of each UTF-8
    /// length (2, 3 and 4 bytes), a combining mark, the replacement
    /// character, NUL and other controls, whitespace, and the punctuation
    /// our formats give a meaning to.
    const AWKWARD: &[&str] = &[
        "é",
        "\u{301}",
        "€",
        "\u{fffd}",
        "😀",
        "\u{10ffff}",
        "\0",
        "\u{7f}",
        "\n",
        "\t",
        " ",
        "/",
        ".",
        "..",
        "-",
        "+",
        ":",
        "Z",
        "T",
        "0",
        "9",
        "{",
        "}",
        "[",
        "]",
        "!",
        "*",
        "?",
        "\\",
        "@",
        "#",
        "%",
        "=",
        "\"",
        "'",
        "<",
        ">",
        "&",
    ];

    /// One input for a text parser: random bytes read as (lossy) UTF-8,
    /// random characters (multi-byte ones included), or, most often, one of
    /// the `valid` inputs with a few characters inserted, replaced, removed
    /// or cut away, at character boundaries and with multi-byte characters,
    /// so that byte offsets computed for ASCII land inside a character.
    pub(crate) fn text_input(rng: &mut Rng, valid: &[&str]) -> String {
        match rng.below(8) {
            0 => {
                let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            1 => (0..rng.below(32))
                .map(|_| char::from_u32(rng.next() as u32 % 0x11_0000).unwrap_or('\u{fffd}'))
                .collect(),
            2 => (0..rng.below(24)).map(|_| rng.pick(AWKWARD)).collect(),
            _ => {
                let mut s = if valid.is_empty() {
                    String::new()
                } else {
                    rng.pick(valid).to_string()
                };
                for _ in 0..1 + rng.below(3) {
                    mutate_text(rng, &mut s, valid);
                }
                s
            }
        }
    }

    /// One edit of `s` at a random character boundary.
    fn mutate_text(rng: &mut Rng, s: &mut String, valid: &[&str]) {
        let boundaries: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
        let at = boundaries[rng.below(boundaries.len())];
        let next = s[at..].chars().next().map_or(at, |c| at + c.len_utf8());
        match rng.below(8) {
            // The same byte length with a character of 2, 3 or 4 bytes in
            // place of as many ASCII ones: defeats "check the length, then
            // slice at fixed offsets".
            6 | 7 => {
                let c = ['é', '€', '😀'][rng.below(3)];
                let end = at + c.len_utf8();
                if s.get(at..end).is_some_and(|t| t.is_ascii()) {
                    s.replace_range(at..end, c.encode_utf8(&mut [0; 4]));
                } else {
                    s.insert(at, c);
                }
            }
            0 => s.insert_str(at, rng.pick(AWKWARD)),
            1 => s.replace_range(at..next, rng.pick(AWKWARD)),
            2 => s.replace_range(at..next, ""),
            3 => s.truncate(at),
            4 if !valid.is_empty() => {
                // A piece of another valid input: parsers meet their own
                // syntax in the wrong place.
                let other = rng.pick(valid);
                let cut: Vec<usize> = (0..=other.len())
                    .filter(|&i| other.is_char_boundary(i))
                    .collect();
                let (a, b) = (cut[rng.below(cut.len())], cut[rng.below(cut.len())]);
                s.insert_str(at, &other[a.min(b)..a.max(b)]);
            }
            _ => {
                let c = char::from_u32(0x80 + rng.next() as u32 % 0x1_0000).unwrap_or('é');
                s.insert(at, c);
            }
        }
    }

    /// Feeds `parse` `fuzz_iters(default_iters)` inputs from [`text_input`]
    /// and fails, naming the first input that panicked, if any did. Prints
    /// one `fuzz:` line for `bench/fuzz.sh`. `parse` returns whether it
    /// accepted the input, for the count.
    pub(crate) fn fuzz_text(
        parser: &str,
        seed: u64,
        default_iters: u64,
        valid: &[&str],
        parse: impl Fn(&str) -> bool,
    ) {
        let mut rng = Rng(seed);
        let (mut inputs, mut accepted, mut panics) = (0u64, 0u64, 0u64);
        let mut first_panic: Option<String> = None;
        for _ in 0..fuzz_iters(default_iters) {
            let input = text_input(&mut rng, valid);
            inputs += 1;
            let before = panics;
            match counting_panics(&mut panics, || parse(&input)) {
                Some(true) => accepted += 1,
                Some(false) => {}
                None if before == 0 => first_panic = Some(input),
                None => {}
            }
        }
        eprintln!("fuzz: {parser}: {inputs} text inputs, {panics} panics, {accepted} accepted");
        assert_eq!(
            panics, 0,
            "{parser} panicked on {panics} inputs, first on {first_panic:?}"
        );
    }
}
