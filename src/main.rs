//! The `walsync` binary: parse arguments, set up logging, run the command,
//! map the outcome to an exit code (0 ok, 1 runtime failure, 2 usage or
//! configuration error).

use argh::FromArgs;
use walsync::cmd::Cli;

fn main() {
    walsync::logging::init();
    let args: Vec<String> = std::env::args().collect();
    let name = args.first().map(String::as_str).unwrap_or("walsync");
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let cli = match Cli::from_args(&[name], &rest) {
        Ok(cli) => cli,
        Err(early) => match early.status {
            Ok(()) => {
                println!("{}", early.output);
                std::process::exit(0);
            }
            Err(()) => {
                eprintln!("{}", early.output);
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = cli.run() {
        eprintln!("walsync: {}", e.message);
        std::process::exit(e.code);
    }
}
