//! [`Forwarder`]: moves records from the outbox to an MQTT broker for one output, live-first.
//! A record is published as soon as it is appended (read from the outbox's memory, not after
//! the commit): publish a batch, wait until the broker acknowledged all of it, then confirm it
//! to the outbox, which moves the output's cursor once the record is also durable. A
//! connection that drops mid-batch makes the batch be sent again (at-least-once).
//!
//! Each stream is a [`Lane`]: records stored before the current (re)connection — or before the
//! primary host came back — are its backlog, published as historical; records appended since
//! are live. Every round publishes what is live first (all streams, in priority order: alarms,
//! drift, predictions, features, samples), then one backlog batch sized by `backlog_share`,
//! so fresh values never wait behind an outage's backlog.
//!
//! The message format (plain JSON or Sparkplug B) is a [`Format`]: it decides what goes out on
//! connect (status, births), whether data may flow (Sparkplug: primary host online), and how a
//! record becomes messages.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

use super::link::{Link, LinkEvent};
use crate::outbox::{SledOutbox, Stream};

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

/// What a subscribed message changed.
#[derive(Debug, Default)]
pub struct Reaction {
    /// Messages to publish now (e.g. a rebirth).
    pub publish: Vec<Msg>,
    /// The gate just opened: the backlog until now is historical.
    pub opened: bool,
}

pub trait Format: Send {
    /// Messages right after (re)connecting: status, births.
    fn on_connect(&mut self) -> Vec<Msg>;
    /// Whether data may be published now.
    fn gate_open(&self) -> bool {
        true
    }
    fn on_incoming(&mut self, _p: &rumqttc::Publish) -> Reaction {
        Reaction::default()
    }
    /// Messages of one outbox record. An undecodable record yields nothing (and is skipped).
    fn encode(&mut self, stream: Stream, seq: u64, payload: &[u8], historical: bool) -> Vec<Msg>;
    /// Messages sent every `periodic_every` (status refresh).
    fn periodic(&mut self) -> Vec<Msg> {
        Vec::new()
    }
    /// Messages to send on a clean shutdown (e.g. offline status, NDEATH).
    fn on_shutdown(&mut self) -> Vec<Msg> {
        Vec::new()
    }
}

/// Stream order: what an operator needs first after an outage comes out first.
/// One [`Lane`] per stream.
#[derive(Debug, Default)]
struct Lanes([Lane; Stream::ALL.len()]);

impl Lanes {
    fn get(&self, s: Stream) -> Lane {
        self.0[s.index()]
    }
    fn get_mut(&mut self, s: Stream) -> &mut Lane {
        &mut self.0[s.index()]
    }
}

const PRIORITY: [Stream; 5] = [
    Stream::Alarms,
    Stream::Drift,
    Stream::Predictions,
    Stream::Features,
    Stream::Samples,
];

/// Where one stream's delivery stands on this output.
#[derive(Debug, Default, Clone, Copy)]
struct Lane {
    /// Every record up to here reached the broker (contiguously, backlog included).
    done: u64,
    /// The last record stored before this connection (or gate opening): `done..=boundary`
    /// is the backlog.
    boundary: u64,
    /// Live records (after `boundary`) up to here reached the broker.
    live: u64,
}

impl Lane {
    fn backlog_done(&self) -> bool {
        self.done >= self.boundary
    }
}

pub struct Forwarder {
    pub name: String,
    pub outbox: Arc<SledOutbox>,
    pub streams: Vec<Stream>,
    pub qos: QoS,
    pub batch: usize,
    /// The backlog's share of the records while live records wait too (0, 1].
    pub backlog_share: f64,
    pub format: Box<dyn Format>,
    pub link: Link,
    /// Stops the link's event loop; fired after the shutdown messages went out.
    pub link_stop: CancellationToken,
    pub periodic_every: Duration,
    /// Publishes that the broker must acknowledge within this time, or the connection is
    /// treated as broken.
    pub ack_timeout: Duration,
    /// QoS 1 publishes of this connection not yet acknowledged.
    pub pending_acks: usize,
    /// Publishes of this connection not yet written to the socket.
    pub pending_sent: usize,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("name", &self.name)
            .finish()
    }
}

enum Step {
    Done,
    Down,
    Stop,
}

