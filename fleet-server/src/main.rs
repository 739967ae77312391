//! `fleet-server`: the thin CLI over the fleet-server library. `serve` runs the HTTPS API;
//! every other command works on the same data directory directly (SQLite in WAL mode is safe
//! to share with a running server) and records who did what in the audit log.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_server::{ca, drift, registry, rollout, store};
use tokio_util::sync::CancellationToken;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("EDGE_GIT_HASH"),
    ")"
);

/// Fleet server for edge-agent gateways: enrollment, model registry and rollouts, deltas,
/// ingest of buffered device data.
#[derive(Parser, Debug)]
#[command(name = "fleet-server", version = LONG_VERSION, about)]
struct Cli {
    /// Data directory: database, CA, artifacts.
    #[arg(
        long,
        global = true,
        env = "FLEET_DATA_DIR",
        default_value = "/var/lib/fleet-server"
    )]
    data_dir: PathBuf,
    /// Operator name recorded in the audit log (default: $USER).
    #[arg(long, global = true, env = "FLEET_OPERATOR")]
    by: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTPS API (mutual TLS for devices).
    Serve {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// DNS name or IP address devices use to reach this server (repeatable); goes into
        /// the server certificate.
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Seconds between device check-ins.
        #[arg(long, default_value_t = 10)]
        checkin_s: u64,
        /// File with the operator API token (`Authorization: Bearer …` on
        /// /v1/operator/…). Default: `<data-dir>/operator.token`, created (mode 0600) at the
        /// first start.
        #[arg(long)]
        operator_token_file: Option<PathBuf>,
        /// How often drift retrain policies are evaluated, e.g. `60s`.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        drift_check_interval: Duration,
    },
    /// The fleet CA certificate devices must trust (`[sync] server_ca` in the agent config).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Device registry.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Model registry and rollouts.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Fleet drift: merged views per bundle version, retrain policies and their events.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand, Debug)]
