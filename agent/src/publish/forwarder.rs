//! [`Forwarder`]: moves records from the outbox to an MQTT broker for one output, in stream
//! priority order (alarms, predictions, features, samples), in batches: publish a batch, wait
//! until the broker acknowledged all of it, then move the output's outbox cursor. A connection
//! that drops mid-batch makes the batch be sent again (at-least-once); nothing is skipped.
//!
//! The message format (plain JSON or Sparkplug B) is a [`Format`]: it decides what goes out on
//! connect (status, births), whether data may flow (Sparkplug: primary host online), and how a
//! record becomes messages. Records stored before the current (re)connection — or before the
//! primary host came back — are the backlog and are marked historical.

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
const PRIORITY: [Stream; 5] = [
    Stream::Alarms,
    Stream::Drift,
    Stream::Predictions,
    Stream::Features,
    Stream::Samples,
];

pub struct Forwarder {
    pub name: String,
    pub outbox: Arc<SledOutbox>,
    pub streams: Vec<Stream>,
    pub qos: QoS,
    pub batch: usize,
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
        stash: &mut Vec<rumqttc::Publish>,
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
                Some(LinkEvent::Incoming(p)) => stash.push(p),
                Some(LinkEvent::Down(_)) | None => return Step::Down,
                Some(LinkEvent::Up) => {
                    // Reconnected under us (clean session): nothing is in flight any more.
                    self.pending_acks = 0;
                    self.pending_sent = 0;
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

    /// Sends what the outbox holds, until it is empty, the gate closes, or the link drops.
    async fn drain(
        &mut self,
        boundary: &[u64; 6],
        stop: &CancellationToken,
        stash: &mut Vec<rumqttc::Publish>,
    ) -> Step {
        loop {
            let mut moved = false;
            for s in PRIORITY {
                if !self.streams.contains(&s) || !self.format.gate_open() {
                    continue;
                }
                let recs = match self.outbox.read(s, &self.name, self.batch) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(output = %self.name, "cannot read the outbox: {e}");
                        return Step::Done;
                    }
                };
                let Some(last) = recs.last().map(|r| r.0) else {
                    continue;
                };
                let mut msgs = Vec::new();
                for (seq, _ts, payload) in &recs {
                    msgs.extend(
                        self.format
                            .encode(s, *seq, payload, *seq <= boundary[s.index()]),
                    );
                }
                match self.send(msgs, stop, stash).await {
                    Step::Done => {}
                    other => return other,
                }
                if let Err(e) = self.outbox.confirm(s, &self.name, last) {
                    tracing::error!(output = %self.name, "cannot move the outbox cursor: {e}");
                }
                moved = true;
                break; // re-check priorities after every batch
            }
            if !moved {
                return Step::Done;
            }
        }
    }

    fn boundary(&self) -> [u64; 6] {
        let mut b = [0u64; 6];
        for s in Stream::ALL {
            b[s.index()] = self.outbox.durable(s);
        }
        b
    }

    pub async fn run(mut self, stop: CancellationToken) {
        /// The longest the last delivery at a stop may take (the agent waits 3 s per output).
        const FINAL_DRAIN: Duration = Duration::from_secs(2);
        let mut committed = self.outbox.committed();
        let mut connected = false;
        let mut boundary = [0u64; 6];
        let mut stash: Vec<rumqttc::Publish> = Vec::new();
        let mut periodic = tokio::time::interval(self.periodic_every);
        periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Messages that arrived while a batch was in flight.
            for p in std::mem::take(&mut stash) {
                let r = self.format.on_incoming(&p);
                if r.opened {
                    boundary = self.boundary();
                }
                if connected && matches!(self.send(r.publish, &stop, &mut stash).await, Step::Down)
                {
                    connected = false;
                }
            }
            if connected {
                match self.drain(&boundary, &stop, &mut stash).await {
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
                _ = periodic.tick(), if connected => {
                    let msgs = self.format.periodic();
                    if matches!(self.send(msgs, &stop, &mut stash).await, Step::Down) {
                        connected = false;
                    }
                }
                ev = self.link.events.recv() => match ev {
                    Some(LinkEvent::Up) => {
                        // A clean session: nothing of the last connection is in flight.
                        self.pending_acks = 0;
                        self.pending_sent = 0;
                        // Everything stored until now is the backlog of this connection.
                        boundary = self.boundary();
                        let msgs = self.format.on_connect();
                        connected = matches!(self.send(msgs, &stop, &mut stash).await, Step::Done);
                        // The connect messages just went out: the next refresh is a full
                        // period away (an interval's first tick is immediate, which sent the
                        // status twice on every connect).
                        periodic.reset();
                    }
                    Some(LinkEvent::Down(_)) => connected = false,
                    Some(LinkEvent::Incoming(p)) => stash.push(p),
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
                tokio::time::timeout(FINAL_DRAIN, self.drain(&boundary, &quick, &mut stash)).await;
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
