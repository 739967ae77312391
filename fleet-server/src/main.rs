//! `fleet-server`: the thin CLI over the fleet-server library. `serve` runs the HTTPS API
//! and the console; every other command is one operator operation ([`FleetOps`]), run
//! either on the data directory directly (SQLite in WAL mode is safe to share with a running
//! server; the caller acts as an admin and is audited under `--by`), or remotely through the
//! operator API with `--server URL --token-file F` (as the token's user and role).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleet_server::drift::{DriftQuery, HeatmapGroup, HeatmapQuery, Hook, PolicyRule};
use fleet_server::rollout::StartRollout;
use fleet_server::service::printable;
use fleet_server::service::views::*;
use fleet_server::service::{FleetOps, FleetService, Principal, Settings};
use fleet_server::types::{
    AlarmKind, DeviceRolloutState, DeviceSortKey, DeviceState, Role, RolloutAction, RolloutKind,
};
use fleet_server::{drift, VERSION};
use tokio_util::sync::CancellationToken;

/// `println!` / `print!` for command output: when the reader goes away
/// (`fleet-server … | head`), the command ends quietly (exit 0) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($t)*) {
            stdout_failed(e);
        }
    }};
}
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($t)*) {
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

/// Fleet server for edge-agent gateways: enrollment, model registry and rollouts, deltas,
/// ingest of buffered device data, drift, the operator console and API.
#[derive(Parser, Debug)]
#[command(name = "fleet-server", version = VERSION, about)]
struct Cli {
    /// Data directory: the embedded database (with the CA and artifacts) unless --database-url
    /// is given; always this server's TLS certificate and a copy of the CA certificate.
    #[arg(
        long,
        global = true,
        env = "FLEET_DATA_DIR",
        default_value = "/var/lib/fleet-server"
    )]
    data_dir: PathBuf,
    /// The fleet database: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=require]` for
    /// PostgreSQL (many `serve` replicas may share it); default: SQLite in the data
    /// directory. Keep the password off the command line (others can read it): use the
    /// environment variable, or a URL without it and `PGPASSWORD` or `~/.pgpass`.
    #[arg(
        long,
        global = true,
        env = "FLEET_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Operator name recorded in the audit log for commands on the data directory
    /// (default: $USER). Remote commands act as the API token's user.
    #[arg(long, global = true, env = "FLEET_OPERATOR")]
    by: Option<String>,
    /// Run the command on a running server through its operator API
    /// (https://HOST:PORT) instead of on the data directory.
    #[arg(long, global = true, env = "FLEET_SERVER", requires = "token_file")]
    server: Option<String>,
    /// File holding the API token for `--server` (`fleet-server token create`).
    #[arg(long, global = true, env = "FLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate to trust for `--server` (default: the operating system's trust
    /// store; for the fleet's own CA: `fleet-server ca export > fleet-ca.pem`).
    #[arg(long, global = true, env = "FLEET_SERVER_CA")]
    server_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTPS server: the device API (mutual TLS), the operator API and the console.
    Serve(ServeArgs),
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
    /// Agent configurations: push (fragments merged), list, show, roll out, and what each
    /// device runs. Config rollouts are steered with `model rollout promote|halt|resume|rollback`.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Agent software: sign a release of the edge-agent binary (offline), trust release
    /// keys, push releases, roll them out, and what each device runs. Agent rollouts are
    /// steered with `model rollout promote|halt|resume|rollback`.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Fleet drift: merged views per bundle version, the heatmap, retrain policies and
    /// their events.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// Model and drift alarms the devices uploaded.
    Alarm {
        #[command(subcommand)]
        command: AlarmCommand,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only this actor's entries (user name, device id, `fleet-server`).
        #[arg(long)]
        actor: Option<String>,
        /// Only actions starting with this (`rollout.`, `user.`).
        #[arg(long)]
        action: Option<String>,
    },
    /// Operator accounts (console sign-in; roles viewer, operator, admin).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// API tokens for scripts and the remote CLI.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The server's health: database, devices, rollouts, alarms, background work.
    Health,
    /// Copy the whole fleet database (the embedded SQLite of --data-dir, or --database-url)
    /// into another, empty one: devices keep their certificates and upload cursors, bundles,
    /// deltas, rollouts, accounts, history and the fleet CA move with it. Stop `serve` first:
    /// what it stores after the copy starts is not copied. Then run `serve` with the new
    /// --database-url (this data directory keeps its server certificate; another replica
    /// starts with an empty one).
    Migrate(MigrateArgs),
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
    /// The destination: `postgres://USER@HOST:PORT/DB` (an empty database; the schema is
    /// created). The password from the environment variable, `PGPASSWORD` or `~/.pgpass`.
    #[arg(long, env = "FLEET_MIGRATE_TO", hide_env_values = true)]
    to: String,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// DNS name or IP address devices and browsers use to reach this server (repeatable);
    /// goes into the server certificate.
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    names: Vec<String>,
    /// Seconds between device check-ins.
    #[arg(long, default_value_t = 10)]
    checkin_s: u64,
    /// How long device certificates are valid. Devices renew theirs automatically once two
    /// thirds of it passed (a new key made on the device; the old certificate stays valid
    /// until the new one is confirmed).
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    device_cert_validity: Duration,
    /// A device seen within this is online (default: three check-in intervals).
    #[arg(long, value_parser = humantime::parse_duration)]
    online_within: Option<Duration>,
    /// A device not seen for this long is offline; between the two it is stale
    /// (default: 30 check-in intervals, at least 10 minutes).
    #[arg(long, value_parser = humantime::parse_duration)]
    offline_after: Option<Duration>,
    /// One status history point (backlog, drops per stream) per device per this.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    history_every: Duration,
    /// How long status history points are kept.
    #[arg(long, default_value = "3d", value_parser = humantime::parse_duration)]
    history_keep: Duration,
    /// A console session ends this long after sign-in…
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// …or after this long without a request.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    session_idle: Duration,
    /// How often drift retrain policies are evaluated, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drift_check_interval: Duration,
    /// Largest bundle an operator may upload, in MiB.
    #[arg(long, default_value_t = 256)]
    max_bundle_mb: usize,
    /// Memory for request bodies in flight, all requests together, in MiB: a request is
    /// charged its body, its decoded copy and (zstd) its inflated size before its body is
    /// read; past the budget it waits up to 5 s, then gets 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..))]
    body_memory_mb: u64,
    /// Device check-ins and uploads stored per database transaction at most: whatever
    /// queued while the previous transaction committed goes in the next (a lone request is
    /// stored at once; nothing waits for a timer). 1 = one transaction per request.
    #[arg(long, default_value_t = fleet_server::DEFAULT_GROUP_COMMIT as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    group_commit: u64,
    /// How long uploaded records are kept per stream, by measurement time, e.g.
    /// `samples=7d,features=30d` (repeatable; streams samples, features, predictions,
    /// alarms, drift, events). Streams not named are kept for ever.
    #[arg(long = "retain", value_parser = fleet_server::retention::Retention::parse)]
    retain: Vec<fleet_server::retention::Retention>,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Print the CA certificate(s) devices must trust (PEM; two during a rotation).
    Export,
    /// Where the CA stands: the signing CA, the previous one during a rotation, and the
    /// devices still on another CA (JSON).
    Status,
    /// Start a CA rotation: a new CA signs device certificates; the current one stays
    /// trusted (and issues the servers' certificates) while every device renews onto the
    /// new one at its next check-in. Then `ca finish`.
    Rotate,
    /// Finish a CA rotation: the previous CA is no longer trusted. Refused while devices
    /// still hold its certificates, unless --force (they must enroll again).
    Finish {
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Create a one-time enrollment token (printed once; only its hash is stored).
    Enroll {
        /// `key=value` label for the device (repeatable): groups for rollouts.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long the token stays valid, e.g. `24h`.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// List devices (all of them, or one page with --limit/--offset).
    List {
        /// JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Only devices carrying this `key=value` label (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only devices in this state: online, stale or offline (`--online-within`,
        /// `--offline-after` of `serve`).
        #[arg(long)]
        state: Option<DeviceState>,
        /// `any` or one problem: error, backlog_growing, drops, update_failed, drift_alarm.
        #[arg(long)]
        problem: Option<ProblemSelect>,
        /// Running `NAME` or `NAME#VERSION_NUMBER`.
        #[arg(long)]
        bundle: Option<String>,
        /// Part of the id or name.
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value = "name")]
        sort: DeviceSortKey,
        #[arg(long)]
        desc: bool,
        #[arg(long)]
        limit: Option<i64>,
        #[arg(long, default_value_t = 0)]
        offset: i64,
    },
    /// One device: status, streams, updates, alarms, rollouts (JSON).
    Show { id: String },
    /// Send a command to a device: restart, reload-bundles, rebirth or resync. The device runs
    /// it at its next check-in; `--wait` waits for its answer (exit 1 when it failed).
    Command {
        id: String,
        action: SimpleCommand,
        #[arg(long)]
        wait: bool,
    },
    /// Fetch a device's recent log lines (kept in its memory, newest 1 MiB) through the fleet;
    /// waits for the device and prints them.
    Logs {
        id: String,
        /// From this long ago.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// The least level: error, warn, info, debug or trace.
        #[arg(long, default_value = "info")]
        level: String,
        /// At most this many bytes (the newest lines are kept).
        #[arg(long, default_value_t = 1 << 20)]
        max_bytes: u64,
        /// How long to wait for the device.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Fetch a device's diagnostic bundle (JSON: versions, configuration hash, sources,
    /// outbox, sync, metrics) through the fleet; waits for the device and prints it.
    Diagnostics {
        id: String,
        #[arg(long, default_value_t = 1 << 20)]
        max_bytes: u64,
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The commands sent to a device and their outcomes, newest first (JSON lines).
    Commands { id: String },
    /// The device's status history (backlog and drops per stream), JSON lines.
    History {
        id: String,
        /// From this time: RFC 3339 or a duration ago (default 24h).
        #[arg(long)]
        since: Option<String>,
    },
    /// The device's drift records (one per model and interval): per feature PSI, JS, W1, KS
    /// against the bundle's reference, as JSON lines, oldest first.
    Drift {
        id: String,
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Only this bundle's records.
        #[arg(long)]
        bundle: Option<String>,
    },
    /// The device's newest predictions, JSON lines, newest first.
    Predictions {
        id: String,
        #[arg(long, default_value_t = 20)]
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
    /// The trusted signing keys.
    Keys,
    /// Verify and store a signed bundle.
    Push { bundle: PathBuf },
    /// List stored bundles.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Compute the deltas between two stored versions and print each method's size.
    Delta { bundle: String, from: i64, to: i64 },
    /// The cached deltas to every version of a bundle, JSON lines.
    Deltas { bundle: String },
    /// Validation gates: a holdout recording each new version of a bundle name runs over
    /// (with `edge-agent replay`) and the limits it must meet before it may be rolled out.
    Gate {
        #[command(subcommand)]
        command: GateCommand,
    },
    /// Run a stored version over its name's gate holdout now and record the result (JSON).
    Validate { bundle: String, version_number: i64 },
    /// Rollouts.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
}

#[derive(Subcommand, Debug)]
enum GateCommand {
    /// Set (or replace) the gate of a bundle name; versions pushed later are validated at
    /// push. Limits on late labels need --label-tag (the recording's ground-truth tag).
    Set {
        bundle: String,
        /// The holdout recording (agent CSV, long or wide CSV).
        #[arg(long)]
        holdout: PathBuf,
        #[arg(long)]
        label_tag: Option<String>,
        /// classification (default) or regression.
        #[arg(long)]
        label_kind: Option<String>,
        /// How long after a window its label may come (default 1h).
        #[arg(long)]
        label_horizon: Option<String>,
        #[arg(long)]
        min_accuracy: Option<f64>,
        #[arg(long)]
        min_recall: Option<f64>,
        #[arg(long)]
        max_mae: Option<f64>,
        /// Largest share of holdout windows past the score threshold.
        #[arg(long)]
        max_alarm_rate: Option<f64>,
        /// Fewest predictions the run must make.
        #[arg(long, default_value_t = 1)]
        min_predictions: u64,
    },
    /// The gates, JSON lines.
    List,
    /// Remove a bundle name's gate.
    Remove { bundle: String },
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
        #[arg(long, conflicts_with = "canary_label")]
        canary_percent: Option<i64>,
        /// Canary phase: devices carrying this label first.
        #[arg(long)]
        canary_label: Option<String>,
        /// Halt automatically once this many devices report a failed update.
        #[arg(long, default_value_t = 1)]
        max_failures: i64,
        /// Roll out although the version has not passed its validation gate (audited).
        #[arg(long)]
        force: bool,
    },
    /// Rollouts with their progress, newest first.
    List,
    /// One rollout: every targeted device and where it is (JSON).
    Show { id: String },
    /// Canary phase → everyone targeted.
    Promote { id: String },
    /// Stop handing out this rollout; devices keep what they run.
    Halt { id: String },
    /// Undo a halt.
    Resume { id: String },
    /// Devices go back to the previous rollout's version.
    Rollback { id: String },
}

/// A command without parameters (`device command`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SimpleCommand {
    Restart,
    ReloadBundles,
    Rebirth,
    Resync,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Store a new version of configuration NAME: one agent configuration file, or several
    /// fragments merged in the order given (later keys win; `[[...]]` entries are appended,
    /// or replace an earlier entry with the same `name`). Inline secrets are refused.
    Push {
        name: String,
        #[arg(required = true)]
        fragments: Vec<PathBuf>,
    },
    /// Every version of every configuration.
    List,
    /// One version: its merged file (`--toml`) or everything as JSON.
    Show {
        name: String,
        version_number: i64,
        #[arg(long)]
        toml: bool,
    },
    /// Roll a configuration version out to the devices carrying all `--select` labels
    /// (`--select device=ID` style labels make it per device).
    Rollout {
        name: String,
        version_number: i64,
        #[arg(long = "select")]
        selector: Vec<String>,
        /// Canary phase: this percentage of the targeted devices first.
        #[arg(long, conflicts_with = "canary_label")]
        canary_percent: Option<i64>,
        /// Canary phase: devices carrying this label first.
        #[arg(long)]
        canary_label: Option<String>,
        /// Halt automatically once this many devices refuse or roll it back.
        #[arg(long, default_value_t = 1)]
        max_failures: i64,
    },
    /// One device's configuration: desired vs reported, and its reports (JSON).
    Status { device: String },
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Sign an edge-agent binary as a release file (offline: needs only the binary and the
    /// release signing key, e.g. from `edge-agent bundle keygen`).
    Pack {
        /// The edge-agent executable.
        #[arg(long)]
        binary: PathBuf,
        /// The Rust target triple it was built for (`aarch64-unknown-linux-musl`,
        /// `armv7-unknown-linux-musleabihf`, `x86_64-unknown-linux-gnu`, ...): devices
        /// take only their own.
        #[arg(long)]
        target: String,
        /// The version the binary reports (`edge-agent --version`); devices check it.
        #[arg(long)]
        version: String,
        /// Monotonic release number (shared by the release's targets); devices refuse a
        /// number below the highest they committed.
        #[arg(long)]
        version_number: u64,
        /// Release signing key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Free text (source revision, notes).
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Trust an ed25519 public key (PEM) for release signatures (admin).
    Trust { public_key: PathBuf },
    /// The trusted release keys.
    Keys,
    /// Verify and store a signed release file.
    Push { release: PathBuf },
    /// Every stored release file.
    List,
    /// Roll release VERSION_NUMBER out to the devices carrying all `--select` labels; each
    /// gets the file for its target.
    Rollout {
        version_number: i64,
        #[arg(long = "select")]
        selector: Vec<String>,
        /// Canary phase: this percentage of the targeted devices first.
        #[arg(long, conflicts_with = "canary_label")]
        canary_percent: Option<i64>,
        /// Canary phase: devices carrying this label first.
        #[arg(long)]
        canary_label: Option<String>,
        /// Halt automatically once this many devices fail or roll it back.
        #[arg(long, default_value_t = 1)]
        max_failures: i64,
    },
    /// One device's agent software: what it runs, what the fleet wants, its reports (JSON).
    Status { device: String },
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
    /// The newest drift of each device (or label group) per feature, banded (JSON).
    Heatmap {
        #[arg(long)]
        bundle: String,
        #[arg(long)]
        version_number: Option<u64>,
        /// `device` or `label:KEY`.
        #[arg(long, default_value = "device")]
        group_by: String,
        #[arg(long = "select")]
        select: Vec<String>,
        /// Records ending at or after this (default 24h ago).
        #[arg(long)]
        since: Option<String>,
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
        #[arg(long)]
        every: String,
        /// Consecutive drifting buckets that make an event.
        #[arg(long, default_value_t = 3)]
        intervals: u32,
        /// A bucket drifts when at least this share of its reporting devices have dataset
        /// drift in their records of the bucket, merged and scored together.
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
enum AlarmCommand {
    /// Alarms, most recently changed first (JSON lines).
    List {
        #[arg(long)]
        device: Option<String>,
        /// Only raised ones.
        #[arg(long)]
        active: bool,
        /// Only ones nobody acknowledged.
        #[arg(long)]
        unacked: bool,
        #[arg(long)]
        kind: Option<AlarmKind>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Acknowledge an alarm.
    Ack { id: String },
}

/// Where a new password comes from (default: generated and printed once).
#[derive(clap::Args, Debug)]
struct PasswordSource {
    /// Read the password from this file (first line).
    #[arg(long, conflicts_with = "password_stdin")]
    password_file: Option<PathBuf>,
    /// Read the password from standard input (first line).
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add an operator account (bootstrap: run on the data directory as the service user).
    Add {
        name: String,
        #[arg(long, default_value = "operator")]
        role: Role,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// List accounts.
    List,
    /// Remove an account: its sessions end and its API tokens are revoked.
    Remove { name: String },
    /// Set an account's password (its sessions end).
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Change an account's role.
    Role { name: String, role: Role },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create an API token (printed once; only its hash is stored).
    Create {
        /// What it is for (`ci-deploy`).
        #[arg(long)]
        name: String,
        /// At most the owner's role (default: the owner's role).
        #[arg(long)]
        role: Option<Role>,
        /// How long it stays valid, e.g. `90d`.
        #[arg(long, default_value = "90d")]
        ttl: String,
        /// Owner (default: the caller; on the data directory `--by`).
        #[arg(long)]
        user: Option<String>,
    },
    /// List API tokens (an admin sees all, others their own).
    List,
    /// Revoke an API token.
    Revoke { id: String },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // FLEET_LOG, else RUST_LOG, else info.
    let filter = EnvFilter::try_from_env("FLEET_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: redirected logs (journald, files) stay plain text.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty)
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

fn json_line<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(v)?);
    Ok(())
}

fn json_pretty<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn read_password(src: &PasswordSource) -> anyhow::Result<(String, bool)> {
    let first_line = |s: String| s.lines().next().unwrap_or("").to_string();
    if let Some(f) = &src.password_file {
        let s =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        return Ok((first_line(s), false));
    }
    if src.password_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok((first_line(s), false));
    }
    Ok((fleet_server::service::generate_password()?, true))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let who = actor(&cli.by);
    if let Command::Serve(args) = cli.command {
        return serve(args, cli.data_dir, cli.database_url).await;
    }
    if let Command::Agent {
        command:
            AgentCommand::Pack {
                binary,
                target,
                version,
                version_number,
                key,
                out,
                notes,
            },
    } = cli.command
    {
        return pack_release(&binary, target, version, version_number, &key, &out, notes);
    }
    if let Command::Migrate(args) = cli.command {
        anyhow::ensure!(
            cli.server.is_none(),
            "migrate runs on the server's machine (--data-dir / --database-url), not through --server"
        );
        return migrate(args, cli.data_dir, cli.database_url, &who).await;
    }
    match (&cli.server, &cli.token_file) {
        (Some(url), Some(file)) => {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?;
            let remote = fleet_server::remote::RemoteFleet::new(
                url,
                token.trim().to_string(),
                cli.server_ca.as_deref(),
            )?;
            run_ops(&remote, cli.command, &who).await
        }
        (Some(_), None) => anyhow::bail!("--server needs --token-file (an API token)"),
        _ => {
            let svc = FleetService::open(&cli.data_dir, cli.database_url.as_deref()).await?;
            run_ops(&svc.acting(Principal::local(&who)), cli.command, &who).await
        }
    }
}

async fn migrate(
    a: MigrateArgs,
    dir: PathBuf,
    database_url: Option<String>,
    who: &str,
) -> anyhow::Result<()> {
    use fleet_server::store::FleetStore;
    let from = FleetStore::open(&dir, database_url.as_deref()).await?;
    // What earlier releases kept as files (artifacts, the CA key) goes into the source
    // database first, so it travels with the rest.
    fleet_server::ca::FleetCa::open(&dir, &from).await?;
    fleet_server::registry::Registry::new(from.clone(), &dir)?
        .import_files()
        .await?;
    let to = FleetStore::open(&dir, Some(&a.to)).await.with_context(|| {
        format!(
            "cannot open the destination {}",
            fleet_server::store::redact_url(&a.to)
        )
    })?;
    eprintln!("copying {} into {}", from.describe(), to.describe());
    let report = from
        .copy_into(&to, |table, rows| eprintln!("  {table}: {rows} rows"))
        .await?;
    let total: u64 = report.iter().map(|(_, n)| n).sum();
    to.audit(
        who,
        "store.migrate",
        &to.describe(),
        &format!("{total} rows from {}", from.describe()),
    )
    .await?;
    outln!(
        "copied {total} rows in {} tables into {}; run the server on it with\n  fleet-server --data-dir {} --database-url '{}' serve …",
        report.len(),
        to.describe(),
        dir.display(),
        to.describe()
    );
    Ok(())
}

async fn serve(a: ServeArgs, dir: PathBuf, database_url: Option<String>) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        s2.cancel();
    });
    let mut settings = Settings::with_checkin(a.checkin_s.max(1));
    if let Some(d) = a.online_within {
        settings.online_within = d;
    }
    if let Some(d) = a.offline_after {
        settings.offline_after = d;
    }
    anyhow::ensure!(
        settings.offline_after > settings.online_within,
        "--offline-after must be longer than --online-within"
    );
    settings.history_every = a.history_every;
    settings.history_keep = a.history_keep;
    anyhow::ensure!(
        a.device_cert_validity >= Duration::from_secs(10),
        "--device-cert-validity must be at least 10s"
    );
    settings.device_cert_validity = a.device_cert_validity;
    anyhow::ensure!(
        a.session_idle >= Duration::from_secs(120),
        "--session-idle must be at least 2m (sessions are touched once a minute)"
    );
    anyhow::ensure!(
        a.session_ttl >= a.session_idle,
        "--session-ttl must be at least --session-idle"
    );
    settings.session_ttl = a.session_ttl;
    settings.session_idle = a.session_idle;
    let opts = fleet_server::ServeOptions {
        data_dir: dir.clone(),
        database_url,
        listen: a.listen,
        names: a.names,
        settings,
        drift_check: a.drift_check_interval,
        max_bundle: a.max_bundle_mb.saturating_mul(1 << 20),
        body_memory: a.body_memory_mb.saturating_mul(1 << 20),
        group_commit: a.group_commit as usize,
        retention: a.retain.into_iter().fold(
            Default::default(),
            fleet_server::retention::Retention::merge,
        ),
    };
    fleet_server::serve(opts, stop, |addr| {
        tracing::info!(data_dir = %dir.display(), "fleet-server {VERSION} listening on https://{addr} (console https://{addr}/console/; devices trust {})",
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
    Ok(())
}

async fn run_ops<F: FleetOps>(f: &F, command: Command, who: &str) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::Migrate(_) => {
            anyhow::bail!("serve and migrate are not operations")
        }
        Command::Ca { command } => match command {
            CaCommand::Export => out!("{}", f.ca_pem().await?),
            CaCommand::Status => json_pretty(&f.ca_status().await?)?,
            CaCommand::Rotate => {
                let st = f.rotate_ca().await?;
                json_pretty(&st)?;
                eprintln!(
                    "CA rotation started: {} device(s) renew onto the new CA at their next check-in; then `fleet-server ca finish`",
                    st.devices_on_other_ca.len()
                );
            }
            CaCommand::Finish { force } => json_pretty(&f.finish_ca_rotation(force).await?)?,
        },
        Command::Device { command } => device(f, command).await?,
        Command::Model { command } => model(f, command).await?,
        Command::Config { command } => config_cmd(f, command).await?,
        Command::Agent { command } => agent_cmd(f, command).await?,
        Command::Drift { command } => drift_cmd(f, command).await?,
        Command::Alarm { command } => match command {
            AlarmCommand::List {
                device,
                active,
                unacked,
                kind,
                limit,
            } => {
                let page = f
                    .alarms(&AlarmListQuery {
                        device,
                        active_only: active,
                        unacked_only: unacked,
                        kind,
                        limit,
                        ..Default::default()
                    })
                    .await?;
                for a in page.alarms {
                    json_line(&a)?;
                }
            }
            AlarmCommand::Ack { id } => {
                let a = f.ack_alarm(&id).await?;
                eprintln!(
                    "acknowledged {} ({} {} of {})",
                    a.id, a.device_id, a.kind, a.subject
                );
            }
        },
        Command::Audit {
            limit,
            actor,
            action,
        } => {
            for a in f
                .audit_log(&AuditListQuery {
                    actor,
                    action,
                    before: None,
                    limit,
                })
                .await?
            {
                outln!(
                    "{} {:<16} {:<22} {:<24} {}",
                    fmt_ms(Some(a.at)),
                    printable(&a.actor, 200),
                    printable(&a.action, 200),
                    printable(&a.subject, 200),
                    printable(&a.detail, 4096)
                );
            }
        }
        Command::User { command } => user(f, command, who).await?,
        Command::Token { command } => match command {
            TokenCommand::Create {
                name,
                role,
                ttl,
                user,
            } => {
                let user = user.or_else(|| Some(who.to_string()));
                let t = f
                    .create_token(&NewToken {
                        name,
                        role,
                        ttl: Some(ttl),
                        user,
                    })
                    .await?;
                outln!("{}", t.token);
                eprintln!(
                    "API token {} of {} (role {}), valid until {} UTC; shown once: keep it in a file readable only by you",
                    t.info.id, t.info.user_name, t.info.role, fmt_ms(Some(t.info.expires_at))
                );
            }
            TokenCommand::List => {
                outln!(
                    "{:<14} {:<20} {:<14} {:<9} {:<20} {:<20} state",
                    "id",
                    "name",
                    "user",
                    "role",
                    "expires (UTC)",
                    "last used"
                );
                for t in f.tokens().await? {
                    outln!(
                        "{:<14} {:<20} {:<14} {:<9} {:<20} {:<20} {}",
                        t.id,
                        t.name,
                        t.user_name,
                        t.role,
                        fmt_ms(Some(t.expires_at)),
                        fmt_ms(t.last_used_at),
                        if t.revoked_at.is_some() {
                            "revoked"
                        } else if t.expires_at <= fleet_server::store::now_ms() {
                            "expired"
                        } else {
                            "valid"
                        }
                    );
                }
            }
            TokenCommand::Revoke { id } => {
                f.revoke_token(&id).await?;
                eprintln!("revoked {id}");
            }
        },
        Command::Health => json_pretty(&f.health().await?)?,
    }
    Ok(())
}

async fn user<F: FleetOps>(f: &F, command: UserCommand, who: &str) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            role,
            password,
        } => {
            let (pw, generated) = read_password(&password)?;
            let u = f
                .add_user(&NewUser {
                    name: name.clone(),
                    role,
                    password: pw.clone(),
                })
                .await?;
            eprintln!("added {} ({})", u.name, u.role);
            if generated {
                outln!("{pw}");
                eprintln!("generated password printed above (shown once)");
            }
        }
        UserCommand::List => {
            outln!(
                "{:<24} {:<9} {:<20} {:<16} password changed",
                "name",
                "role",
                "created (UTC)",
                "by"
            );
            for u in f.users().await? {
                outln!(
                    "{:<24} {:<9} {:<20} {:<16} {}",
                    u.name,
                    u.role,
                    fmt_ms(Some(u.created_at)),
                    u.created_by,
                    fmt_ms(Some(u.password_changed_at))
                );
            }
        }
        UserCommand::Remove { name } => {
            f.remove_user(&name).await?;
            eprintln!("removed {name}");
        }
        UserCommand::Passwd { name, password } => {
            let (pw, generated) = read_password(&password)?;
            f.update_user(
                &name,
                &UserUpdate {
                    password: Some(pw.clone()),
                    ..Default::default()
                },
            )
            .await?;
            eprintln!("password of {name} set; their sessions ended (by {who})");
            if generated {
                outln!("{pw}");
                eprintln!("generated password printed above (shown once)");
            }
        }
        UserCommand::Role { name, role } => {
            f.update_user(
                &name,
                &UserUpdate {
                    role: Some(role),
                    ..Default::default()
                },
            )
            .await?;
            eprintln!("{name} is now {role}");
        }
    }
    Ok(())
}

