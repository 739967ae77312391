//! [`Secret`]: a password or key given inline, from a file, or from an environment variable,
//! so credentials need not live in the config file. Never printed by `Debug`.
//!
//! ```toml
//! password = "inline"                        # fine for tests
//! password = { file = "/etc/edge-agent/mqtt.pass" }   # first line of the file
//! password = { env = "EDGE_MQTT_PASSWORD" }
//! ```

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A password or key: inline, from a file, or from an environment variable.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The value itself in the config (fine for tests).
    Inline(String),
    /// `{ file = "PATH" }`: the first line of the file.
    File(String),
    /// `{ env = "VAR" }`: the environment variable's value.
    Env(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret(<inline, redacted>)"),
            Secret::File(p) => write!(f, "Secret(file {p})"),
            Secret::Env(v) => write!(f, "Secret(env {v})"),
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} is not set (or not valid UTF-8)")]
    Env(String),
}

impl Secret {
    /// The secret's value. A file's trailing newline is not part of the secret.
    pub fn resolve(&self) -> Result<String, SecretError> {
        match self {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|source| SecretError::File {
                    path: p.clone(),
                    source,
                }),
            Secret::Env(v) => std::env::var(v).map_err(|_| SecretError::Env(v.clone())),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a string, { file = "PATH" } or { env = "VAR" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::Inline(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Secret, A::Error> {
                let key: String = m
                    .next_key()?
                    .ok_or_else(|| de::Error::custom(r#"expected `file` or `env`"#))?;
                let val: String = m.next_value()?;
                let s = match key.as_str() {
                    "file" => Secret::File(val),
                    "env" => Secret::Env(val),
                    other => return Err(de::Error::unknown_field(other, &["file", "env"])),
                };
                if let Some(extra) = m.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a secret takes one of `file` or `env`, found also `{extra}`"
                    )));
                }
                Ok(s)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct C {
        p: Secret,
    }

    #[test]
    fn three_forms_and_redacted_debug() {
        let c: C = serde_json::from_str(r#"{"p":"x"}"#).unwrap();
        assert_eq!(c.p.resolve().unwrap(), "x");
        assert!(!format!("{:?}", c.p).contains('x'));
        let c: C = serde_json::from_str(r#"{"p":{"env":"EDGE_TEST_SECRET_UNSET_VAR"}}"#).unwrap();
        assert!(c
            .p
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("EDGE_TEST_SECRET_UNSET_VAR"));
        let dir = std::env::temp_dir().join(format!("secret-test-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let c = C {
            p: Secret::File(dir.display().to_string()),
        };
        assert_eq!(c.p.resolve().unwrap(), "s3cret");
        std::fs::remove_file(&dir).unwrap();
        let e = serde_json::from_str::<C>(r#"{"p":{"path":"x"}}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("path"), "{e}");
    }
}
