//! [`FleetOps`]: every operator operation as one trait, implemented by [`Acting`] (the
//! service itself: the local CLI, the HTTP handlers) and by the remote client
//! ([`crate::remote::RemoteFleet`], which calls the HTTP API). The CLI is written once
//! against this trait, so local and remote commands print the same thing.

use crate::drift::{DriftQuery, DriftRecordOut, DriftView, Heatmap, HeatmapQuery};
use crate::rollout::StartRollout;
use crate::store::{AlarmRow, ApiTokenRow, AuditEntry, ConfigRow, ReleaseRow, TrustedKey};
use crate::types::RolloutAction;

use super::commands::{CommandOut, CommandRequest};
use super::configs::{ConfigOut, ConfigPush, DeviceConfig};
use super::releases::{DeviceAgent, ReleaseOut};
use super::views::*;
use super::{Acting, Result};

/// The operator operations. Used with static dispatch only (the CLI is generic over it).
#[allow(async_fn_in_trait)]
pub trait FleetOps {
    /// Who the caller is: name, role, and how they signed in.
    async fn whoami(&self) -> Result<WhoAmI>;
    /// Server health: version, uptime, database, counts and background work (viewer).
    async fn health(&self) -> Result<Health>;
    /// The fleet at a glance: counts by state, problem devices, label groups (viewer).
    async fn overview(&self) -> Result<Overview>;
    /// One page of devices matching the query, with the total (viewer).
    async fn devices(&self, q: &DeviceQuery) -> Result<DevicePage>;
    /// One device in detail: status, streams, updates, errors, alarms, rollouts (viewer).
    async fn device(&self, id: &str) -> Result<DeviceDetail>;
    /// A device's status history (viewer).
    async fn device_history(&self, id: &str, q: &HistoryQuery) -> Result<History>;
    /// A device's drift records, oldest first (viewer).
    async fn device_drift(&self, id: &str, q: &DeviceDriftQuery) -> Result<Vec<DriftRecordOut>>;
    /// A device's newest predictions, newest first (viewer).
    async fn device_predictions(&self, id: &str, limit: i64) -> Result<Vec<PredictionOut>>;
    /// Replaces a device's labels (operator).
    async fn set_labels(&self, id: &str, labels: &[String]) -> Result<DeviceSummary>;
    /// Revokes a device (operator).
    async fn revoke_device(&self, id: &str) -> Result<DeviceSummary>;
    /// Creates a one-time enrollment token; its secret is in the answer only (operator).
    async fn create_enrollment_token(&self, r: &EnrollmentTokenRequest) -> Result<EnrollmentToken>;
    /// A device's configuration, desired vs reported, with its reports (viewer).
    async fn device_config(&self, id: &str) -> Result<DeviceConfig>;
    /// Queues a command for a device, audited (operator).
    async fn send_command(&self, device: &str, r: &CommandRequest) -> Result<CommandOut>;
    /// A device's commands and their outcomes, newest first (viewer).
    async fn device_commands(&self, device: &str) -> Result<Vec<CommandOut>>;
    /// One command; its attachment for operators and admins (viewer).
    async fn command(&self, id: &str) -> Result<CommandOut>;
    /// Every version of every fleet configuration (viewer).
    async fn configs(&self) -> Result<Vec<ConfigRow>>;
    /// One version of a fleet configuration (viewer).
    async fn config(&self, name: &str, version_number: i64) -> Result<ConfigRow>;
    /// Stores a new version of a fleet configuration from fragments (operator).
    async fn push_config(&self, name: &str, p: &ConfigPush) -> Result<ConfigOut>;
    /// Every stored agent release file, newest first (viewer).
    async fn releases(&self) -> Result<Vec<ReleaseRow>>;
    /// Verifies and stores a signed agent release file (operator).
    async fn push_release(&self, bytes: Vec<u8>) -> Result<ReleaseOut>;
    /// The keys agent releases must be signed with (viewer).
    async fn release_keys(&self) -> Result<Vec<TrustedKey>>;
    /// Trusts an ed25519 public key (PEM) for agent release signatures (admin).
    async fn trust_release_key(&self, pem: &str) -> Result<TrustedKey>;
    /// A device's agent software, desired vs reported, with its reports (viewer).
    async fn device_agent(&self, id: &str) -> Result<DeviceAgent>;
    /// The keys trusted for bundle signatures (viewer).
    async fn keys(&self) -> Result<Vec<TrustedKey>>;
    /// Trusts an ed25519 public key (PEM) for bundle signatures (admin).
    async fn trust_key(&self, pem: &str) -> Result<TrustedKey>;
    /// Every stored bundle version (viewer).
    async fn bundles(&self) -> Result<Vec<BundleOut>>;
    /// Verifies and stores a signed bundle (operator).
    async fn push_bundle(&self, bytes: Vec<u8>) -> Result<BundleOut>;
    /// The cached deltas to each version of bundle `name` (viewer).
    async fn bundle_deltas(&self, name: &str) -> Result<Vec<DeltaOut>>;
    /// Computes (or returns the cached) delta between two stored versions (operator).
    async fn compute_delta(&self, name: &str, from: i64, to: i64) -> Result<DeltaOut>;
    /// Every validation gate (viewer).
    async fn gates(&self) -> Result<Vec<GateOut>>;
    /// Sets bundle name `bundle`'s validation gate: the holdout recording and its limits
    /// (operator).
    async fn set_gate(&self, bundle: &str, g: &GateRequest, holdout: Vec<u8>) -> Result<GateOut>;
    /// Removes a bundle name's validation gate (operator).
    async fn remove_gate(&self, bundle: &str) -> Result<()>;
    /// Runs a stored version over its gate's holdout and records the result (operator).
    async fn validate_bundle(&self, name: &str, version_number: i64) -> Result<ValidationOut>;
    /// Every rollout with its progress, newest first (viewer).
    async fn rollouts(&self) -> Result<Vec<RolloutSummary>>;
    /// One rollout with each targeted device's state (viewer).
    async fn rollout(&self, id: &str) -> Result<RolloutDetail>;
    /// Starts a rollout; refused past a failed validation gate unless forced (operator).
    async fn start_rollout(&self, s: &StartRollout) -> Result<RolloutSummary>;
    /// Promotes, halts, resumes or rolls back a rollout (operator).
    async fn rollout_action(&self, id: &str, action: RolloutAction) -> Result<RolloutSummary>;
    /// Fleet drift views per bundle version (viewer).
    async fn drift_views(&self, q: &DriftQuery) -> Result<Vec<DriftView>>;
    /// The drift heatmap of one bundle (viewer).
    async fn drift_heatmap(&self, q: &HeatmapQuery) -> Result<Heatmap>;
    /// Every drift retrain policy (viewer).
    async fn drift_policies(&self) -> Result<Vec<PolicyOut>>;
    /// Creates or replaces a drift policy (admin: its hook runs on the server).
    async fn set_drift_policy(&self, name: &str, p: &PolicyRequest) -> Result<PolicyOut>;
    /// Removes a drift policy (operator).
    async fn remove_drift_policy(&self, name: &str) -> Result<()>;
    /// The newest drift events, of one policy or all (viewer).
    async fn drift_events(&self, policy: Option<&str>, limit: i64) -> Result<Vec<EventOut>>;
    /// Evaluates every drift policy now and runs the hooks of new events (operator).
    async fn evaluate_drift(&self) -> Result<Vec<EventOut>>;
    /// One page of alarms, most recently changed first (viewer).
    async fn alarms(&self, q: &AlarmListQuery) -> Result<AlarmPage>;
    /// Acknowledges an alarm (operator).
    async fn ack_alarm(&self, id: &str) -> Result<AlarmRow>;
    /// The audit log, newest first (viewer).
    async fn audit_log(&self, q: &AuditListQuery) -> Result<Vec<AuditEntry>>;
    /// Every operator account (admin).
    async fn users(&self) -> Result<Vec<UserOut>>;
    /// Adds an operator account (admin).
    async fn add_user(&self, u: &NewUser) -> Result<UserOut>;
    /// Changes a user's role (admin) and/or password (one's own with the current one, or admin).
    async fn update_user(&self, name: &str, u: &UserUpdate) -> Result<UserOut>;
    /// Removes an account, ending its sessions and tokens (admin).
    async fn remove_user(&self, name: &str) -> Result<()>;
    /// API tokens: all for an admin, one's own otherwise (viewer).
    async fn tokens(&self) -> Result<Vec<ApiTokenRow>>;
    /// Creates an API token; its secret is in the answer only (viewer; admin for another user).
    async fn create_token(&self, t: &NewToken) -> Result<CreatedToken>;
    /// Revokes an API token (viewer for one's own; admin for another user's).
    async fn revoke_token(&self, id: &str) -> Result<ApiTokenRow>;
    /// The CA certificates (PEM) devices must trust: two during a rotation (viewer).
    async fn ca_pem(&self) -> Result<String>;
    /// Where the fleet CA stands (viewer).
    async fn ca_status(&self) -> Result<CaStatus>;
    /// Starts a CA rotation (admin).
    async fn rotate_ca(&self) -> Result<CaStatus>;
    /// Finishes a CA rotation; `force` even with devices still on the previous CA (admin).
    async fn finish_ca_rotation(&self, force: bool) -> Result<CaStatus>;
}

