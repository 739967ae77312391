//! MQTT config keys: the `broker` table shared by every MQTT client of the agent (sources
//! here, outputs later), and `[[sources.mqtt]]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::payload::TimestampFormat;
use super::topic::{has_wildcards, validate_filter};
use crate::backoff::ReconnectConfig;
use crate::secret::Secret;
use edge_wire::config_check::{Issues, KeyPath};

/// Connection to one MQTT broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883` (TLS).
    pub url: String,
    /// MQTT client id; default `<agent.id>-<source name>`. Must be unique on the broker.
    pub client_id: Option<String>,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password for `username` (inline, `{ file = .. }` or `{ env = .. }`).
    pub password: Option<Secret>,
    /// PEM CA bundle for `mqtts://`; default: the system trust store.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive (default 30 s).
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// `false` (default) keeps the broker session across reconnects: QoS 1 messages that
    /// arrive while the agent is away are queued by the broker and delivered on return.
    #[serde(default)]
    pub clean_session: bool,
    /// Largest packet accepted or sent.
    #[serde(default = "default_max_packet")]
    pub max_packet_size: usize,
    /// How fast to reconnect after the broker was lost.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_packet() -> usize {
    256 * 1024
}

/// Parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or IP address.
    pub host: String,
    /// Port (default 1883, or 8883 with TLS).
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

/// Why a broker `url` cannot be used ([`BrokerConfig::addr`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    /// No `scheme://` (the URL).
    #[error("`{0}` has no scheme: use mqtt://host:1883 or mqtts://host:8883")]
    NoScheme(String),
    /// A scheme other than `mqtt`/`tcp` or `mqtts`/`ssl` (the scheme).
    #[error("unknown scheme `{0}`: use mqtt:// or mqtts://")]
    UnknownScheme(String),
    /// The port is not a number in 0..=65535.
    #[error("bad port `{port}` in `{url}`")]
    BadPort {
        /// The port as written.
        port: String,
        /// The URL.
        url: String,
    },
    /// Nothing between the scheme and the port (the URL).
    #[error("no host in `{0}`")]
    NoHost(String),
}

impl BrokerConfig {
    /// The host, port and TLS choice of `url`.
    pub fn addr(&self) -> Result<BrokerAddr, BrokerUrlError> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| BrokerUrlError::NoScheme(self.url.clone()))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(BrokerUrlError::UnknownScheme(other.to_string())),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| BrokerUrlError::BadPort {
                    port: p.to_string(),
                    url: self.url.clone(),
                })?;
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    port,
                )
            }
            _ => (rest.to_string(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost(self.url.clone()));
        }
        Ok(BrokerAddr { host, port, tls })
    }

    /// Records every problem of this broker table under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        let addr = self.addr();
        if let Err(e) = &addr {
            issues.push(at.key("url"), e.to_string());
        }
        let tls = addr.map(|a| a.tls).unwrap_or(false);
        issues.check(
            self.cert_file.is_some() == self.key_file.is_some(),
            at.key("key_file"),
            || "set both cert_file and key_file for mutual TLS, or neither".into(),
        );
        if !tls {
            for (k, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
            ] {
                issues.check(!set, at.key(k), || {
                    format!("{k} is set but the url is not mqtts://: TLS would not be used")
                });
            }
        }
        issues.check(
            self.password.is_none() || self.username.is_some(),
            at.key("password"),
            || "password without username".into(),
        );
        issues.check(
            self.keep_alive.is_zero() || self.keep_alive >= Duration::from_secs(1),
            at.key("keep_alive"),
            || "keep_alive must be 0 (off) or at least 1s".into(),
        );
        issues.check(
            self.max_packet_size >= 1024,
            at.key("max_packet_size"),
            || "max_packet_size must be at least 1024 bytes".into(),
        );
    }
}

