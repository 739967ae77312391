//! Turns a [`BrokerConfig`] into rumqttc options (TLS, credentials, session, limits) and
//! classifies connection errors. Shared by every MQTT client of the agent.

use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, TlsConfiguration, Transport};

use super::config::{BrokerConfig, BrokerUrlError};
use crate::secret::SecretError;
use edge_wire::tls;

/// Why client options could not be built ([`mqtt_options`]); each names the failing file or
/// value.
#[derive(Debug, thiserror::Error)]
pub enum MqttOptionsError {
    /// The broker `url` cannot be used.
    #[error(transparent)]
    Url(#[from] BrokerUrlError),
    /// The password could not be read.
    #[error("MQTT password: {0}")]
    Password(#[source] SecretError),
    /// The CA bundle or the client certificate and key could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Builds options for a client with `client_id`. Errors name the failing file or value.
pub fn mqtt_options(cfg: &BrokerConfig, client_id: &str) -> Result<MqttOptions, MqttOptionsError> {
    let addr = cfg.addr()?;
    let mut o = MqttOptions::new(client_id, addr.host.clone(), addr.port);
    o.set_keep_alive(cfg.keep_alive);
    // A persistent session needs a client id; rumqttc panics otherwise, so check here.
    o.set_clean_session(cfg.clean_session || client_id.is_empty());
    o.set_max_packet_size(cfg.max_packet_size, cfg.max_packet_size);
    if let Some(user) = &cfg.username {
        let pw = match &cfg.password {
            Some(p) => p.resolve().map_err(MqttOptionsError::Password)?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), pw);
    }
    if addr.tls {
        let client_auth = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let tls = tls::client_config(cfg.ca_file.as_deref(), client_auth)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    Ok(o)
}

/// A connection error only an operator can fix (credentials, authorization), with the fix.
pub fn fatal_reason(e: &ConnectionError) -> Option<&'static str> {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)
        | ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            Some("the broker refused the user name/password or this client: check `username`, `password` and the broker's ACL")
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            Some("the broker refused the client id: set a unique `client_id`")
        }
        ConnectionError::Tls(_) => Some(
            "TLS handshake failed: check `ca_file` (does it sign the broker's certificate?), the host \
             name in `url` against the certificate, and `cert_file`/`key_file` for mutual TLS",
        ),
        _ => None,
    }
}
