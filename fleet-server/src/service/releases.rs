//! Agent software release operations: trust a release signing key, push a signed release
//! file, list them, and one device's agent software as desired and as reported. Rollouts of
//! releases are ordinary rollouts of kind `agent` ([`crate::rollout`]).

use serde::{Deserialize, Serialize};

use super::{Acting, Result, ServiceError};
use crate::store::{AgentReportRow, KeyRing, ReleaseRow, TrustedKey};
use crate::types::Role;

/// Largest release file accepted through the operator API (a static ARM agent is ~16 MB;
/// an unstripped debug build several times that).
pub const MAX_RELEASE_BYTES: usize = 512 << 20;

/// The answer to a push: the stored release file, and whether it is new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOut {
    /// The stored release file.
    pub release: ReleaseRow,
    /// False when the identical file was stored already.
    pub created: bool,
}

/// A device's agent software: what it runs, what the fleet wants, the reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAgent {
    /// The device.
    pub device: String,
    /// The version it reported at its last check-in.
    pub version: Option<String>,
    /// Its target triple.
    pub target: Option<String>,
    /// The fleet release it runs (release number), if any (else its installed binary).
    pub release: Option<i64>,
    /// A release being health-checked (its SHA-256).
    pub pending: Option<String>,
    /// The release number the fleet wants it on, and the rollout that decides it.
    pub desired: Option<(i64, String)>,
    /// `in_sync` (runs the desired release), `updating` (a release pending or not yet
    /// reached), `unmanaged` (no agent rollout reaches it), `unknown` (no check-in with
    /// agent status yet).
    pub state: String,
    /// Its newest release reports, newest first.
    pub reports: Vec<AgentReportRow>,
}

impl Acting {
    /// Every stored release file, newest first.
    pub async fn releases(&self) -> Result<Vec<ReleaseRow>> {
        self.require(Role::Viewer, "the agent releases")?;
        Ok(self.store().releases().await?)
    }

    /// The keys release files must be signed with.
    pub async fn release_keys(&self) -> Result<Vec<TrustedKey>> {
        self.require(Role::Viewer, "the release signing keys")?;
        Ok(self.store().keys_of(KeyRing::Releases).await?)
    }

    /// Trusts an ed25519 public key for agent release signatures.
    pub async fn trust_release_key(&self, pem: &str) -> Result<TrustedKey> {
        self.require(Role::Admin, "trusting release signing keys")?;
        self.trust_in(KeyRing::Releases, pem, "agent.trust").await
    }

    /// Verifies and stores a signed release file.
    pub async fn push_release(&self, bytes: Vec<u8>) -> Result<ReleaseOut> {
        self.require(Role::Operator, "pushing agent releases")?;
        if bytes.is_empty() {
            return Err(ServiceError::Refused(
                "empty upload: not an agent release".into(),
            ));
        }
        match self
            .svc
            .registry()
            .push_release(bytes, &self.who.name)
            .await
        {
            Ok((release, created)) => {
                if created {
                    self.audit(
                        "agent.push",
                        &format!("edge-agent#{} {}", release.version_number, release.target),
                        &format!(
                            "version {} sha256 {} signer {}",
                            release.version, release.sha256, release.signer
                        ),
                    )
                    .await?;
                }
                Ok(ReleaseOut { release, created })
            }
            Err(e) => {
                let e = ServiceError::from(e);
                if let ServiceError::Refused(m) = &e {
                    self.audit("agent.push_refused", "", m).await?;
                }
                Err(e)
            }
        }
    }

    /// A device's agent software, desired and reported.
    pub async fn device_agent(&self, id: &str) -> Result<DeviceAgent> {
        self.require(Role::Viewer, "a device")?;
        let d = self
            .store()
            .device(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no device `{id}`")))?;
        let reported = d.checkin().and_then(|c| c.agent);
        let rollouts = self.store().rollouts().await?;
        let desired = crate::rollout::desired_agent(&rollouts, &d);
        let running = reported
            .as_ref()
            .and_then(|a| a.release.as_ref())
            .and_then(|(v, _)| i64::try_from(*v).ok());
        let state = match (&reported, &desired) {
            (None, _) => "unknown",
            (Some(_), None) => "unmanaged",
            (Some(a), Some((vn, _))) if running == Some(*vn) && a.pending.is_none() => "in_sync",
            (Some(_), Some(_)) => "updating",
        };
        Ok(DeviceAgent {
            device: d.id.clone(),
            version: reported.as_ref().map(|a| a.version.clone()),
            target: reported.as_ref().map(|a| a.target.clone()),
            release: running,
            pending: reported.and_then(|a| a.pending),
            desired,
            state: state.into(),
            reports: self.store().agent_reports(&d.id, 20).await?,
        })
    }
}
