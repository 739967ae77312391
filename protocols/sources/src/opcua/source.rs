//! [`OpcUaSource`]: one OPC-UA server, read through a subscription (or polled reads), with a
//! session supervisor that survives server restarts and network cuts.
//!
//! Session supervision (the part Telegraf's OPC-UA input gets wrong, telegraf #19186):
//! - the session event loop is driven here (`enter()`), not spawned, so that after every
//!   `Reconnected` the supervisor calls `trigger_publish_now()` — without it async-opcua 0.19
//!   re-creates subscriptions but never publishes again;
//! - async-opcua reactivates the session a few times itself (keeping server-side queues on a
//!   short blip); when it gives up, the supervisor rebuilds client session and subscriptions
//!   after a jittered exponential backoff, forever;
//! - fatal errors (rejected identity, untrusted certificate, no matching endpoint) are
//!   classified, reported once with the fix, and retried at the maximum backoff only;
//! - while disconnected every tag gets a `Bad` sample: consumers never see a stale "good".
//!
//! Data-change callbacks run on the event-loop task: they only `try_send` into a local queue.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use opcua::client::{
    Client, ClientBuilder, DataChangeCallback, IdentityToken, MonitoredItem, Session,
    SessionPollResult,
};
use opcua::crypto::{CertificateStore, SecurityPolicy, X509};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, EndpointDescription,
    ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, ReadValueId, StatusCode, TimestampsToReturn,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{
    OpcUaMode, OpcUaSourceConfig, SecurityModeConfig, SecurityPolicyConfig, ServerTrust,
};
use super::values::data_value_to_sample;
use crate::error_latch::ErrorLatch;
use crate::source::{Source, SourceContext, SourceError, SourceFuture};
use edge_wire::sample::{now_ns, Sample, Tag};

/// Local queue between data-change callbacks and the pipeline, in samples.
const CALLBACK_QUEUE: usize = 16_384;
/// Library-level reconnect attempts (session reactivation) before a full rebuild.
const LIBRARY_RETRIES: i32 = 3;

/// An OPC-UA client source.
#[derive(Debug)]
pub struct OpcUaSource {
    cfg: OpcUaSourceConfig,
    pki_dir: PathBuf,
    tags: Vec<Tag>,
    nodes: Vec<NodeId>,
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    /// Worth retrying soon (server down, network cut).
    Transient(String),
    /// Needs an operator (credentials, certificates, endpoint config).
    Fatal(String),
}

/// What survives from one session to the next.
struct SupervisorState {
    backoff: crate::backoff::Backoff,
    connected_once: bool,
    /// Bad samples were already emitted for the current outage.
    marked_bad: bool,
}

/// What the event-loop driver task reports to the supervisor.
enum LoopEvent {
    Connected { new_session: bool },
    Lost(StatusCode),
    AttemptFailed(StatusCode),
    Ended(Option<StatusCode>),
}

