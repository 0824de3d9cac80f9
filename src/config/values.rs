//! One value of the file, checked, with the key and line its error names:
//! a duration, a size (remembering where it came from, for messages that
//! compare two), a local path (resolved against the config file's
//! directory).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::Document;
use super::schema::RawSize;
use super::units::{parse_duration, parse_size};
use super::ConfigError;

const DURATION_FORM: &str =
    "write a quoted duration such as \"500ms\", \"1s\", \"10m\", \"1h30m\" or \"7d\"";

const SIZE_FORM: &str =
    "write a size such as \"4MiB\", \"64MB\" or a whole number of bytes such as 1048576";

/// Where a resolved value came from, for messages comparing two values.
#[derive(Clone)]
pub(super) struct Sourced<T> {
    pub(super) value: T,
    pub(super) key: String,
    pub(super) span: Option<Range<usize>>,
}

impl Document<'_> {
    pub(super) fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => parse_duration(v.get_ref())
                .map_err(|problem| self.error(Some(v.span()), key, problem, DURATION_FORM)),
        }
    }

    pub(super) fn size(
        &self,
        value: &Option<Spanned<RawSize>>,
        key: String,
        default: u64,
    ) -> Result<Sourced<u64>, ConfigError> {
        let Some(v) = value else {
            return Ok(Sourced {
                value: default,
                key,
                span: None,
            });
        };
        let bytes = match v.get_ref() {
            RawSize::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
            RawSize::Text(text) => parse_size(text),
        }
        .and_then(|bytes| match bytes {
            0 => Err("a threshold of zero bytes would checkpoint on every sync".to_string()),
            _ => Ok(bytes),
        })
        .map_err(|problem| self.error(Some(v.span()), &key, problem, SIZE_FORM))?;
        Ok(Sourced {
            value: bytes,
            key,
            span: Some(v.span()),
        })
    }

    /// A local path from the file: checked, resolved against the config
    /// file's directory, lexically normalised.
    pub(super) fn local_path(
        &self,
        value: &Spanned<String>,
        key: &str,
    ) -> Result<PathBuf, ConfigError> {
        let text = value.get_ref();
        let problem = if text.is_empty() {
            Some("the path is empty".to_string())
        } else if text.contains('\0') {
            Some("the path contains a NUL character".to_string())
        } else if text.starts_with('~') {
            Some(format!("{text:?} starts with '~', which is not expanded"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(self.error(
                Some(value.span()),
                key,
                problem,
                "write an absolute path, or one relative to the config file's directory",
            ));
        }
        let path = Path::new(text);
        let base = self.file.parent().unwrap_or(Path::new(""));
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        Ok(joined.components().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn sizes_may_be_integers_or_strings() {
        for (value, bytes) in [
            ("1048576", 1 << 20),
            ("\"1048576\"", 1 << 20),
            ("\"4 MiB\"", 4 << 20),
            ("\"1GB\"", 1_000_000_000),
        ] {
            let text = format!("checkpoint_threshold = {value}\ntruncate_threshold = \"1TiB\"\n{STORAGE}{DATABASE}");
            let config = parse(&text).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(config.databases[0].checkpoint_threshold, bytes, "{value}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = "[storage]\ndir = \"backup\"\n\
                    [[databases]]\npath = \"./data//a.db\"\nprefix = \"a\"\n\
                    [[databases]]\npath = \"/var/lib/b.db\"\nprefix = \"b\"\n";
        let config = parse_with(text, &[]).expect("a directory needs no credentials");
        assert_eq!(
            config.storage,
            StorageConfig::Dir(PathBuf::from("/etc/walsync/backup"))
        );
        assert_eq!(
            config.databases[0].path,
            Path::new("/etc/walsync/data/a.db")
        );
        assert_eq!(config.databases[1].path, Path::new("/var/lib/b.db"));
    }
}
