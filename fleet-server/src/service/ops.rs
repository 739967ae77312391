//! [`FleetOps`]: every operator operation as one trait, implemented by [`Acting`] (the
//! service itself: the local CLI, the HTTP handlers) and by the remote client
//! ([`crate::remote::RemoteFleet`], which calls the HTTP API). The CLI is written once
//! against this trait, so local and remote commands print the same thing.

use crate::drift::{DriftQuery, DriftRecordOut, DriftView, Heatmap, HeatmapQuery};
use crate::rollout::StartRollout;
use crate::store::{AlarmRow, ApiTokenRow, AuditEntry, ConfigRow, TrustedKey};
use crate::types::RolloutAction;

use super::commands::{CommandOut, CommandRequest};
use super::configs::{ConfigOut, ConfigPush, DeviceConfig};
use super::views::*;
use super::{Acting, Result};

/// The operator operations. Used with static dispatch only (the CLI is generic over it).
#[allow(async_fn_in_trait)]
pub trait FleetOps {
    async fn whoami(&self) -> Result<WhoAmI>;
    async fn health(&self) -> Result<Health>;
    async fn overview(&self) -> Result<Overview>;
    async fn devices(&self, q: &DeviceQuery) -> Result<DevicePage>;
    async fn device(&self, id: &str) -> Result<DeviceDetail>;
    async fn device_history(&self, id: &str, q: &HistoryQuery) -> Result<History>;
    async fn device_drift(&self, id: &str, q: &DeviceDriftQuery) -> Result<Vec<DriftRecordOut>>;
    async fn device_predictions(&self, id: &str, limit: i64) -> Result<Vec<PredictionOut>>;
    async fn set_labels(&self, id: &str, labels: &[String]) -> Result<DeviceSummary>;
    async fn revoke_device(&self, id: &str) -> Result<DeviceSummary>;
    async fn create_enrollment_token(&self, r: &EnrollmentTokenRequest) -> Result<EnrollmentToken>;
    async fn device_config(&self, id: &str) -> Result<DeviceConfig>;
    async fn send_command(&self, device: &str, r: &CommandRequest) -> Result<CommandOut>;
    async fn device_commands(&self, device: &str) -> Result<Vec<CommandOut>>;
    async fn command(&self, id: &str) -> Result<CommandOut>;
    async fn configs(&self) -> Result<Vec<ConfigRow>>;
    async fn config(&self, name: &str, version_number: i64) -> Result<ConfigRow>;
    async fn push_config(&self, name: &str, p: &ConfigPush) -> Result<ConfigOut>;
    async fn keys(&self) -> Result<Vec<TrustedKey>>;
    async fn trust_key(&self, pem: &str) -> Result<TrustedKey>;
    async fn bundles(&self) -> Result<Vec<BundleOut>>;
    async fn push_bundle(&self, bytes: Vec<u8>) -> Result<BundleOut>;
    async fn bundle_deltas(&self, name: &str) -> Result<Vec<DeltaOut>>;
    async fn compute_delta(&self, name: &str, from: i64, to: i64) -> Result<DeltaOut>;
    async fn gates(&self) -> Result<Vec<GateOut>>;
    async fn set_gate(&self, bundle: &str, g: &GateRequest, holdout: Vec<u8>) -> Result<GateOut>;
    async fn remove_gate(&self, bundle: &str) -> Result<()>;
    async fn validate_bundle(&self, name: &str, version_number: i64) -> Result<ValidationOut>;
    async fn rollouts(&self) -> Result<Vec<RolloutSummary>>;
    async fn rollout(&self, id: &str) -> Result<RolloutDetail>;
    async fn start_rollout(&self, s: &StartRollout) -> Result<RolloutSummary>;
    async fn rollout_action(&self, id: &str, action: RolloutAction) -> Result<RolloutSummary>;
    async fn drift_views(&self, q: &DriftQuery) -> Result<Vec<DriftView>>;
    async fn drift_heatmap(&self, q: &HeatmapQuery) -> Result<Heatmap>;
    async fn drift_policies(&self) -> Result<Vec<PolicyOut>>;
    async fn set_drift_policy(&self, name: &str, p: &PolicyRequest) -> Result<PolicyOut>;
    async fn remove_drift_policy(&self, name: &str) -> Result<()>;
    async fn drift_events(&self, policy: Option<&str>, limit: i64) -> Result<Vec<EventOut>>;
    async fn evaluate_drift(&self) -> Result<Vec<EventOut>>;
    async fn alarms(&self, q: &AlarmListQuery) -> Result<AlarmPage>;
    async fn ack_alarm(&self, id: &str) -> Result<AlarmRow>;
    async fn audit_log(&self, q: &AuditListQuery) -> Result<Vec<AuditEntry>>;
    async fn users(&self) -> Result<Vec<UserOut>>;
    async fn add_user(&self, u: &NewUser) -> Result<UserOut>;
    async fn update_user(&self, name: &str, u: &UserUpdate) -> Result<UserOut>;
    async fn remove_user(&self, name: &str) -> Result<()>;
    async fn tokens(&self) -> Result<Vec<ApiTokenRow>>;
    async fn create_token(&self, t: &NewToken) -> Result<CreatedToken>;
    async fn revoke_token(&self, id: &str) -> Result<ApiTokenRow>;
    async fn ca_pem(&self) -> Result<String>;
    async fn ca_status(&self) -> Result<CaStatus>;
    async fn rotate_ca(&self) -> Result<CaStatus>;
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
