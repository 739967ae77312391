//! Every MQTT topic the agent publishes or subscribes to, in one place.
//!
//! Plain JSON (`format = "json"`):
//! - `{prefix}/{device}/samples/{tag}` — one sample
//! - `{prefix}/{device}/features/{model}` — one window's features
//! - `{prefix}/{device}/predictions/{model}` — one window's prediction
//! - `{prefix}/{device}/alarms/{model}` — the model's score alarm raised/cleared (retained
//!   when live)
//! - `{prefix}/{device}/alarms/{model}/drift/column/{column}`, `.../drift/output/{output}`,
//!   `.../drift/dataset`, `.../drift/performance/{accuracy|recall|mae}` — drift and
//!   performance alarms raised/cleared (retained when live)
//! - `{prefix}/{device}/drift/{model}` — one interval's drift scores per column
//! - `{prefix}/{device}/status` — retained agent status; the last will sets it offline
//!
//! Sparkplug B 3.0 (`format = "sparkplug"`), namespace `spBv1.0`:
//! - `spBv1.0/{group}/NBIRTH|NDATA|NDEATH|NCMD/{node}`
//! - `spBv1.0/{group}/DBIRTH|DDATA|DDEATH/{node}/{device}`
//! - `spBv1.0/STATE/{host}` — the primary host application's state (subscribed)

/// A JSON data topic: `{prefix}/{device}/{kind}/{name}`.
pub fn json_data(prefix: &str, device: &str, kind: &str, name: &str) -> String {
    format!("{prefix}/{device}/{kind}/{name}")
}

/// The name part (after `alarms/`) of a drift alarm topic.
pub fn drift_alarm(model: &str, kind: &str, subject: Option<&str>) -> String {
    match subject {
        Some(s) => format!("{model}/drift/{kind}/{s}"),
        None => format!("{model}/drift/{kind}"),
    }
}

/// The retained JSON status topic: `{prefix}/{device}/status`.
pub fn json_status(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/status")
}

/// The Sparkplug B namespace, the first topic level.
pub const SPB: &str = "spBv1.0";

/// A node topic: `spBv1.0/{group}/{kind}/{node}` (`kind`: `NBIRTH`, `NDATA`, ...).
pub fn spb_node(group: &str, kind: &str, node: &str) -> String {
    format!("{SPB}/{group}/{kind}/{node}")
}

/// A device topic: `spBv1.0/{group}/{kind}/{node}/{device}` (`kind`: `DBIRTH`, `DDATA`, ...).
pub fn spb_device(group: &str, kind: &str, node: &str, device: &str) -> String {
    format!("{SPB}/{group}/{kind}/{node}/{device}")
}

/// The primary host application's state topic: `spBv1.0/STATE/{host}`.
pub fn spb_state(host: &str) -> String {
    format!("{SPB}/STATE/{host}")
}

/// A topic level must not hold MQTT wildcards or separators.
pub fn valid_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#'])
}
