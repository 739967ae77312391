//! [`ModbusPoller`]: polls one Modbus connection (TCP or RTU) on per-tag intervals.
//!
//! Failure handling, per request (so one bad tag never stops the others):
//! - exception response: the request's tags get `Bad` samples and the code is logged (known
//!   codes by name, unknown ones as `Custom(0xNN)`); a coalesced request rejected with 02/03 is
//!   split for good into one request per tag;
//! - timeout or transport error: the connection is dropped and reopened (a late reply would
//!   otherwise be read as the answer to the next request), the request retried `retries`
//!   times, then its tags go `Bad`;
//! - connection lost: every tag gets one `Bad` sample, reconnects back off with jitter.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::{SlaveContext, *};

use super::codec::{apply_scaling, decode_registers, ByteOrder, DataType};
use super::config::{ModbusSourceConfig, Parity};
use super::plan::{plan, split_request, ReadRequest, Table, TagSpan};
use crate::error_latch::ErrorLatch;
use crate::source::{PipelineClosed, Source, SourceContext, SourceError, SourceFuture};
use edge_wire::sample::{now_ns, Quality, Sample, Tag, Value};

/// Decoding instructions of one tag.
#[derive(Debug, Clone)]
struct TagDecoder {
    tag: Tag,
    ty: DataType,
    order: ByteOrder,
    bit: Option<u8>,
    scale: f64,
    offset: f64,
}

/// Requests polled on one interval.
#[derive(Debug)]
struct PollGroup {
    interval: Duration,
    requests: Vec<RequestState>,
    next_due: Instant,
}

#[derive(Debug)]
struct RequestState {
    req: ReadRequest,
    latch: ErrorLatch,
}

/// Outcome of one read attempt.
enum ReadOutcome {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
    Exception(ExceptionCode),
    /// Timeout or transport/protocol error: the connection must be reopened.
    Broken(String),
}

/// Why the connection to the device could not be opened (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("resolving {0} timed out")]
    ResolveTimeout(String),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("open serial port {device}: {source}")]
    Serial {
        device: String,
        source: tokio_serial::Error,
    },
    #[error("no transport configured")]
    NoTransport,
}

/// A Modbus TCP or RTU source.
#[derive(Debug)]
pub struct ModbusPoller {
    cfg: ModbusSourceConfig,
    decoders: Vec<TagDecoder>,
}

impl ModbusPoller {
    /// Builds the poller from a validated config.
    pub fn new(cfg: ModbusSourceConfig) -> Self {
        let decoders = cfg
            .tags
            .iter()
            .map(|t| TagDecoder {
                tag: Arc::from(t.name.as_str()),
                ty: t.data_type(),
                order: t.order,
                bit: t.bit,
                scale: t.scale,
                offset: t.offset,
            })
            .collect();
        ModbusPoller { cfg, decoders }
    }

    /// The read plan: tags grouped by poll interval, coalesced per unit and table.
    fn poll_groups(&self) -> Vec<PollGroup> {
        let mut by_interval: Vec<(Duration, Vec<TagSpan>)> = Vec::new();
        for (i, t) in self.cfg.tags.iter().enumerate() {
            let interval = t.poll_interval.unwrap_or(self.cfg.poll_interval);
            let span = TagSpan {
                tag: i,
                unit: t.unit_id.unwrap_or(self.cfg.unit_id),
                table: t.table,
                address: t.address,
                count: t.count(),
            };
            match by_interval.iter_mut().find(|(d, _)| *d == interval) {
                Some((_, v)) => v.push(span),
                None => by_interval.push((interval, vec![span])),
            }
        }
        let now = Instant::now();
        by_interval
            .into_iter()
            .map(|(interval, spans)| PollGroup {
                interval,
                requests: plan(&spans, self.cfg.limits())
                    .into_iter()
                    .map(|req| RequestState {
                        req,
                        latch: ErrorLatch::default(),
                    })
                    .collect(),
                next_due: now,
            })
            .collect()
    }