impl OpcUaSource {
    /// `default_pki_dir` is used when the config has no `pki_dir`.
    pub fn new(cfg: OpcUaSourceConfig, default_pki_dir: PathBuf) -> Result<Self, SourceError> {
        let nodes = cfg
            .tags
            .iter()
            .map(|t| {
                t.node_id.parse::<NodeId>().map_err(|_| {
                    SourceError::Config(format!("tag {}: invalid node id `{}`", t.name, t.node_id))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tags = cfg
            .tags
            .iter()
            .map(|t| Arc::from(t.name.as_str()))
            .collect();
        let pki_dir = cfg.pki_dir.clone().unwrap_or(default_pki_dir);
        Ok(OpcUaSource {
            cfg,
            pki_dir,
            tags,
            nodes,
        })
    }

    fn policy(&self) -> SecurityPolicy {
        match self.cfg.security_policy {
            SecurityPolicyConfig::None => SecurityPolicy::None,
            SecurityPolicyConfig::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
            SecurityPolicyConfig::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
            SecurityPolicyConfig::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
        }
    }

    fn mode(&self) -> MessageSecurityMode {
        match self.cfg.security_mode {
            SecurityModeConfig::None => MessageSecurityMode::None,
            SecurityModeConfig::Sign => MessageSecurityMode::Sign,
            SecurityModeConfig::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        }
    }

    fn identity(&self) -> Result<IdentityToken, SourceError> {
        match (&self.cfg.username, &self.cfg.password) {
            (Some(u), Some(p)) => {
                let pw = p
                    .resolve()
                    .map_err(|e| SourceError::Config(format!("password of `{u}`: {e}")))?;
                Ok(IdentityToken::new_user_name(u.clone(), pw))
            }
            _ => Ok(IdentityToken::Anonymous),
        }
    }

    /// Builds the client (generating a self-signed certificate on first use, which is slow:
    /// RSA key generation, hence on a blocking thread).
    async fn build_client(&self) -> Result<Client, SourceError> {
        let c = &self.cfg;
        let mut b = ClientBuilder::new()
            .application_name(c.application_name.clone())
            .application_uri(c.application_uri.clone())
            .product_uri("urn:edge-agent")
            .pki_dir(self.pki_dir.clone())
            .create_sample_keypair(c.certificate.is_none())
            .trust_server_certs(false)
            .verify_server_certs(c.strict_certificate_checks)
            .session_retry_limit(LIBRARY_RETRIES)
            .session_retry_initial(c.reconnect.initial)
            .session_retry_max(c.reconnect.max)
            .keep_alive_interval(c.keep_alive_interval)
            .max_failed_keep_alive_count(3)
            .request_timeout(c.request_timeout)
            .publish_timeout(c.request_timeout.max(c.publishing_interval * 3))
            .session_timeout(u32::try_from(c.session_timeout.as_millis()).unwrap_or(u32::MAX))
            .recreate_subscriptions(true)
            .session_name(format!("edge-agent:{}", c.name));
        if let (Some(cert), Some(key)) = (&c.certificate, &c.private_key) {
            b = b
                .certificate_path(cert.clone())
                .private_key_path(key.clone());
        }
        let name = c.name.clone();
        tokio::task::spawn_blocking(move || b.client())
            .await
            .map_err(|e| SourceError::Config(format!("{name}: client setup panicked: {e}")))?
            .map_err(|errs| {
                SourceError::Config(format!(
                    "{name}: invalid client config: {}",
                    errs.join("; ")
                ))
            })
    }

    /// Trust on first use: pins the endpoint's certificate on first sight, refuses a changed one.
    fn apply_tofu(&self, ep: &EndpointDescription) -> Result<(), TofuError> {
        if self.cfg.server_trust != ServerTrust::TrustOnFirstUse
            || self.cfg.security_policy == SecurityPolicyConfig::None
        {
            return Ok(());
        }
        let cert =
            X509::from_byte_string(&ep.server_certificate).map_err(TofuError::UnreadableCert)?;
        let der = cert.to_der().map_err(TofuError::EncodeCert)?;
        let pin_dir = self.pki_dir.join("tofu");
        let pin = pin_dir.join(format!("{}.der", sanitize(&self.cfg.name)));
        match std::fs::read(&pin) {
            Ok(pinned) if pinned == der => {}
            Ok(_) => return Err(TofuError::Changed(pin)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_file(&pin_dir, &pin, &der)?;
                tracing::warn!(source = %self.cfg.name, pin = %pin.display(),
                    "trust on first use: pinned the server certificate `{}`", cert.subject_name());
            }
            Err(source) => return Err(TofuError::ReadPin { pin, source }),
        }
        let store = CertificateStore::new(&self.pki_dir);
        let trusted = store.trusted_certs_dir();
        let path = trusted.join(CertificateStore::cert_file_name(&cert));
        if !path.exists() {
            write_file(&trusted, &path, &der)?;
        }
        Ok(())
    }

    /// Finds the configured endpoint on the server.
    async fn discover(&self, client: &Client) -> Result<EndpointDescription, SessionEnd> {
        let url = self.cfg.endpoint.as_str();
        let eps = match tokio::time::timeout(
            self.cfg.request_timeout,
            client.get_server_endpoints_from_url(url),
        )
        .await
        {
            Ok(Ok(eps)) => eps,
            Ok(Err(e)) => return Err(SessionEnd::Transient(format!("cannot reach {url}: {e}"))),
            Err(_) => {
                return Err(SessionEnd::Transient(format!(
                    "{url} did not answer GetEndpoints within {:?}",
                    self.cfg.request_timeout
                )))
            }
        };
        Client::find_matching_endpoint(&eps, url, self.policy(), self.mode()).ok_or_else(|| {
            let offered: Vec<String> = eps
                .iter()
                .map(|e| {
                    format!(
                        "{} {}/{}",
                        e.endpoint_url.as_ref(),
                        SecurityPolicy::from_uri(e.security_policy_uri.as_ref()),
                        e.security_mode
                    )
                })
                .collect();
            SessionEnd::Fatal(format!(
                "server offers no endpoint with security {}/{}; it offers: [{}] — change \
                 security_policy/security_mode",
                self.policy(),
                self.mode(),
                offered.join(", ")
            ))
        })
    }

    fn monitored_item_requests(&self) -> Vec<MonitoredItemCreateRequest> {
        let c = &self.cfg;
        c.tags
            .iter()
            .zip(&self.nodes)
            .enumerate()
            .map(|(i, (t, node))| {
                let filter = match (t.deadband_absolute, t.deadband_percent) {
                    (Some(v), _) => Some((DeadbandType::Absolute, v)),
                    (None, Some(p)) => Some((DeadbandType::Percent, p)),
                    _ => None,
                };
                let filter = ExtensionObject::from_message(DataChangeFilter {
                    // Default trigger is Status only: value changes would never be reported.
                    trigger: DataChangeTrigger::StatusValue,
                    deadband_type: filter.map_or(DeadbandType::None, |f| f.0) as u32,
                    deadband_value: filter.map_or(0.0, |f| f.1),
                });
                let sampling = t
                    .sampling_interval
                    .or(c.sampling_interval)
                    .map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
                MonitoredItemCreateRequest {
                    item_to_monitor: ReadValueId::new(node.clone(), AttributeId::Value),
                    monitoring_mode: MonitoringMode::Reporting,
                    requested_parameters: MonitoringParameters {
                        client_handle: handle_of(i),
                        sampling_interval: sampling,
                        filter,
                        queue_size: t.queue_size.unwrap_or(c.queue_size),
                        discard_oldest: true,
                    },
                }
            })
            .collect()
    }

    /// Creates the subscription; returns the tag indices that must be polled instead
    /// (all of them in poll mode or if the server refuses subscriptions).
    async fn subscribe(
        &self,
        session: &Arc<Session>,
        ctx: &SourceContext,
        tx: &mpsc::Sender<Sample>,
    ) -> Vec<usize> {
        let all: Vec<usize> = (0..self.tags.len()).collect();
        if self.cfg.mode == OpcUaMode::Poll {
            return all;
        }
        let tags = self.tags.clone();
        let ts_pref = self.cfg.timestamp;
        let cb_tx = tx.clone();
        let stats = ctx.stats.clone();
        let callback = DataChangeCallback::new(move |dv: DataValue, item: &MonitoredItem| {
            let Some(tag) = index_of(item.client_handle()).and_then(|i| tags.get(i)) else {
                return;
            };
            let s = data_value_to_sample(tag, &dv, ts_pref, now_ns());
            // Never block the session event loop: a full local queue drops and counts.
            if cb_tx.try_send(s).is_err() {
                stats.dropped_samples.fetch_add(1, Ordering::Relaxed);
            }
        });
        let interval = self.cfg.publishing_interval;
        // lifetime must be >= 3x keep-alive; keep-alive ~10 s of publishing intervals.
        let keep_alive = ((10_000 / interval.as_millis().max(1)) as u32).clamp(3, 100);
        let sub = session
            .create_subscription(interval, keep_alive * 6, keep_alive, 0, 0, true, callback)
            .await;
        let sub_id = match sub {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(source = %ctx.name, "server refused the subscription ({e}); \
                    falling back to polled reads every {:?}", self.cfg.poll_interval);
                return all;
            }
        };
        let created = match session
            .create_monitored_items(
                sub_id,
                TimestampsToReturn::Both,
                self.monitored_item_requests(),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(source = %ctx.name, "server refused the monitored items ({e}); \
                    falling back to polled reads every {:?}", self.cfg.poll_interval);
                return all;
            }
        };
        let mut polled = Vec::new();
        for (i, r) in created.iter().enumerate() {
            let status = r.result.status_code;
            if status.is_bad() {
                if self.refuse_node(i, status, ctx, tx).await {
                    continue;
                }
                tracing::warn!(source = %ctx.name, tag = %self.tags[i], node = %self.nodes[i],
                    "server cannot monitor this node ({status}); polling it every {:?} instead",
                    self.cfg.poll_interval);
                polled.push(i);
            }
        }
        tracing::info!(source = %ctx.name, subscription = sub_id,
            monitored = created.len() - polled.len(), polled = polled.len(),
            "subscription created");
        polled
    }

    /// A node the configuration names wrongly (unknown, not a variable, not readable): an
    /// error naming the tag, the node and the fix, counted in `edge_source_errors_total`, one
    /// bad sample, and the node is not read again in this session (a new session, after a
    /// reconnect, tries it once more). Returns false for statuses a retry may fix.
    async fn refuse_node(
        &self,
        i: usize,
        status: StatusCode,
        ctx: &SourceContext,
        tx: &mpsc::Sender<Sample>,
    ) -> bool {
        let Some(why) = node_config_error(status) else {
            return false;
        };
        ctx.stats.error();
        tracing::error!(source = %ctx.name, tag = %self.tags[i], node = %self.nodes[i],
            "opc-ua node `{}` of tag `{}`: {why} ({status}); fix node_id in the config —              the tag stays bad and is not read again until the session reconnects",
            self.nodes[i], self.tags[i]);
        let _ = tx.send(Sample::bad(self.tags[i].clone(), now_ns())).await;
        true
    }

    /// Reads `items` once; returns those the server refused as configuration errors (see
    /// [`OpcUaSource::refuse_node`]): the caller stops polling them.
    async fn poll_once(
        &self,
        session: &Arc<Session>,
        items: &[usize],
        latch: &mut ErrorLatch,
        ctx: &SourceContext,
        tx: &mpsc::Sender<Sample>,
    ) -> Vec<usize> {
        let mut refused = Vec::new();
        let reads: Vec<ReadValueId> = items
            .iter()
            .map(|&i| ReadValueId::new(self.nodes[i].clone(), AttributeId::Value))
            .collect();
        let read = tokio::select! {
            r = session.read(&reads, TimestampsToReturn::Both, 0.0) => r,
            _ = ctx.shutdown.cancelled() => return refused,
        };
        match read {
            Ok(dvs) => {
                latch.ok();
                let now = now_ns();
                for (&i, dv) in items.iter().zip(&dvs) {
                    if let Some(status) = dv.status.filter(|s| s.is_bad()) {
                        if self.refuse_node(i, status, ctx, tx).await {
                            refused.push(i);
                            continue;
                        }
                    }
                    let s = data_value_to_sample(&self.tags[i], dv, self.cfg.timestamp, now);
                    if tx.send(s).await.is_err() {
                        return refused;
                    }
                }
            }
            Err(e) => {
                ctx.stats.error();
                let msg = e.to_string();
                if latch.fail(&msg) {
                    tracing::warn!(source = %ctx.name, "polled read failed: {msg}");
                }
            }
        }
        refused
    }

    /// One client session from discovery to its end.
    async fn run_session(
        &self,
        client: &mut Client,
        ctx: &SourceContext,
        tx: &mpsc::Sender<Sample>,
        st: &mut SupervisorState,
    ) -> SessionEnd {
        let ep = match self.discover(client).await {
            Ok(ep) => ep,
            Err(end) => return end,
        };
        if let Err(e) = self.apply_tofu(&ep) {
            return SessionEnd::Fatal(e.to_string());
        }
        let identity = match self.identity() {
            Ok(i) => i,
            Err(e) => return SessionEnd::Fatal(e.to_string()),
        };
        let (session, event_loop) = match client.connect_to_endpoint_directly(ep, identity) {
            Ok(x) => x,
            Err(e) => return SessionEnd::Fatal(format!("cannot set up a session: {e}")),
        };
        let (ev_tx, mut ev_rx) = mpsc::channel::<LoopEvent>(64);
        let driver_session = session.clone();
        let driver: JoinHandle<()> = tokio::spawn(async move {
            let stream = event_loop.enter();
            futures_util::pin_mut!(stream);
            let mut end = None;
            while let Some(item) = stream.next().await {
                let ev = match item {
                    Ok(SessionPollResult::Reconnected(mode)) => {
                        // Without this, notifications never resume after a reconnect.
                        driver_session.trigger_publish_now();
                        LoopEvent::Connected {
                            new_session: matches!(
                                mode,
                                opcua::client::SessionConnectMode::NewSession(_)
                            ),
                        }
                    }
                    Ok(SessionPollResult::ConnectionLost(code)) => LoopEvent::Lost(code),
                    Ok(SessionPollResult::ReconnectFailed(code)) => LoopEvent::AttemptFailed(code),
                    Ok(_) => continue,
                    Err(code) => {
                        end = Some(code);
                        break;
                    }
                };
                if ev_tx.send(ev).await.is_err() {
                    return;
                }
            }
            let _ = ev_tx.send(LoopEvent::Ended(end)).await;
        });
        let _abort = AbortOnDrop(&driver);

        let mut polled: Vec<usize> = Vec::new();
        let mut subscribed = false;
        let mut connected = false;
        let mut poll_latch = ErrorLatch::default();
        let mut poll_tick = tokio::time::interval(self.cfg.poll_interval);
        poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => {
                    // disconnect() needs the event loop polled: the driver task still runs.
                    let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
                    return SessionEnd::Shutdown;
                }
                ev = ev_rx.recv() => match ev {
                    Some(LoopEvent::Connected { new_session }) => {
                        connected = true;
                        st.backoff.reset();
                        st.marked_bad = false;
                        ctx.stats.set_connected(true);
                        if st.connected_once {
                            ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        st.connected_once = true;
                        tracing::info!(source = %ctx.name, endpoint = %self.cfg.endpoint,
                            security = %format!("{}/{}", self.policy(), self.mode()),
                            new_session, "opc-ua session up");
                        if !subscribed {
                            polled = tokio::select! {
                                p = self.subscribe(&session, ctx, tx) => p,
                                _ = ctx.shutdown.cancelled() => continue,
                            };
                            subscribed = true;
                        }
                    }
                    Some(LoopEvent::Lost(code)) => {
                        connected = false;
                        ctx.stats.set_connected(false);
                        ctx.stats.error();
                        tracing::warn!(source = %ctx.name, endpoint = %self.cfg.endpoint,
                            "opc-ua connection lost ({code}); tags are bad until it is back");
                        self.mark_bad(tx).await;
                        st.marked_bad = true;
                    }
                    Some(LoopEvent::AttemptFailed(code)) => {
                        ctx.stats.error();
                        if let Some(why) = fatal_reason(code) {
                            // Close what the attempt left on the server (no orphan sessions
                            // piling up while the operator fixes the trust list).
                            let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
                            tracing::debug!(source = %ctx.name, "opc-ua refused: {code}");
                            return SessionEnd::Fatal(self.explain(why));
                        }
                        tracing::debug!(source = %ctx.name, "opc-ua connect attempt failed: {code}");
                    }
                    Some(LoopEvent::Ended(Some(code))) => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
                        if let Some(why) = fatal_reason(code) {
                            tracing::debug!(source = %ctx.name, "opc-ua refused: {code}");
                            return SessionEnd::Fatal(self.explain(why));
                        }
                        return SessionEnd::Transient(format!("session gave up reconnecting: {code}"));
                    }
                    Some(LoopEvent::Ended(None)) | None => {
                        return SessionEnd::Transient("session closed".into());
                    }
                },
                _ = poll_tick.tick(), if connected && !polled.is_empty() => {
                    let refused = self.poll_once(&session, &polled, &mut poll_latch, ctx, tx).await;
                    polled.retain(|i| !refused.contains(i));
                }
            }
        }
    }

