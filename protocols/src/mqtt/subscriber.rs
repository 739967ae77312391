//! [`MqttSubscriber`]: a source that subscribes to topics and reads tag values from payloads.
//!
//! Delivery: with QoS 1 the broker's message is acknowledged only after its samples are in the
//! pipeline, and the broker session persists across reconnects (`clean_session = false`), so
//! a crash or a network cut never loses a message the broker accepted. Reconnects back off with
//! jitter; subscriptions are renewed whenever the broker did not keep the session.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode};

use super::client::{fatal_reason, mqtt_options};
use super::config::{MqttSourceConfig, MqttTagConfig};
use super::payload::{parse_json, parse_plain, timestamp_at, value_at, PayloadError};
use super::topic::{expand_name, has_wildcards, match_filter};
use crate::error_latch::ErrorLatch;
use crate::sample::{now_ns, Quality, Sample, Tag};
use crate::source::{Source, SourceContext, SourceError, SourceFuture};

/// Upper bound of distinct tag names created from wildcard topics (memory guard against a
/// broker that publishes on unbounded topic names).
const MAX_DYNAMIC_TAGS: usize = 10_000;

/// An MQTT subscribing source.
#[derive(Debug)]
pub struct MqttSubscriber {
    cfg: MqttSourceConfig,
    client_id: String,
    /// Exact-topic tags by topic, for O(1) lookup; wildcard tags are matched in order.
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
    static_tags: Vec<Option<Tag>>,
}

/// Per-run state of tag decoding.
#[derive(Default)]
struct Decoder {
    dynamic: HashMap<String, Tag>,
    latches: HashMap<usize, ErrorLatch>,
    dynamic_full_logged: bool,
}

