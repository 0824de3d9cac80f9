//! `walsync version` and `walsync --version`: what this binary is, for bug
//! reports and fleet inventories: the walsync version, the target triple it
//! was built for, the git commit it was built from (build.rs; `unknown` for a
//! build without git) and the version of the SQLite compiled into it.

use argh::FromArgs;

use super::CliError;

/// print the version, target, git commit and SQLite version of this binary
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
pub struct VersionArgs {}

/// What `--version` prints about this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFacts {
    pub version: &'static str,
    pub target: &'static str,
    pub commit: &'static str,
    pub sqlite: &'static str,
}

impl BuildFacts {
    /// The facts of the running binary.
    pub fn current() -> BuildFacts {
        BuildFacts {
            version: env!("CARGO_PKG_VERSION"),
            target: env!("WALSYNC_TARGET"),
            commit: env!("WALSYNC_COMMIT"),
            sqlite: rusqlite::version(),
        }
    }

    /// One `walsync VERSION` line, then one `key: value` line per fact, so
    /// that both people and `grep`/`awk` read it.
    pub fn text(&self) -> String {
        format!(
            "walsync {}\ntarget: {}\ncommit: {}\nsqlite: {}",
            self.version, self.target, self.commit, self.sqlite
        )
    }
}

pub fn run(_args: VersionArgs) -> Result<(), CliError> {
    outln!("{}", BuildFacts::current().text());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text_names_every_fact_on_its_own_line() {
        let facts = BuildFacts {
            version: "1.2.3",
            target: "armv7-unknown-linux-musleabihf",
            commit: "unknown",
            sqlite: "3.50.4",
        };
        assert_eq!(
            facts.text(),
            "walsync 1.2.3\ntarget: armv7-unknown-linux-musleabihf\ncommit: unknown\nsqlite: 3.50.4"
        );
    }

    #[test]
    fn current_facts_come_from_the_build() {
        let facts = BuildFacts::current();
        assert_eq!(facts.version, env!("CARGO_PKG_VERSION"));
        assert!(facts.target.contains("linux"), "{}", facts.target);
        assert!(!facts.commit.is_empty());
        assert!(facts.sqlite.starts_with("3."), "{}", facts.sqlite);
    }
}
