//! One `[[outputs.mqtt]]` put together: its broker connection ([`Link`], with the last will of
//! its format), its message format (plain JSON or Sparkplug B, with the node's persisted
//! bdSeq), and the [`Forwarder`] that feeds it from the outbox. The only place an MQTT output
//! is built.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

use super::forwarder::{Format, Forwarder};
use super::json::JsonFormat;
use super::link::{Link, WillFn};
use super::sparkplug::{BdSeq, DeviceOfTag, SparkplugFormat};
use super::{MqttFormat, MqttOutputConfig};
use crate::models::ModelStats;
use crate::outbox::SledOutbox;

/// What every MQTT output of an agent shares.
#[derive(Debug)]
pub struct OutputSite<'a> {
    /// `[agent] id`: the JSON topics' device, the default Sparkplug edge node and client id.
    pub agent_id: &'a str,
    /// `[agent] data_dir`: where Sparkplug keeps its bdSeq.
    pub data_dir: &'a Path,
    /// The outbox the forwarder reads.
    pub outbox: &'a Arc<SledOutbox>,
    /// The models whose versions the status and births report.
    pub models: &'a [(String, Arc<ModelStats>)],
}

/// The forwarder of output `o`, its link connecting; not started. `device_of_tag` maps a tag to
/// the Sparkplug device (source) that reads it.
pub fn forwarder(
    o: &MqttOutputConfig,
    site: &OutputSite<'_>,
    device_of_tag: DeviceOfTag,
) -> anyhow::Result<Forwarder> {
    let client_id = o
        .broker
        .client_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", site.agent_id, o.name));
    let opts = edge_sources::mqtt::client::mqtt_options(&o.broker, &client_id)
        .map_err(|e| anyhow::anyhow!("outputs.mqtt {}: {e}", o.name))?;
    let qos = if o.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (format, will, subs): (Box<dyn Format>, WillFn, Vec<(String, QoS)>) = match o.format {
        MqttFormat::Json => {
            let (prefix, device) = (o.topic_prefix.clone(), site.agent_id.to_string());
            let will = JsonFormat::will(&prefix, &device);
            (
                Box::new(JsonFormat {
                    prefix,
                    device,
                    qos,
                    outbox: site.outbox.clone(),
                    models: site.models.to_vec(),
                }),
                Arc::new(move || Some(will.clone())),
                Vec::new(),
            )
        }
        MqttFormat::Sparkplug => {
            let sp = o
                .sparkplug
                .clone()
                .ok_or_else(|| anyhow::anyhow!("outputs.mqtt {}: no [sparkplug] table", o.name))?;
            let node = sp
                .edge_node_id
                .clone()
                .unwrap_or_else(|| site.agent_id.to_string());
            let bdseq = Arc::new(BdSeq::open(
                site.data_dir
                    .join("sparkplug")
                    .join(format!("{}.bdseq", o.name)),
            ));
            let subs =
                SparkplugFormat::subscriptions(&sp.group_id, &node, sp.primary_host_id.as_deref());
            let (g, n, b) = (sp.group_id.clone(), node.clone(), bdseq.clone());
            let will: WillFn = Arc::new(move || Some(SparkplugFormat::will(&g, &n, &b)));
            let format = SparkplugFormat::new(
                sp.group_id.clone(),
                node,
                sp.primary_host_id.clone(),
                qos,
                bdseq,
                device_of_tag,
                site.outbox.clone(),
                o.streams.clone(),
                site.models.to_vec(),
            )
            .ddata_datatype(sp.ddata_datatype);
            (Box::new(format), will, subs)
        }
    };
    let link_stop = CancellationToken::new();
    let link = Link::start(&o.name, opts, &o.broker, subs, will, link_stop.clone());
    Ok(Forwarder {
        name: o.name.clone(),
        outbox: site.outbox.clone(),
        streams: o.streams.clone(),
        qos,
        batch: o.batch,
        backlog_share: o.backlog_share,
        format,
        link,
        link_stop,
        periodic_every: Duration::from_secs(30),
        ack_timeout: Duration::from_secs(30),
        window: Default::default(),
        rebirth: Default::default(),
    })
}