async fn device<F: FleetOps>(f: &F, command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Enroll { labels, ttl } => {
            let t = f
                .create_enrollment_token(&EnrollmentTokenRequest {
                    labels,
                    ttl: Some(ttl),
                })
                .await?;
            outln!("{}", t.token);
            eprintln!(
                "one-time enrollment token, valid until {} UTC; put it in the agent's [sync] enroll_token",
                fmt_ms(Some(t.expires_at))
            );
        }
        DeviceCommand::List {
            json,
            labels,
            state,
            problem,
            bundle,
            search,
            sort,
            desc,
            limit,
            offset,
        } => {
            let mut q = DeviceQuery {
                labels,
                state,
                problem,
                bundle,
                agent_version: None,
                text: search,
                sort,
                descending: desc,
                offset,
                limit: limit.unwrap_or(MAX_PAGE),
            };
            let mut all = Vec::new();
            loop {
                let page = f.devices(&q).await?;
                let n = page.devices.len() as i64;
                all.extend(page.devices);
                if limit.is_some() || n < q.limit || q.offset + n >= page.total {
                    break;
                }
                q.offset += n;
            }
            if json {
                json_pretty(&all)?;
            } else {
                outln!(
                    "{:<20} {:<20} {:<20} {:<8} {:<22} {:<24} labels",
                    "id",
                    "name",
                    "last seen (UTC)",
                    "state",
                    "models",
                    "problems"
                );
                for d in all {
                    outln!(
                        "{:<20} {:<20} {:<20} {:<8} {:<22} {:<24} {}",
                        d.id,
                        d.name,
                        fmt_ms(d.last_seen),
                        d.state,
                        d.models.join(","),
                        d.problems
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        d.labels.join(",")
                    );
                }
            }
        }
        DeviceCommand::Show { id } => json_pretty(&f.device(&id).await?)?,
        DeviceCommand::Command { id, action, wait } => {
            use edge_wire::sync::CommandAction as A;
            let action = match action {
                SimpleCommand::Restart => A::Restart,
                SimpleCommand::ReloadBundles => A::ReloadBundles,
                SimpleCommand::Rebirth => A::Rebirth,
                SimpleCommand::Resync => A::Resync,
            };
            let c = send_and_wait(f, &id, action, wait.then_some(Duration::from_secs(120))).await?;
            outln!("{}", c.command.id);
            eprintln!(
                "command {} to {}: {}{}",
                c.command.id,
                id,
                c.state,
                c.command
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
            if c.state == "failed" {
                anyhow::bail!("the device could not run the command");
            }
        }
        DeviceCommand::Logs {
            id,
            since,
            level,
            max_bytes,
            timeout,
        } => {
            let since_ms = (chrono::Utc::now() - chrono::Duration::from_std(since)?)
                .timestamp_millis()
                .max(0) as u64;
            let action = edge_wire::sync::CommandAction::Logs {
                since_ms,
                until_ms: None,
                level,
                max_bytes,
            };
            print_attachment(send_and_wait(f, &id, action, Some(timeout)).await?)?;
        }
        DeviceCommand::Diagnostics {
            id,
            max_bytes,
            timeout,
        } => {
            let action = edge_wire::sync::CommandAction::Diagnostics { max_bytes };
            print_attachment(send_and_wait(f, &id, action, Some(timeout)).await?)?;
        }
        DeviceCommand::Commands { id } => {
            for c in f.device_commands(&id).await? {
                json_line(&c)?;
            }
        }
        DeviceCommand::History { id, since } => {
            let q = HistoryQuery::from_pairs(
                &since
                    .map(|s| vec![("since".to_string(), s)])
                    .unwrap_or_default(),
            )?;
            for p in f.device_history(&id, &q).await? {
                json_line(&p)?;
            }
        }
        DeviceCommand::Drift {
            id,
            after,
            limit,
            bundle,
        } => {
            let recs = f
                .device_drift(
                    &id,
                    &DeviceDriftQuery {
                        bundle,
                        since_ns: None,
                        limit: limit.clamp(1, MAX_PAGE),
                    },
                )
                .await?;
            for r in recs.iter().filter(|r| r.seq > after) {
                json_line(r)?;
            }
        }
        DeviceCommand::Predictions { id, limit } => {
            for p in f.device_predictions(&id, limit).await? {
                json_line(&p)?;
            }
        }
        DeviceCommand::Revoke { id } => {
            f.revoke_device(&id).await?;
            outln!("revoked {id}");
        }
        DeviceCommand::Label { id, labels } => {
            f.set_labels(&id, &labels).await?;
        }
    }
    Ok(())
}

