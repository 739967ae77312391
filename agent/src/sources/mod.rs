//! Builds the configured sources. Protocol adapters live in `edge-protocols`; the simulated
//! plant and the recording replay live here because they are part of the agent, not wire
//! protocols.

pub mod replay;
pub mod simulated;

use edge_protocols::Source;

use crate::config::AgentConfig;

/// Every configured source with its name. Errors name the source.
pub fn build(cfg: &AgentConfig) -> anyhow::Result<Vec<(String, Box<dyn Source>)>> {
    let mut out: Vec<(String, Box<dyn Source>)> = Vec::new();
    for c in &cfg.sources.simulated {
        out.push((
            c.name.clone(),
            Box::new(simulated::SimulatedPlant::new(c.clone())),
        ));
    }
    #[cfg(feature = "modbus")]
    for c in &cfg.sources.modbus {
        out.push((
            c.name.clone(),
            Box::new(edge_protocols::modbus::ModbusPoller::new(c.clone())),
        ));
    }
    #[cfg(feature = "opcua")]
    for c in &cfg.sources.opcua {
        let s = edge_protocols::opcua::OpcUaSource::new(c.clone(), cfg.opcua_pki_dir())
            .map_err(|e| anyhow::anyhow!("source {}: {e}", c.name))?;
        out.push((c.name.clone(), Box::new(s)));
    }
    #[cfg(feature = "mqtt")]
    for c in &cfg.sources.mqtt {
        let id = format!("{}-{}", cfg.agent.id, c.name);
        out.push((
            c.name.clone(),
            Box::new(edge_protocols::mqtt::MqttSubscriber::new(c.clone(), id)),
        ));
    }
    for c in &cfg.sources.replay {
        out.push((
            c.name.clone(),
            Box::new(replay::ReplaySource::new(c.clone())),
        ));
    }
    Ok(out)
}
