//! [`Forwarder`]: moves records from the outbox to an MQTT broker for one output, live-first.
//! A record is published as soon as it is appended (read from the outbox's memory, not after
//! the commit), without waiting for the acknowledgements of what went before: published
//! batches form a window of [`Flight`]s, settled in order as the broker acknowledges them
//! (QoS 1; QoS 0: once written to the socket). A settled batch is confirmed to the outbox,
//! which moves the output's cursor once the record is also durable. A connection that drops
//! with batches in flight makes them be sent again (at-least-once).
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

use edge_wire::records::PerStream;
use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

use super::link::{Link, LinkEvent};
use crate::outbox::{SledOutbox, Stream};

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// Full topic.
    pub topic: String,
    /// Message body.
    pub payload: Vec<u8>,
    /// QoS to publish with.
    pub qos: QoS,
    /// Whether the broker keeps it as the topic's last value.
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

/// A message format of an MQTT output (plain JSON, Sparkplug B): what goes out when, and how
/// an outbox record becomes messages. Called only from the output's forwarder task.
pub trait Format: Send {
    /// Messages right after (re)connecting: status, births.
    fn on_connect(&mut self) -> Vec<Msg>;
    /// Whether data may be published now.
    fn gate_open(&self) -> bool {
        true
    }
    /// A message on a subscribed topic (Sparkplug: the primary host's STATE, rebirth commands).
    /// Default: nothing changes.
    fn on_incoming(&mut self, _p: &rumqttc::Publish) -> Reaction {
        Reaction::default()
    }
    /// Messages of one outbox record. An undecodable record yields nothing (and is skipped).
    fn encode(&mut self, stream: Stream, seq: u64, payload: &[u8], historical: bool) -> Vec<Msg>;
    /// Messages of a rebirth an operator asked for through the fleet (Sparkplug: the
    /// births, when the primary host is online; other formats: nothing).
    fn rebirth(&mut self) -> Vec<Msg> {
        Vec::new()
    }
    /// Messages sent every `periodic_every` (status refresh).
    fn periodic(&mut self) -> Vec<Msg> {
        Vec::new()
    }
    /// Messages to send on a clean shutdown (e.g. offline status, NDEATH).
    fn on_shutdown(&mut self) -> Vec<Msg> {
        Vec::new()
    }
}

/// One [`Lane`] per stream.
#[derive(Debug, Default)]
struct Lanes(PerStream<Lane>);

impl Lanes {
    fn get(&self, s: Stream) -> Lane {
        self.0[s]
    }
    fn get_mut(&mut self, s: Stream) -> &mut Lane {
        &mut self.0[s]
    }
}

/// Stream order: what an operator needs first after an outage comes out first.
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
    /// Backlog records up to here are published (some may be in flight).
    backlog_sent: u64,
    /// Live records (after `boundary`) up to here are published (some may be in flight).
    live: u64,
    /// Live records up to here reached the broker.
    live_acked: u64,
}

impl Lane {
    fn backlog_done(&self) -> bool {
        self.done >= self.boundary
    }
    fn backlog_published(&self) -> bool {
        self.backlog_sent >= self.boundary
    }
}

/// What a published batch settles once the broker has all of it.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Live(Stream, u64),
    Backlog(Stream, u64),
}

/// One published batch: its messages not yet acknowledged / not yet written to the socket.
#[derive(Debug, Default)]
pub struct Flight {
    acks: usize,
    sent: usize,
    settles: Vec<Settle>,
}

/// The batches in flight on this connection, oldest first (acks arrive in publish order:
/// MQTT 3.1.1 §4.6).
#[derive(Debug, Default)]
pub struct Window {
    flights: std::collections::VecDeque<Flight>,
    /// Acknowledgements and socket writes outstanding in all batches.
    messages: usize,
    /// When the broker last acknowledged something (or the window became non-empty).
    progress: Option<tokio::time::Instant>,
}

impl Flight {
    fn carries_backlog(&self) -> bool {
        self.settles
            .iter()
            .any(|s| matches!(s, Settle::Backlog(..)))
    }
}

impl Window {
    /// Whether a backlog batch is in flight. At most one is: a live record never queues
    /// behind more than one backlog batch (in the client's queue or a slow link's buffers).
    fn backlog_in_flight(&self) -> bool {
        self.flights.iter().any(Flight::carries_backlog)
    }

    /// When the window counts as stalled if nothing is acknowledged before.
    fn stall_at(&self, ack_timeout: Duration) -> tokio::time::Instant {
        self.progress.unwrap_or_else(tokio::time::Instant::now) + ack_timeout
    }
}

