//! The `walsync` binary: parse arguments, set up logging, run the command,
//! map the outcome to an exit code (0 ok, 1 runtime failure, 2 usage or
//! configuration error).

use argh::FromArgs;
use walsync::cmd::output::{stderr_line, stdout_error, stdout_line};
use walsync::cmd::Cli;

fn main() {
    walsync::logging::init();
    let args: Vec<String> = std::env::args().collect();
    let name = args.first().map(String::as_str).unwrap_or("walsync");
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    // Every line goes through `output`: `println!` panics (aborts) when the
    // reader of a pipe has gone, e.g. `walsync --help | head -1`.
    let code = match Cli::from_args(&[name], &rest) {
        Ok(cli) => match cli.run() {
            Ok(()) => 0,
            Err(e) => {
                stderr_line(format_args!("walsync: {}", e.message));
                e.code
            }
        },
        Err(early) => match early.status {
            Ok(()) => {
                stdout_line(format_args!("{}", early.output));
                0
            }
            Err(()) => {
                stderr_line(format_args!("{}", early.output));
                2
            }
        },
    };
    // A closed pipe is not an error (the reader wanted no more); losing the
    // output any other way is.
    let code = match stdout_error() {
        Some(e) => {
            stderr_line(format_args!(
                "walsync: cannot write to standard output: {e}"
            ));
            code.max(1)
        }
        None => code,
    };
    std::process::exit(code);
}