fn read_file(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

async fn model<F: FleetOps>(f: &F, command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Trust { key } => {
            let pem = String::from_utf8(read_file(&key)?)
                .with_context(|| format!("{} is not a PEM file", key.display()))?;
            let k = f.trust_key(&pem).await?;
            outln!("trusted key {}", k.key_id);
        }
        ModelCommand::Keys => {
            for k in f.keys().await? {
                outln!(
                    "{} added by {} at {}",
                    k.key_id,
                    k.added_by,
                    fmt_ms(Some(k.added_at))
                );
            }
        }
        ModelCommand::Push { bundle } => {
            let b = f.push_bundle(read_file(&bundle)?).await?;
            let r = b.row;
            outln!(
                "{} {} (#{}) sha256 {} {} bytes",
                r.name,
                r.version,
                r.version_number,
                r.sha256,
                r.size
            );
        }
        ModelCommand::List { json } => {
            let list = f.bundles().await?;
            if json {
                return json_pretty(&list);
            }
            outln!(
                "{:<24} {:>8} {:<12} {:>10} {:<16} {:>7} sha256",
                "bundle",
                "number",
                "version",
                "bytes",
                "pushed by",
                "running"
            );
            for b in list {
                let r = b.row;
                outln!(
                    "{:<24} {:>8} {:<12} {:>10} {:<16} {:>7} {}",
                    r.name,
                    r.version_number,
                    r.version,
                    r.size,
                    r.pushed_by,
                    b.running,
                    r.sha256
                );
            }
        }
        ModelCommand::Delta { bundle, from, to } => {
            let d = f.compute_delta(&bundle, from, to).await?;
            outln!(
                "{}",
                serde_json::json!({"chosen": d.method, "bytes": d.size, "artifact": d.artifact_sha256, "all": d.sizes})
            );
        }
        ModelCommand::Deltas { bundle } => {
            for d in f.bundle_deltas(&bundle).await? {
                json_line(&d)?;
            }
        }
        ModelCommand::Gate { command } => match command {
            GateCommand::Set {
                bundle,
                holdout,
                label_tag,
                label_kind,
                label_horizon,
                min_accuracy,
                min_recall,
                max_mae,
                max_alarm_rate,
                min_predictions,
            } => {
                let bytes = std::fs::read(&holdout)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", holdout.display()))?;
                let req = GateRequest {
                    holdout_name: holdout
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    rules: fleet_server::validation::GateRules {
                        label_tag,
                        label_kind,
                        label_horizon,
                        min_accuracy,
                        min_recall,
                        max_mae,
                        max_alarm_rate,
                        min_predictions,
                    },
                };
                json_line(&f.set_gate(&bundle, &req, bytes).await?)?;
            }
            GateCommand::List => {
                for g in f.gates().await? {
                    json_line(&g)?;
                }
            }
            GateCommand::Remove { bundle } => f.remove_gate(&bundle).await?,
        },
        ModelCommand::Validate {
            bundle,
            version_number,
        } => {
            let v = f.validate_bundle(&bundle, version_number).await?;
            json_line(&v)?;
            if v.status != fleet_server::validation::ValidationStatus::Passed {
                anyhow::bail!(
                    "{bundle} #{version_number} {}: {}",
                    v.status.as_str(),
                    v.detail
                );
            }
        }
        ModelCommand::Rollout { command } => rollout(f, command).await?,
    }
    Ok(())
}

