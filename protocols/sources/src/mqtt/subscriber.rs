//! [`MqttSubscriber`]: a source that subscribes to topics and reads tag values from payloads.
//!
//! Delivery: with QoS 1 the broker's message is acknowledged only after its samples are in the
//! pipeline, and the broker session persists across reconnects (`clean_session = false`), so
//! a crash or a network cut never loses a message the broker accepted. Reconnects back off with
//! jitter; subscriptions are renewed whenever the broker did not keep the session.
//!
//! Throughput: the messages that are already read when one arrives (up to [`MAX_BURST`]) are
//! decoded together and go to the pipeline as one batch, then acknowledged together.
//!
//! Bad input never stalls the source: a message larger than `max_packet_size` (up to
//! [`READ_LIMIT`], which the client still reads) and a payload that cannot be decoded are
//! acknowledged like any other, counted per reason (`edge_source_bad_messages_total`), and
//! logged once per reason per [`BAD_LOG_EVERY`] with the topic and the setting to change.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode};

use super::client::{fatal_reason, mqtt_options};
use super::config::{MqttSourceConfig, MqttTagConfig};
use super::payload::{parse_json, parse_plain, timestamp_at, value_at, PayloadError};
use super::topic::{expand_name, has_wildcards, match_filter};
use crate::error_latch::ErrorLatch;
use crate::source::{BadMessage, Source, SourceContext, SourceError, SourceFuture};
use edge_wire::sample::{now_ns, Quality, Sample, Tag};

/// Upper bound of distinct tag names created from wildcard topics (memory guard against a
/// broker that publishes on unbounded topic names).
const MAX_DYNAMIC_TAGS: usize = 10_000;

/// Messages decoded into one pipeline batch at most (those already read from the socket).
pub const MAX_BURST: usize = 512;

/// The largest packet the client reads at all. Between `max_packet_size` and this, a message
/// is read, acknowledged and dropped (counted); a larger one breaks the connection (MQTT 3.1.1
/// has no way to refuse a message), so the broker redelivers it: limit the broker's
/// `message_size_limit` below this.
pub const READ_LIMIT: usize = 64 * 1024 * 1024;

/// A bad-message reason is logged at most once per this interval (with the count since).
pub const BAD_LOG_EVERY: Duration = Duration::from_secs(60);

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
    bad_log: BadMessageLog,
    dynamic_full_logged: bool,
}

/// Logs each bad-message reason at most once per [`BAD_LOG_EVERY`], with how many more
/// were seen since the last line.
#[derive(Default)]
struct BadMessageLog {
    last: HashMap<BadMessage, (std::time::Instant, u64)>,
}

impl BadMessageLog {
    /// `Some(suppressed since the last line)` when this occurrence should be logged.
    fn due(&mut self, why: BadMessage) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last.get_mut(&why) {
            Some((at, n)) if now.duration_since(*at) < BAD_LOG_EVERY => {
                *n += 1;
                None
            }
            Some((at, n)) => {
                let since = *n;
                *at = now;
                *n = 0;
                Some(since)
            }
            None => {
                self.last.insert(why, (now, 0));
                Some(0)
            }
        }
    }
}

