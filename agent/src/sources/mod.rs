//! Builds the configured sources. Protocol adapters live in `edge-sources` (protocols/sources); the simulated
//! plant and the recording replay live here because they are part of the agent, not wire
//! protocols.

pub mod replay;
pub mod simulated;

use edge_sources::Source;

use std::path::PathBuf;

use edge_sources::modbus::ModbusSourceConfig;
use edge_sources::mqtt::MqttSourceConfig;
use edge_sources::opcua::OpcUaSourceConfig;
use serde::Deserialize;

use replay::ReplaySourceConfig;
use simulated::SimulatedSourceConfig;

/// `[sources]`: one array of tables per kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// `[[sources.simulated]]`: generated signals (demos, tests).
    #[serde(default)]
    pub simulated: Vec<SimulatedSourceConfig>,
    /// `[[sources.modbus]]`: Modbus TCP/RTU pollers.
    #[serde(default)]
    pub modbus: Vec<ModbusSourceConfig>,
    /// `[[sources.opcua]]`: OPC-UA subscriptions.
    #[serde(default)]
    pub opcua: Vec<OpcUaSourceConfig>,
    /// `[[sources.mqtt]]`: MQTT subscribers.
    #[serde(default)]
    pub mqtt: Vec<MqttSourceConfig>,
    /// `[[sources.replay]]`: recordings played back.
    #[serde(default)]
    pub replay: Vec<ReplaySourceConfig>,
}

/// Every configured source with its name. Errors name the source. MQTT client ids are
/// `{agent_id}-{source}`; OPC-UA keeps its client certificate and trust list in `opcua_pki_dir`.
#[cfg_attr(not(feature = "opcua"), allow(unused_variables))]
pub fn build(
    cfg: &SourcesConfig,
    agent_id: &str,
    opcua_pki_dir: PathBuf,
) -> anyhow::Result<Vec<(String, Box<dyn Source>)>> {
    let mut out: Vec<(String, Box<dyn Source>)> = Vec::new();
    for c in &cfg.simulated {
        out.push((
            c.name.clone(),
            Box::new(simulated::SimulatedPlant::new(c.clone())),
        ));
    }
    #[cfg(feature = "modbus")]
    for c in &cfg.modbus {
        out.push((
            c.name.clone(),
            Box::new(edge_sources::modbus::ModbusPoller::new(c.clone())),
        ));
    }
    #[cfg(feature = "opcua")]
    for c in &cfg.opcua {
        let s = edge_sources::opcua::OpcUaSource::new(c.clone(), opcua_pki_dir.clone())
            .map_err(|e| anyhow::anyhow!("source {}: {e}", c.name))?;
        out.push((c.name.clone(), Box::new(s)));
    }
    #[cfg(feature = "mqtt")]
    for c in &cfg.mqtt {
        let id = format!("{}-{}", agent_id, c.name);
        out.push((
            c.name.clone(),
            Box::new(edge_sources::mqtt::MqttSubscriber::new(c.clone(), id)),
        ));
    }
    for c in &cfg.replay {
        out.push((
            c.name.clone(),
            Box::new(replay::ReplaySource::new(c.clone())),
        ));
    }
    Ok(out)
}
