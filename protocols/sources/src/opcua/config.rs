//! `[[sources.opcua]]`: every config key of an OPC-UA client source and its validation.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::backoff::ReconnectConfig;
use crate::secret::Secret;
use edge_wire::config_check::{Issues, KeyPath};

/// `[[sources.opcua]]`: one OPC-UA server, its session and the nodes to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaSourceConfig {
    /// Unique source name (logs, metrics, the trust-on-first-use pin file).
    pub name: String,
    /// Server endpoint URL, e.g. `opc.tcp://plc.local:4840`.
    pub endpoint: String,
    /// `none` (default), `basic256sha256`, `aes128_sha256_rsaoaep` or `aes256_sha256_rsapss`.
    #[serde(default)]
    pub security_policy: SecurityPolicyConfig,
    /// `none` (default), `sign` or `sign_and_encrypt`.
    #[serde(default)]
    pub security_mode: SecurityModeConfig,
    /// User name; without it the session is anonymous.
    pub username: Option<String>,
    /// Password for `username` (inline, `{ file = .. }` or `{ env = .. }`).
    pub password: Option<Secret>,
    /// Folder for the client certificate and the server trust list (`trusted/`, `rejected/`).
    /// Default: `<agent.data_dir>/pki/opcua`.
    pub pki_dir: Option<PathBuf>,
    /// Client certificate (DER) and private key (PEM). Default: a self-signed pair generated
    /// in `pki_dir` on first start (`own/cert.der`, `private/private.pem`).
    pub certificate: Option<PathBuf>,
    /// Private key (PEM) of `certificate`.
    pub private_key: Option<PathBuf>,
    /// How the server certificate is trusted (only with a security policy other than `none`).
    #[serde(default)]
    pub server_trust: ServerTrust,
    /// Check the server certificate's hostname, validity period and application URI on top of
    /// the trust list. async-opcua 0.19 switches these three together; `false` keeps only the
    /// trust list and key-length checks (needed for servers whose certificate lacks the
    /// address you connect to, e.g. no IP SAN).
    #[serde(default = "yes")]
    pub strict_certificate_checks: bool,
    /// Application name/URI this client presents (also in its generated certificate).
    #[serde(default = "default_app_name")]
    pub application_name: String,
    /// Application URI this client presents (must match its certificate).
    #[serde(default = "default_app_uri")]
    pub application_uri: String,
    /// `subscribe` (monitored items, default) or `poll` (periodic Read service calls).
    #[serde(default)]
    pub mode: OpcUaMode,
    /// Subscription publishing interval.
    #[serde(default = "default_publishing", with = "humantime_serde")]
    pub publishing_interval: Duration,
    /// Default sampling interval of monitored items (default: the publishing interval).
    #[serde(default, with = "humantime_serde::option")]
    pub sampling_interval: Option<Duration>,
    /// Default server-side queue size of monitored items.
    #[serde(default = "default_queue")]
    pub queue_size: u32,
    /// Read period for `mode = "poll"` and for items the server refuses to monitor.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Which timestamp a sample carries: `source` (device), `server`, or `agent` (arrival).
    /// Missing timestamps fall back source -> server -> agent.
    #[serde(default)]
    pub timestamp: TimestampSource,
    /// Timeout of one service request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Session timeout requested from the server.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Keep-alive read period; three missed keep-alives count as a lost connection.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// How fast to reconnect after the session was lost.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// The nodes to read (`[[sources.opcua.tags]]`).
    pub tags: Vec<OpcUaTagConfig>,
}

/// The OPC-UA security policy of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityPolicyConfig {
    /// No security: messages neither signed nor encrypted.
    #[default]
    None,
    /// Basic256Sha256.
    #[serde(rename = "basic256sha256")]
    Basic256Sha256,
    /// Aes128_Sha256_RsaOaep.
    #[serde(rename = "aes128_sha256_rsaoaep")]
    Aes128Sha256RsaOaep,
    /// Aes256_Sha256_RsaPss.
    #[serde(rename = "aes256_sha256_rsapss")]
    Aes256Sha256RsaPss,
}

/// The OPC-UA message security mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityModeConfig {
    /// Neither signed nor encrypted (with policy `none` only).
    #[default]
    None,
    /// Signed.
    Sign,
    /// Signed and encrypted.
    SignAndEncrypt,
}

/// Trust model for the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServerTrust {
    /// Only certificates in `<pki_dir>/trusted/` are accepted. An unknown server certificate
    /// is refused and written to `<pki_dir>/rejected/`; move it to `trusted/` to accept it
    /// (picked up at the next reconnect, no restart).
    #[default]
    TrustList,
    /// The first certificate seen from this endpoint is pinned (`<pki_dir>/tofu/<source>.der`)
    /// and trusted; a different certificate later is refused until the pin file is deleted.
    TrustOnFirstUse,
}

/// How values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OpcUaMode {
    /// Monitored items in a subscription: the server sends changes.
    #[default]
    Subscribe,
    /// Periodic Read service calls.
    Poll,
}

