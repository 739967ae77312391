//! Sparkplug B 3.0 edge node: turns outbox records into NBIRTH/DBIRTH/NDATA/DDATA payloads
//! and keeps the session state a host application relies on.
//!
//! - **Devices.** Each sensor source is a Sparkplug device (its tags are its metrics); each
//!   model is a device (`Features/<name>`, `Score`, `Label`, `Over Threshold`, `Outputs/<name>`,
//!   `Window Start`, `Model/Version`, `Model/Version Number`, `Alarm/Active`, `Alarm/Score`,
//!   `Alarm/Threshold`; per drift interval `Drift/Dataset Drift`, `Drift/Metric`,
//!   `Drift/<column>/Score` (the policy's metric) and `Drift/<column>/Drifting`,
//!   `Performance/Accuracy|Precision|Recall|MAE|Labelled` with late labels; drift alarms as
//!   `Drift Alarm/<kind>/<subject>` (Boolean) with `/Value` and `/Threshold`). Node metrics: `bdSeq`, `Node Control/Rebirth`, `Properties/Agent
//!   Version`, `Outbox/<stream>/Backlog` and `Outbox/<stream>/Dropped`.
//! - **Births and aliases.** Every metric gets an alias at its first appearance. NBIRTH and one
//!   DBIRTH per known device go out when the session starts (on connect, or when the primary
//!   host comes online); a device whose metric set or a metric's type changes gets a fresh
//!   DBIRTH before its next DDATA. Data messages carry aliases only.
//! - **bdSeq** increments on every MQTT CONNECT, wraps 0-255, is persisted in a file (so it
//!   keeps counting across restarts) and is the value in both the NDEATH registered as the MQTT
//!   will and the NBIRTH of that connection.
//! - **seq** is 0 on NBIRTH and increments (wrapping 255 -> 0) on every DBIRTH/NDATA/DDATA.
//! - **Rebirth.** An NCMD with `Node Control/Rebirth = true` (by name or alias) is answered
//!   with NBIRTH + all DBIRTHs (same bdSeq, seq restarted).
//! - **Primary host.** With `primary_host_id`, data flows only while `spBv1.0/STATE/{host}`
//!   says online (3.0 JSON `{"online": true, ...}`, or 2.2 `ONLINE`). When it comes back, a
//!   fresh birth goes out and the records stored meanwhile are sent with `is_historical = true`
//!   and their measurement timestamps, so historians backfill without overwriting live values.
//! - **Types.** Floats are Double; integer values are Int64/UInt64 (`long_value`) — some
//!   decoders disagree on narrower layouts; booleans Boolean; text String; window times
//!   DateTime. Quality is the `Quality` property (Int32: 192 good, 64 uncertain, 0 bad), sent
//!   in births always and in data when not good; a bad value is sent as `is_null`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use edge_wire::sparkplug::{
    DataType, Metric, MetricValue, Payload, PropertySet, PropertyValue, PropertyValueKind,
};
use edge_wire::{Quality, Value};
use rumqttc::{LastWill, QoS};

use super::forwarder::{Format, Msg, Reaction};
use super::topics;
use crate::models::ModelStats;
use crate::outbox::{SledOutbox, Stream};
use crate::pipeline::record::BundleRef;
use edge_wire::records;

/// Name of the node metric carrying the bdSeq (in NBIRTH and NDEATH).
pub const BDSEQ: &str = "bdSeq";
/// Name of the node control metric a host sets to `true` in an NCMD to ask for a rebirth.
pub const REBIRTH: &str = "Node Control/Rebirth";
const QUALITY: &str = "Quality";

fn now_ms() -> u64 {
    (edge_wire::now_ns() / 1_000_000).max(0) as u64
}

fn ms(ns: i64) -> u64 {
    ns.div_euclid(1_000_000).max(0) as u64
}

/// The birth/death sequence number, persisted so it keeps counting across restarts.
#[derive(Debug)]
pub struct BdSeq {
    path: PathBuf,
    /// The value of the current connection; `u64::MAX` before the first.
    current: AtomicU64,
}

impl BdSeq {
    /// Loads the last used value (a missing or unreadable file starts at 0).
    pub fn open(path: PathBuf) -> BdSeq {
        let last = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        BdSeq {
            path,
            current: AtomicU64::new(last.map(|v| v % 256).unwrap_or(u64::MAX)),
        }
    }

    /// Takes the next value (for a new CONNECT) and persists it.
    pub fn next(&self) -> u64 {
        let prev = self.current.load(Ordering::Acquire);
        let v = if prev == u64::MAX {
            0
        } else {
            (prev + 1) % 256
        };
        self.current.store(v, Ordering::Release);
        let tmp = self.path.with_extension("tmp");
        let res = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, v.to_string()))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            tracing::warn!(path = %self.path.display(), "cannot persist the Sparkplug bdSeq: {e}; a restart may reuse a value");
        }
        v
    }

    /// The value of the current connection (0 before the first).
    pub fn current(&self) -> u64 {
        match self.current.load(Ordering::Acquire) {
            u64::MAX => 0,
            v => v,
        }
    }
}

