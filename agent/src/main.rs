//! `edge-agent`: the command-line edge of the agent library. Commands: `run`, `check`,
//! `featurize`, `replay`, `bundle keygen|pack|inspect|verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent::config::AgentConfig;
use tokio_util::sync::CancellationToken;

/// `println!` for command output: when the reader goes away
/// (`edge-agent … | head`), the command ends quietly (exit 0) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($t)*) {
            stdout_failed(e);
        }
    }};
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1);
}

/// The version this binary reports: Cargo.toml's, unless the build sets `EDGE_AGENT_VERSION`
/// (release engineering, and the agent update tests build a second and third binary that
/// differ from the first only in it; docs/fleet.md "Agent software updates").
const VERSION: &str = match option_env!("EDGE_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Test builds only: a binary that exits at start of `run` (after the launcher), to prove
/// that a release which dies before it can report is rolled back. Unset in every real build.
const FAULT_EXIT_AT_START: bool = option_env!("EDGE_AGENT_FAULT_EXIT_AT_START").is_some();

/// Edge inference agent: reads OPC-UA, Modbus and MQTT sensors and runs the pipeline.
#[derive(Parser, Debug)]
#[command(name = "edge-agent", about, long_about = None)]
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
    /// Validate a config file (and the bundles it names) without connecting to anything;
    /// exits 2 on errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Internal: open an outbox database in a throw-away process so that a corruption sled
    /// crashes on cannot take the agent down (run by the agent itself before each open).
    #[command(name = edge_agent::outbox::sled_outbox::PROBE_SUBCOMMAND, hide = true)]
    ProbeOutbox { path: PathBuf },
    /// Internal: check that a panic unwinds and is caught in this build (the agent's panic
    /// isolation depends on it; cross/smoke.sh runs it on every ARM binary).
    #[command(name = "__check-unwind", hide = true)]
    CheckUnwind,
    /// Compute features from a recording (CSV) with the exact code the agent runs.
    Featurize {
        /// Bundle whose feature spec to use (its signature is not needed for this).
        #[arg(long, conflicts_with = "spec", required_unless_present = "spec")]
        bundle: Option<PathBuf>,
        /// Or a pack/spec TOML file (`[spec]` table), before any model exists.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Recording: `tag,ts_ns,value,quality` (what `[[outputs.file]] format = "csv"`
        /// writes), or a long or wide CSV (docs/models.md, "Recordings").
        #[arg(long)]
        input: PathBuf,
        /// Output CSV (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write the model input (layout + scaler applied) instead of raw features.
        #[arg(long)]
        scaled: bool,
    },
    /// Run the config's models over a recording exactly as the live pipeline would
    /// (windows, features, inference, alarms, drift) and write what a live agent publishes.
    Replay {
        /// Agent config (its [[models]], drift and label settings; sources and outputs are
        /// not used).
        #[arg(long, short)]
        config: PathBuf,
        /// Recording: the agent's CSV (`tag,ts_ns,value,quality`), or a long or wide CSV.
        #[arg(long)]
        input: PathBuf,
        /// Directory for predictions.jsonl, alarms.jsonl, drift.jsonl (default: standard
        /// output, one {"stream","name","payload"} object per line).
        #[arg(long)]
        output: Option<PathBuf>,
        /// `max` (default): as fast as it goes; a number: recorded time divided by it.
        #[arg(long, default_value = "max")]
        speed: edge_agent::sources::replay::ReplaySpeed,
        /// Also write the feature records (features.jsonl).
        #[arg(long)]
        features: bool,
    },
    /// Model bundles: keys, packing, inspection, verification.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Subcommand, Debug)]
enum BundleCommand {
    /// Create an ed25519 signing key pair: PREFIX.key.pem (keep secret) and PREFIX.pub.pem.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Pack and sign a bundle from an ONNX model, a pack spec and a training recording.
    Pack {
        /// Pack spec (TOML): name, version, version_number, [spec], [postprocess].
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        model: PathBuf,
        /// Training recording (CSV) for the reference statistics.
        #[arg(long)]
        train: PathBuf,
        /// Signing key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Lineage: revision of the training code (e.g. `git rev-parse HEAD`).
        #[arg(long)]
        code_revision: Option<String>,
        /// Lineage: a training parameter, KEY=VALUE (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Lineage: a training or validation metric, KEY=NUMBER (repeatable).
        #[arg(long = "metric", value_name = "KEY=NUMBER")]
        metrics: Vec<String>,
    },
    /// Show what a bundle contains (does not check the signature).
    Inspect {
        file: PathBuf,
        /// Print the whole manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check signature, hashes, version floor, and that the model loads with its spec.
    Verify {
        file: PathBuf,
        /// Trusted public key(s) (PEM).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Refuse version numbers below this.
        #[arg(long, default_value_t = 0)]
        floor: u64,
    },
}

/// Panics inside `catch_unwind` and reports whether it was caught. A build whose unwinder
/// cannot find the unwind tables (a broken cross toolchain) aborts here instead of at the
/// first real panic in a source task or the inference thread.
fn check_unwind() -> ExitCode {
    if cfg!(panic = "abort") {
        outln!("panics abort in this build (panic = \"abort\"): nothing to unwind");
        return ExitCode::SUCCESS;
    }
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(|| {
        let depth = std::hint::black_box(3);
        fn recurse(n: u32) -> u32 {
            if n == 0 {
                panic!("unwind check");
            }
            recurse(n - 1) + 1
        }
        recurse(depth)
    })
    .is_err();
    let _ = std::panic::take_hook();
    if caught {
        outln!("unwinding works: a panic three frames deep was caught");
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the panic was not caught");
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    edge_agent::set_version(VERSION);
    let long: &'static str =
        Box::leak(format!("{VERSION} (git {})", env!("EDGE_GIT_HASH")).into_boxed_str());
    let cli = match Cli::from_arg_matches(&Cli::command().version(long).get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::ProbeOutbox { path } => match edge_agent::outbox::SledOutbox::probe(&path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(edge_agent::outbox::sled_outbox::PROBE_SLED_ERROR as u8)
            }
        },
        Command::CheckUnwind => check_unwind(),
        Command::Check { config } => match AgentConfig::load(&config) {
            Ok(c) => {
                let problems = edge_agent::check_models(&c);
                if !problems.is_empty() {
                    eprintln!(
                        "error: config {} has {} problem(s):",
                        config.display(),
                        problems.len()
                    );
                    for p in problems {
                        eprintln!("  {p}");
                    }
                    return ExitCode::from(2);
                }
                for w in edge_agent::check_warnings(&c) {
                    eprintln!("warning: {w}");
                }
                outln!("{}: ok ({})", config.display(), c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Featurize {
            bundle,
            spec,
            input,
            output,
            scaled,
        } => {
            let res =
                edge_agent::commands::featurize::load_spec(bundle.as_deref(), spec.as_deref())
                    .and_then(|s| {
                        edge_agent::commands::featurize::featurize(
                            &s,
                            &input,
                            output.as_deref(),
                            scaled,
                        )
                        .map(|st| (st, s.rate_hz))
                    });
            match res {
                Ok((st, rate_hz)) => {
                    if let Some(w) = st.grid_warning(rate_hz) {
                        eprintln!("warning: {w}");
                    }
                    eprintln!(
                        "featurize: {} windows, {} skipped (missing data), {} late samples dropped",
                        st.windows, st.skipped_missing, st.late_samples
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Replay {
            config,
            input,
            output,
            speed,
            features,
        } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Warnings and errors go to standard error (EDGE_LOG=info for more); the records
            // to standard output or --output.
            let mut log = cfg.log.clone();
            log.level = "warn".into();
            edge_agent::logging::init(&log);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let res = rt.block_on(edge_agent::commands::replay::replay(
                cfg,
                &input,
                output.as_deref(),
                speed,
                features,
            ));
            match res {
                Ok(r) => {
                    for m in &r.models {
                        if let Some(w) = &m.grid_warning {
                            eprintln!("warning: model {}: {w}", m.name);
                        }
                        eprintln!(
                            "replay: model {}: {} windows, {} predictions, {} skipped (missing data), {} skipped (non-finite), {} inference errors, {:.1} µs per inference",
                            m.name, m.windows, m.predictions, m.skipped_missing, m.skipped_nonfinite, m.inference_errors,
                            m.inference_us as f64 / m.predictions.max(1) as f64
                        );
                    }
                    let written: Vec<String> = r
                        .written
                        .iter()
                        .map(|(s, n)| format!("{n} {}", s.name()))
                        .collect();
                    let secs = r.elapsed.as_secs_f64();
                    eprintln!(
                        "replay: {} samples in {secs:.2} s ({:.0} samples/s); wrote {}",
                        r.samples,
                        r.samples as f64 / secs.max(1e-9),
                        if written.is_empty() {
                            "nothing".into()
                        } else {
                            written.join(", ")
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Bundle(cmd) => match bundle(cmd) {
            Ok(msg) => {
                outln!("{}", msg.trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Run { config } => {
            // A fleet release of the agent replaces this process here (exec), unless this
            // is it, or none is selected.
            edge_agent::agent_update::launch(&config);
            if FAULT_EXIT_AT_START {
                eprintln!("edge-agent {VERSION}: built with EDGE_AGENT_FAULT_EXIT_AT_START: exiting at start");
                return ExitCode::from(3);
            }
            // The first load reports problems like `check` does (exit 2); a pending fleet
            // configuration that does not load is rolled back inside.
            let (cfg, file) = match edge_agent::load_for_run(&config) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            edge_agent::logging::init(&cfg.log);
            if let Ok(exe) = std::env::current_exe() {
                edge_agent::outbox::sled_outbox::use_probe_process(exe);
            }
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(run(config, cfg, file)) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The config, or exit 2 with its problems on standard error.
fn load_config(path: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// The multi-threaded runtime of `run` and `replay`.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

fn bundle(cmd: BundleCommand) -> anyhow::Result<String> {
    use edge_agent::commands::bundle as b;
    match cmd {
        BundleCommand::Inspect { file, json } => b::inspect(&file, json),
        BundleCommand::Verify { file, keys, floor } => b::verify(&file, &keys, floor),
        authoring => author(authoring),
    }
}

/// `bundle keygen|pack` (the `authoring` feature).
#[cfg(feature = "authoring")]
fn author(cmd: BundleCommand) -> anyhow::Result<String> {
    use edge_agent::commands::pack as p;
    match cmd {
        BundleCommand::Keygen { out } => {
            let (k, p) = p::keygen(&out)?;
            Ok(format!("wrote {} (private: keep it off devices) and {} (give to agents: bundles.trusted_keys)", k.display(), p.display()))
        }
        BundleCommand::Pack {
            spec,
            model,
            train,
            key,
            out,
            code_revision,
            params,
            metrics,
        } => {
            let packed = p::pack(&spec, &model, &train, &key, &out, |l| {
                l.with_flags(code_revision, &params, &metrics)
            })?;
            for w in &packed.warnings {
                eprintln!("warning: {w}");
            }
            let m = packed.manifest;
            Ok(format!(
                "wrote {}: {} {} (version number {}), {} features, reference from {} training windows",
                out.display(),
                m.name,
                m.version,
                m.version_number,
                m.features.column_names().len(),
                m.reference.windows
            ))
        }
        BundleCommand::Inspect { .. } | BundleCommand::Verify { .. } => {
            anyhow::bail!("not an authoring command")
        }
    }
}

/// Builds without the `authoring` feature (the ARM gateway builds) do not sign or pack.
#[cfg(not(feature = "authoring"))]
fn author(_: BundleCommand) -> anyhow::Result<String> {
    anyhow::bail!(
        "this edge-agent build leaves out model authoring (bundle keygen and pack; cargo feature `authoring`): \
         pack and sign bundles on a workstation, with the x86_64 build or `cargo build -p edge-agent`"
    )
}

/// Runs until a signal, starting again in the process when a new configuration file asks
/// for it (remote configuration), or exiting for systemd when it needs a new process.
async fn run(
    path: PathBuf,
    mut cfg: AgentConfig,
    mut file: edge_agent::ConfigFile,
) -> anyhow::Result<ExitCode> {
    use edge_agent::remote_config::{Restart, RESTART_EXIT_CODE};
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        signals.cancel();
    });
    loop {
        let run_stop = shutdown.child_token();
        let restart = edge_agent::remote_config::RestartRequest::new(run_stop.clone());
        let control = edge_agent::RunControl {
            file: Some(file.clone()),
            restart: Some(restart.clone()),
        };
        let pending = file.pending.is_some();
        let end = match edge_agent::run(cfg, run_stop, control).await {
            Ok(end) => end,
            // A fleet configuration that fails to start (say, a port already taken) is
            // rolled back at once; anything else ends the agent.
            Err(e) if pending && !shutdown.is_cancelled() => {
                tracing::error!("{e:#}");
                file.remote
                    .roll_back(&format!("the agent could not start with it: {e:#}"))?;
                edge_agent::RunEnd {
                    report: edge_agent::pipeline::RunReport {
                        samples: 0,
                        dropped_at_shutdown: 0,
                        clean: true,
                    },
                    restart: Some(Restart::InProcess),
                }
            }
            Err(e) => return Err(e),
        };
        if shutdown.is_cancelled() || end.restart.is_none() {
            if !end.report.clean {
                anyhow::bail!(
                    "shutdown was not clean: {} samples were dropped at the deadline",
                    end.report.dropped_at_shutdown
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if end.restart == Some(Restart::Process) {
            tracing::info!(
                code = RESTART_EXIT_CODE,
                "exiting for systemd to start the agent with its new configuration"
            );
            return Ok(ExitCode::from(RESTART_EXIT_CODE));
        }
        tracing::info!(config = %path.display(), "starting again with the configuration file");
        (cfg, file) = edge_agent::load_for_run(&path)?;
    }
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