impl Forwarder {
    /// Publishes `msgs` and waits until everything in flight on this connection is through:
    /// acknowledged (QoS 1) or written to the socket (QoS 0). Counting what is in flight, not
    /// just this batch, keeps late events of an interrupted batch from being mistaken for
    /// this batch's.
    async fn send(
        &mut self,
        msgs: Vec<Msg>,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> Step {
        for m in msgs {
            if m.qos != QoS::AtMostOnce {
                self.pending_acks += 1;
            }
            self.pending_sent += 1;
            if self
                .link
                .client
                .publish(m.topic, m.qos, m.retain, m.payload)
                .await
                .is_err()
            {
                return Step::Down;
            }
        }
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        while self.pending_acks > 0 || self.pending_sent > 0 {
            let ev = tokio::select! {
                _ = stop.cancelled() => return Step::Stop,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(output = %self.name, "no acknowledgement within {:?}; resending after reconnect", self.ack_timeout);
                    let _ = self.link.client.try_disconnect();
                    return Step::Down;
                }
                ev = self.link.events.recv() => ev,
            };
            match ev {
                Some(e @ (LinkEvent::Acked | LinkEvent::Sent)) => self.account(&e),
                Some(ev @ LinkEvent::Incoming(_)) => stash.push(ev),
                Some(LinkEvent::Down(_)) | None => return Step::Down,
                Some(LinkEvent::Up) => {
                    // Reconnected under us (clean session): nothing is in flight any more;
                    // the run loop handles the new connection.
                    self.pending_acks = 0;
                    self.pending_sent = 0;
                    stash.push(LinkEvent::Up);
                    return Step::Down;
                }
            }
        }
        Step::Done
    }

    /// Books an acknowledgement or a socket write against what is in flight.
    fn account(&mut self, ev: &LinkEvent) {
        match ev {
            LinkEvent::Acked => self.pending_acks = self.pending_acks.saturating_sub(1),
            LinkEvent::Sent => self.pending_sent = self.pending_sent.saturating_sub(1),
            _ => {}
        }
    }

    /// Sends what the outbox holds, live first, until everything is through, the gate
    /// closes, or the link drops.
    async fn drain(
        &mut self,
        lanes: &mut Lanes,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> Step {
        loop {
            if !self.format.gate_open() {
                return Step::Done;
            }
            let (live, saturated) = match self.send_live(lanes, stop, stash).await {
                Ok(n) => n,
                Err(step) => return step,
            };
            // Live records caught up: the backlog takes a full batch. Only while live
            // records keep a batch full does the share apply.
            let budget = if !saturated {
                self.batch
            } else {
                let share = self.backlog_share.min(1.0);
                let n = if share >= 1.0 {
                    self.batch as f64
                } else {
                    live as f64 * share / (1.0 - share)
                };
                (n.ceil() as usize).clamp(1, self.batch)
            };
            let backlog = match self.send_backlog(lanes, budget, stop, stash).await {
                Ok(n) => n,
                Err(step) => return step,
            };
            if live == 0 && backlog == 0 {
                return Step::Done;
            }
        }
    }

    /// Publishes every stream's live records (one batch each) in one go: the number of
    /// records sent, and whether a stream filled its batch (more live records wait).
    async fn send_live(
        &mut self,
        lanes: &mut Lanes,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> Result<(usize, bool), Step> {
        let mut msgs = Vec::new();
        let mut moved = Vec::new();
        for s in PRIORITY {
            if !self.streams.contains(&s) {
                continue;
            }
            let lane = lanes.get(s);
            let recs = match self.outbox.read_live(s, lane.live, u64::MAX, self.batch) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(output = %self.name, "cannot read the outbox: {e}");
                    return Err(Step::Done);
                }
            };
            let Some(last) = recs.last().map(|r| r.0) else {
                continue;
            };
            for (seq, _ts, payload) in &recs {
                msgs.extend(self.format.encode(s, *seq, payload, false));
            }
            moved.push((s, last, recs.len()));
        }
        if moved.is_empty() {
            return Ok((0, false));
        }
        let saturated = moved.iter().any(|m| m.2 >= self.batch);
        match self.send(msgs, stop, stash).await {
            Step::Done => {}
            other => return Err(other),
        }
        let mut n = 0;
        for (s, last, count) in moved {
            let lane = lanes.get_mut(s);
            lane.live = last;
            if lane.backlog_done() {
                lane.done = last;
            }
            let done = lane.done;
            self.confirm(s, done);
            n += count;
        }
        Ok((n, saturated))
    }