    /// A fatal reason with this source's PKI directory in place of `<pki_dir>`. The message
    /// is the same whichever status code the server used for it (an untrusted certificate
    /// shows as BadCertificateUntrusted, then BadSecurityChecksFailed), so it is logged once.
    fn explain(&self, why: &str) -> String {
        explain(why, &self.pki_dir)
    }

    async fn mark_bad(&self, tx: &mpsc::Sender<Sample>) {
        let ts = now_ns();
        for t in &self.tags {
            if tx.send(Sample::bad(t.clone(), ts)).await.is_err() {
                return;
            }
        }
    }

    async fn run_loop(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let mut client = self.build_client().await?;
        // Callbacks -> local queue -> batches into the pipeline (which may block).
        let (tx, mut rx) = mpsc::channel::<Sample>(CALLBACK_QUEUE);
        let out = ctx.out.clone();
        let forwarder = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            while rx.recv_many(&mut buf, 1024).await > 0 {
                if out.send(std::mem::take(&mut buf)).await.is_err() {
                    break;
                }
            }
        });
        tracing::info!(source = %ctx.name, endpoint = %self.cfg.endpoint, tags = self.tags.len(),
            pki = %self.pki_dir.display(), "opc-ua source starting");
        let mut st = SupervisorState {
            backoff: self.cfg.reconnect.backoff(),
            connected_once: false,
            marked_bad: false,
        };
        let mut latch = ErrorLatch::default();
        loop {
            let end = self.run_session(&mut client, &ctx, &tx, &mut st).await;
            ctx.stats.set_connected(false);
            let delay = match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Transient(msg) => {
                    ctx.stats.error();
                    let d = st.backoff.next_delay();
                    if latch.fail(&msg) {
                        tracing::warn!(source = %ctx.name, "opc-ua: {msg}; retrying in {d:?} (backing off)");
                    } else {
                        tracing::debug!(source = %ctx.name, "opc-ua: {msg}; retrying in {d:?}");
                    }
                    d
                }
                SessionEnd::Fatal(msg) => {
                    ctx.stats.error();
                    let d = st.backoff.fatal_delay();
                    if latch.fail(&msg) {
                        tracing::error!(source = %ctx.name, endpoint = %self.cfg.endpoint,
                            "opc-ua: {msg}; this needs a fix in the config or on the server — \
                             retrying every ~{:?}, other sources keep running", self.cfg.reconnect.max);
                    }
                    d
                }
            };
            if !st.marked_bad {
                self.mark_bad(&tx).await;
                st.marked_bad = true;
            }
            if !ctx.sleep(delay).await {
                break;
            }
        }
        drop(tx);
        let _ = forwarder.await;
        tracing::info!(source = %ctx.name, "opc-ua source stopped");
        Ok(())
    }
}