/// Messages in flight before publishing waits for acknowledgements.
const MAX_IN_FLIGHT: usize = 1000;

/// One MQTT output's delivery loop (module doc): outbox to broker through its own cursor,
/// live first. Built by `publish::output`; consumed by [`Forwarder::run`].
pub struct Forwarder {
    /// The output's name: its outbox cursor, and the label in logs.
    pub name: String,
    /// The outbox it reads from and confirms to.
    pub outbox: Arc<SledOutbox>,
    /// Streams it publishes.
    pub streams: Vec<Stream>,
    /// QoS of data messages (1: settled on the broker's ack; 0: once written to the socket).
    pub qos: QoS,
    /// Outbox records per published batch.
    pub batch: usize,
    /// The backlog's share of the records while live records wait too (0, 1].
    pub backlog_share: f64,
    /// How records become messages.
    pub format: Box<dyn Format>,
    /// The broker connection.
    pub link: Link,
    /// Stops the link's event loop; fired after the shutdown messages went out.
    pub link_stop: CancellationToken,
    /// How often [`Format::periodic`] messages go out (status refresh).
    pub periodic_every: Duration,
    /// Publishes that the broker must acknowledge within this time, or the connection is
    /// treated as broken.
    pub ack_timeout: Duration,
    /// Published batches not yet through.
    pub window: Window,
    /// Woken to publish the format's rebirth (the fleet's `rebirth` command).
    pub rebirth: Arc<tokio::sync::Notify>,
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
    /// Publishes `msgs` without waiting; `settles` apply once the broker has all of them.
    async fn publish(&mut self, msgs: Vec<Msg>, settles: Vec<Settle>) -> Step {
        let mut f = Flight {
            settles,
            ..Flight::default()
        };
        for m in &msgs {
            if m.qos != QoS::AtMostOnce {
                f.acks += 1;
            }
            f.sent += 1;
        }
        if self.window.flights.is_empty() {
            self.window.progress = Some(tokio::time::Instant::now());
        }
        self.window.messages += f.acks + f.sent;
        self.window.flights.push_back(f);
        for m in msgs {
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
        Step::Done
    }

    /// Publishes `msgs` and waits until everything in flight is through (connect and
    /// shutdown messages, whose delivery decides what comes next).
    async fn send(
        &mut self,
        msgs: Vec<Msg>,
        lanes: &mut Lanes,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> Step {
        match self.publish(msgs, Vec::new()).await {
            Step::Done => self.wait_window(0, lanes, stop, stash).await,
            other => other,
        }
    }

    /// Handles link events until at most `limit` messages are in flight.
    async fn wait_window(
        &mut self,
        limit: usize,
        lanes: &mut Lanes,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> Step {
        while self.window.messages > limit {
            let deadline = self.window.stall_at(self.ack_timeout);
            let ev = tokio::select! {
                _ = stop.cancelled() => return Step::Stop,
                _ = tokio::time::sleep_until(deadline) => {
                    self.ack_timed_out();
                    return Step::Down;
                }
                ev = self.link.events.recv() => ev,
            };
            if let Some(step) = self.on_event(ev, lanes, stash) {
                return step;
            }
        }
        Step::Done
    }

    /// Books one link event. `Some` when the connection is gone (or reconnected under us).
    fn on_event(
        &mut self,
        ev: Option<LinkEvent>,
        lanes: &mut Lanes,
        stash: &mut Vec<LinkEvent>,
    ) -> Option<Step> {
        match ev {
            Some(LinkEvent::Acked) => self.account(true, lanes),
            Some(LinkEvent::Sent) => self.account(false, lanes),
            Some(ev @ LinkEvent::Incoming(_)) => stash.push(ev),
            Some(LinkEvent::Down(_)) | None => {
                self.lost_window();
                return Some(Step::Down);
            }
            Some(LinkEvent::Up) => {
                // Reconnected under us (clean session): nothing is in flight any more; the
                // run loop handles the new connection.
                self.lost_window();
                stash.push(LinkEvent::Up);
                return Some(Step::Down);
            }
        }
        None
    }

    /// No acknowledgement for `ack_timeout`: the connection is treated as broken.
    fn ack_timed_out(&mut self) {
        tracing::warn!(output = %self.name, "no acknowledgement within {:?}; resending after reconnect", self.ack_timeout);
        let _ = self.link.client.try_disconnect();
        self.lost_window();
    }

    /// Whether batches are in flight and none was acknowledged for `ack_timeout`.
    fn stalled(&self) -> bool {
        !self.window.flights.is_empty()
            && tokio::time::Instant::now() >= self.window.stall_at(self.ack_timeout)
    }

    /// The connection is gone: what was in flight will be sent again from the lanes' settled
    /// positions.
    fn lost_window(&mut self) {
        self.window = Window::default();
    }

    /// Books an acknowledgement (or a socket write) against the oldest batch waiting for
    /// one; settles the batches at the front that are through.
    fn account(&mut self, ack: bool, lanes: &mut Lanes) {
        let w = &mut self.window;
        let slot = w
            .flights
            .iter_mut()
            .find(|f| if ack { f.acks > 0 } else { f.sent > 0 });
        if let Some(f) = slot {
            if ack {
                f.acks -= 1;
            } else {
                f.sent -= 1;
            }
            w.progress = Some(tokio::time::Instant::now());
            w.messages = w.messages.saturating_sub(1);
        }
        self.settle(lanes);
    }

    /// Settles the batches at the front of the window that are through: their lanes move
    /// and the outbox is told.
    fn settle(&mut self, lanes: &mut Lanes) {
        let w = &mut self.window;
        while w
            .flights
            .front()
            .is_some_and(|f| f.acks == 0 && f.sent == 0)
        {
            let Some(f) = w.flights.pop_front() else {
                break;
            };
            for st in f.settles {
                let s = match st {
                    Settle::Live(s, last) => {
                        let lane = lanes.get_mut(s);
                        lane.live_acked = lane.live_acked.max(last);
                        if lane.backlog_done() {
                            lane.done = lane.done.max(last);
                        }
                        s
                    }
                    Settle::Backlog(s, last) => {
                        let lane = lanes.get_mut(s);
                        lane.done = lane.done.max(last);
                        if lane.backlog_done() {
                            // The live records past the backlog went out already.
                            lane.done = lane.done.max(lane.live_acked);
                        }
                        s
                    }
                };
                let done = lanes.get(s).done;
                if let Err(e) = self.outbox.confirm(s, &self.name, done) {
                    tracing::error!(output = %self.name, "cannot move the outbox cursor: {e}");
                }
            }
        }
    }

    /// Publishes what the outbox holds, live first, until everything is published (not
    /// waiting for acknowledgements beyond [`MAX_IN_FLIGHT`]), the gate closes, or the link
    /// drops.
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
            // Book what was acknowledged meanwhile; keep the window bounded.
            while let Ok(ev) = self.link.events.try_recv() {
                if let Some(step) = self.on_event(Some(ev), lanes, stash) {
                    return step;
                }
            }
            if self.stalled() {
                self.ack_timed_out();
                return Step::Down;
            }
            match self.wait_window(MAX_IN_FLIGHT, lanes, stop, stash).await {
                Step::Done => {}
                other => return other,
            }
            let (live, saturated) = match self.send_live(lanes).await {
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
            let backlog = match self.send_backlog(lanes, budget).await {
                Ok(n) => n,
                Err(step) => return step,
            };
            if live == 0 && backlog == 0 {
                return Step::Done;
            }
        }
    }

    /// Publishes every stream's live records (one batch each) in one go: the number of
    /// records published, and whether a stream filled its batch (more live records wait).
    async fn send_live(&mut self, lanes: &mut Lanes) -> Result<(usize, bool), Step> {
        let mut msgs = Vec::new();
        let mut settles = Vec::new();
        let mut n = 0;
        let mut saturated = false;
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
            lanes.get_mut(s).live = last;
            settles.push(Settle::Live(s, last));
            n += recs.len();
            saturated |= recs.len() >= self.batch;
        }
        if settles.is_empty() {
            return Ok((0, false));
        }
        match self.publish(msgs, settles).await {
            Step::Done => {
                self.settle(lanes);
                Ok((n, saturated))
            }
            other => Err(other),
        }
    }

    /// Publishes up to `budget` backlog records of the first stream (in priority order) that
    /// has a backlog left, marked historical; the number of records published.
    async fn send_backlog(&mut self, lanes: &mut Lanes, budget: usize) -> Result<usize, Step> {
        if self.window.backlog_in_flight() {
            // The next backlog batch goes when this one is through (the run loop drains
            // again on every acknowledgement).
            return Ok(0);
        }
        for s in PRIORITY {
            let lane = lanes.get(s);
            if !self.streams.contains(&s) || lane.backlog_published() {
                continue;
            }
            let from = lane.backlog_sent.max(lane.done);
            let recs = match self.outbox.read_live(s, from, lane.boundary, budget) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(output = %self.name, "cannot read the outbox: {e}");
                    return Err(Step::Done);
                }
            };
            let Some(last) = recs.last().map(|r| r.0) else {
                // Nothing stored there any more (dropped by the stream's limits).
                let lane = lanes.get_mut(s);
                lane.backlog_sent = lane.boundary;
                let end = lane.boundary;
                match self
                    .publish(Vec::new(), vec![Settle::Backlog(s, end)])
                    .await
                {
                    Step::Done => {
                        self.settle(lanes);
                        continue;
                    }
                    other => return Err(other),
                }
            };
            let mut msgs = Vec::new();
            for (seq, _ts, payload) in &recs {
                msgs.extend(self.format.encode(s, *seq, payload, true));
            }
            lanes.get_mut(s).backlog_sent = last;
            return match self.publish(msgs, vec![Settle::Backlog(s, last)]).await {
                Step::Done => {
                    self.settle(lanes);
                    Ok(recs.len())
                }
                other => Err(other),
            };
        }
        Ok(0)
    }

    /// A new connection: nothing of the last one is in flight (clean session); what is stored
    /// now is its backlog; status and births go out first. Whether the connection works.
    async fn connected(
        &mut self,
        lanes: &mut Lanes,
        stop: &CancellationToken,
        stash: &mut Vec<LinkEvent>,
    ) -> bool {
        self.lost_window();
        self.reset_lanes(lanes);
        let msgs = self.format.on_connect();
        matches!(self.send(msgs, lanes, stop, stash).await, Step::Done)
    }

    /// A fresh start of every lane: what is stored now is the backlog, everything the
    /// broker got (confirmed, or acknowledged in this run) is done; what was published and
    /// not acknowledged goes out again.
    fn reset_lanes(&self, lanes: &mut Lanes) {
        for s in Stream::ALL {
            let lane = lanes.get_mut(s);
            let cursor = self.outbox.cursor(s, &self.name).unwrap_or(0);
            lane.done = lane.done.max(cursor);
            lane.boundary = self.outbox.live_head(s).max(lane.done);
            lane.backlog_sent = lane.done;
            lane.live = lane.boundary;
            lane.live_acked = lane.boundary;
        }
    }

    /// Delivers until `stop` fires. Then, if connected: what is committed is delivered (at most
    /// 2 s more; the rest stays in the outbox), the format's shutdown messages are sent and the
    /// client disconnects cleanly (no last will); finally the link stops.
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
        let rebirth = self.rebirth.clone();
        loop {
            for ev in std::mem::take(&mut stash) {
                match ev {
                    LinkEvent::Incoming(p) => {
                        let r = self.format.on_incoming(&p);
                        if r.opened {
                            self.reset_lanes(&mut lanes);
                        }
                        if connected
                            && matches!(self.publish(r.publish, Vec::new()).await, Step::Down)
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
            let stall_at = self.window.stall_at(self.ack_timeout);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = committed.changed() => {}
                _ = appended.changed() => {}
                _ = rebirth.notified(), if connected => {
                    let msgs = self.format.rebirth();
                    if matches!(self.publish(msgs, Vec::new()).await, Step::Down) {
                        connected = false;
                    }
                }
                _ = periodic.tick(), if connected => {
                    let msgs = self.format.periodic();
                    if matches!(self.publish(msgs, Vec::new()).await, Step::Down) {
                        connected = false;
                    }
                }
                _ = tokio::time::sleep_until(stall_at), if connected && !self.window.flights.is_empty() => {
                    if self.stalled() {
                        self.ack_timed_out();
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
                    Some(LinkEvent::Down(_)) => {
                        self.lost_window();
                        connected = false;
                    }
                    Some(ev @ LinkEvent::Incoming(_)) => stash.push(ev),
                    Some(LinkEvent::Acked) => self.account(true, &mut lanes),
                    Some(LinkEvent::Sent) => self.account(false, &mut lanes),
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
            let flushed = tokio::time::timeout(FINAL_DRAIN, async {
                match self.drain(&mut lanes, &quick, &mut stash).await {
                    Step::Done => self.wait_window(0, &mut lanes, &quick, &mut stash).await,
                    other => other,
                }
            })
            .await;
            if !matches!(flushed, Ok(Step::Done)) {
                tracing::warn!(output = %self.name, "stopping before everything committed was delivered (it stays in the outbox for the next start)");
            }
            let msgs = self.format.on_shutdown();
            let quick = CancellationToken::new();
            goodbye = match tokio::time::timeout(
                Duration::from_secs(1),
                self.send(msgs, &mut lanes, &quick, &mut stash),
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