    /// Publishes up to `budget` backlog records of the first stream (in priority order) that
    /// has a backlog, marked historical; the number of records sent.
    async fn send_backlog(
        &mut self,
        lanes: &mut Lanes,
        budget: usize,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> Result<usize, Step> {
        for s in PRIORITY {
            let lane = lanes.get(s);
            if !self.streams.contains(&s) || lane.backlog_done() {
                continue;
            }
            let recs = match self.outbox.read_live(s, lane.done, lane.boundary, budget) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(output = %self.name, "cannot read the outbox: {e}");
                    return Err(Step::Done);
                }
            };
            let Some(last) = recs.last().map(|r| r.0) else {
                // Nothing stored there any more (dropped by the stream's limits).
                let lane = lanes.get_mut(s);
                lane.done = lane.live.max(lane.boundary);
                continue;
            };
            let mut msgs = Vec::new();
            for (seq, _ts, payload) in &recs {
                msgs.extend(self.format.encode(s, *seq, payload, true));
            }
            match self.send(msgs, stop, stash).await {
                Step::Done => {}
                other => return Err(other),
            }
            let lane = lanes.get_mut(s);
            lane.done = last;
            if lane.backlog_done() {
                // The live records past the backlog went out already.
                lane.done = lane.live.max(lane.boundary);
            }
            let done = lane.done;
            self.confirm(s, done);
            return Ok(recs.len());
        }
        Ok(0)
    }

    fn confirm(&self, s: Stream, seq: u64) {
        if let Err(e) = self.outbox.confirm(s, &self.name, seq) {
            tracing::error!(output = %self.name, "cannot move the outbox cursor: {e}");
        }
    }

    /// A new connection: nothing of the last one is in flight (clean session); what is stored
    /// now is its backlog; status and births go out first. Whether the connection works.
    async fn connected(
        &mut self,
        lanes: &mut Lanes,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> bool {
        self.pending_acks = 0;
        self.pending_sent = 0;
        self.reset_lanes(lanes);
        let msgs = self.format.on_connect();
        matches!(self.send(msgs, stop, stash).await, Step::Done)
    }

    /// A fresh start of every lane: what is stored now is the backlog, everything the
    /// broker got (confirmed or acknowledged in this run) is done.
    fn reset_lanes(&self, lanes: &mut Lanes) {
        for s in Stream::ALL {
            let lane = lanes.get_mut(s);
            let cursor = self.outbox.cursor(s, &self.name).unwrap_or(0);
            lane.done = lane.done.max(cursor);
            lane.boundary = self.outbox.live_head(s);
            lane.live = lane.boundary.max(lane.done);
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        /// The longest the last delivery at a stop may take (the agent waits 3 s per output).
        const FINAL_DRAIN: Duration = Duration::from_secs(2);
        let mut committed = self.outbox.committed();
        let mut appended = self.outbox.appended();
        let mut connected = false;
        let mut lanes = Lanes::default();
        // Events that arrived while a batch was in flight, for the run loop.
        let mut stash: Vec<LinkEvent> = Vec::new();
        let mut periodic = tokio::time::interval(self.periodic_every);
        periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for ev in std::mem::take(&mut stash) {
                match ev {
                    LinkEvent::Incoming(p) => {
                        let r = self.format.on_incoming(&p);
                        if r.opened {
                            self.reset_lanes(&mut lanes);
                        }
                        if connected
                            && matches!(self.send(r.publish, &stop, &mut stash).await, Step::Down)
                        {
                            connected = false;
                        }
                    }
                    LinkEvent::Up => {
                        connected = self.connected(&mut lanes, &stop, &mut stash).await;
                        periodic.reset();
                    }
                    _ => {}
                }
            }
            if connected {
                match self.drain(&mut lanes, &stop, &mut stash).await {
                    Step::Done => {}
                    Step::Down => connected = false,
                    Step::Stop => break,
                }
            }
            if !stash.is_empty() {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = committed.changed() => {}
                _ = appended.changed() => {}
                _ = periodic.tick(), if connected => {
                    let msgs = self.format.periodic();
                    if matches!(self.send(msgs, &stop, &mut stash).await, Step::Down) {
                        connected = false;
                    }
                }
                ev = self.link.events.recv() => match ev {
                    Some(LinkEvent::Up) => {
                        connected = self.connected(&mut lanes, &stop, &mut stash).await;
                        // The connect messages just went out: the next refresh is a full
                        // period away (an interval's first tick is immediate, which sent the
                        // status twice on every connect).
                        periodic.reset();
                    }
                    Some(LinkEvent::Down(_)) => connected = false,
                    Some(ev @ LinkEvent::Incoming(_)) => stash.push(ev),
                    Some(e @ (LinkEvent::Acked | LinkEvent::Sent)) => self.account(&e),
                    None => break,
                }
            }
        }
        let mut goodbye = "not connected";
        if connected {
            // The pipeline's last batches were committed just before the stop: deliver what
            // is committed (bounded), or the stop could win the race against the commit's
            // wake-up and leave them for the next start (seen for the JSON output).
            let quick = CancellationToken::new();
            let flushed =
                tokio::time::timeout(FINAL_DRAIN, self.drain(&mut lanes, &quick, &mut stash)).await;
            if !matches!(flushed, Ok(Step::Done)) {
                tracing::warn!(output = %self.name, "stopping before everything committed was delivered (it stays in the outbox for the next start)");
            }
            let msgs = self.format.on_shutdown();
            let quick = CancellationToken::new();
            goodbye = match tokio::time::timeout(
                Duration::from_secs(1),
                self.send(msgs, &quick, &mut stash),
            )
            .await
            {
                Ok(Step::Done) => "sent",
                Ok(_) => "failed",
                Err(_) => "timed out",
            };
            // DISCONNECT must reach the broker before the link stops, or the broker publishes
            // the last will (an unclean death) after the goodbye.
            if self.link.client.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while self.link.events.recv().await.is_some() {}
                })
                .await;
            }
        }
        self.link_stop.cancel();
        tracing::info!(output = %self.name, goodbye, "mqtt output stopped");
    }
}
