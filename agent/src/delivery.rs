//! Delivery: where records go once the pipeline wrote them to the outbox. One home for the
//! outbox (opened, committed on its cadence), and every destination that drains it: the MQTT
//! outputs (one forwarder each, JSON or Sparkplug B) and the fleet upload (the sync task).
//! `lib.rs::run` opens a [`Delivery`], adds the destinations the config names, and finishes it
//! after the pipeline stopped: the sync stops, the outbox commits once more, then the
//! forwarders stop (what they did not deliver stays in the outbox for the next start).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
#[cfg(feature = "mqtt")]
use crate::models::ModelStats;
use crate::outbox::{OpenReport, OutboxWriter, SledOutbox, Stream};
use crate::sync::config::SyncConfig;
use crate::sync::update::ModelHandle;
use crate::sync::{SyncStats, SyncTask, OUTBOX_DEST};
use crate::task;

/// What the fleet sync acts on besides the outbox (see [`Delivery::start_fleet_sync`]).
#[derive(Debug)]
pub struct FleetSyncParts {
    /// The `[[models]]` the fleet may update.
    pub models: Vec<ModelHandle>,
    /// The keys bundle updates must be signed with.
    pub trusted: Vec<ed25519_dalek::VerifyingKey>,
    /// Remote configuration (absent without a configuration file).
    pub remote: Option<crate::sync::RemoteControl>,
    /// What operators' commands act on.
    pub ops: crate::sync::commands::DeviceOps,
    /// The agent releases on the device.
    pub releases: Arc<crate::agent_update::ReleaseStore>,
}

/// The outbox, its committer, and the destinations that drain it.
#[derive(Debug)]
pub struct Delivery {
    outbox: Arc<SledOutbox>,
    committer: JoinHandle<()>,
    commit_stop: CancellationToken,
    forwarders: Vec<JoinHandle<()>>,
    /// Each MQTT output's name and whether its broker connection is up.
    mqtt_up: Vec<(String, Arc<std::sync::atomic::AtomicBool>)>,
    /// Each Sparkplug output's name and its rebirth trigger.
    rebirth: Vec<(String, Arc<tokio::sync::Notify>)>,
    forward_stop: CancellationToken,
    sync: Option<JoinHandle<()>>,
    sync_stop: CancellationToken,
}

impl Delivery {
    /// Opens the outbox with one destination per MQTT output and one for the fleet server,
    /// and starts its committer. A corrupt database is moved aside and a fresh one used; one
    /// that cannot be opened at all leaves the agent running without it (both logged).
    pub fn open(cfg: &AgentConfig) -> anyhow::Result<Delivery> {
        let path = cfg
            .outbox
            .path
            .clone()
            .unwrap_or_else(|| cfg.agent.data_dir.join("outbox"));
        let mut consumers: Vec<(String, Vec<Stream>)> = cfg
            .outputs
            .mqtt
            .iter()
            .map(|o| (o.name.clone(), o.streams.clone()))
            .collect();
        if let Some(s) = &cfg.sync {
            consumers.push((OUTBOX_DEST.to_string(), s.streams.clone()));
        }
        let (ob, report) = SledOutbox::open(&path, &cfg.outbox, &consumers)
            .map_err(|e| anyhow::anyhow!("outbox {}: {e}", path.display()))?;
        match report {
            OpenReport::Opened => {}
            OpenReport::MovedAside {
                path: aside,
                reason,
            } => {
                tracing::error!(outbox = %path.display(), moved_to = %aside.display(),
                    "the outbox is corrupt ({reason}); it was moved aside and a fresh one started — \
                     its undelivered records are still on disk there but will not be sent; inspect or delete {}", aside.display());
            }
            OpenReport::Unavailable { reason } => {
                tracing::error!(outbox = %path.display(),
                    "the outbox cannot be opened ({reason}); running without it (records are dropped and counted) \
                     and retrying — check free disk space and permissions");
            }
        }
        let ob = Arc::new(ob);
        let commit_stop = CancellationToken::new();
        let committer = tokio::spawn(ob.clone().run_committer(commit_stop.clone()));
        Ok(Delivery {
            outbox: ob,
            committer,
            commit_stop,
            forwarders: Vec::new(),
            mqtt_up: Vec::new(),
            rebirth: Vec::new(),
            forward_stop: CancellationToken::new(),
            sync: None,
            sync_stop: CancellationToken::new(),
        })
    }