    /// Number of read requests per full poll of all groups (for logs and benchmarks).
    pub fn request_count(&self) -> usize {
        self.poll_groups().iter().map(|g| g.requests.len()).sum()
    }

    fn endpoint(&self) -> String {
        match (&self.cfg.tcp, &self.cfg.rtu) {
            (Some(t), _) => format!("tcp://{}", t.address),
            (_, Some(r)) => format!("rtu://{}@{}", r.device, r.baud_rate),
            _ => "<no transport>".into(),
        }
    }

    async fn connect(&self) -> Result<Context, ConnectError> {
        let slave = Slave(self.cfg.unit_id);
        if let Some(tcp) = &self.cfg.tcp {
            let address = || tcp.address.clone();
            let addr: SocketAddr = timeout(self.cfg.timeout.max(Duration::from_secs(2)), async {
                tokio::net::lookup_host(tcp.address.as_str())
                    .await
                    .map_err(|source| ConnectError::Resolve {
                        address: address(),
                        source,
                    })?
                    .next()
                    .ok_or_else(|| ConnectError::NoAddress(address()))
            })
            .await
            .map_err(|_| ConnectError::ResolveTimeout(address()))??;
            let connect_timeout = self.cfg.timeout.max(Duration::from_secs(2));
            return match timeout(connect_timeout, tcp::connect_slave(addr, slave)).await {
                Ok(Ok(ctx)) => Ok(ctx),
                Ok(Err(source)) => Err(ConnectError::Connect { addr, source }),
                Err(_) => Err(ConnectError::ConnectTimeout {
                    addr,
                    after: connect_timeout,
                }),
            };
        }
        if let Some(rtu) = &self.cfg.rtu {
            let builder = tokio_serial::new(rtu.device.as_str(), rtu.baud_rate)
                .data_bits(match rtu.data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .parity(match rtu.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(if rtu.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                });
            let port = tokio_serial::SerialStream::open(&builder).map_err(|source| {
                ConnectError::Serial {
                    device: rtu.device.clone(),
                    source,
                }
            })?;
            return Ok(rtu::attach_slave(port, slave));
        }
        Err(ConnectError::NoTransport)
    }

    async fn read(&self, ctx: &mut Context, req: &ReadRequest) -> ReadOutcome {
        ctx.set_slave(Slave(req.unit));
        let (start, count) = (req.start, req.count);
        let fut = async {
            Ok(match req.table {
                Table::Coil => ctx.read_coils(start, count).await?.map(ReadOutcome::Bits),
                Table::Discrete => ctx
                    .read_discrete_inputs(start, count)
                    .await?
                    .map(ReadOutcome::Bits),
                Table::Holding => ctx
                    .read_holding_registers(start, count)
                    .await?
                    .map(ReadOutcome::Registers),
                Table::Input => ctx
                    .read_input_registers(start, count)
                    .await?
                    .map(ReadOutcome::Registers),
            })
        };
        let t = self.cfg.timeout;
        match timeout(t, fut).await {
            Ok(Ok(Ok(data))) => data,
            Ok(Ok(Err(code))) => ReadOutcome::Exception(code),
            Ok(Err::<_, tokio_modbus::Error>(e)) => ReadOutcome::Broken(e.to_string()),
            Err(_) => ReadOutcome::Broken(format!("no response within {t:?}")),
        }
    }

    /// Decodes a successful response into one sample per tag of the request.
    fn decode(&self, req: &ReadRequest, outcome: &ReadOutcome, ts: i64, out: &mut Vec<Sample>) {
        for span in &req.tags {
            let d = &self.decoders[span.tag];
            let off = usize::from(span.address - req.start);
            let value = match outcome {
                ReadOutcome::Registers(regs) => regs
                    .get(off..off + usize::from(span.count))
                    .and_then(|w| decode_registers(w, d.ty, d.order, d.bit)),
                ReadOutcome::Bits(bits) => bits.get(off).map(|b| Value::Bool(*b)),
                _ => None,
            };
            out.push(match value {
                Some(v) => Sample::new(
                    d.tag.clone(),
                    ts,
                    apply_scaling(v, d.scale, d.offset),
                    Quality::Good,
                ),
                // The device answered with fewer registers/bits than asked: malformed.
                None => Sample::bad(d.tag.clone(), ts),
            });
        }
    }

    fn bad_samples(&self, req: &ReadRequest, ts: i64, out: &mut Vec<Sample>) {
        out.extend(
            req.tags
                .iter()
                .map(|s| Sample::bad(self.decoders[s.tag].tag.clone(), ts)),
        );
    }

    /// Polls one group once. Returns `false` if the connection was lost and could not be
    /// reopened (the caller then backs off).
    async fn poll_group(
        &self,
        group: &mut PollGroup,
        conn: &mut Option<Context>,
        ctx: &SourceContext,
        out: &mut Vec<Sample>,
    ) -> bool {
        let mut i = 0;
        while i < group.requests.len() {
            let mut attempt = 0u8;
            let outcome = loop {
                let Some(c) = conn.as_mut() else {
                    match self.connect().await {
                        Ok(c) => {
                            *conn = Some(c);
                            continue;
                        }
                        Err(e) => break ReadOutcome::Broken(e.to_string()),
                    }
                };
                let o = self.read(c, &group.requests[i].req).await;
                if let ReadOutcome::Broken(_) = &o {
                    // Drop the context: a late reply must never answer the next request.
                    *conn = None;
                    if attempt < self.cfg.retries && !ctx.shutdown.is_cancelled() {
                        attempt += 1;
                        continue;
                    }
                }
                break o;
            };
            let ts = now_ns();
            let rs = &mut group.requests[i];
            let r = &rs.req;
            match &outcome {
                ReadOutcome::Registers(_) | ReadOutcome::Bits(_) => {
                    if let Some(n) = rs.latch.ok() {
                        tracing::info!(source = %ctx.name, unit = r.unit, table = r.table.name(),
                            start = r.start, count = r.count, "read recovered after {n} failed polls");
                    }
                    self.decode(r, &outcome, ts, out);
                }
                ReadOutcome::Exception(code) => {
                    ctx.stats.error();
                    let raw = u8::from(*code);
                    if matches!(raw, 0x02 | 0x03) {
                        if let Some(parts) = split_request(r) {
                            tracing::warn!(source = %ctx.name, unit = r.unit, table = r.table.name(),
                                start = r.start, count = r.count, parts = parts.len(),
                                "device rejected a coalesced read with exception 0x{raw:02x} ({code:?}); \
                                 splitting it into one read per tag from now on");
                            group.requests.splice(
                                i..=i,
                                parts.into_iter().map(|req| RequestState {
                                    req,
                                    latch: ErrorLatch::default(),
                                }),
                            );
                            continue; // re-run position i with the first part
                        }
                    }
                    let msg = format!("exception 0x{raw:02x} ({code:?})");
                    if rs.latch.fail(&msg) {
                        let tags: Vec<&str> =
                            r.tags.iter().map(|s| &*self.decoders[s.tag].tag).collect();
                        tracing::warn!(source = %ctx.name, unit = r.unit, table = r.table.name(),
                            start = r.start, count = r.count, ?tags,
                            "device answered with {msg}: tags are bad quality, other tags keep polling");
                    }
                    self.bad_samples(r, ts, out);
                }
                ReadOutcome::Broken(e) => {
                    ctx.stats.error();
                    if rs.latch.fail(e) {
                        tracing::warn!(source = %ctx.name, endpoint = %self.endpoint(), unit = r.unit,
                            table = r.table.name(), start = r.start, count = r.count,
                            "read failed after {} attempts: {e}", u32::from(attempt) + 1);
                    }
                    self.bad_samples(r, ts, out);
                    if conn.is_none() {
                        // Could not even reconnect: the rest of this cycle would fail the same way.
                        for rest in &group.requests[i + 1..] {
                            self.bad_samples(&rest.req, ts, out);
                        }
                        return false;
                    }
                }
            }
            i += 1;
        }
        true
    }

    async fn run_loop(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let mut groups = self.poll_groups();
        let all_tags: Vec<Tag> = self.decoders.iter().map(|d| d.tag.clone()).collect();
        tracing::info!(source = %ctx.name, endpoint = %self.endpoint(), tags = all_tags.len(),
            requests = groups.iter().map(|g| g.requests.len()).sum::<usize>(),
            "modbus poller starting");
        let mut backoff = self.cfg.reconnect.backoff();
        let mut conn: Option<Context> = None;
        let mut connected_once = false;
        let mut overrun_logged = false;
        while !ctx.shutdown.is_cancelled() {
            if conn.is_none() {
                match self.connect().await {
                    Ok(c) => {
                        conn = Some(c);
                        backoff.reset();
                        ctx.stats.set_connected(true);
                        if connected_once {
                            ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(source = %ctx.name, endpoint = %self.endpoint(), "modbus reconnected");
                        } else {
                            tracing::info!(source = %ctx.name, endpoint = %self.endpoint(), "modbus connected");
                        }
                        connected_once = true;
                    }
                    Err(e) => {
                        ctx.stats.error();
                        let was_up = ctx.stats.is_connected() || backoff.attempts() == 0;
                        ctx.stats.set_connected(false);
                        let delay = backoff.next_delay();
                        if was_up {
                            tracing::warn!(source = %ctx.name, "modbus unreachable: {e}; retrying in {delay:?} (backing off)");
                            if ctx.mark_bad(&all_tags).await.is_err() {
                                break;
                            }
                        } else {
                            tracing::debug!(source = %ctx.name, "modbus still unreachable: {e}; retrying in {delay:?}");
                        }
                        if !ctx.sleep(delay).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            // Wait for the next due group.
            let Some(gi) = (0..groups.len()).min_by_key(|&i| groups[i].next_due) else {
                break;
            };
            let due = groups[gi].next_due;
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            let mut batch =
                Vec::with_capacity(groups[gi].requests.iter().map(|r| r.req.tags.len()).sum());
            // A poll against a silent device can take timeout x attempts: shutdown must not
            // wait for it. What was read before the cancel is still handed over.
            let polled = tokio::select! {
                ok = self.poll_group(&mut groups[gi], &mut conn, &ctx, &mut batch) => Some(ok),
                _ = ctx.shutdown.cancelled() => None,
            };
            let Some(ok) = polled else {
                let _ = ctx.out.send(batch).await;
                break;
            };
            let g = &mut groups[gi];
            g.next_due += g.interval;
            let now = Instant::now();
            if g.next_due < now {
                if !overrun_logged {
                    tracing::warn!(source = %ctx.name, interval = ?g.interval,
                        "a poll cycle took longer than its interval; skipping missed polls \
                         (raise poll_interval or reduce tags on this connection)");
                    overrun_logged = true;
                }
                g.next_due = now + g.interval;
            }
            if !ok {
                ctx.stats.set_connected(false);
            }
            if let Err(PipelineClosed) = ctx.out.send(batch).await {
                break;
            }
            if !ok {
                let delay = backoff.next_delay();
                tracing::warn!(source = %ctx.name, endpoint = %self.endpoint(),
                    "modbus connection lost; reconnecting in {delay:?}");
                if !ctx.sleep(delay).await {
                    break;
                }
            }
        }
        if let Some(mut c) = conn {
            let _ = timeout(Duration::from_millis(500), c.disconnect()).await;
        }
        ctx.stats.set_connected(false);
        tracing::info!(source = %ctx.name, "modbus poller stopped");
        Ok(())
    }
}

impl Source for ModbusPoller {
    fn kind(&self) -> &'static str {
        "modbus"
    }
    fn tags(&self) -> Vec<Tag> {
        self.decoders.iter().map(|d| d.tag.clone()).collect()
    }
    fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture {
        Box::pin(self.run_loop(ctx))
    }
}