/// Which time stamps a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestampSource {
    /// The source timestamp of the DataValue (the device's clock; default).
    #[default]
    Source,
    /// The server timestamp.
    Server,
    /// The agent's clock when the value arrived.
    Agent,
}

/// One node to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaTagConfig {
    /// Tag name, unique across the agent.
    pub name: String,
    /// Node id in OPC-UA string form, e.g. `ns=2;s=Pump1.Temperature` or `ns=3;i=1001`.
    pub node_id: String,
    /// Overrides the source's sampling interval for this item.
    #[serde(default, with = "humantime_serde::option")]
    pub sampling_interval: Option<Duration>,
    /// Overrides the source's queue size.
    pub queue_size: Option<u32>,
    /// Report a change only when the value moves by more than this (engineering units).
    pub deadband_absolute: Option<f64>,
    /// Report a change only when the value moves by more than this percent of the node's
    /// EURange (the server must expose one).
    pub deadband_percent: Option<f64>,
}

fn yes() -> bool {
    true
}
fn default_app_name() -> String {
    "edge-agent".into()
}
fn default_app_uri() -> String {
    "urn:edge-agent:opcua-client".into()
}
fn default_publishing() -> Duration {
    Duration::from_secs(1)
}
fn default_queue() -> u32 {
    10
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(5)
}

impl OpcUaSourceConfig {
    /// Records every problem of this source's table under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        issues.check(
            self.endpoint.starts_with("opc.tcp://"),
            at.key("endpoint"),
            || {
                format!(
                    "`{}` is not an opc.tcp:// URL (e.g. \"opc.tcp://plc.local:4840\")",
                    self.endpoint
                )
            },
        );
        let policy_none = self.security_policy == SecurityPolicyConfig::None;
        let mode_none = self.security_mode == SecurityModeConfig::None;
        if policy_none != mode_none {
            issues.push(
                at.key("security_mode"),
                if policy_none {
                    "security_policy \"none\" needs security_mode \"none\"; for a secure channel \
                     set security_policy = \"basic256sha256\""
                } else {
                    "a security policy other than \"none\" needs security_mode \"sign\" or \
                     \"sign_and_encrypt\""
                },
            );
        }
        issues.check(
            self.password.is_none() || self.username.is_some(),
            at.key("password"),
            || {
                "password without username: set `username` too (or remove `password` for anonymous)"
                    .into()
            },
        );
        issues.check(self.username.is_none() || self.password.is_some(), at.key("username"), || {
            "username without password: add `password = { file = \"...\" }` (or `{ env = \"...\" }`)".into()
        });
        issues.check(
            self.certificate.is_some() == self.private_key.is_some(),
            at.key(if self.certificate.is_some() {
                "private_key"
            } else {
                "certificate"
            }),
            || {
                "set both `certificate` and `private_key`, or neither (a pair is then generated)"
                    .into()
            },
        );
        issues.check(
            !self.application_uri.is_empty(),
            at.key("application_uri"),
            || "application_uri must not be empty".into(),
        );
        for (key, d) in [
            ("publishing_interval", self.publishing_interval),
            ("poll_interval", self.poll_interval),
            ("request_timeout", self.request_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
        ] {
            issues.check(d >= Duration::from_millis(10), at.key(key), || {
                format!("{key} must be at least 10ms")
            });
        }
        issues.check(
            self.session_timeout >= Duration::from_secs(1),
            at.key("session_timeout"),
            || "session_timeout must be at least 1s".into(),
        );
        issues.check(
            self.session_timeout.as_millis() <= u128::from(u32::MAX),
            at.key("session_timeout"),
            || "session_timeout is too large (max ~49 days)".into(),
        );
        issues.check(!self.tags.is_empty(), at.key("tags"), || {
            "no tags: add at least one [[sources.opcua.tags]] table".into()
        });
        for (i, t) in self.tags.iter().enumerate() {
            let tp = at.key("tags").index(i);
            #[cfg(feature = "opcua")]
            issues.check(
                t.node_id.parse::<opcua::types::NodeId>().is_ok(),
                tp.key("node_id"),
                || {
                    format!(
                    "`{}` is not a node id (forms: \"ns=2;s=Pump1.Temperature\", \"ns=3;i=1001\", \
                     \"i=2258\")",
                    t.node_id
                )
                },
            );
            if t.deadband_absolute.is_some() && t.deadband_percent.is_some() {
                issues.push(
                    tp.key("deadband_percent"),
                    "set deadband_absolute or deadband_percent, not both",
                );
            }
            if let Some(d) = t.deadband_absolute {
                issues.check(
                    d.is_finite() && d >= 0.0,
                    tp.key("deadband_absolute"),
                    || format!("deadband {d} must be a finite number >= 0"),
                );
            }
            if let Some(p) = t.deadband_percent {
                issues.check(
                    (0.0..=100.0).contains(&p),
                    tp.key("deadband_percent"),
                    || format!("deadband_percent {p} must be within 0..=100"),
                );
            }
        }
    }
}