impl MqttSubscriber {
    /// `default_client_id` is used when the broker config has no `client_id`.
    pub fn new(cfg: MqttSourceConfig, default_client_id: String) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, t) in cfg.tags.iter().enumerate() {
            if has_wildcards(&t.topic) {
                wildcard.push(i);
            } else {
                exact.entry(t.topic.clone()).or_default().push(i);
            }
        }
        let static_tags = cfg
            .tags
            .iter()
            .map(|t| (!t.name.contains('{')).then(|| Arc::from(t.name.as_str())))
            .collect();
        let client_id = cfg.broker.client_id.clone().unwrap_or(default_client_id);
        MqttSubscriber {
            cfg,
            client_id,
            exact,
            wildcard,
            static_tags,
        }
    }

    fn qos(&self) -> QoS {
        if self.cfg.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    fn filters(&self) -> Vec<SubscribeFilter> {
        let mut topics: Vec<&str> = self.cfg.tags.iter().map(|t| t.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
            .into_iter()
            .map(|t| SubscribeFilter::new(t.to_string(), self.qos()))
            .collect()
    }

    /// Every sample one message yields.
    fn decode(&self, p: &Publish, dec: &mut Decoder, ctx: &SourceContext) -> Vec<Sample> {
        let arrived = now_ns();
        let mut out = Vec::new();
        let mut json: Option<Result<serde_json::Value, PayloadError>> = None;
        let candidates = self
            .exact
            .get(p.topic.as_str())
            .into_iter()
            .flatten()
            .chain(self.wildcard.iter());
        for &i in candidates {
            let t: &MqttTagConfig = &self.cfg.tags[i];
            let Some(captures) = match_filter(&t.topic, &p.topic) else {
                continue;
            };
            let tag = match &self.static_tags[i] {
                Some(tag) => tag.clone(),
                None => match self.dynamic_tag(&t.name, &captures, dec) {
                    Some(tag) => tag,
                    None => continue,
                },
            };
            // The measurement time, when the payload carries one: it stamps bad values too, so a
            // failed reading sits at its true place in the tag's timeline.
            let mut ts: Option<Result<i64, PayloadError>> = None;
            let result = match &t.json_pointer {
                None => parse_plain(&p.payload),
                Some(ptr) => {
                    let doc = json.get_or_insert_with(|| parse_json(&p.payload));
                    match doc {
                        Err(e) => Err(e.clone()),
                        Ok(doc) => {
                            ts = t
                                .timestamp_pointer
                                .as_ref()
                                .map(|tp| timestamp_at(doc, tp, t.timestamp_format));
                            value_at(doc, ptr)
                        }
                    }
                }
            };
            let good_ts = match &ts {
                Some(Ok(ns)) => *ns,
                _ => arrived,
            };
            let latch = dec.latches.entry(i).or_default();
            match (result, ts) {
                (Ok(v), None) | (Ok(v), Some(Ok(_))) => {
                    latch.ok();
                    out.push(Sample::new(tag, good_ts, v, Quality::Good));
                }
                (Ok(v), Some(Err(e))) => {
                    // The value is fine, its time is not: keep it, flagged.
                    ctx.stats.error();
                    if latch.fail(&e.to_string()) {
                        tracing::warn!(source = %ctx.name, topic = %p.topic, tag = %tag,
                            "{e}; using arrival time, quality uncertain");
                    }
                    out.push(Sample::new(tag, arrived, v, Quality::Uncertain));
                }
                (Err(e), _) => {
                    ctx.stats.error();
                    if latch.fail(&e.to_string()) {
                        tracing::warn!(source = %ctx.name, topic = %p.topic, tag = %tag,
                            "cannot read value: {e}; sample is bad quality");
                    }
                    out.push(Sample::bad(tag, good_ts));
                }
            }
        }
        out
    }

    fn dynamic_tag(&self, template: &str, captures: &[&str], dec: &mut Decoder) -> Option<Tag> {
        let name = expand_name(template, captures);
        if let Some(t) = dec.dynamic.get(&name) {
            return Some(t.clone());
        }
        if dec.dynamic.len() >= MAX_DYNAMIC_TAGS {
            if !dec.dynamic_full_logged {
                dec.dynamic_full_logged = true;
                tracing::error!(source = %self.cfg.name,
                    "more than {MAX_DYNAMIC_TAGS} distinct tags from wildcard topics; ignoring new \
                     ones — narrow the topic filters");
            }
            return None;
        }
        let tag: Tag = Arc::from(name.as_str());
        dec.dynamic.insert(name, tag.clone());
        Some(tag)
    }

    fn known_tags(&self, dec: &Decoder) -> Vec<Tag> {
        self.static_tags
            .iter()
            .flatten()
            .cloned()
            .chain(dec.dynamic.values().cloned())
            .collect()
    }

    async fn run_loop(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let opts = mqtt_options(&self.cfg.broker, &self.client_id)
            .map_err(|e| SourceError::Config(format!("{}: {e}", self.cfg.name)))?;
        let mut opts = opts;
        opts.set_manual_acks(true);
        // Acks travel through the client's request queue, which rumqttc drains only between
        // bursts of incoming packets; size it well above any broker's in-flight window, and
        // keep acks that still do not fit for the next turn (a lost ack would stall the session).
        let (client, mut events) = AsyncClient::new(opts, 256);
        let mut unacked: std::collections::VecDeque<rumqttc::Publish> =
            std::collections::VecDeque::new();
        let mut dec = Decoder::default();
        let mut backoff = self.cfg.broker.reconnect.backoff();
        let mut conn_latch = ErrorLatch::default();
        let mut connected_once = false;
        let mut marked_bad = false;
        tracing::info!(source = %ctx.name, url = %self.cfg.broker.url, client_id = %self.client_id,
            filters = self.filters().len(), "mqtt source starting");
        loop {
            while let Some(p) = unacked.front() {
                if client.try_ack(p).is_err() {
                    break;
                }
                unacked.pop_front();
            }
            let ev = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                ev = events.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    ctx.stats.set_connected(true);
                    marked_bad = false;
                    if connected_once {
                        ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    connected_once = true;
                    if conn_latch.ok().is_some() || !ack.session_present {
                        tracing::info!(source = %ctx.name, url = %self.cfg.broker.url,
                            session_present = ack.session_present, "mqtt connected");
                    }
                    if !ack.session_present {
                        // try_: awaiting the request channel here would deadlock the poll loop.
                        if let Err(e) = client.try_subscribe_many(self.filters()) {
                            tracing::error!(source = %ctx.name, "cannot queue subscriptions: {e}");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let failed = s
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                        .count();
                    if failed > 0 {
                        ctx.stats.error();
                        tracing::error!(source = %ctx.name,
                            "broker refused {failed} of {} subscriptions (ACL?)", s.return_codes.len());
                    } else {
                        tracing::info!(source = %ctx.name, filters = s.return_codes.len(), "mqtt subscribed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let samples = self.decode(&p, &mut dec, &ctx);
                    if ctx.out.send(samples).await.is_err() {
                        break;
                    }
                    // Acknowledge only once the samples are in the pipeline.
                    if p.qos != QoS::AtMostOnce
                        && (!unacked.is_empty() || client.try_ack(&p).is_err())
                    {
                        unacked.push_back(p);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Acks of the lost connection are void: the broker redelivers.
                    unacked.clear();
                    ctx.stats.error();
                    ctx.stats.set_connected(false);
                    let msg = e.to_string();
                    let (delay, fatal) = match fatal_reason(&e) {
                        Some(why) => (backoff.fatal_delay(), Some(why)),
                        None => (backoff.next_delay(), None),
                    };
                    if conn_latch.fail(&msg) {
                        match fatal {
                            Some(why) => {
                                tracing::error!(source = %ctx.name, url = %self.cfg.broker.url,
                                "mqtt: {msg} — {why}; retrying every ~{:?}, other sources keep running",
                                self.cfg.broker.reconnect.max)
                            }
                            None => tracing::warn!(source = %ctx.name, url = %self.cfg.broker.url,
                                "mqtt connection failed: {msg}; retrying in {delay:?} (backing off)"),
                        }
                    }
                    if !marked_bad {
                        marked_bad = true;
                        if ctx.mark_bad(&self.known_tags(&dec)).await.is_err() {
                            break;
                        }
                    }
                    if !ctx.sleep(delay).await {
                        break;
                    }
                }
            }
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(ev) = events.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
        ctx.stats.set_connected(false);
        tracing::info!(source = %ctx.name, "mqtt source stopped");
        Ok(())
    }
}

impl Source for MqttSubscriber {
    fn kind(&self) -> &'static str {
        "mqtt"
    }
    fn tags(&self) -> Vec<Tag> {
        self.static_tags.iter().flatten().cloned().collect()
    }
    fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture {
        Box::pin(self.run_loop(ctx))
    }
}