/// What an operator changes for a bad message of this kind.
fn remedy(why: BadMessage, tag: Option<&MqttTagConfig>, max_packet_size: usize) -> String {
    let ptr = tag.and_then(|t| t.json_pointer.clone()).unwrap_or_default();
    match why {
        BadMessage::Oversize => format!(
            "raise `max_packet_size` of this source's broker table (now {max_packet_size} bytes) or publish smaller messages"
        ),
        BadMessage::NotUtf8 | BadMessage::NotANumber => {
            "the tag has no `json_pointer`, so the payload must be a plain number or true/false: set `json_pointer` for JSON payloads".into()
        }
        BadMessage::BadJson | BadMessage::Missing | BadMessage::WrongType => format!(
            "check the tag's `json_pointer` (`{ptr}`) against what the publisher sends"
        ),
        BadMessage::BadTimestamp => {
            "check the tag's `timestamp_pointer` and `timestamp_format` (the value is kept with the arrival time, quality uncertain)".into()
        }
        BadMessage::NotFinite => {
            "the publisher sent a non-finite number; the sample is stored with bad quality".into()
        }
    }
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

    /// Books a bad message: counted, and logged if its reason is due (`detail` is only
    /// formatted then: a flood of bad messages costs a counter each).
    fn bad(
        &self,
        why: BadMessage,
        detail: impl FnOnce() -> String,
        p: &Publish,
        tag: Option<&MqttTagConfig>,
        dec: &mut Decoder,
        ctx: &SourceContext,
    ) {
        ctx.stats.bad_message(why);
        if let Some(more) = dec.bad_log.due(why) {
            let fix = remedy(why, tag, self.cfg.broker.max_packet_size);
            tracing::warn!(source = %ctx.name, topic = %p.topic, reason = why.name(),
                more_since_last_log = more, "unusable message: {}; {fix}", detail());
        }
    }

    /// Every sample one message yields (none for an oversize one).
    fn decode(&self, p: &Publish, dec: &mut Decoder, ctx: &SourceContext, out: &mut Vec<Sample>) {
        let arrived = now_ns();
        // Roughly the packet's remaining length (topic, its length, the packet id).
        let size = p.payload.len() + p.topic.len() + 4;
        if size > self.cfg.broker.max_packet_size {
            let detail = || format!("{size} bytes, over max_packet_size");
            self.bad(BadMessage::Oversize, detail, p, None, dec, ctx);
            return;
        }
        let mut booked = false;
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
            match (result, ts) {
                (Ok(v), None) | (Ok(v), Some(Ok(_))) => {
                    out.push(Sample::new(tag, good_ts, v, Quality::Good));
                }
                (Ok(v), Some(Err(e))) => {
                    // The value is fine, its time is not: keep it, flagged.
                    if !booked {
                        booked = true;
                        let detail = || format!("tag {tag}: {e}");
                        self.bad(e.reason(), detail, p, Some(t), dec, ctx);
                    }
                    out.push(Sample::new(tag, arrived, v, Quality::Uncertain));
                }
                (Err(e), _) => {
                    // One message is booked once, under its first problem.
                    if !booked {
                        booked = true;
                        let detail = || format!("tag {tag}: {e}; sample is bad quality");
                        self.bad(e.reason(), detail, p, Some(t), dec, ctx);
                    }
                    out.push(Sample::bad(tag, good_ts));
                }
            }
        }
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
        // Read what is over `max_packet_size` (up to READ_LIMIT) so it can be acknowledged
        // and dropped: refusing to read it would break the connection, and the broker would
        // redeliver it forever.
        opts.set_max_packet_size(
            READ_LIMIT.max(self.cfg.broker.max_packet_size),
            self.cfg.broker.max_packet_size,
        );
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
        // An event read while collecting a burst, handled next.
        let mut pending = None;
        tracing::info!(source = %ctx.name, url = %self.cfg.broker.url, client_id = %self.client_id,
            filters = self.filters().len(), "mqtt source starting");
        loop {
            while let Some(p) = unacked.front() {
                if client.try_ack(p).is_err() {
                    break;
                }
                unacked.pop_front();
            }
            let ev = match pending.take() {
                Some(ev) => ev,
                None => tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    ev = events.poll() => ev,
                },
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
                    // This message and those already read behind it: one batch.
                    let mut samples = Vec::new();
                    let mut burst = vec![p];
                    self.decode(&burst[0], &mut dec, &ctx, &mut samples);
                    let mut next = None;
                    while burst.len() < MAX_BURST {
                        match events.poll().now_or_never() {
                            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                                self.decode(&p, &mut dec, &ctx, &mut samples);
                                burst.push(p);
                            }
                            Some(Ok(Event::Outgoing(_))) => {}
                            Some(other) => {
                                next = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    if !samples.is_empty() && ctx.out.send(samples).await.is_err() {
                        break;
                    }
                    // Acknowledge only once the samples are in the pipeline.
                    for p in burst {
                        if p.qos != QoS::AtMostOnce
                            && (!unacked.is_empty() || client.try_ack(&p).is_err())
                        {
                            unacked.push_back(p);
                        }
                    }
                    if let Some(ev) = next {
                        pending = Some(ev);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Acks of the lost connection are void: the broker redelivers.
                    unacked.clear();
                    ctx.stats.error();
                    ctx.stats.set_connected(false);
                    let msg = e.to_string();
                    if let rumqttc::ConnectionError::MqttState(
                        rumqttc::StateError::Deserialization(
                            rumqttc::Error::PayloadSizeLimitExceeded(n),
                        ),
                    ) = &e
                    {
                        ctx.stats.bad_message(BadMessage::Oversize);
                        tracing::error!(source = %ctx.name, url = %self.cfg.broker.url, bytes = n,
                            "the broker sent a {n}-byte message, over the {READ_LIMIT}-byte limit this client reads at all: \
                             the connection breaks and the broker redelivers it after every reconnect; \
                             remove it from the broker (the client's session or the retained message) and \
                             set the broker's message_size_limit below {READ_LIMIT}");
                    }
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
