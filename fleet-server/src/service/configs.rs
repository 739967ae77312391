//! Fleet configuration operations: push (fragments merged, inline secrets refused before
//! anything is stored), list, show, and one device's configuration as desired and as
//! reported.
//!
//! Merge order and rules (`fleet-server config push NAME FRAGMENT...`, first fragment
//! first; docs/fleet.md):
//! - one fragment is the file itself, byte for byte (comments and line numbers kept);
//! - tables merge key by key, recursively; a later fragment's value replaces an earlier one;
//! - arrays of tables (`[[sources.modbus]]`, `[[models]]`, `[[outputs.mqtt]]`, ...) are
//!   concatenated, except that an entry whose `name` equals an earlier entry's replaces it
//!   in place;
//! - other arrays are replaced whole.

use serde::{Deserialize, Serialize};

use super::{Acting, Result, ServiceError};
use crate::store::{ConfigReportRow, ConfigRow};
use crate::types::Role;

/// Largest merged configuration accepted (it travels inside a check-in reply).
pub const MAX_CONFIG_BYTES: usize = 256 << 10;

/// Keys whose string values are secrets: a fleet configuration must name a file or an
/// environment variable on the device instead.
const SECRET_KEYS: &[&str] = &["password", "enroll_token", "token", "secret", "passphrase"];

/// `POST /v1/operator/configs/{name}`: the fragments, in merge order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPush {
    /// (fragment name, TOML text), first merged first.
    pub fragments: Vec<(String, String)>,
}

/// A fleet configuration version as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOut {
    /// The stored version.
    #[serde(flatten)]
    pub config: ConfigRow,
    /// False when the push matched the newest version (nothing new was stored).
    pub created: bool,
}

/// A device's configuration: what it reports and what the fleet wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// SHA-256 of the file it runs (its last check-in).
    pub reported_sha256: Option<String>,
    /// The fleet configuration that file came from, when unedited: (name, version number).
    pub applied: Option<(String, u64)>,
    /// A configuration it is health-checking now (SHA-256).
    pub pending: Option<String>,
    /// What the fleet wants it to run: (name, version number, SHA-256, rollout id).
    pub desired: Option<(String, i64, String, String)>,
    /// `in_sync` (runs the desired file, health-checked), `applying` (a fleet file is being
    /// health-checked), `drift` (runs another file: not yet applied, refused, rolled back,
    /// or edited on the device), `unmanaged` (no configuration rollout reaches it),
    /// `unknown` (no report yet).
    pub state: String,
    /// Its configuration reports, newest first (at most 20).
    pub reports: Vec<ConfigReportRow>,
}