/// The NDEATH payload for a bdSeq value.
pub fn ndeath_payload(bdseq: u64) -> Vec<u8> {
    Payload {
        timestamp: Some(now_ms()),
        metrics: vec![Metric {
            name: Some(BDSEQ.into()),
            timestamp: Some(now_ms()),
            datatype: Some(DataType::UInt64 as u32),
            value: Some(MetricValue::LongValue(bdseq)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// One metric's value as published: typed, or null (bad).
#[derive(Debug, Clone, PartialEq)]
enum Val {
    F(f64),
    I(i64),
    U(u64),
    B(bool),
    S(String),
    Time(u64),
    Null,
}

impl Val {
    fn of(v: &Value) -> Val {
        match v {
            Value::Bool(b) => Val::B(*b),
            Value::Int(i) => Val::I(*i),
            Value::UInt(u) => Val::U(*u),
            Value::Float(f) if f.is_finite() => Val::F(*f),
            Value::Text(t) => Val::S(t.to_string()),
            Value::Float(_) | Value::Null => Val::Null,
        }
    }

    fn f64(x: f64) -> Val {
        if x.is_finite() {
            Val::F(x)
        } else {
            Val::Null
        }
    }

    /// The type this value asks for (None: null fits any type).
    fn natural(&self) -> Option<DataType> {
        Some(match self {
            Val::F(_) => DataType::Double,
            Val::I(_) => DataType::Int64,
            Val::U(_) => DataType::UInt64,
            Val::B(_) => DataType::Boolean,
            Val::S(_) => DataType::String,
            Val::Time(_) => DataType::DateTime,
            Val::Null => return None,
        })
    }

    /// The value in metric type `dt`, if it converts without changing its meaning.
    fn into_type(self, dt: DataType) -> Option<Option<MetricValue>> {
        Some(Some(match (self, dt) {
            (Val::Null, _) => return Some(None),
            (Val::F(x), DataType::Double) => MetricValue::DoubleValue(x),
            (Val::I(x), DataType::Double) => MetricValue::DoubleValue(x as f64),
            (Val::U(x), DataType::Double) => MetricValue::DoubleValue(x as f64),
            (Val::I(x), DataType::Int64) => MetricValue::LongValue(x as u64),
            (Val::U(x), DataType::Int64) if x <= i64::MAX as u64 => MetricValue::LongValue(x),
            (Val::U(x), DataType::UInt64) => MetricValue::LongValue(x),
            (Val::I(x), DataType::UInt64) if x >= 0 => MetricValue::LongValue(x as u64),
            (Val::B(b), DataType::Boolean) => MetricValue::BooleanValue(b),
            (Val::S(s), DataType::String) => MetricValue::StringValue(s),
            (Val::Time(t), DataType::DateTime) => MetricValue::LongValue(t),
            _ => return None,
        }))
    }
}

/// The type that holds both `a` and `b` (for a metric whose values change type).
fn widen(a: DataType, b: DataType) -> DataType {
    use DataType::*;
    match (a, b) {
        (x, y) if x == y => x,
        (Int64 | UInt64 | Double, Int64 | UInt64 | Double) => Double,
        _ => b,
    }
}

fn quality_code(q: Quality) -> u32 {
    match q {
        Quality::Good => 192,
        Quality::Uncertain => 64,
        Quality::Bad => 0,
    }
}

fn quality_props(q: Quality) -> PropertySet {
    PropertySet {
        keys: vec![QUALITY.into()],
        values: vec![PropertyValue {
            r#type: Some(DataType::Int32 as u32),
            is_null: None,
            value: Some(PropertyValueKind::IntValue(quality_code(q))),
        }],
    }
}

#[derive(Debug, Clone)]
struct MetricDef {
    alias: u64,
    datatype: DataType,
    /// Last live value (for births): value, measurement time, quality.
    last: Option<(Val, u64, Quality)>,
}

#[derive(Debug, Default)]
struct DeviceDef {
    metrics: BTreeMap<String, MetricDef>,
    /// A DBIRTH with the current metric set went out in this session.
    born: bool,
}

/// One value to publish.
#[derive(Clone)]
struct Point {
    metric: String,
    val: Val,
    ts_ms: u64,
    quality: Quality,
}

/// Maps a tag to the Sparkplug device (source) that produces it.
pub type DeviceOfTag = Box<dyn Fn(&str) -> Option<String> + Send>;

/// The Sparkplug B edge node of one MQTT output (module doc): births, aliases, sequence
/// numbers and the primary host gate. Called only from the output's forwarder task.
pub struct SparkplugFormat {
    /// Group id (`spBv1.0/{group}/...`).
    pub group: String,
    /// Edge node id: the agent id unless `edge_node_id` is set.
    pub node: String,
    /// Primary host application whose STATE gates data; `None`: data flows whenever connected.
    pub primary_host: Option<String>,
    /// QoS of data messages.
    pub qos: QoS,
    /// The birth/death sequence number, shared with the last will built before each connect.
    pub bdseq: Arc<BdSeq>,
    /// Which device (source) a sample's tag belongs to; `None`: device `sensors`.
    pub device_of_tag: DeviceOfTag,
    /// The outbox: node metrics report its backlog and drops; births read the newest values
    /// from it.
    pub outbox: Arc<SledOutbox>,
    /// Streams this output publishes.
    pub streams: Vec<Stream>,
    /// The agent's models and their counters, as handed to every MQTT output. Not read at
    /// present: model devices are described from their own records.
    pub models: Vec<(String, Arc<ModelStats>)>,
    /// DDATA metrics carry their datatype (see [`SparkplugFormat::ddata_datatype`]).
    ddata_datatype: bool,
    host_online: bool,
    /// NBIRTH went out in this session.
    node_born: bool,
    seq: u8,
    next_alias: u64,
    node_metrics: BTreeMap<String, u64>,
    devices: BTreeMap<String, DeviceDef>,
}

impl std::fmt::Debug for SparkplugFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparkplugFormat")
            .field("group", &self.group)
            .field("node", &self.node)
            .field("primary_host", &self.primary_host)
            .field("streams", &self.streams)
            .field("host_online", &self.host_online)
            .field("node_born", &self.node_born)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Records at the end of each stream read for the last known values at a birth.
const LAST_RECORDS: usize = 64;

/// `p` becomes its metric's last value: always when live, and when `only_if_newer` (history,
/// the outbox's tail) only if it is at least as new as what the metric has.
fn remember(dev: &mut DeviceDef, p: Point, only_if_newer: bool) {
    if let Some(m) = dev.metrics.get_mut(&p.metric) {
        if !only_if_newer || m.last.as_ref().is_none_or(|(_, ts, _)| *ts <= p.ts_ms) {
            m.last = Some((p.val, p.ts_ms, p.quality));
        }
    }
}

/// Keeps topic levels valid.
fn level(s: &str) -> String {
    s.replace(['/', '+', '#'], "_")
}

impl SparkplugFormat {
    /// A node that has not been born yet; data waits for the primary host if one is named.
    /// DDATA metrics carry their datatype unless [`SparkplugFormat::ddata_datatype`] says
    /// otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        group: String,
        node: String,
        primary_host: Option<String>,
        qos: QoS,
        bdseq: Arc<BdSeq>,
        device_of_tag: DeviceOfTag,
        outbox: Arc<SledOutbox>,
        streams: Vec<Stream>,
        models: Vec<(String, Arc<ModelStats>)>,
    ) -> Self {
        SparkplugFormat {
            host_online: primary_host.is_none(),
            group,
            node,
            primary_host,
            qos,
            bdseq,
            device_of_tag,
            outbox,
            streams,
            models,
            ddata_datatype: true,
            node_born: false,
            seq: 0,
            next_alias: 1,
            node_metrics: BTreeMap::new(),
            devices: BTreeMap::new(),
        }
    }

    /// The MQTT will: NDEATH with the bdSeq of the connection about to be made.
    pub fn will(group: &str, node: &str, bdseq: &BdSeq) -> LastWill {
        let v = bdseq.next();
        LastWill::new(
            topics::spb_node(group, "NDEATH", node),
            ndeath_payload(v),
            QoS::AtLeastOnce,
            false,
        )
    }

    /// Topics to subscribe to: our NCMD, and the primary host's STATE.
    pub fn subscriptions(
        group: &str,
        node: &str,
        primary_host: Option<&str>,
    ) -> Vec<(String, QoS)> {
        let mut v = vec![(topics::spb_node(group, "NCMD", node), QoS::AtLeastOnce)];
        if let Some(h) = primary_host {
            v.push((topics::spb_state(h), QoS::AtLeastOnce));
        }
        v
    }

    fn alias(&mut self) -> u64 {
        let a = self.next_alias;
        self.next_alias += 1;
        a
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s as u64
    }

    fn msg(&self, topic: String, p: Payload) -> Msg {
        Msg {
            topic,
            payload: p.encode_to_vec(),
            qos: self.qos,
            retain: false,
        }
    }

    fn node_metric(&mut self, name: &str) -> u64 {
        if let Some(a) = self.node_metrics.get(name) {
            return *a;
        }
        let a = self.alias();
        self.node_metrics.insert(name.to_string(), a);
        a
    }

    fn outbox_points(&mut self) -> Vec<Metric> {
        let now = now_ms();
        let mut out = Vec::new();
        for s in self.outbox.stats() {
            if !self.streams.iter().any(|x| x.name() == s.stream) {
                continue;
            }
            for (what, v) in [("Backlog", s.records), ("Dropped", s.dropped)] {
                let name = format!("Outbox/{}/{what}", s.stream);
                let alias = self.node_metric(&name);
                out.push(Metric {
                    name: Some(name),
                    alias: Some(alias),
                    timestamp: Some(now),
                    datatype: Some(DataType::UInt64 as u32),
                    value: Some(MetricValue::LongValue(v)),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// NBIRTH and a DBIRTH for every known device; restarts seq.
    fn births(&mut self) -> Vec<Msg> {
        self.refresh_last();
        let now = now_ms();
        self.seq = 0;
        let rebirth = self.node_metric(REBIRTH);
        let version = self.node_metric("Properties/Agent Version");
        let mut metrics = vec![
            Metric {
                name: Some(BDSEQ.into()),
                timestamp: Some(now),
                datatype: Some(DataType::UInt64 as u32),
                value: Some(MetricValue::LongValue(self.bdseq.current())),
                ..Default::default()
            },
            Metric {
                name: Some(REBIRTH.into()),
                alias: Some(rebirth),
                timestamp: Some(now),
                datatype: Some(DataType::Boolean as u32),
                value: Some(MetricValue::BooleanValue(false)),
                ..Default::default()
            },
            Metric {
                name: Some("Properties/Agent Version".into()),
                alias: Some(version),
                timestamp: Some(now),
                datatype: Some(DataType::String as u32),
                value: Some(MetricValue::StringValue(crate::version().into())),
                ..Default::default()
            },
        ];
        metrics.extend(self.outbox_points());
        let seq = self.take_seq();
        let mut out = vec![self.msg(
            topics::spb_node(&self.group, "NBIRTH", &self.node),
            Payload {
                timestamp: Some(now),
                metrics,
                seq: Some(seq),
                ..Default::default()
            },
        )];
        self.node_born = true;
        let names: Vec<String> = self.devices.keys().cloned().collect();
        out.extend(names.iter().filter_map(|d| self.dbirth(d)));
        out
    }

    /// A record's metric points, per Sparkplug device (empty for a record that does not
    /// decode: logged).
    fn points_of(&self, stream: Stream, seq: u64, payload: &[u8]) -> Vec<(String, Vec<Point>)> {
        let mut out = Vec::new();
        let bad = |e: records::DecodeError| {
            tracing::error!(stream = stream.name(), seq, "{e}; skipped");
            Vec::new()
        };
        match stream {
            Stream::Samples => {
                let samples = match records::decode_samples(payload) {
                    Ok(s) => s,
                    Err(e) => return bad(e),
                };
                let mut by_device: BTreeMap<String, Vec<Point>> = BTreeMap::new();
                for s in samples {
                    let device = (self.device_of_tag)(&s.tag).unwrap_or_else(|| "sensors".into());
                    let val = if s.quality == Quality::Bad {
                        Val::Null
                    } else {
                        Val::of(&s.value)
                    };
                    by_device.entry(device).or_default().push(Point {
                        metric: s.tag.to_string(),
                        val,
                        ts_ms: ms(s.ts_ns),
                        quality: s.quality,
                    });
                }
                for (d, pts) in by_device {
                    out.push((d.to_string(), pts));
                }
            }
            Stream::Features => {
                let f = match records::decode_features(payload) {
                    Ok(f) => f,
                    Err(e) => return bad(e),
                };
                let ts = ms(f.end_ns);
                let mut pts: Vec<Point> = f
                    .names
                    .iter()
                    .zip(&f.values)
                    .map(|(n, v)| Point {
                        metric: format!("Features/{n}"),
                        val: Val::f64(*v),
                        ts_ms: ts,
                        quality: Quality::Good,
                    })
                    .collect();
                pts.push(Point {
                    metric: "Window Start".into(),
                    val: Val::Time(ms(f.start_ns)),
                    ts_ms: ts,
                    quality: Quality::Good,
                });
                Self::model_identity(&f.source, ts, &mut pts);
                out.push((f.source.model.to_string(), pts));
            }
            Stream::Predictions => {
                let p = match records::decode_prediction(payload) {
                    Ok(p) => p,
                    Err(e) => return bad(e),
                };
                let ts = ms(p.end_ns);
                let g = |metric: &str, val: Val| Point {
                    metric: metric.into(),
                    val,
                    ts_ms: ts,
                    quality: Quality::Good,
                };
                let mut pts = vec![g("Window Start", Val::Time(ms(p.start_ns)))];
                if let Some(s) = p.score {
                    pts.push(g("Score", Val::f64(s)));
                }
                if let Some(l) = &p.label {
                    pts.push(g("Label", Val::S(l.clone())));
                }
                if let Some(o) = p.over_threshold {
                    pts.push(g("Over Threshold", Val::B(o)));
                }
                for (name, vals) in &p.outputs {
                    if vals.len() == 1 {
                        pts.push(g(&format!("Outputs/{name}"), Val::f64(vals[0])));
                    } else {
                        for (i, v) in vals.iter().enumerate() {
                            pts.push(g(&format!("Outputs/{name}/{i}"), Val::f64(*v)));
                        }
                    }
                }
                Self::model_identity(&p.source, ts, &mut pts);
                out.push((p.source.model.to_string(), pts));
            }
            Stream::Alarms => {
                let a = match records::decode_alarm(payload) {
                    Ok(a) => a,
                    Err(e) => return bad(e),
                };
                let ts = ms(a.ts_ns);
                let g = |metric: String, val: Val| Point {
                    metric,
                    val,
                    ts_ms: ts,
                    quality: Quality::Good,
                };
                let base = match &a.drift {
                    None => "Alarm".to_string(),
                    Some(d) if d.kind == crate::pipeline::record::DriftAlarmKind::Dataset => {
                        "Drift Alarm/dataset".to_string()
                    }
                    Some(d) => format!("Drift Alarm/{}/{}", d.kind.as_str(), d.subject),
                };
                let (active, value) = if a.drift.is_some() {
                    (base.clone(), format!("{base}/Value"))
                } else {
                    (format!("{base}/Active"), format!("{base}/Score"))
                };
                let mut pts = vec![g(active, Val::B(a.active)), g(value, Val::f64(a.score))];
                if let Some(t) = a.threshold {
                    pts.push(g(format!("{base}/Threshold"), Val::f64(t)));
                }
                out.push((a.source.model.to_string(), pts));
            }
            Stream::Drift => {
                let d = match records::decode_drift(payload) {
                    Ok(d) => d,
                    Err(e) => return bad(e),
                };
                let ts = ms(d.end_ns);
                let g = |metric: String, val: Val| Point {
                    metric,
                    val,
                    ts_ms: ts,
                    quality: Quality::Good,
                };
                let mut pts = vec![
                    g("Drift/Dataset Drift".into(), Val::B(d.dataset_drift)),
                    g("Drift/Metric".into(), Val::S(d.metric.name().into())),
                    g("Drift/Interval Start".into(), Val::Time(ms(d.start_ns))),
                ];
                for c in d.columns.iter().chain(&d.outputs) {
                    let v = c
                        .scores
                        .map(|s| edge_wire::drift::record::metric_value(d.metric, &s));
                    pts.push(g(
                        format!("Drift/{}/Score", c.summary.name),
                        v.map(Val::f64).unwrap_or(Val::Null),
                    ));
                    pts.push(g(
                        format!("Drift/{}/Drifting", c.summary.name),
                        Val::B(c.drifting),
                    ));
                }
                if let Some(p) = &d.performance {
                    pts.push(g("Performance/Labelled".into(), Val::U(p.labelled)));
                    for (name, v) in [
                        ("Accuracy", p.accuracy()),
                        ("Precision", p.precision()),
                        ("Recall", p.recall()),
                        ("MAE", p.mae()),
                    ] {
                        if let Some(v) = v {
                            pts.push(g(format!("Performance/{name}"), Val::f64(v)));
                        }
                    }
                }
                out.push((d.source.model.to_string(), pts));
            }
            Stream::Events => {}
        }
        out
    }

    /// The newest values in the outbox become the metrics' last values, so births carry
    /// them: after a restart, and while the primary host was away, nothing was published,
    /// and the outbox is where the last known values are (the newest [`LAST_RECORDS`]
    /// records of each published stream, cursor or not).
    fn refresh_last(&mut self) {
        for stream in self.streams.clone() {
            let recent = match self.outbox.latest(stream, LAST_RECORDS) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        stream = stream.name(),
                        "births without the outbox's last values: {e}"
                    );
                    continue;
                }
            };
            for (seq, _, payload) in recent.into_iter().rev() {
                for (device, pts) in self.points_of(stream, seq, &payload) {
                    let device = level(&device);
                    self.register(&device, &pts);
                    if let Some(dev) = self.devices.get_mut(&device) {
                        for p in pts {
                            remember(dev, p, true);
                        }
                    }
                }
            }
        }
    }

    /// The DBIRTH of a known device (`None` for an unknown one: nothing to announce).
    fn dbirth(&mut self, device: &str) -> Option<Msg> {
        let now = now_ms();
        let dev = self.devices.get_mut(device)?;
        dev.born = true;
        let metrics = dev
            .metrics
            .iter()
            .map(|(name, m)| {
                let (val, ts, q) = m.last.clone().unwrap_or((Val::Null, now, Quality::Bad));
                let value = val.into_type(m.datatype).flatten();
                Metric {
                    name: Some(name.clone()),
                    alias: Some(m.alias),
                    timestamp: Some(ts),
                    datatype: Some(m.datatype as u32),
                    is_null: value.is_none().then_some(true),
                    properties: Some(quality_props(if value.is_none() {
                        Quality::Bad
                    } else {
                        q
                    })),
                    value,
                    ..Default::default()
                }
            })
            .collect();
        let seq = self.take_seq();
        Some(self.msg(
            topics::spb_device(&self.group, "DBIRTH", &self.node, device),
            Payload {
                timestamp: Some(now),
                metrics,
                seq: Some(seq),
                ..Default::default()
            },
        ))
    }

    /// Registers the points' metrics (new ones, type changes); returns whether the device
    /// needs a new DBIRTH.
    fn register(&mut self, device: &str, points: &[Point]) -> bool {
        let mut changed = !self.devices.contains_key(device);
        let mut fresh = Vec::new();
        {
            let dev = self.devices.entry(device.to_string()).or_default();
            for p in points {
                let want = p.val.natural();
                match dev.metrics.get_mut(&p.metric) {
                    Some(m) => {
                        if let Some(w) = want {
                            if p.val.clone().into_type(m.datatype).is_none() {
                                m.datatype = widen(m.datatype, w);
                                changed = true;
                            }
                        }
                    }
                    None => fresh.push((p.metric.clone(), want.unwrap_or(DataType::Double))),
                }
            }
        }
        for (name, dt) in fresh {
            let alias = self.alias();
            let dev = self.devices.entry(device.to_string()).or_default();
            if let std::collections::btree_map::Entry::Vacant(e) = dev.metrics.entry(name) {
                e.insert(MetricDef {
                    alias,
                    datatype: dt,
                    last: None,
                });
                changed = true;
            }
        }
        let dev = self.devices.entry(device.to_string()).or_default();
        if changed {
            dev.born = false;
        }
        !dev.born
    }

    /// Whether DDATA metrics carry their datatype (default: yes). Sparkplug 3.0 says data
    /// messages SHOULD NOT (the birth declared it), but Eclipse Tahu's JavaScript decoder
    /// (behind Node-RED's Sparkplug nodes) reads no value without it.
    pub fn ddata_datatype(mut self, on: bool) -> Self {
        self.ddata_datatype = on;
        self
    }

    /// DBIRTH (if needed) and DDATA for one device's points.
    fn device_data(
        &mut self,
        device: &str,
        points: Vec<Point>,
        historical: bool,
        out: &mut Vec<Msg>,
    ) {
        if points.is_empty() {
            return;
        }
        let device = level(device);
        let rebirth = self.register(&device, &points);
        if let Some(dev) = self.devices.get_mut(&device) {
            for p in &points {
                remember(dev, p.clone(), historical);
            }
        }
        if rebirth {
            out.extend(self.dbirth(&device));
        }
        let with_type = self.ddata_datatype;
        let Some(dev) = self.devices.get(&device) else {
            return;
        };
        let metrics = points
            .into_iter()
            .filter_map(|p| {
                let m = dev.metrics.get(&p.metric)?;
                let value = p.val.into_type(m.datatype).flatten();
                let quality = if value.is_none() {
                    Quality::Bad
                } else {
                    p.quality
                };
                Some(Metric {
                    alias: Some(m.alias),
                    timestamp: Some(p.ts_ms),
                    datatype: with_type.then_some(m.datatype as u32),
                    is_historical: historical.then_some(true),
                    is_null: value.is_none().then_some(true),
                    properties: (quality != Quality::Good).then(|| quality_props(quality)),
                    value,
                    ..Default::default()
                })
            })
            .collect();
        let seq = self.take_seq();
        let topic = topics::spb_device(&self.group, "DDATA", &self.node, &device);
        out.push(self.msg(
            topic,
            Payload {
                timestamp: Some(now_ms()),
                metrics,
                seq: Some(seq),
                ..Default::default()
            },
        ));
    }

    fn model_identity(src: &BundleRef, ts: u64, points: &mut Vec<Point>) {
        points.push(Point {
            metric: "Model/Version".into(),
            val: Val::S(src.version.to_string()),
            ts_ms: ts,
            quality: Quality::Good,
        });
        points.push(Point {
            metric: "Model/Version Number".into(),
            val: Val::U(src.version_number),
            ts_ms: ts,
            quality: Quality::Good,
        });
    }

    fn on_state(payload: &[u8]) -> Option<bool> {
        let text = std::str::from_utf8(payload).ok()?.trim();
        match text {
            "ONLINE" => return Some(true),
            "OFFLINE" => return Some(false),
            _ => {}
        }
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        v.get("online").and_then(|o| o.as_bool())
    }

    fn is_rebirth(&self, payload: &[u8]) -> bool {
        let Ok(p) = Payload::decode(payload) else {
            tracing::warn!(node = %self.node, "undecodable Sparkplug NCMD ignored");
            return false;
        };
        let rebirth_alias = self.node_metrics.get(REBIRTH).copied();
        p.metrics.iter().any(|m| {
            let named = m.name.as_deref() == Some(REBIRTH)
                || (m.name.is_none() && m.alias.is_some() && m.alias == rebirth_alias);
            named && m.value == Some(MetricValue::BooleanValue(true))
        })
    }
}

impl Format for SparkplugFormat {
    fn on_connect(&mut self) -> Vec<Msg> {
        self.node_born = false;
        for d in self.devices.values_mut() {
            d.born = false;
        }
        // A host state from the last connection is stale: wait for the retained STATE.
        self.host_online = self.primary_host.is_none();
        if self.host_online {
            self.births()
        } else {
            tracing::info!(node = %self.node, host = ?self.primary_host, "waiting for the primary host to be online before publishing");
            Vec::new()
        }
    }

    fn gate_open(&self) -> bool {
        self.host_online && self.node_born
    }

    fn rebirth(&mut self) -> Vec<Msg> {
        tracing::info!(node = %self.node, "Sparkplug rebirth requested through the fleet");
        if self.host_online {
            self.births()
        } else {
            Vec::new()
        }
    }

    fn on_incoming(&mut self, p: &rumqttc::Publish) -> Reaction {
        let ncmd = topics::spb_node(&self.group, "NCMD", &self.node);
        if p.topic == ncmd {
            if self.is_rebirth(&p.payload) {
                tracing::info!(node = %self.node, "Sparkplug rebirth requested");
                if self.host_online {
                    return Reaction {
                        publish: self.births(),
                        opened: false,
                    };
                }
            }
            return Reaction::default();
        }
        if let Some(host) = self.primary_host.clone() {
            if p.topic == topics::spb_state(&host) {
                match Self::on_state(&p.payload) {
                    Some(true) if !self.host_online => {
                        tracing::info!(node = %self.node, host = %host, "primary host online: birth, then the backlog as historical");
                        self.host_online = true;
                        return Reaction {
                            publish: self.births(),
                            opened: true,
                        };
                    }
                    Some(false) if self.host_online => {
                        tracing::warn!(node = %self.node, host = %host, "primary host offline: data waits in the outbox");
                        self.host_online = false;
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(node = %self.node, host = %host, "unreadable STATE message ignored")
                    }
                }
            }
        }
        Reaction::default()
    }

    fn encode(&mut self, stream: Stream, seq: u64, payload: &[u8], historical: bool) -> Vec<Msg> {
        let mut out = Vec::new();
        for (device, pts) in self.points_of(stream, seq, payload) {
            self.device_data(&device, pts, historical, &mut out);
        }
        out
    }

    fn periodic(&mut self) -> Vec<Msg> {
        if !self.gate_open() {
            return Vec::new();
        }
        let metrics = self.outbox_points();
        let seq = self.take_seq();
        vec![self.msg(
            topics::spb_node(&self.group, "NDATA", &self.node),
            Payload {
                timestamp: Some(now_ms()),
                metrics,
                seq: Some(seq),
                ..Default::default()
            },
        )]
    }

    fn on_shutdown(&mut self) -> Vec<Msg> {
        // An explicit NDEATH: the broker does not send the will on a clean disconnect.
        vec![Msg {
            topic: topics::spb_node(&self.group, "NDEATH", &self.node),
            payload: ndeath_payload(self.bdseq.current()),
            qos: QoS::AtLeastOnce,
            retain: false,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxConfig;
    use edge_wire::records::encode_samples;
    use edge_wire::Sample;

    fn format(dir: &std::path::Path, host: Option<&str>) -> SparkplugFormat {
        let (ob, _) = SledOutbox::open(
            &dir.join("ob"),
            &OutboxConfig::default(),
            &[("spb".into(), vec![Stream::Samples])],
        )
        .unwrap();
        let bd = Arc::new(BdSeq::open(dir.join("bdseq")));
        SparkplugFormat::new(
            "plant".into(),
            "gw1".into(),
            host.map(String::from),
            QoS::AtLeastOnce,
            bd,
            Box::new(|t: &str| t.split_once('.').map(|(d, _)| d.to_string())),
            Arc::new(ob),
            vec![Stream::Samples],
            Vec::new(),
        )
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn samples(v: Vec<(&str, Value, Quality)>) -> Vec<u8> {
        let s: Vec<Sample> = v
            .into_iter()
            .map(|(t, v, q)| Sample::new(Arc::from(t), 1_700_000_000_000_000_000, v, q))
            .collect();
        encode_samples(&s)
    }

    fn decode(m: &Msg) -> Payload {
        Payload::decode(&m.payload).unwrap()
    }

    #[test]
    fn bdseq_counts_per_connect_wraps_and_persists() {
        let d = tmp("bdseq");
        let b = BdSeq::open(d.join("x"));
        assert_eq!((b.next(), b.next(), b.current()), (0, 1, 1));
        let b = BdSeq::open(d.join("x"));
        assert_eq!(b.next(), 2, "continues after a restart");
        std::fs::write(d.join("x"), "255").unwrap();
        assert_eq!(BdSeq::open(d.join("x")).next(), 0, "wraps after 255");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn births_aliases_types_quality_and_seq() {
        let d = tmp("births");
        let mut f = format(&d, None);
        f.bdseq.next();
        let b = f.on_connect();
        assert_eq!(b.len(), 1, "no devices known yet: NBIRTH only");
        assert_eq!(b[0].topic, "spBv1.0/plant/NBIRTH/gw1");
        let nb = decode(&b[0]);
        assert_eq!(nb.seq, Some(0));
        assert!(nb.metrics.iter().any(
            |m| m.name.as_deref() == Some(BDSEQ) && m.value == Some(MetricValue::LongValue(0))
        ));
        let msgs = f.encode(
            Stream::Samples,
            1,
            &samples(vec![
                ("p1.temp", Value::Float(61.5), Quality::Good),
                ("p1.count", Value::UInt(123_456_789), Quality::Good),
                ("p1.level", Value::Int(-1234), Quality::Uncertain),
                ("p1.lost", Value::Null, Quality::Bad),
            ]),
            false,
        );
        assert_eq!(
            msgs.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
            ["spBv1.0/plant/DBIRTH/gw1/p1", "spBv1.0/plant/DDATA/gw1/p1"]
        );
        let db = decode(&msgs[0]);
        let dd = decode(&msgs[1]);
        assert_eq!((db.seq, dd.seq), (Some(1), Some(2)));
        let by_name: BTreeMap<_, _> = db
            .metrics
            .iter()
            .map(|m| (m.name.clone().unwrap(), m.clone()))
            .collect();
        assert_eq!(by_name["p1.temp"].datatype, Some(DataType::Double as u32));
        assert_eq!(by_name["p1.count"].datatype, Some(DataType::UInt64 as u32));
        assert_eq!(by_name["p1.level"].datatype, Some(DataType::Int64 as u32));
        // Data by alias only, typed; quality property only when not good; bad is null.
        assert!(dd
            .metrics
            .iter()
            .all(|m| m.name.is_none() && m.alias.is_some()));
        let by_alias: BTreeMap<_, _> = dd
            .metrics
            .iter()
            .map(|m| (m.alias.unwrap(), m.clone()))
            .collect();
        let get = |n: &str| by_alias[&by_name[n].alias.unwrap()].clone();
        // The datatype travels with the data too (Tahu JS / Node-RED need it).
        assert_eq!(get("p1.temp").datatype, Some(DataType::Double as u32));
        assert_eq!(get("p1.count").datatype, Some(DataType::UInt64 as u32));
        assert_eq!(get("p1.temp").value, Some(MetricValue::DoubleValue(61.5)));
        assert_eq!(get("p1.temp").properties, None);
        assert_eq!(
            get("p1.count").value,
            Some(MetricValue::LongValue(123_456_789))
        );
        assert_eq!(
            get("p1.level").value,
            Some(MetricValue::LongValue(-1234i64 as u64))
        );
        assert_eq!(
            get("p1.level").properties,
            Some(quality_props(Quality::Uncertain))
        );
        assert_eq!(
            (get("p1.lost").is_null, get("p1.lost").value.clone()),
            (Some(true), None)
        );
        // The same metrics again: no new DBIRTH.
        let again = f.encode(
            Stream::Samples,
            2,
            &samples(vec![("p1.temp", Value::Float(62.0), Quality::Good)]),
            true,
        );
        assert_eq!(again.len(), 1);
        assert_eq!(decode(&again[0]).metrics[0].is_historical, Some(true));
        // A type change (int -> float) re-births the device with the wider type.
        let wider = f.encode(
            Stream::Samples,
            3,
            &samples(vec![("p1.level", Value::Float(0.5), Quality::Good)]),
            false,
        );
        assert_eq!(wider.len(), 2);
        let db2 = decode(&wider[0]);
        let lvl = db2
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("p1.level"))
            .unwrap();
        assert_eq!(lvl.datatype, Some(DataType::Double as u32));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn ddata_without_datatypes_when_asked() {
        let d = tmp("no-ddata-types");
        let mut f = format(&d, None).ddata_datatype(false);
        f.bdseq.next();
        f.on_connect();
        let msgs = f.encode(
            Stream::Samples,
            1,
            &samples(vec![("p1.temp", Value::Float(61.5), Quality::Good)]),
            false,
        );
        let (db, dd) = (decode(&msgs[0]), decode(&msgs[1]));
        assert_eq!(
            db.metrics[0].datatype,
            Some(DataType::Double as u32),
            "birth"
        );
        assert_eq!(dd.metrics[0].datatype, None, "data");
        assert_eq!(dd.metrics[0].value, Some(MetricValue::DoubleValue(61.5)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn seq_wraps_after_255() {
        let d = tmp("wrap");
        let mut f = format(&d, None);
        f.on_connect();
        let mut seqs = Vec::new();
        for i in 0..300 {
            for m in f.encode(
                Stream::Samples,
                i,
                &samples(vec![("a.x", Value::Float(i as f64), Quality::Good)]),
                false,
            ) {
                seqs.push(decode(&m).seq.unwrap());
            }
        }
        // NBIRTH was 0; then DBIRTH 1, DDATA 2.. 255, 0, 1, ...
        assert_eq!(seqs[0], 1);
        for w in seqs.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 256);
        }
        assert!(seqs.contains(&255) && seqs.iter().filter(|s| **s == 0).count() >= 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn samples_at(ts_ms: u64, v: Vec<(&str, Value, Quality)>) -> Vec<u8> {
        let s: Vec<Sample> = v
            .into_iter()
            .map(|(t, v, q)| Sample::new(Arc::from(t), ts_ms as i64 * 1_000_000, v, q))
            .collect();
        encode_samples(&s)
    }

    /// Births carry the last known value and its time, also after a restart and when the
    /// primary host comes back (they carried null / Quality 0, or a value as old as the
    /// host's absence).
    #[test]
    fn births_carry_the_last_known_values_from_the_outbox() {
        let d = tmp("last-values");
        // A previous run measured and stored; nothing was published (host offline).
        let mut f = format(&d, Some("scada"));
        f.outbox
            .append(
                Stream::Samples,
                &[
                    samples_at(1_000, vec![("p1.temp", Value::Float(61.5), Quality::Good)]),
                    samples_at(
                        2_000,
                        vec![
                            ("p1.temp", Value::Float(62.5), Quality::Good),
                            ("p1.level", Value::Int(7), Quality::Uncertain),
                        ],
                    ),
                ],
            )
            .unwrap();
        f.outbox.commit().unwrap();
        assert!(f.on_connect().is_empty(), "host offline: no birth");
        // The host comes online: the births carry the newest stored values, with their
        // measurement times and qualities.
        let r = f.on_incoming(&publish(
            "spBv1.0/STATE/scada",
            br#"{"online": true, "timestamp": 1}"#.to_vec(),
        ));
        let db = r
            .publish
            .iter()
            .find(|m| m.topic == "spBv1.0/plant/DBIRTH/gw1/p1")
            .map(decode)
            .expect("a DBIRTH of p1 from the outbox");
        let by_name: BTreeMap<_, _> = db
            .metrics
            .iter()
            .map(|m| (m.name.clone().unwrap(), m.clone()))
            .collect();
        assert_eq!(
            by_name["p1.temp"].value,
            Some(MetricValue::DoubleValue(62.5))
        );
        assert_eq!(by_name["p1.temp"].timestamp, Some(2_000));
        assert_eq!(
            by_name["p1.temp"].properties,
            Some(quality_props(Quality::Good))
        );
        assert_eq!(
            by_name["p1.level"].properties,
            Some(quality_props(Quality::Uncertain))
        );
        // Later, newer data stored while the host was away again: the next birth has it.
        f.on_incoming(&publish(
            "spBv1.0/STATE/scada",
            br#"{"online": false, "timestamp": 2}"#.to_vec(),
        ));
        f.outbox
            .append(
                Stream::Samples,
                &[samples_at(
                    9_000,
                    vec![("p1.temp", Value::Float(70.0), Quality::Good)],
                )],
            )
            .unwrap();
        f.outbox.commit().unwrap();
        let r = f.on_incoming(&publish(
            "spBv1.0/STATE/scada",
            br#"{"online": true, "timestamp": 3}"#.to_vec(),
        ));
        let db = r
            .publish
            .iter()
            .find(|m| m.topic == "spBv1.0/plant/DBIRTH/gw1/p1")
            .map(decode)
            .unwrap();
        let temp = db
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("p1.temp"))
            .unwrap();
        assert_eq!(
            (temp.value.clone(), temp.timestamp),
            (Some(MetricValue::DoubleValue(70.0)), Some(9_000))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn publish(topic: &str, payload: Vec<u8>) -> rumqttc::Publish {
        rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload)
    }

    #[test]
    fn primary_host_state_gates_data_and_rebirth_answers_ncmd() {
        let d = tmp("state");
        let mut f = format(&d, Some("scada"));
        assert!(
            f.on_connect().is_empty(),
            "no birth before the host is online"
        );
        assert!(!f.gate_open());
        let r = f.on_incoming(&publish(
            "spBv1.0/STATE/scada",
            br#"{"online": true, "timestamp": 1}"#.to_vec(),
        ));
        assert!(r.opened && f.gate_open());
        assert!(r.publish[0].topic.ends_with("/NBIRTH/gw1"));
        f.encode(
            Stream::Samples,
            1,
            &samples(vec![("a.x", Value::Float(1.0), Quality::Good)]),
            false,
        );
        let r = f.on_incoming(&publish(
            "spBv1.0/STATE/scada",
            br#"{"online": false, "timestamp": 2}"#.to_vec(),
        ));
        assert!(!r.opened && !f.gate_open());
        assert!(
            f.on_incoming(&publish("spBv1.0/STATE/scada", b"ONLINE".to_vec()))
                .opened,
            "Sparkplug 2.2 STATE too"
        );
        // Rebirth by name: NBIRTH (seq 0) + the known device.
        let cmd = Payload {
            metrics: vec![Metric {
                name: Some(REBIRTH.into()),
                datatype: Some(DataType::Boolean as u32),
                value: Some(MetricValue::BooleanValue(true)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = f.on_incoming(&publish("spBv1.0/plant/NCMD/gw1", cmd.encode_to_vec()));
        assert_eq!(
            r.publish
                .iter()
                .map(|m| m.topic.as_str())
                .collect::<Vec<_>>(),
            ["spBv1.0/plant/NBIRTH/gw1", "spBv1.0/plant/DBIRTH/gw1/a"]
        );
        assert_eq!(decode(&r.publish[0]).seq, Some(0));
        let db = decode(&r.publish[1]);
        assert_eq!(
            db.metrics[0].value,
            Some(MetricValue::DoubleValue(1.0)),
            "birth carries the last live value"
        );
        // Rebirth by alias, and garbage is ignored.
        let alias = f.node_metrics[REBIRTH];
        let cmd = Payload {
            metrics: vec![Metric {
                alias: Some(alias),
                value: Some(MetricValue::BooleanValue(true)),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            f.on_incoming(&publish("spBv1.0/plant/NCMD/gw1", cmd.encode_to_vec()))
                .publish
                .len(),
            2
        );
        assert!(f
            .on_incoming(&publish("spBv1.0/plant/NCMD/gw1", vec![0xff, 0x12]))
            .publish
            .is_empty());
        // The fleet's `rebirth` command: the same births, none while the host is offline.
        let topics = |msgs: Vec<Msg>| msgs.into_iter().map(|m| m.topic).collect::<Vec<_>>();
        assert_eq!(
            topics(f.rebirth()),
            ["spBv1.0/plant/NBIRTH/gw1", "spBv1.0/plant/DBIRTH/gw1/a"]
        );
        f.on_incoming(&publish(
            "spBv1.0/STATE/scada",
            br#"{"online": false, "timestamp": 3}"#.to_vec(),
        ));
        assert!(f.rebirth().is_empty(), "no birth while the host is offline");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