    /// The outbox (for metrics and status).
    pub fn outbox(&self) -> Arc<SledOutbox> {
        self.outbox.clone()
    }

    /// Each MQTT output's name and whether its broker connection is up.
    pub fn mqtt_links(&self) -> Vec<(String, Arc<std::sync::atomic::AtomicBool>)> {
        self.mqtt_up.clone()
    }

    /// Each Sparkplug output's name and its rebirth trigger (the `rebirth` command).
    pub fn rebirth_triggers(&self) -> Vec<(String, Arc<tokio::sync::Notify>)> {
        self.rebirth.clone()
    }

    /// The pipeline output that stores records in the outbox.
    pub fn writer(&self, sample_interval: Option<Duration>) -> OutboxWriter {
        OutboxWriter::new(self.outbox.clone(), sample_interval)
    }

    /// Starts one forwarder per `[[outputs.mqtt]]`.
    #[cfg(feature = "mqtt")]
    pub fn start_mqtt_outputs(
        &mut self,
        cfg: &AgentConfig,
        model_stats: &[(String, Arc<ModelStats>)],
    ) -> anyhow::Result<()> {
        for o in &cfg.outputs.mqtt {
            let owners = cfg.tag_owners();
            let forwarder = crate::publish::output::forwarder(
                o,
                &crate::publish::output::OutputSite {
                    agent_id: &cfg.agent.id,
                    data_dir: &cfg.agent.data_dir,
                    outbox: &self.outbox,
                    models: model_stats,
                },
                Box::new(move |t: &str| owners.owner(t).map(String::from)),
            )?;
            self.mqtt_up
                .push((o.name.clone(), forwarder.link.up.clone()));
            if o.format == crate::publish::MqttFormat::Sparkplug {
                self.rebirth
                    .push((o.name.clone(), forwarder.rebirth.clone()));
            }
            self.forwarders
                .push(tokio::spawn(forwarder.run(self.forward_stop.clone())));
        }
        Ok(())
    }

    /// Starts the fleet sync (check-ins, uploads from the outbox, model updates); its
    /// counters for the metrics.
    pub fn start_fleet_sync(
        &mut self,
        cfg: &AgentConfig,
        sync: &SyncConfig,
        parts: FleetSyncParts,
    ) -> Arc<SyncStats> {
        let mut task = SyncTask::new(
            sync.clone(),
            cfg.agent.id.clone(),
            cfg.agent.data_dir.clone(),
            Some(self.outbox.clone()),
            parts.models,
            parts.trusted,
            crate::models::floor::FloorStore::new(&cfg.bundle_dir()),
        );
        task.remote = parts.remote;
        task.ops = parts.ops;
        task.agent.store = parts.releases;
        let stats = task.stats.clone();
        self.sync = Some(tokio::spawn(task.run(self.sync_stop.clone())));
        stats
    }

    /// After the pipeline stopped: stop the sync, commit what the pipeline wrote, then stop
    /// the forwarders.
    pub async fn finish(self) {
        self.sync_stop.cancel();
        if let Some(t) = self.sync {
            task::join_within("fleet sync", t, Duration::from_secs(5)).await;
        }
        self.commit_stop.cancel();
        // The committer commits once more on its way out.
        task::joined("outbox committer", self.committer.await);
        self.forward_stop.cancel();
        for f in self.forwarders {
            task::join_within("MQTT forwarder", f, Duration::from_secs(3)).await;
        }
        let backlog: u64 = self.outbox.stats().values().map(|x| x.records).sum();
        tracing::info!(
            backlog,
            "outbox committed; undelivered records wait for the next start"
        );
    }
}