/// Aborts the event-loop driver when the session ends, whatever the path.
struct AbortOnDrop<'a>(&'a JoinHandle<()>);
impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Client handles are tag index + 1 (0 would let the library pick one).
fn handle_of(i: usize) -> u32 {
    u32::try_from(i + 1).unwrap_or(u32::MAX)
}
fn index_of(handle: u32) -> Option<usize> {
    (handle as usize).checked_sub(1)
}

/// Status codes that retrying cannot fix, with the operator's fix.
fn fatal_reason(code: StatusCode) -> Option<&'static str> {
    code_fatal_reason_static(code.sub_code().name())
}

fn code_fatal_reason_static(name: &str) -> Option<&'static str> {
    Some(match name {
        "BadUserAccessDenied" | "BadIdentityTokenRejected" | "BadIdentityTokenInvalid" => {
            "the server rejected the user name or password"
        }
        "BadCertificateUntrusted" | "BadSecurityChecksFailed" => {
            "the server certificate is not trusted: move it from <pki_dir>/rejected/ to \
             <pki_dir>/trusted/ (or set server_trust = \"trust_on_first_use\"), or the server \
             rejected this client's certificate (trust it on the server)"
        }
        "BadCertificateHostNameInvalid" => {
            "the server certificate does not name the host in `endpoint`: connect by a host \
             name the certificate lists, or set strict_certificate_checks = false (the trust \
             list is still enforced)"
        }
        "BadCertificateUriInvalid" | "BadCertificateInvalid" | "BadCertificateTimeInvalid" => {
            "the server certificate is invalid (URI, encoding or validity period)"
        }
        "BadSecurityPolicyRejected" | "BadTcpEndpointUrlInvalid" => {
            "the server refused the security policy or endpoint URL"
        }
        _ => return None,
    })
}

