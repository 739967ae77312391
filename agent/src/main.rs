//! `edge-agent`: the command-line edge of the agent library. Commands: `run`, `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent::config::AgentConfig;
use tokio_util::sync::CancellationToken;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("EDGE_GIT_HASH"),
    ")"
);

/// Edge inference agent: reads OPC-UA, Modbus and MQTT sensors and runs the pipeline.
#[derive(Parser, Debug)]
#[command(name = "edge-agent", version = LONG_VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run as a service until SIGTERM/SIGINT.
    Run {
        /// Agent config file (TOML).
        #[arg(long, short, env = "EDGE_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file without connecting to anything; exits non-zero on errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match AgentConfig::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} sources, {} tags, {} outputs)",
                    config.display(),
                    c.source_count(),
                    c.static_tag_count(),
                    c.outputs.file.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            edge_agent::logging::init(&cfg.log);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        signals.cancel();
    });
    let report = edge_agent::run(cfg, shutdown).await?;
    if !report.clean {
        anyhow::bail!(
            "shutdown was not clean: {} samples were dropped at the deadline",
            report.dropped_at_shutdown
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C is the only way out.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
