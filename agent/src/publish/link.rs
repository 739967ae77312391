//! [`Link`]: one MQTT connection driven on its own task. The event loop is polled there
//! (reconnecting with jittered backoff, resubscribing, refreshing the last will before every
//! attempt so a Sparkplug NDEATH carries the new bdSeq), and what matters to a publisher comes
//! out as [`LinkEvent`]s on an unbounded channel — so the poller never waits on the publisher,
//! and publishing never deadlocks the poller.

use std::sync::Arc;

use edge_sources::error_latch::ErrorLatch;
use edge_sources::mqtt::client::fatal_reason;
use edge_sources::mqtt::BrokerConfig;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What happens on a [`Link`], in order, for its one consumer.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected (CONNACK received; subscriptions renewed).
    Up,
    /// The connection failed or dropped; the link reconnects by itself.
    Down(String),
    /// The broker acknowledged one QoS 1 publish.
    Acked,
    /// One publish was written to the socket.
    Sent,
    /// A message on a subscribed topic.
    Incoming(rumqttc::Publish),
}

/// Builds the last will before each connection attempt.
pub type WillFn = Arc<dyn Fn() -> Option<LastWill> + Send + Sync>;

/// An MQTT connection kept up by a background task: reconnects with the broker's backoff,
/// renews subscriptions, and reports each event. The task ends when `stop` fires.
pub struct Link {
    /// Publishes and subscribes (cheap to clone).
    pub client: AsyncClient,
    /// The connection's events ([`LinkEvent`]); closes when the task ends.
    pub events: mpsc::UnboundedReceiver<LinkEvent>,
    /// Whether the broker connection is up (set on CONNACK, cleared on a failure): what the
    /// health check of a new configuration reads.
    pub up: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    /// Starts the connection task: clean session, the last will from `will` before each attempt,
    /// `subscriptions` renewed on each connect. `name` labels the logs.
    pub fn start(
        name: &str,
        mut opts: MqttOptions,
        broker: &BrokerConfig,
        subscriptions: Vec<(String, QoS)>,
        will: WillFn,
        stop: CancellationToken,
    ) -> Link {
        // Publishers manage redelivery themselves (from the outbox cursor): a clean session
        // keeps rumqttc from replaying stale in-flight state after a reconnect.
        opts.set_clean_session(true);
        opts.set_inflight(200);
        if let Some(w) = will() {
            opts.set_last_will(w);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        // Live records go out one small packet at a time: no Nagle delay behind the last
        // unacknowledged segment.
        let mut net = eventloop.network_options();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (tx, events) = mpsc::unbounded_channel();
        let name = name.to_string();
        let url = broker.url.clone();
        let mut backoff = broker.reconnect.backoff();
        let sub_client = client.clone();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let link_up = up.clone();
        tokio::spawn(async move {
            let mut latch = ErrorLatch::default();
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = eventloop.poll() => ev,
                };
                let out = match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        link_up.store(true, std::sync::atomic::Ordering::Relaxed);
                        if latch.ok().is_some() {
                            tracing::info!(output = %name, url = %url, "mqtt output reconnected");
                        } else {
                            tracing::info!(output = %name, url = %url, "mqtt output connected");
                        }
                        if !subscriptions.is_empty() {
                            let filters = subscriptions
                                .iter()
                                .map(|(t, q)| SubscribeFilter::new(t.clone(), *q));
                            if let Err(e) = sub_client.try_subscribe_many(filters) {
                                tracing::error!(output = %name, "cannot subscribe: {e}");
                            }
                        }
                        LinkEvent::Up
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => LinkEvent::Acked,
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => LinkEvent::Sent,
                    // A clean goodbye went out: stop here, so the broker does not publish the
                    // last will (the events channel closes, which the publisher waits for).
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Incoming(p),
                    Ok(_) => continue,
                    Err(e) => {
                        link_up.store(false, std::sync::atomic::Ordering::Relaxed);
                        let msg = e.to_string();
                        let (delay, fatal) = match fatal_reason(&e) {
                            Some(why) => (backoff.fatal_delay(), Some(why)),
                            None => (backoff.next_delay(), None),
                        };
                        if latch.fail(&msg) {
                            match fatal {
                                Some(why) => {
                                    tracing::error!(output = %name, url = %url, "mqtt output: {msg} — {why}")
                                }
                                None => {
                                    tracing::warn!(output = %name, url = %url, "mqtt output: {msg}; retrying in {delay:?}; data waits in the outbox")
                                }
                            }
                        }
                        let _ = tx.send(LinkEvent::Down(msg));
                        // The next attempt carries a fresh will (e.g. a new Sparkplug bdSeq).
                        if let Some(w) = will() {
                            eventloop.mqtt_options.set_last_will(w);
                        }
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                };
                if tx.send(out).is_err() {
                    break;
                }
            }
        });
        Link { client, events, up }
    }
}
