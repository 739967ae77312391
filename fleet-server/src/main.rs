//! `fleet-server`: device registry, model registry and rollouts, deltas, ingest, console.
//!
//! Not built yet (issue #5): this binary only fixes the command-line contract so scripts and
//! packaging can refer to it. `serve` refuses to start rather than pretend to work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("EDGE_GIT_HASH"),
    ")"
);

/// Fleet server for edge-agent gateways.
#[derive(Parser, Debug)]
#[command(name = "fleet-server", version = LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded storage in --data-dir).
    Serve {
        #[arg(long, default_value = "/var/lib/fleet-server")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { data_dir, listen } => {
            eprintln!(
                "error: fleet-server is not implemented yet (would serve {listen} from {}); \
                 see issue #5",
                data_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