/// Sends a command; with a timeout, waits for the device's answer (polling once a second).
async fn send_and_wait<F: FleetOps>(
    f: &F,
    device: &str,
    action: edge_wire::sync::CommandAction,
    wait: Option<Duration>,
) -> anyhow::Result<fleet_server::service::commands::CommandOut> {
    use fleet_server::service::commands::CommandRequest;
    let c = f.send_command(device, &CommandRequest { action }).await?;
    let Some(timeout) = wait else {
        return Ok(c);
    };
    eprintln!(
        "command {} queued for {device}; waiting for the device (it runs commands at its next check-in)",
        c.command.id
    );
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = f.command(&c.command.id).await?;
        if matches!(now.state.as_str(), "done" | "failed" | "expired") {
            return Ok(now);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no answer from {device} within {} (the command stays queued for an hour: `device commands {device}`)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Prints a command's attachment (logs, diagnostics), or fails with the device's reason.
fn print_attachment(c: fleet_server::service::commands::CommandOut) -> anyhow::Result<()> {
    let detail = c.command.detail.clone().unwrap_or_default();
    if c.state != "done" {
        anyhow::bail!("command {} {}: {detail}", c.command.id, c.state);
    }
    eprintln!("command {}: {detail}", c.command.id);
    if let Some(a) = c.attachment {
        outln!("{}", a.trim_end());
    }
    Ok(())
}

async fn config_cmd<F: FleetOps>(f: &F, command: ConfigCommand) -> anyhow::Result<()> {
    use fleet_server::service::configs::ConfigPush;
    match command {
        ConfigCommand::Push { name, fragments } => {
            let mut list = Vec::new();
            for p in &fragments {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let label = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.display().to_string());
                list.push((label, text));
            }
            let c = f
                .push_config(&name, &ConfigPush { fragments: list })
                .await?;
            outln!("{}", c.config.version_number);
            eprintln!(
                "configuration {}#{} ({} bytes, sha256 {}){}",
                c.config.name,
                c.config.version_number,
                c.config.toml.len(),
                c.config.sha256,
                if c.created {
                    " stored"
                } else {
                    ": same as the newest version, nothing stored"
                }
            );
        }
        ConfigCommand::List => {
            for c in f.configs().await? {
                outln!(
                    "{}#{} sha256={} bytes={} fragments=[{}] by {} at {}",
                    c.name,
                    c.version_number,
                    c.sha256,
                    c.toml.len(),
                    c.fragments
                        .iter()
                        .map(|x| x.0.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    c.pushed_by,
                    c.pushed_at
                );
            }
        }
        ConfigCommand::Show {
            name,
            version_number,
            toml,
        } => {
            let c = f.config(&name, version_number).await?;
            if toml {
                outln!("{}", c.toml.trim_end());
            } else {
                json_pretty(&c)?;
            }
        }
        ConfigCommand::Rollout {
            name,
            version_number,
            selector,
            canary_percent,
            canary_label,
            max_failures,
        } => {
            let r = f
                .start_rollout(&StartRollout {
                    kind: RolloutKind::Config,
                    bundle: name,
                    version_number,
                    selector,
                    canary_percent,
                    canary_label,
                    max_failures,
                    force: false,
                })
                .await?;
            outln!("{}", r.rollout.id);
            eprintln!(
                "rollout {} of configuration {}#{} started in phase {} ({} device(s) targeted)",
                r.rollout.id,
                r.rollout.bundle,
                r.rollout.version_number,
                r.rollout.phase,
                r.targeted
            );
        }
        ConfigCommand::Status { device } => json_pretty(&f.device_config(&device).await?)?,
    }
    Ok(())
}

/// `agent pack`: signs a release file offline.
fn pack_release(
    binary: &std::path::Path,
    target: String,
    version: String,
    version_number: u64,
    key: &std::path::Path,
    out: &std::path::Path,
    notes: String,
) -> anyhow::Result<()> {
    use edge_wire::release;
    let bin = std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    anyhow::ensure!(
        bin.starts_with(b"\x7fELF"),
        "{} is not an ELF executable",
        binary.display()
    );
    let key = edge_wire::bundle::file::read_signing_key(key)?;
    let m = release::ReleaseManifest {
        format: 1,
        name: release::RELEASE_NAME.into(),
        version,
        version_number,
        target,
        binary_sha256: String::new(),
        binary_size: 0,
        notes,
    };
    let bytes = release::pack(&m, &bin, &key);
    fleet_server::registry::write_atomic(out, &bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let sha = edge_wire::bundle::file::sha256_hex(&bytes);
    outln!("{sha}");
    eprintln!(
        "wrote {}: edge-agent {} #{} for {} ({} bytes, signed by {})",
        out.display(),
        m.version,
        m.version_number,
        m.target,
        bytes.len(),
        edge_wire::bundle::file::key_id(&key.verifying_key())
    );
    Ok(())
}

async fn agent_cmd<F: FleetOps>(f: &F, command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Pack { .. } => anyhow::bail!("agent pack runs offline"),
        AgentCommand::Trust { public_key } => {
            let pem = std::fs::read_to_string(&public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let k = f.trust_release_key(&pem).await?;
            outln!("{}", k.key_id);
        }
        AgentCommand::Keys => {
            for k in f.release_keys().await? {
                outln!("{} added by {} at {}", k.key_id, k.added_by, k.added_at);
            }
        }
        AgentCommand::Push { release } => {
            let bytes = std::fs::read(&release)
                .with_context(|| format!("cannot read {}", release.display()))?;
            let r = f.push_release(bytes).await?;
            outln!("{}", r.release.version_number);
            eprintln!(
                "release edge-agent {} #{} for {} ({} bytes){}",
                r.release.version,
                r.release.version_number,
                r.release.target,
                r.release.size,
                if r.created {
                    " stored"
                } else {
                    ": stored already"
                }
            );
        }
        AgentCommand::List => {
            for r in f.releases().await? {
                outln!(
                    "#{} {} {} sha256={} bytes={} signer={} by {} at {}",
                    r.version_number,
                    r.version,
                    r.target,
                    r.sha256,
                    r.size,
                    r.signer,
                    r.pushed_by,
                    r.pushed_at
                );
            }
        }
        AgentCommand::Rollout {
            version_number,
            selector,
            canary_percent,
            canary_label,
            max_failures,
        } => {
            let r = f
                .start_rollout(&StartRollout {
                    kind: RolloutKind::Agent,
                    bundle: edge_wire::release::RELEASE_NAME.into(),
                    version_number,
                    selector,
                    canary_percent,
                    canary_label,
                    max_failures,
                    force: false,
                })
                .await?;
            outln!("{}", r.rollout.id);
            eprintln!(
                "rollout {} of agent release #{} started in phase {} ({} device(s) targeted)",
                r.rollout.id, r.rollout.version_number, r.rollout.phase, r.targeted
            );
        }
        AgentCommand::Status { device } => json_pretty(&f.device_agent(&device).await?)?,
    }
    Ok(())
}

async fn rollout<F: FleetOps>(f: &F, command: RolloutCommand) -> anyhow::Result<()> {
    let act = |id: String, a: RolloutAction| async move {
        let r = f.rollout_action(&id, a).await?;
        eprintln!(
            "rollout {} of {}#{} is {} (phase {})",
            r.rollout.id,
            r.rollout.bundle,
            r.rollout.version_number,
            r.rollout.state,
            r.rollout.phase
        );
        anyhow::Ok(())
    };
    match command {
        RolloutCommand::Start {
            bundle,
            version_number,
            selector,
            canary_percent,
            canary_label,
            max_failures,
            force,
        } => {
            let r = f
                .start_rollout(&StartRollout {
                    kind: RolloutKind::Bundle,
                    bundle,
                    version_number,
                    selector,
                    canary_percent,
                    canary_label,
                    max_failures,
                    force,
                })
                .await?;
            outln!("{}", r.rollout.id);
            eprintln!(
                "rollout {} of {}#{} started in phase {} ({} device(s) targeted)",
                r.rollout.id,
                r.rollout.bundle,
                r.rollout.version_number,
                r.rollout.phase,
                r.targeted
            );
        }
        RolloutCommand::List => {
            for s in f.rollouts().await? {
                let r = &s.rollout;
                let n = |st: DeviceRolloutState| s.progress.get(&st).copied().unwrap_or(0);
                outln!(
                    "{} {} {}#{} [{}] phase={} state={} targeted={} waiting={} pending={} downloading={} applied={} healthy={} failed={} rolled_back={} by {} at {}",
                    r.id,
                    r.kind,
                    r.bundle,
                    r.version_number,
                    r.selector.join(","),
                    r.phase,
                    r.state,
                    s.targeted,
                    n(DeviceRolloutState::Waiting),
                    n(DeviceRolloutState::Pending),
                    n(DeviceRolloutState::Downloading),
                    n(DeviceRolloutState::Applied),
                    n(DeviceRolloutState::Healthy),
                    n(DeviceRolloutState::Failed),
                    n(DeviceRolloutState::RolledBack),
                    r.created_by,
                    fmt_ms(Some(r.created_at))
                );
            }
        }
        RolloutCommand::Show { id } => json_pretty(&f.rollout(&id).await?)?,
        RolloutCommand::Promote { id } => act(id, RolloutAction::Promote).await?,
        RolloutCommand::Halt { id } => act(id, RolloutAction::Halt).await?,
        RolloutCommand::Resume { id } => act(id, RolloutAction::Resume).await?,
        RolloutCommand::Rollback { id } => act(id, RolloutAction::Rollback).await?,
    }
    Ok(())
}

async fn drift_cmd<F: FleetOps>(f: &F, command: DriftCommand) -> anyhow::Result<()> {
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
            let q = DriftQuery {
                bundle,
                version_number,
                device,
                select,
                since_ns: since.map(|t| drift::parse_time(&t, now)).transpose()?,
                until_ns: until.map(|t| drift::parse_time(&t, now)).transpose()?,
                every_ns: every.map(|e| drift::parse_every(&e)).transpose()?,
            };
            q.validate()?;
            let views = f.drift_views(&q).await?;
            if views.is_empty() {
                eprintln!("no drift records of {} match", q.bundle);
            }
            for v in views {
                json_line(&v)?;
            }
        }
        DriftCommand::Heatmap {
            bundle,
            version_number,
            group_by,
            select,
            since,
        } => {
            let now = drift::now_ns();
            let q = HeatmapQuery {
                bundle,
                version_number,
                group_by: HeatmapGroup::parse(&group_by)?,
                select,
                since_ns: match since {
                    Some(s) => drift::parse_time(&s, now)?,
                    None => now - 24 * 3600 * 1_000_000_000,
                },
                limit: 1000,
            };
            json_pretty(&f.drift_heatmap(&q).await?)?;
        }
        DriftCommand::Evaluate => {
            for e in f.evaluate_drift().await? {
                json_line(&event_line(&e))?;
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
                    (Some(c), None) => Hook::Command(c),
                    (None, Some(u)) => Hook::Url(u),
                    _ => anyhow::bail!("give exactly one of --hook-command and --hook-url"),
                };
                let p = f
                    .set_drift_policy(
                        &name,
                        &PolicyRequest {
                            bundle,
                            select,
                            every,
                            intervals,
                            rule: PolicyRule {
                                share,
                                min_accuracy,
                                min_recall,
                                max_mae,
                            },
                            hook,
                        },
                    )
                    .await?;
                eprintln!("drift policy {} set", p.name);
            }
            PolicyCommand::List => {
                for p in f.drift_policies().await? {
                    json_line(&serde_json::json!({
                        "name": p.name, "bundle": p.bundle, "select": p.select,
                        "every": p.every, "intervals": p.intervals, "rule": p.rule,
                        "hook": p.hook, "state": p.state, "by": p.created_by,
                        "updated": fmt_ms(Some(p.updated_at)),
                    }))?;
                }
            }
            PolicyCommand::Remove { name } => {
                f.remove_drift_policy(&name).await?;
                eprintln!("drift policy {name} removed");
            }
        },
        DriftCommand::Events { policy, limit } => {
            for e in f.drift_events(policy.as_deref(), limit).await? {
                json_line(&event_line(&e))?;
            }
        }
    }
    Ok(())
}

/// An event as one JSON line: its body plus how the hook went.
fn event_line(e: &EventOut) -> serde_json::Value {
    let mut v = e.body.clone();
    if !v.is_object() {
        v = serde_json::json!({ "event": e.id });
    }
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