fn merge_into(base: &mut toml::Table, add: toml::Table) {
    for (k, v) in add {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(a)) => merge_into(b, a),
            (Some(toml::Value::Array(b)), toml::Value::Array(a))
                if b.iter().chain(&a).all(|x| x.is_table()) =>
            {
                for entry in a {
                    let name = entry.get("name").cloned();
                    match name.and_then(|n| b.iter().position(|x| x.get("name") == Some(&n))) {
                        Some(i) => b[i] = entry,
                        None => b.push(entry),
                    }
                }
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Inline secrets in `t` (their key paths).
fn inline_secrets(t: &toml::Table, at: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match v {
            toml::Value::String(_)
                if SECRET_KEYS
                    .iter()
                    .any(|s| k == s || k.ends_with(&format!("_{s}"))) =>
            {
                out.push(path)
            }
            toml::Value::Table(t) => inline_secrets(t, &path, out),
            toml::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    if let Some(t) = x.as_table() {
                        inline_secrets(t, &format!("{path}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Why fragments do not make a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// No fragment.
    #[error("give at least one fragment")]
    Empty,
    /// A fragment that is not TOML.
    #[error("fragment {name}: {message}")]
    NotToml {
        /// The fragment's name.
        name: String,
        /// What the parser said.
        message: String,
    },
    /// String values at secret keys.
    #[error("fragment {name}: inline secret(s) at {}: fleet configurations are stored in the fleet database, so secrets must stay on the device — use `{{ file = \"/path/on/device\" }}` or `{{ env = \"VARIABLE\" }}`", keys.join(", "))]
    InlineSecrets {
        /// The fragment's name.
        name: String,
        /// Their key paths.
        keys: Vec<String>,
    },
    /// The merged file could not be written as TOML.
    #[error("cannot write the merged file: {0}")]
    Write(String),
    /// Over [`MAX_CONFIG_BYTES`].
    #[error("the configuration is {0} bytes; at most {MAX_CONFIG_BYTES} are accepted")]
    TooLarge(usize),
}

/// The file devices receive from `fragments` (module docs: the merge rules), or why not:
/// a fragment that is not TOML, inline secrets, or a file over [`MAX_CONFIG_BYTES`].
pub fn merge(fragments: &[(String, String)]) -> std::result::Result<String, MergeError> {
    if fragments.is_empty() {
        return Err(MergeError::Empty);
    }
    let mut merged = toml::Table::new();
    for (name, text) in fragments {
        let t: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| MergeError::NotToml {
                name: name.clone(),
                message: e.to_string().trim_end().to_string(),
            })?;
        let mut secrets = Vec::new();
        inline_secrets(&t, "", &mut secrets);
        if !secrets.is_empty() {
            return Err(MergeError::InlineSecrets {
                name: name.clone(),
                keys: secrets,
            });
        }
        merge_into(&mut merged, t);
    }
    let text = match fragments {
        [(_, only)] => only.clone(),
        _ => toml::to_string(&merged).map_err(|e| MergeError::Write(e.to_string()))?,
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(MergeError::TooLarge(text.len()));
    }
    Ok(text)
}

fn valid_config_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Acting {
    /// Stores a new version of fleet configuration `name` from `fragments`.
    pub async fn push_config(&self, name: &str, p: &ConfigPush) -> Result<ConfigOut> {
        self.require(Role::Operator, "pushing configurations")?;
        if !valid_config_name(name) {
            return Err(ServiceError::Refused(format!(
                "configuration name `{name}`: use 1-64 letters, digits, `-`, `_`, `.`"
            )));
        }
        let text = merge(&p.fragments).map_err(|e| ServiceError::Refused(e.to_string()))?;
        let sha = edge_wire::bundle::file::sha256_hex(text.as_bytes());
        let (row, created) = self
            .store()
            .add_config(name, &p.fragments, &text, &sha, &self.who.name)
            .await?;
        if created {
            let names: Vec<&str> = p.fragments.iter().map(|f| f.0.as_str()).collect();
            self.audit(
                "config.push",
                &format!("{}#{}", row.name, row.version_number),
                &format!("sha256 {} from [{}]", row.sha256, names.join(", ")),
            )
            .await?;
        }
        Ok(ConfigOut {
            config: row,
            created,
        })
    }

    /// Every version of every fleet configuration.
    pub async fn configs(&self) -> Result<Vec<ConfigRow>> {
        self.require(Role::Viewer, "the configurations")?;
        Ok(self.store().configs().await?)
    }

    /// One version.
    pub async fn config(&self, name: &str, version_number: i64) -> Result<ConfigRow> {
        self.require(Role::Viewer, "a configuration")?;
        self.store()
            .config(name, version_number)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "no configuration {name} with version number {version_number}"
                ))
            })
    }

    /// A device's configuration, desired and reported.
    pub async fn device_config(&self, id: &str) -> Result<DeviceConfig> {
        self.require(Role::Viewer, "a device")?;
        let d = self
            .store()
            .device(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no device `{id}`")))?;
        let reported = d.checkin().and_then(|c| c.config);
        let rollouts = self.store().rollouts().await?;
        let desired = match crate::rollout::desired_config(&rollouts, &d) {
            Some((name, vn, rid)) => self
                .store()
                .config(&name, vn)
                .await?
                .map(|c| (name, vn, c.sha256, rid)),
            None => None,
        };
        let state = match (&reported, &desired) {
            (None, _) => "unknown",
            (Some(r), _) if r.pending.is_some() => "applying",
            (Some(_), None) => "unmanaged",
            (Some(r), Some(d)) if r.sha256 == d.2 => "in_sync",
            _ => "drift",
        };
        Ok(DeviceConfig {
            reported_sha256: reported.as_ref().map(|r| r.sha256.clone()),
            applied: reported.as_ref().and_then(|r| r.applied.clone()),
            pending: reported.and_then(|r| r.pending),
            desired,
            state: state.into(),
            reports: self.store().config_reports(id, 20).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(name: &str, text: &str) -> (String, String) {
        (name.into(), text.into())
    }

    #[test]
    fn one_fragment_is_the_file_byte_for_byte() {
        let text = "# plant 3\n[agent]\nid = \"gw\"\n";
        assert_eq!(merge(&[frag("all", text)]).unwrap(), text);
    }

    #[test]
    fn later_fragments_override_keys_and_extend_named_arrays() {
        let base = "[agent]\nid = \"gw\"\n[outbox]\ncommit_interval = \"500ms\"\n\n[[sources.modbus]]\nname = \"plc1\"\nendpoint = \"tcp://10.0.0.1:502\"\n";
        let site = "[outbox]\ncommit_interval = \"1s\"\n\n[[sources.modbus]]\nname = \"plc1\"\nendpoint = \"tcp://10.0.0.9:502\"\n\n[[sources.modbus]]\nname = \"plc2\"\nendpoint = \"tcp://10.0.0.2:502\"\n";
        let merged: toml::Table = merge(&[frag("base", base), frag("site", site)])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(merged["agent"]["id"].as_str(), Some("gw"));
        assert_eq!(merged["outbox"]["commit_interval"].as_str(), Some("1s"));
        let plcs = merged["sources"]["modbus"].as_array().unwrap();
        assert_eq!(plcs.len(), 2);
        assert_eq!(plcs[0]["endpoint"].as_str(), Some("tcp://10.0.0.9:502"));
        assert_eq!(plcs[1]["name"].as_str(), Some("plc2"));
    }

    #[test]
    fn inline_secrets_are_refused_with_their_keys() {
        let text = "[[outputs.mqtt]]\nname = \"scada\"\n[outputs.mqtt.broker]\nurl = \"mqtt://x\"\npassword = \"hunter2\"\n[sync]\nenroll_token = { file = \"/etc/edge-agent/token\" }\n";
        let e = merge(&[frag("f", text)]).unwrap_err().to_string();
        assert!(e.contains("outputs.mqtt[0].broker.password"), "{e}");
        assert!(!e.contains("enroll_token"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn broken_fragments_name_themselves() {
        let e = merge(&[frag("ok", "[agent]\n"), frag("bad", "[agent\n")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("fragment bad:"), "{e}");
    }
}