enum DriftCommand {
    /// Drift records merged per bundle version (and per `--every` bucket), scored against
    /// the bundle's reference when the registry has that version; one JSON line per view.
    Show {
        /// Bundle name.
        #[arg(long)]
        bundle: String,
        /// Only this version number (default: every version, one view each).
        #[arg(long)]
        version_number: Option<u64>,
        /// One device (default: the devices matching `--select`, or the whole fleet).
        #[arg(long, conflicts_with = "select")]
        device: Option<String>,
        /// `key=value` label the devices must carry (repeatable).
        #[arg(long = "select")]
        select: Vec<String>,
        /// Records ending at or after this: RFC 3339 or a duration ago (`2h`).
        #[arg(long)]
        since: Option<String>,
        /// Records ending before this: RFC 3339 or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// One merge per bucket of this length by record end time, e.g. `1h`.
        #[arg(long)]
        every: Option<String>,
    },
    /// Evaluate every retrain policy once now (as `serve` does periodically) and run the
    /// hooks of new events; prints the events recorded.
    Evaluate,
    /// Retrain policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Recorded retrain events, newest first, as JSON lines.
    Events {
        /// Only this policy's events.
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Create or replace a retrain policy: the group's drift records are bucketed by end
    /// time; `--intervals` consecutive drifting buckets record an event and run the hook once
    /// (again only after a calm bucket).
    #[command(group(clap::ArgGroup::new("criterion").required(true).multiple(true)
        .args(["share", "min_accuracy", "min_recall", "max_mae"])))]
    #[command(group(clap::ArgGroup::new("hook").required(true)
        .args(["hook_command", "hook_url"])))]
    Set {
        /// Policy name (A-Z a-z 0-9 - _ .).
        #[arg(long)]
        name: String,
        /// Bundle name (its latest version with records is evaluated).
        #[arg(long)]
        bundle: String,
        /// `key=value` label the devices must carry (repeatable; none: the whole fleet).
        #[arg(long = "select")]
        select: Vec<String>,
        /// Bucket length, e.g. `10m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Duration,
        /// Consecutive drifting buckets that make an event.
        #[arg(long, default_value_t = 3)]
        intervals: u32,
        /// A bucket drifts when at least this share of its reporting devices had dataset
        /// drift (in at least half of their records there).
        #[arg(long)]
        share: Option<f64>,
        /// …or when the merged accuracy (late labels) is below this…
        #[arg(long)]
        min_accuracy: Option<f64>,
        /// …or the merged recall below this…
        #[arg(long)]
        min_recall: Option<f64>,
        /// …or the merged mean absolute error above this.
        #[arg(long)]
        max_mae: Option<f64>,
        /// Run `sh -c CMD` with the event JSON on stdin and in $FLEET_DRIFT_EVENT_FILE.
        #[arg(long)]
        hook_command: Option<String>,
        /// POST the event JSON to this http:// URL.
        #[arg(long)]
        hook_url: Option<String>,
    },
    /// List retrain policies (JSON lines).
    List,
    /// Remove a retrain policy (its events stay).
    Remove {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Print the CA certificate (PEM).
    Export,
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Create a one-time enrollment token (printed once; only its hash is stored).
    Enroll {
        /// `key=value` label for the device (repeatable): groups for rollouts.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long the token stays valid, e.g. `24h`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// List devices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One device: status, streams.
    Show { id: String },
    /// The device's drift records (one per model and interval): per feature PSI, JS, W1, KS
    /// against the bundle's reference, as JSON lines, oldest first.
    Drift {
        id: String,
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Revoke a device: its certificate is refused from the next request on.
    Revoke { id: String },
    /// Replace a device's labels.
    Label { id: String, labels: Vec<String> },
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Trust an ed25519 public key (PEM) for bundle signatures.
    Trust { key: PathBuf },
    /// Verify and store a signed bundle.
    Push { bundle: PathBuf },
    /// List stored bundles.
    List,
    /// Compute the deltas between two stored versions and print each method's size.
    Delta { bundle: String, from: i64, to: i64 },
    /// Rollouts.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// Start rolling a bundle version out to the devices carrying all `--select` labels.
    Start {
        bundle: String,
        version_number: i64,
        #[arg(long = "select")]
        selector: Vec<String>,
        /// Canary phase: this percentage of the targeted devices first.
        #[arg(long)]
        canary_percent: Option<i64>,
        /// Canary phase: devices carrying this label first.
        #[arg(long)]
        canary_label: Option<String>,
        /// Halt automatically once this many devices report a failed update.
        #[arg(long, default_value_t = 1)]
        max_failures: i64,
    },
    List,
    /// Canary phase → everyone targeted.
    Promote {
        id: String,
    },
    /// Stop handing out this rollout; devices keep what they run.
    Halt {
        id: String,
    },
    /// Undo a halt.
    Resume {
        id: String,
    },
    /// Devices go back to the previous rollout's version.
    Rollback {
        id: String,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // FLEET_LOG, else RUST_LOG, else info.
    let filter = EnvFilter::try_from_env("FLEET_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn actor(by: &Option<String>) -> String {
    by.clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into())
}

fn fmt_ms(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn check_labels(labels: &[String]) -> anyhow::Result<()> {
    for l in labels {
        anyhow::ensure!(
            !l.is_empty() && !l.contains(',') && l.len() <= 64,
            "label `{l}` must be 1-64 characters without commas (e.g. site=plant1)"
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let who = actor(&cli.by);
    let dir = cli.data_dir.clone();
    match cli.command {
        Command::Serve {
            listen,
            names,
            checkin_s,
            operator_token_file,
            drift_check_interval,
        } => {
            let stop = CancellationToken::new();
            let s2 = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                s2.cancel();
            });
            let opts = fleet_server::ServeOptions {
                data_dir: dir.clone(),
                listen,
                names,
                checkin_s: checkin_s.max(1),
                operator_token_file,
                drift_check: drift_check_interval,
            };
            fleet_server::serve(opts, stop, |addr| {
                tracing::info!(data_dir = %dir.display(), "fleet-server {LONG_VERSION} listening on https://{addr} (devices trust {})",
                    dir.join("ca/ca.pem").display());
                // Under systemd (Type=notify): ready now. Elsewhere: no NOTIFY_SOCKET, a no-op.
                let status = format!("listening on https://{addr}");
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]) {
                    tracing::warn!("systemd notify failed: {e}");
                }
            })
            .await?;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            tracing::info!("stopped");
        }
        Command::Ca {
            command: CaCommand::Export,
        } => {
            let ca = ca::FleetCa::open(&dir)?;
            print!("{}", ca.ca_pem);
        }
        Command::Device { command } => {
            let st = store::FleetStore::open_dir(&dir).await?;
            match command {
                DeviceCommand::Enroll { labels, ttl } => {
                    check_labels(&labels)?;
                    let mut raw = [0u8; 24];
                    getrandom::getrandom(&mut raw)
                        .map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
                    let token = format!("et-{}", edge_protocols::bundle::file::hex(&raw));
                    let expires = store::now_ms() + ttl.as_millis() as i64;
                    st.add_token(&ca::sha256_hex(token.as_bytes()), &labels, &who, expires)
                        .await?;
                    st.audit(
                        &who,
                        "device.token",
                        &format!("labels [{}]", labels.join(",")),
                        &format!("expires {}", fmt_ms(Some(expires))),
                    )
                    .await?;
                    println!("{token}");
                    eprintln!("one-time enrollment token, valid until {} UTC; put it in the agent's [sync] enroll_token", fmt_ms(Some(expires)));
                }
                DeviceCommand::List { json } => {
                    let ds = st.devices().await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&ds)?);
                    } else {
                        println!(
                            "{:<20} {:<20} {:<20} {:<10} labels",
                            "id", "name", "last seen (UTC)", "state"
                        );
                        for d in ds {
                            println!(
                                "{:<20} {:<20} {:<20} {:<10} {}",
                                d.id,
                                d.name,
                                fmt_ms(d.last_seen),
                                if d.revoked_at.is_some() {
                                    "revoked"
                                } else {
                                    "active"
                                },
                                d.labels.join(",")
                            );
                        }
                    }
                }
                DeviceCommand::Drift { id, after, limit } => {
                    st.device(&id)
                        .await?
                        .with_context(|| format!("no device `{id}`"))?;
                    for (seq, _, body) in st.records(&id, drift::STREAM, after, limit).await? {
                        match drift::decode(&body) {
                            Ok(rec) => println!("{}", drift::record_json(seq, &rec)),
                            Err(e) => {
                                tracing::warn!(device = %id, seq, "drift record does not decode: {e}")
                            }
                        }
                    }
                }
                DeviceCommand::Show { id } => {
                    let d = st
                        .device(&id)
                        .await?
                        .with_context(|| format!("no device `{id}`"))?;
                    let marks = st.stream_marks(&id).await?;
                    let status: serde_json::Value = d
                        .status
                        .as_deref()
                        .and_then(|s| serde_json::from_str(s).ok())
                        .unwrap_or_default();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "device": d, "status": status, "streams": marks,
                        }))?
                    );
                }
                DeviceCommand::Revoke { id } => {
                    anyhow::ensure!(st.revoke(&id).await?, "no active device `{id}`");
                    st.audit(&who, "device.revoke", &id, "").await?;
                    println!("revoked {id}");
                }
                DeviceCommand::Label { id, labels } => {
                    check_labels(&labels)?;
                    anyhow::ensure!(st.set_labels(&id, &labels).await?, "no device `{id}`");
                    st.audit(&who, "device.label", &id, &labels.join(","))
                        .await?;
                }
            }
        }
        Command::Model { command } => {
            let st = store::FleetStore::open_dir(&dir).await?;
            let reg = registry::Registry::new(st.clone(), &dir)?;
            match command {
                ModelCommand::Trust { key } => {
                    let k = edge_protocols::bundle::file::read_public_key(&key)?;
                    let pem = std::fs::read_to_string(&key)?;
                    let id = edge_protocols::bundle::file::key_id(&k);
                    st.trust_key(&id, &pem, &who).await?;
                    st.audit(&who, "model.trust", &id, &key.display().to_string())
                        .await?;
                    println!("trusted key {id}");
                }
                ModelCommand::Push { bundle } => {
                    let bytes = std::fs::read(&bundle)
                        .with_context(|| format!("cannot read {}", bundle.display()))?;
                    let row = reg.push(bytes, &who).await?;
                    println!(
                        "{} {} (#{}) sha256 {} {} bytes",
                        row.name, row.version, row.version_number, row.sha256, row.size
                    );
                }
                ModelCommand::List => {
                    println!(
                        "{:<24} {:>8} {:<12} {:>10} {:<16} sha256",
                        "bundle", "number", "version", "bytes", "pushed by"
                    );
                    for b in st.bundles().await? {
                        println!(
                            "{:<24} {:>8} {:<12} {:>10} {:<16} {}",
                            b.name, b.version_number, b.version, b.size, b.pushed_by, b.sha256
                        );
                    }
                }
                ModelCommand::Delta { bundle, from, to } => {
                    let a = st
                        .bundle(&bundle, from)
                        .await?
                        .with_context(|| format!("no {bundle}#{from}"))?;
                    let b = st
                        .bundle(&bundle, to)
                        .await?
                        .with_context(|| format!("no {bundle}#{to}"))?;
                    let d = match st.delta(&a.sha256, &b.sha256).await? {
                        Some(d) => d,
                        None => reg.compute_delta(&a.sha256, &b.sha256).await?,
                    };
                    println!(
                        "{}",
                        serde_json::json!({"chosen": d.method, "bytes": d.size, "artifact": d.artifact_sha256,
                        "all": serde_json::from_str::<serde_json::Value>(&d.sizes)?})
                    );
                }
                ModelCommand::Rollout { command } => {
                    match command {
                        RolloutCommand::Start {
                            bundle,
                            version_number,
                            selector,
                            canary_percent,
                            canary_label,
                            max_failures,
                        } => {
                            let r = rollout::start(
                                &st,
                                rollout::StartRollout {
                                    bundle,
                                    version_number,
                                    selector,
                                    canary_percent,
                                    canary_label,
                                    max_failures,
                                },
                                &who,
                            )
                            .await?;
                            println!("{}", r.id);
                            eprintln!(
                                "rollout {} of {}#{} started in phase {}",
                                r.id, r.bundle, r.version_number, r.phase
                            );
                        }
                        RolloutCommand::List => {
                            for r in st.rollouts().await? {
                                let outcomes = st.rollout_outcomes(&r.id).await?;
                                let ok = outcomes.iter().filter(|o| o.1 == "applied").count();
                                println!("{} {}#{} [{}] phase={} state={} applied={} failed={} by {} at {}", r.id, r.bundle, r.version_number,
                                r.selector.join(","), r.phase, r.state, ok, outcomes.len() - ok, r.created_by, fmt_ms(Some(r.created_at)));
                            }
                        }
                        RolloutCommand::Promote { id } => {
                            rollout::act(&st, &id, "promote", &who).await?;
                        }
                        RolloutCommand::Halt { id } => {
                            rollout::act(&st, &id, "halt", &who).await?;
                        }
                        RolloutCommand::Resume { id } => {
                            rollout::act(&st, &id, "resume", &who).await?;
                        }
                        RolloutCommand::Rollback { id } => {
                            rollout::act(&st, &id, "rollback", &who).await?;
                        }
                    }
                }
            }
        }
        Command::Drift { command } => {
            let st = store::FleetStore::open_dir(&dir).await?;
            let reg = registry::Registry::new(st.clone(), &dir)?;
            run_drift(command, &st, &reg, &dir, &who).await?;
        }
        Command::Audit { limit } => {
            let st = store::FleetStore::open_dir(&dir).await?;
            for a in st.audit_log(limit).await? {
                println!(
                    "{} {:<16} {:<22} {:<24} {}",
                    fmt_ms(Some(a.at)),
                    a.actor,
                    a.action,
                    a.subject,
                    a.detail
                );
            }
        }
    }
    Ok(())
}

