//! Validation gates: set, list, remove; validating a bundle version over its name's holdout
//! recording (run by `edge-agent replay`, see `crate::validation`); and the check a rollout
//! start makes.

use super::views::{GateOut, GateRequest, ValidationOut};
use super::{Acting, Result, ServiceError};
use crate::store::{now_ms, GateRow, ValidationRow};
use crate::types::Role;
use crate::validation::{self, GateRules, ValidationStatus};

/// Largest holdout recording a gate takes.
pub const MAX_HOLDOUT_BYTES: usize = 256 << 20;

fn gate_out(g: GateRow) -> GateOut {
    GateOut {
        rules: serde_json::from_str(&g.rules).unwrap_or_default(),
        bundle: g.bundle,
        holdout_name: g.holdout_name,
        holdout_sha256: g.holdout_sha256,
        holdout_size: g.holdout_size,
        created_by: g.created_by,
        created_at: g.created_at,
    }
}

pub(super) fn validation_out(v: ValidationRow) -> ValidationOut {
    ValidationOut {
        metrics: serde_json::from_str(&v.metrics).unwrap_or_default(),
        status: ValidationStatus::parse(&v.status),
        bundle: v.bundle,
        version_number: v.version_number,
        holdout_sha256: v.holdout_sha256,
        detail: v.detail,
        at: v.at,
    }
}

impl Acting {
    /// Every validation gate (viewer role).
    pub async fn gates(&self) -> Result<Vec<GateOut>> {
        self.require(Role::Viewer, "the validation gates")?;
        Ok(self
            .store()
            .gates()
            .await?
            .into_iter()
            .map(gate_out)
            .collect())
    }

    /// Sets the gate of bundle name `bundle`: the holdout recording every new version runs
    /// over before it may be rolled out, and the limits it must meet.
    pub async fn set_gate(
        &self,
        bundle: &str,
        g: &GateRequest,
        holdout: Vec<u8>,
    ) -> Result<GateOut> {
        let (holdout_name, rules) = (g.holdout_name.as_str(), &g.rules);
        self.require(Role::Operator, "setting validation gates")?;
        if bundle.trim().is_empty() {
            return Err(ServiceError::Invalid("the gate needs a bundle name".into()));
        }
        if holdout.is_empty() {
            return Err(ServiceError::Invalid(
                "the holdout recording is empty".into(),
            ));
        }
        if holdout.len() > MAX_HOLDOUT_BYTES {
            return Err(ServiceError::Invalid(format!(
                "the holdout recording is {} bytes, over the {MAX_HOLDOUT_BYTES}-byte limit",
                holdout.len()
            )));
        }
        rules
            .validate()
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let sha = edge_wire::bundle::file::sha256_hex(&holdout);
        self.store().put_artifact(&sha, &holdout).await?;
        let row = GateRow {
            bundle: bundle.to_string(),
            holdout_sha256: sha.clone(),
            holdout_name: holdout_name.to_string(),
            holdout_size: holdout.len() as i64,
            rules: serde_json::to_string(rules)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            created_by: self.who.name.clone(),
            created_at: now_ms(),
        };
        self.store().set_gate(&row).await?;
        self.audit(
            "model.gate.set",
            bundle,
            &format!("holdout {holdout_name} (sha256 {sha}) rules {}", row.rules),
        )
        .await?;
        Ok(gate_out(row))
    }

    /// Removes a bundle name's validation gate (operator role).
    pub async fn remove_gate(&self, bundle: &str) -> Result<()> {
        self.require(Role::Operator, "removing validation gates")?;
        if !self.store().remove_gate(bundle).await? {
            return Err(ServiceError::NotFound(format!(
                "no validation gate for bundle `{bundle}`"
            )));
        }
        self.audit("model.gate.remove", bundle, "").await
    }

    /// Runs `name` #`version_number` over its gate's holdout with the devices' code and
    /// records the result (replacing an earlier one).
    pub async fn validate_bundle(&self, name: &str, version_number: i64) -> Result<ValidationOut> {
        self.require(Role::Operator, "validating bundles")?;
        let gate = self.store().gate(name).await?.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no validation gate for bundle `{name}`: set one with `fleet-server model gate set {name} --holdout FILE …`"
            ))
        })?;
        let row = self
            .store()
            .bundle(name, version_number)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no bundle {name} #{version_number}")))?;
        let missing = |what: &str| {
            ServiceError::Internal(format!("{what} is missing from the artifact store"))
        };
        let bundle = self
            .store()
            .read_artifact(&row.sha256)
            .await?
            .ok_or_else(|| missing("the bundle"))?;
        let holdout = self
            .store()
            .read_artifact(&gate.holdout_sha256)
            .await?
            .ok_or_else(|| missing("the holdout recording"))?;
        let trusted: Vec<String> = self
            .store()
            .trusted_key_rows()
            .await?
            .into_iter()
            .map(|k| k.public_pem)
            .collect();
        let rules: GateRules = serde_json::from_str(&gate.rules)
            .map_err(|e| ServiceError::Internal(format!("stored gate rules: {e}")))?;
        let holdout_name = gate.holdout_name.clone();
        let validator = validation::validator(None);
        let result = tokio::task::spawn_blocking(move || {
            validation::run(
                &validator,
                &bundle,
                &holdout,
                &holdout_name,
                &trusted,
                &rules,
            )
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("validation task: {e}")))?;
        let v = ValidationRow {
            bundle: name.to_string(),
            version_number,
            holdout_sha256: gate.holdout_sha256,
            status: result.status.as_str().to_string(),
            metrics: serde_json::to_string(&result.metrics)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            detail: result.detail.clone(),
            at: now_ms(),
        };
        self.store().put_validation(&v).await?;
        self.audit(
            "model.validate",
            &format!("{name}#{version_number}"),
            &format!("{}: {}", result.status.as_str(), result.detail),
        )
        .await?;
        Ok(validation_out(v))
    }

    /// Why a rollout of `name` #`version_number` may not start (`None`: it may): its name
    /// has a gate and this version has not passed it on the gate's current holdout.
    pub(super) async fn gate_refusal(
        &self,
        name: &str,
        version_number: i64,
    ) -> Result<Option<String>> {
        let Some(gate) = self.store().gate(name).await? else {
            return Ok(None);
        };
        Ok(match self.store().validation(name, version_number).await? {
            Some(v) if v.status == "passed" && v.holdout_sha256 == gate.holdout_sha256 => None,
            Some(v) if v.holdout_sha256 != gate.holdout_sha256 => Some(format!(
                "{name} #{version_number} was validated on another holdout than its gate's {}: validate it again",
                gate.holdout_name
            )),
            Some(v) => Some(format!(
                "{name} #{version_number} did not pass its validation gate ({}: {})",
                v.status, v.detail
            )),
            None => Some(format!(
                "{name} #{version_number} has not been validated on its gate's holdout {} (`fleet-server model validate {name} {version_number}`)",
                gate.holdout_name
            )),
        })
    }
}
