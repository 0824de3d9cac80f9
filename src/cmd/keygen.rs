//! `walsync keygen [-o FILE]`: a new random 256-bit encryption key, as a
//! key file line (keyfile.rs) on standard output or in a new file of mode
//! 0600 that must not exist yet: a key is never overwritten, since the
//! backups sealed with it could not be read without it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use argh::FromArgs;

use super::CliError;
use crate::keyfile::Key;

/// write a new random encryption key (256 bits) with its key id
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keygen")]
pub struct KeygenArgs {
    /// write the key to this new file (mode 0600; an existing file is never
    /// overwritten) instead of standard output
    #[argh(option, short = 'o')]
    pub output: Option<std::path::PathBuf>,
}

pub fn run(args: KeygenArgs) -> Result<(), CliError> {
    let key = Key::generate().map_err(CliError::runtime)?;
    match args.output {
        None => outln!("{}", key.to_line()),
        Some(path) => {
            write_new_key_file(&path, &key)?;
            outln!("wrote key id {} to {}", key.id(), path.display());
        }
    }
    errln!(
        "walsync: keep a copy of this key somewhere safe apart from the backups: \
         without it they cannot be restored"
    );
    Ok(())
}

/// Creates `path` (it must not exist) with mode 0600 and the key's line.
fn write_new_key_file(path: &Path, key: &Key) -> Result<(), CliError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            CliError::usage(match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!(
                    "{} already exists; keygen never overwrites a file (it may hold the key \
                     of existing backups): choose another path",
                    path.display()
                ),
                _ => format!("cannot create {}: {e}", path.display()),
            })
        })?;
    let written = file
        .write_all(format!("{}\n", key.to_line()).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // Nothing half-written is left to be mistaken for a key.
        let _ = std::fs::remove_file(path);
        return Err(CliError::runtime(format_args!(
            "cannot write {}: {e}",
            path.display()
        )));
    }
    Ok(())
}