/// `[[sources.mqtt]]`: subscribe to topics and read values from their payloads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Unique source name (logs, metrics, client id).
    pub name: String,
    /// The broker to subscribe at.
    pub broker: BrokerConfig,
    /// Subscription QoS: 0 (at most once) or 1 (at least once, default; acknowledged to the
    /// broker only after the samples are handed to the pipeline).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// The values to read (`[[sources.mqtt.tags]]`).
    pub tags: Vec<MqttTagConfig>,
}

fn default_qos() -> u8 {
    1
}

/// One value read from the messages of a topic filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTagConfig {
    /// Tag name; with a wildcard topic, `{1}`, `{2}`… insert the levels matched by the
    /// wildcards (e.g. topic `plant/+/temp`, name `{1}.temp`).
    pub name: String,
    /// Topic filter; `+` and `#` wildcards allowed.
    pub topic: String,
    /// JSON pointer (RFC 6901) to the value, e.g. `/data/temperature`. Without it the whole
    /// payload is one plain number or `true`/`false`.
    pub json_pointer: Option<String>,
    /// JSON pointer to the measurement time; without it the arrival time is used.
    pub timestamp_pointer: Option<String>,
    /// How the timestamp at `timestamp_pointer` is written (default `auto`: RFC 3339 text or Unix milliseconds).
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
}

impl MqttSourceConfig {
    /// Records every problem of this source's table under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        self.broker.validate(&at.key("broker"), issues);
        issues.check(self.qos <= 1, at.key("qos"), || {
            format!("qos {} is not supported: use 0 or 1", self.qos)
        });
        issues.check(!self.tags.is_empty(), at.key("tags"), || {
            "no tags: add at least one [[sources.mqtt.tags]] table".into()
        });
        for (i, t) in self.tags.iter().enumerate() {
            let tp = at.key("tags").index(i);
            if let Err(e) = validate_filter(&t.topic) {
                issues.push(tp.key("topic"), e.to_string());
            }
            for (k, p) in [
                ("json_pointer", &t.json_pointer),
                ("timestamp_pointer", &t.timestamp_pointer),
            ] {
                if let Some(p) = p {
                    issues.check(p.is_empty() || p.starts_with('/'), tp.key(k), || {
                        format!("`{p}` is not a JSON pointer: it must start with `/` (e.g. \"/data/value\")")
                    });
                }
            }
            issues.check(
                t.timestamp_pointer.is_none() || t.json_pointer.is_some(),
                tp.key("timestamp_pointer"),
                || "timestamp_pointer needs a JSON payload: set json_pointer too".into(),
            );
            let wild = has_wildcards(&t.topic);
            let templated = t.name.contains('{');
            issues.check(!templated || wild, tp.key("name"), || {
                format!(
                    "`{}` uses {{n}} placeholders but topic `{}` has no wildcard",
                    t.name, t.topic
                )
            });
            if templated {
                let n = t
                    .topic
                    .split('/')
                    .filter(|l| *l == "+" || *l == "#")
                    .count();
                for k in 1..=9 {
                    issues.check(
                        !t.name.contains(&format!("{{{k}}}")) || k <= n,
                        tp.key("name"),
                        || {
                            format!(
                                "placeholder {{{k}}} but topic `{}` has only {n} wildcard(s)",
                                t.topic
                            )
                        },
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(url: &str) -> BrokerConfig {
        serde_json::from_value(serde_json::json!({ "url": url })).unwrap()
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            broker("mqtt://localhost").addr().unwrap(),
            BrokerAddr {
                host: "localhost".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(
            broker("mqtts://10.0.0.1:8884").addr().unwrap(),
            BrokerAddr {
                host: "10.0.0.1".into(),
                port: 8884,
                tls: true
            }
        );
        assert_eq!(broker("mqtt://[::1]:1883").addr().unwrap().host, "::1");
        assert!(broker("http://x").addr().is_err());
        assert!(broker("localhost:1883").addr().is_err());
        assert!(broker("mqtt://h:99999").addr().is_err());
    }
}