/// `why` with `pki_dir` in place of `<pki_dir>`.
fn explain(why: &str, pki_dir: &Path) -> String {
    why.replace("<pki_dir>", &pki_dir.display().to_string())
}

/// Per-node statuses that mean the configuration names the node wrongly (retrying the same
/// read cannot fix them), with the operator's reading of it.
fn node_config_error(code: StatusCode) -> Option<&'static str> {
    Some(match code.sub_code().name() {
        "BadNodeIdUnknown" => "the server has no node with this id",
        "BadNodeIdInvalid" => "this is not a valid node id on this server",
        "BadAttributeIdInvalid" => "the node has no value (not a variable)",
        "BadNotReadable" => "the node is not readable",
        "BadUserAccessDenied" => "this user may not read the node",
        _ => return None,
    })
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Why trust on first use refused the server or could not record its certificate.
#[derive(Debug, thiserror::Error)]
enum TofuError {
    #[error("server sent an unreadable certificate: {0}")]
    UnreadableCert(opcua::types::Error),
    #[error("cannot encode server certificate: {0}")]
    EncodeCert(opcua::crypto::X509Error),
    #[error(
        "server certificate changed since it was first trusted (pinned in {}); if the server was re-keyed on purpose, delete that file to trust the new one",
        .0.display()
    )]
    Changed(PathBuf),
    #[error("cannot read pin {}: {source}", pin.display())]
    ReadPin {
        pin: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn write_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), TofuError> {
    std::fs::create_dir_all(dir).map_err(|source| TofuError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    std::fs::write(path, bytes).map_err(|source| TofuError::Write {
        path: path.to_path_buf(),
        source,
    })
}

impl Source for OpcUaSource {
    fn kind(&self) -> &'static str {
        "opcua"
    }
    fn tags(&self) -> Vec<Tag> {
        self.tags.clone()
    }
    fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture {
        Box::pin(self.run_loop(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The untrusted-certificate advice names the real directory (it printed `<pki_dir>`),
    /// and both codes a server uses for it give the same message (logged once, not twice).
    #[test]
    fn the_untrusted_certificate_advice_names_the_pki_directory_once() {
        let a = fatal_reason(StatusCode::BadCertificateUntrusted).unwrap();
        let b = fatal_reason(StatusCode::BadSecurityChecksFailed).unwrap();
        let dir = Path::new("/var/lib/edge-agent/opcua/line1");
        let m = explain(a, dir);
        assert_eq!(m, explain(b, dir));
        assert!(!m.contains("<pki_dir>"), "{m}");
        assert!(
            m.contains("/var/lib/edge-agent/opcua/line1/rejected/"),
            "{m}"
        );
    }

    #[test]
    fn node_configuration_errors_are_classified() {
        assert!(node_config_error(StatusCode::BadNodeIdUnknown).is_some());
        assert!(node_config_error(StatusCode::BadNotReadable).is_some());
        assert!(node_config_error(StatusCode::BadCommunicationError).is_none());
        assert!(node_config_error(StatusCode::BadWaitingForInitialData).is_none());
    }

    #[test]
    fn fatal_codes_are_classified() {
        assert!(fatal_reason(StatusCode::BadUserAccessDenied).is_some());
        assert!(fatal_reason(StatusCode::BadCertificateUntrusted).is_some());
        assert!(fatal_reason(StatusCode::BadCommunicationError).is_none());
        assert!(fatal_reason(StatusCode::BadTimeout).is_none());
        assert_eq!(index_of(handle_of(41)), Some(41));
        assert_eq!(index_of(0), None);
    }
}