/// Delegates each trait method to the inherent method of the same name.
macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        impl FleetOps for Acting {
            $(async fn $name(&self, $($arg: $ty),*) -> Result<$ret> {
                Acting::$name(self, $($arg),*).await
            })*
        }
    };
}

delegate! {
    whoami() -> WhoAmI;
    health() -> Health;
    overview() -> Overview;
    devices(q: &DeviceQuery) -> DevicePage;
    device(id: &str) -> DeviceDetail;
    device_history(id: &str, q: &HistoryQuery) -> History;
    device_drift(id: &str, q: &DeviceDriftQuery) -> Vec<DriftRecordOut>;
    device_predictions(id: &str, limit: i64) -> Vec<PredictionOut>;
    set_labels(id: &str, labels: &[String]) -> DeviceSummary;
    revoke_device(id: &str) -> DeviceSummary;
    create_enrollment_token(r: &EnrollmentTokenRequest) -> EnrollmentToken;
    device_config(id: &str) -> DeviceConfig;
    send_command(device: &str, r: &CommandRequest) -> CommandOut;
    device_commands(device: &str) -> Vec<CommandOut>;
    command(id: &str) -> CommandOut;
    configs() -> Vec<ConfigRow>;
    config(name: &str, version_number: i64) -> ConfigRow;
    push_config(name: &str, p: &ConfigPush) -> ConfigOut;
    releases() -> Vec<ReleaseRow>;
    push_release(bytes: Vec<u8>) -> ReleaseOut;
    release_keys() -> Vec<TrustedKey>;
    trust_release_key(pem: &str) -> TrustedKey;
    device_agent(id: &str) -> DeviceAgent;
    keys() -> Vec<TrustedKey>;
    trust_key(pem: &str) -> TrustedKey;
    bundles() -> Vec<BundleOut>;
    push_bundle(bytes: Vec<u8>) -> BundleOut;
    bundle_deltas(name: &str) -> Vec<DeltaOut>;
    compute_delta(name: &str, from: i64, to: i64) -> DeltaOut;
    gates() -> Vec<GateOut>;
    set_gate(bundle: &str, g: &GateRequest, holdout: Vec<u8>) -> GateOut;
    remove_gate(bundle: &str) -> ();
    validate_bundle(name: &str, version_number: i64) -> ValidationOut;
    rollouts() -> Vec<RolloutSummary>;
    rollout(id: &str) -> RolloutDetail;
    start_rollout(s: &StartRollout) -> RolloutSummary;
    rollout_action(id: &str, action: RolloutAction) -> RolloutSummary;
    drift_views(q: &DriftQuery) -> Vec<DriftView>;
    drift_heatmap(q: &HeatmapQuery) -> Heatmap;
    drift_policies() -> Vec<PolicyOut>;
    set_drift_policy(name: &str, p: &PolicyRequest) -> PolicyOut;
    remove_drift_policy(name: &str) -> ();
    drift_events(policy: Option<&str>, limit: i64) -> Vec<EventOut>;
    evaluate_drift() -> Vec<EventOut>;
    alarms(q: &AlarmListQuery) -> AlarmPage;
    ack_alarm(id: &str) -> AlarmRow;
    audit_log(q: &AuditListQuery) -> Vec<AuditEntry>;
    users() -> Vec<UserOut>;
    add_user(u: &NewUser) -> UserOut;
    update_user(name: &str, u: &UserUpdate) -> UserOut;
    remove_user(name: &str) -> ();
    tokens() -> Vec<ApiTokenRow>;
    create_token(t: &NewToken) -> CreatedToken;
    revoke_token(id: &str) -> ApiTokenRow;
    ca_pem() -> String;
    ca_status() -> CaStatus;
    rotate_ca() -> CaStatus;
    finish_ca_rotation(force: bool) -> CaStatus;
}
