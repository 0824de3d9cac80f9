//! Which config file to read: the `--config` flag, else `./walsync.toml`,
//! else `/etc/walsync.toml`. The only part of `config` besides
//! [`super::Config::load`] that touches the filesystem (it checks which
//! files exist).

use std::path::{Path, PathBuf};

use super::ConfigError;

/// Config file looked up in the working directory when no flag names one.
pub const LOCAL_CONFIG: &str = "walsync.toml";

/// Config file looked up last.
pub const SYSTEM_CONFIG: &str = "/etc/walsync.toml";

/// The config file to use: `flag` if given (it must exist), else
/// `./walsync.toml`, else `/etc/walsync.toml`.
pub fn find_config(flag: Option<&Path>) -> Result<PathBuf, ConfigError> {
    find_config_among(
        flag,
        &[PathBuf::from(LOCAL_CONFIG), PathBuf::from(SYSTEM_CONFIG)],
    )
}

fn find_config_among(flag: Option<&Path>, candidates: &[PathBuf]) -> Result<PathBuf, ConfigError> {
    let tried: Vec<PathBuf> = match flag {
        Some(path) => vec![path.to_path_buf()],
        None => candidates.to_vec(),
    };
    match tried.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(ConfigError::NotFound { tried }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn find_config_tries_the_flag_then_the_candidates_in_order() {
        let dir = scratch_dir("find");
        let local = dir.join("walsync.toml");
        let system = dir.join("etc-walsync.toml");
        let candidates = [local.clone(), system.clone()];

        let err = find_config_among(None, &candidates).expect_err("nothing there");
        let message = err.to_string();
        assert!(
            message.contains(&local.display().to_string())
                && message.contains(&system.display().to_string()),
            "{message}"
        );

        std::fs::write(&system, "").unwrap();
        assert_eq!(find_config_among(None, &candidates).unwrap(), system);
        std::fs::write(&local, "").unwrap();
        assert_eq!(find_config_among(None, &candidates).unwrap(), local);

        let flag = dir.join("missing.toml");
        let err =
            find_config_among(Some(&flag), &candidates).expect_err("the flag is not a fallback");
        assert!(err.to_string().contains("missing.toml"), "{err}");
        assert_eq!(
            find_config_among(Some(&system), &candidates).unwrap(),
            system
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