async fn run_drift(
    command: DriftCommand,
    st: &store::FleetStore,
    reg: &registry::Registry,
    dir: &std::path::Path,
    who: &str,
) -> anyhow::Result<()> {
    match command {
        DriftCommand::Show {
            bundle,
            version_number,
            device,
            select,
            since,
            until,
            every,
        } => {
            let now = drift::now_ns();
            let q = drift::DriftQuery {
                bundle,
                version_number,
                device,
                select,
                since_ns: since.map(|t| drift::parse_time(&t, now)).transpose()?,
                until_ns: until.map(|t| drift::parse_time(&t, now)).transpose()?,
                every_ns: every.map(|e| drift::parse_every(&e)).transpose()?,
            };
            let views = drift::show(st, reg, &q).await?;
            if views.is_empty() {
                eprintln!("no drift records of {} match", q.bundle);
            }
            for v in views {
                println!("{}", serde_json::to_string(&v)?);
            }
        }
        DriftCommand::Evaluate => {
            for e in drift::evaluate_all(st, reg, dir, drift::now_ns()).await? {
                println!("{}", event_line(&e));
            }
        }
        DriftCommand::Policy { command } => match command {
            PolicyCommand::Set {
                name,
                bundle,
                select,
                every,
                intervals,
                share,
                min_accuracy,
                min_recall,
                max_mae,
                hook_command,
                hook_url,
            } => {
                let hook = match (hook_command, hook_url) {
                    (Some(c), None) => drift::Hook::Command(c),
                    (None, Some(u)) => drift::Hook::Url(u),
                    _ => anyhow::bail!("give exactly one of --hook-command and --hook-url"),
                };
                let row = drift::set_policy(
                    st,
                    drift::NewPolicy {
                        name,
                        bundle,
                        select,
                        every,
                        intervals,
                        rule: drift::PolicyRule {
                            share,
                            min_accuracy,
                            min_recall,
                            max_mae,
                        },
                        hook,
                    },
                    who,
                )
                .await?;
                eprintln!("drift policy {} set", row.name);
            }
            PolicyCommand::List => {
                for p in st.drift_policies().await? {
                    println!(
                        "{}",
                        serde_json::json!({
                            "name": p.name, "bundle": p.bundle, "select": p.selector,
                            "every": humantime::format_duration(Duration::from_millis(p.every_ms.max(0) as u64)).to_string(),
                            "intervals": p.intervals,
                            "rule": serde_json::from_str::<serde_json::Value>(&p.rule).unwrap_or_default(),
                            "hook": serde_json::from_str::<serde_json::Value>(&p.hook).unwrap_or_default(),
                            "state": serde_json::from_str::<serde_json::Value>(&p.state).unwrap_or_default(),
                            "by": p.created_by, "updated": fmt_ms(Some(p.updated_at)),
                        })
                    );
                }
            }
            PolicyCommand::Remove { name } => {
                drift::remove_policy(st, &name, who).await?;
                eprintln!("drift policy {name} removed");
            }
        },
        DriftCommand::Events { policy, limit } => {
            for e in st.drift_events(policy.as_deref(), limit).await? {
                println!("{}", event_line(&e));
            }
        }
    }
    Ok(())
}

/// An event as one JSON line: its body plus how the hook went.
fn event_line(e: &store::DriftEventRow) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&e.body).unwrap_or_default();
    v["created"] = fmt_ms(Some(e.created_at)).into();
    v["hook_status"] = e.hook_status.clone().into();
    v["hook_detail"] = e.hook_detail.clone().into();
    v
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
