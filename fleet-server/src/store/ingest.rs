//! Uploaded device records and what is derived from them at ingest: stream marks (the
//! contiguous ack), the alarms table (from the `alarms` stream), the drift index (from the
//! `drift` stream), and the update history (from update reports).
//!
//! Derived rows are written in the ingest transaction, only for records stored for the
//! first time (`RETURNING seq`), so a replayed batch changes nothing twice.

use std::collections::HashMap;

use edge_wire::records::{self, Stream};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, parse_enum, Arg, FleetStore, Result, Sql, StoreError};
use crate::types::{AlarmKind, UpdateOutcome};

/// Records per INSERT statement (5 parameters each; SQLite allows 32766).
const INSERT_CHUNK: usize = 500;

/// One device's upload batch, as [`FleetStore::ingest_in`] stores it.
#[derive(Debug, Clone, Copy)]
pub(super) struct IngestBatch<'a> {
    pub device: &'a str,
    pub stream: &'a str,
    pub first_available: i64,
    /// (seq, ts_ms, body)
    pub records: &'a [(i64, i64, &'a [u8])],
}

/// Result of storing one upload batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestResult {
    /// Highest sequence number stored contiguously (what the device may drop).
    pub acked_through: i64,
    /// Records of the batch stored now.
    pub inserted: u64,
    /// Records of the batch that were stored already (resent).
    pub duplicates: u64,
}

/// How far a device's stream is stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamMark {
    /// Stream name.
    pub stream: String,
    /// Highest sequence number stored contiguously.
    pub acked_through: i64,
    /// Records the device no longer had when it uploaded (skipped over by `first_available`).
    pub lost_on_device: i64,
    /// Records stored in all.
    pub records: i64,
    /// Records received again after they were stored (resends).
    pub duplicates: i64,
}

/// A model or drift alarm: one row per raise, cleared in place.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlarmRow {
    /// Alarm id.
    pub id: String,
    /// The device that raised it.
    pub device_id: String,
    /// Its name (empty if the device row is gone).
    pub device_name: String,
    /// The `[[models]]` name on the device.
    pub model: String,
    /// Bundle name.
    pub bundle: String,
    /// Bundle version number.
    pub version_number: i64,
    /// Model score alarm, or which drift or performance alarm.
    pub kind: AlarmKind,
    /// Column or output name, `dataset`, the performance metric, or `score`.
    pub subject: String,
    /// What was compared (`psi`, `accuracy`, `score`, …).
    pub metric: String,
    /// The compared value at the raise (updated while raised).
    pub score: Option<f64>,
    /// The limit it was compared with.
    pub threshold: Option<f64>,
    /// Device time of the window that raised it (absent if the raise never arrived).
    pub raised_ns: Option<i64>,
    /// Device time of the window that cleared it, if it cleared.
    pub cleared_ns: Option<i64>,
    /// Raised and not cleared.
    pub active: bool,
    /// Server time the raise (or the first record of it) arrived.
    pub received_at: i64,
    /// Server time of the last change (Unix ms).
    pub updated_at: i64,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// When it was acknowledged (Unix ms).
    pub acked_at: Option<i64>,
}

/// Which alarms to list (newest change first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmQuery {
    /// Only this device's alarms.
    pub device: Option<String>,
    /// Only raised alarms.
    pub active_only: bool,
    /// Only alarms nobody acknowledged.
    pub unacked_only: bool,
    /// Only alarms of this kind.
    pub kind: Option<AlarmKind>,
    /// Alarms to skip.
    pub offset: i64,
    /// Page size (0: no rows, just the count).
    pub limit: i64,
}

/// A device's model update report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateRow {
    /// When the server stored the report (Unix ms).
    pub at: i64,
    /// The `[[models]]` name on the device.
    pub model: String,
    /// Bundle name.
    pub bundle: String,
    /// The version number it ran before.
    pub from_version_number: i64,
    /// The version number it was updated to.
    pub to_version_number: i64,
    /// The rollout that asked for it, if any.
    pub rollout_id: Option<String>,
    /// Applied, rolled back or failed.
    pub outcome: UpdateOutcome,
    /// How the bundle travelled: `full`, a delta method, `local` (the kept previous file) or
    /// `none`.
    pub method: String,
    /// Bytes downloaded over every (resumed) attempt.
    pub bytes: i64,
    /// Why, in the device's words (the health check's verdict, the refusal, the rollback).
    pub detail: String,
}

/// Where a drift record is and what it covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriftIndexRow {
    /// The device.
    pub device_id: String,
    /// The record's sequence number in the device's `drift` stream.
    pub seq: i64,
    /// The `[[models]]` name on the device.
    pub model: String,
    /// Bundle name.
    pub bundle: String,
    /// Bundle version number.
    pub version_number: i64,
    /// Interval start (device time, Unix ns).
    pub start_ns: i64,
    /// Interval end (device time, Unix ns).
    pub end_ns: i64,
    /// Whether the device flagged dataset drift.
    pub dataset_drift: bool,
    /// Drifting column names.
    pub drifting: Vec<String>,
}

fn alarm_of(r: &AnyRow) -> Result<AlarmRow> {
    Ok(AlarmRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        device_name: r
            .try_get::<Option<String>, _>("device_name")?
            .unwrap_or_default(),
        model: r.try_get("model")?,
        bundle: r.try_get("bundle")?,
        version_number: r.try_get("version_number")?,
        kind: parse_enum(&r.try_get::<String, _>("kind")?)?,
        subject: r.try_get("subject")?,
        metric: r.try_get("metric")?,
        score: r.try_get("score")?,
        threshold: r.try_get("threshold")?,
        raised_ns: r.try_get("raised_ns")?,
        cleared_ns: r.try_get("cleared_ns")?,
        active: r.try_get::<i64, _>("active")? != 0,
        received_at: r.try_get("received_at")?,
        updated_at: r.try_get("updated_at")?,
        acked_by: r.try_get("acked_by")?,
        acked_at: r.try_get("acked_at")?,
    })
}

fn drift_index_of(r: &AnyRow) -> Result<DriftIndexRow> {
    let drifting: String = r.try_get("drifting")?;
    Ok(DriftIndexRow {
        device_id: r.try_get("device_id")?,
        seq: r.try_get("seq")?,
        model: r.try_get("model")?,
        bundle: r.try_get("bundle")?,
        version_number: r.try_get("version_number")?,
        start_ns: r.try_get("start_ns")?,
        end_ns: r.try_get("end_ns")?,
        dataset_drift: r.try_get::<i64, _>("dataset_drift")? != 0,
        drifting: serde_json::from_str(&drifting).unwrap_or_default(),
    })
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Indexes one stored `drift` record (skipped, with a warning, if it does not decode).
async fn index_drift(tx: &mut Tx, device: &str, seq: i64, body: &[u8]) -> Result<()> {
    let rec = match records::decode_drift(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(device, seq, "drift record not indexed: {e}");
            return Ok(());
        }
    };
    let drifting = serde_json::to_string(&rec.drifting).unwrap_or_else(|_| "[]".into());
    let drifting_count = rec.columns.iter().filter(|c| c.drifting).count() as i64;
    let max_score = rec
        .columns
        .iter()
        .filter_map(|c| c.scores.as_ref())
        .map(|s| edge_wire::drift::record::metric_value(rec.metric, s))
        .filter(|v| v.is_finite())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    sqlx::query("INSERT INTO drift_index (device_id, seq, model, bundle, version_number, start_ns, end_ns, dataset_drift, drifting, drifting_count, max_score, ingested_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (device_id, seq) DO NOTHING")
        .bind(device)
        .bind(seq)
        .bind(&*rec.source.model)
        .bind(&*rec.source.bundle)
        .bind(i64::try_from(rec.source.version_number).unwrap_or(i64::MAX))
        .bind(rec.start_ns)
        .bind(rec.end_ns)
        .bind(i64::from(rec.dataset_drift))
        .bind(drifting)
        .bind(drifting_count)
        .bind(max_score)
        .bind(super::now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Applies one stored `alarms` record: a raise opens (or refreshes) the alarm of its
/// (device, model, kind, subject); a clear closes it. Returns whether it decoded.
async fn apply_alarm(tx: &mut Tx, device: &str, seq: i64, body: &[u8]) -> Result<bool> {
    let a = match records::decode_alarm(body) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(device, seq, "alarm record not applied: {e}");
            return Ok(false);
        }
    };
    let (kind, subject, metric) = match &a.drift {
        None => (AlarmKind::Model, "score".to_string(), "score".to_string()),
        Some(d) => (
            match d.kind {
                records::DriftAlarmKind::Column => AlarmKind::Column,
                records::DriftAlarmKind::Output => AlarmKind::Output,
                records::DriftAlarmKind::Dataset => AlarmKind::Dataset,
                records::DriftAlarmKind::Performance => AlarmKind::Performance,
            },
            d.subject.clone(),
            d.metric.clone(),
        ),
    };
    let now = now_ms();
    let vn = i64::try_from(a.source.version_number).unwrap_or(i64::MAX);
    let open = sqlx::query("SELECT id FROM alarms WHERE device_id = $1 AND model = $2 AND kind = $3 AND subject = $4 AND active = 1")
        .bind(device)
        .bind(&*a.source.model)
        .bind(kind.as_str())
        .bind(&subject)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get::<String, _>("id"))
        .transpose()?;
    match (a.active, open) {
        (true, Some(id)) => {
            sqlx::query("UPDATE alarms SET score = $1, threshold = $2, metric = $3, bundle = $4, version_number = $5, updated_at = $6 WHERE id = $7")
                .bind(finite(a.score))
                .bind(a.threshold.and_then(finite))
                .bind(&metric)
                .bind(&*a.source.bundle)
                .bind(vn)
                .bind(now)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        (false, Some(id)) => {
            sqlx::query(
                "UPDATE alarms SET active = 0, cleared_ns = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(a.ts_ns)
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        (active, None) => {
            // A raise, or a clear whose raise never arrived (dropped on the device).
            sqlx::query("INSERT INTO alarms (id, device_id, model, bundle, version_number, kind, subject, metric, score, threshold, raised_ns, cleared_ns, active, received_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO NOTHING")
                .bind(format!("al-{device}-{seq}"))
                .bind(device)
                .bind(&*a.source.model)
                .bind(&*a.source.bundle)
                .bind(vn)
                .bind(kind.as_str())
                .bind(&subject)
                .bind(&metric)
                .bind(finite(a.score))
                .bind(a.threshold.and_then(finite))
                .bind(active.then_some(a.ts_ns))
                .bind((!active).then_some(a.ts_ns))
                .bind(i64::from(active))
                .bind(now)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(true)
}

async fn count_drift_alarms(tx: &mut Tx, device: &str) -> Result<()> {
    sqlx::query("UPDATE devices SET drift_alarms = (SELECT COUNT(*) FROM alarms WHERE alarms.device_id = $1 AND alarms.active = 1 AND alarms.kind <> 'model') WHERE id = $1")
        .bind(device)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Rebuilds the alarms and the drift index from every stored record (schema migration).
pub(super) async fn reindex_all(tx: &mut Tx) -> Result<()> {
    for stream in [Stream::Alarms, Stream::Drift] {
        let mut after: (String, i64) = (String::new(), 0);
        loop {
            let rows = sqlx::query("SELECT device_id, seq, body FROM records WHERE stream = $1 AND (device_id > $2 OR (device_id = $2 AND seq > $3)) ORDER BY device_id, seq LIMIT 500")
                .bind(stream.name())
                .bind(&after.0)
                .bind(after.1)
                .fetch_all(&mut **tx)
                .await?;
            let Some(last) = rows.last() else { break };
            after = (last.try_get("device_id")?, last.try_get("seq")?);
            let mut devices = Vec::new();
            for r in &rows {
                let device: String = r.try_get("device_id")?;
                let seq: i64 = r.try_get("seq")?;
                let body: Vec<u8> = r.try_get("body")?;
                match stream {
                    Stream::Alarms => {
                        apply_alarm(tx, &device, seq, &body).await?;
                        if devices.last() != Some(&device) {
                            devices.push(device);
                        }
                    }
                    _ => index_drift(tx, &device, seq, &body).await?,
                }
            }
            for d in devices {
                count_drift_alarms(tx, &d).await?;
            }
        }
    }
    Ok(())
}

impl FleetStore {
    /// Stores a batch idempotently and returns the highest contiguous sequence stored.
    /// `first_available`: the device no longer has records below it, so the mark may skip
    /// them (counted as lost on the device). Alarms and drift records stored for the first
    /// time update the alarms table and the drift index in the same transaction. (The
    /// device API stores many devices' batches per transaction: [`FleetStore::commit_group`].)
    pub async fn ingest(
        &self,
        device: &str,
        stream: &str,
        first_available: i64,
        records: &[(i64, i64, &[u8])],
    ) -> Result<IngestResult> {
        let (_writer, mut tx) = self.begin_write().await?;
        let r = self
            .ingest_in(
                &mut tx,
                &[IngestBatch {
                    device,
                    stream,
                    first_available,
                    records,
                }],
            )
            .await?;
        tx.commit().await?;
        r.into_iter()
            .next()
            .ok_or_else(|| StoreError::Invalid("ingest returned no result".into()))
    }

    /// Stores `batches` (distinct (device, stream) pairs) in `tx`: one result per batch, in
    /// order. The statements are shared by all batches, so storing a hundred devices'
    /// uploads costs about what storing one did: stream marks created and read (locked, on
    /// PostgreSQL, in key order: two replicas never deadlock on them) in one statement
    /// each, the records of every batch in multi-row inserts, the marks moved in one update.
    pub(super) async fn ingest_in(
        &self,
        tx: &mut Tx,
        batches: &[IngestBatch<'_>],
    ) -> Result<Vec<IngestResult>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let key = |b: &IngestBatch<'_>| (b.device.to_string(), b.stream.to_string());
        // Every stream has a mark.
        let mut q = Sql::many(self.backend, "INSERT INTO stream_marks (device_id, stream, acked_through, lost_on_device, records, duplicates) VALUES ");
        for (i, b) in batches.iter().enumerate() {
            q.row_then(i, [Arg::T(b.device), Arg::T(b.stream)], ", 0, 0, 0, 0)");
        }
        q.push(" ON CONFLICT (device_id, stream) DO NOTHING");
        q.query().execute(&mut **tx).await?;
        // The marks, locked (PostgreSQL; SQLite's write transaction holds the whole database
        // already): two batches of one stream landing on two replicas at once are stored one
        // after the other, so the ack never moves back.
        let mut q = Sql::many(self.backend, "SELECT device_id, stream, acked_through, lost_on_device FROM stream_marks WHERE (device_id, stream) IN (VALUES ");
        for (i, b) in batches.iter().enumerate() {
            q.row(i, [Arg::T(b.device), Arg::T(b.stream)]);
        }
        q.push(") ORDER BY device_id, stream").push(self.row_lock());
        let mut marks: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for r in q.query().fetch_all(&mut **tx).await? {
            marks.insert(
                (r.try_get("device_id")?, r.try_get("stream")?),
                (r.try_get("acked_through")?, r.try_get("lost_on_device")?),
            );
        }
        let mut state = Vec::with_capacity(batches.len());
        for b in batches {
            let (through, lost) = marks.get(&key(b)).copied().ok_or_else(|| {
                StoreError::Invalid(format!(
                    "no stream mark for {}/{} after creating it",
                    b.device, b.stream
                ))
            })?;
            state.push((through, lost));
        }
        // Records at or below the ack were stored (or given up by the device) before: never
        // stored again, even when retention has deleted them since. The rest go in
        // multi-row statements (not one round trip per record); RETURNING names the records
        // stored for the first time.
        let fresh: Vec<(usize, i64, i64, &[u8])> = batches
            .iter()
            .zip(&state)
            .enumerate()
            .flat_map(|(i, (b, (through, _)))| {
                b.records
                    .iter()
                    .filter(move |(seq, _, _)| seq > through)
                    .map(move |(seq, ts, body)| (i, *seq, *ts, *body))
            })
            .collect();
        let index: HashMap<(&str, &str), usize> = batches
            .iter()
            .enumerate()
            .map(|(i, b)| ((b.device, b.stream), i))
            .collect();
        let mut new_seqs: Vec<Vec<i64>> = vec![Vec::new(); batches.len()];
        for chunk in fresh.chunks(INSERT_CHUNK) {
            let mut q = Sql::many(
                self.backend,
                "INSERT INTO records (device_id, stream, seq, ts_ms, body) VALUES ",
            );
            for (n, (i, seq, ts, body)) in chunk.iter().enumerate() {
                let b = &batches[*i];
                q.row(
                    n,
                    [
                        Arg::T(b.device),
                        Arg::T(b.stream),
                        Arg::I(*seq),
                        Arg::I(*ts),
                        Arg::B(body),
                    ],
                );
            }
            q.push(" ON CONFLICT DO NOTHING RETURNING device_id, stream, seq");
            for r in q.query().fetch_all(&mut **tx).await? {
                let d: String = r.try_get("device_id")?;
                let s: String = r.try_get("stream")?;
                if let Some(i) = index.get(&(d.as_str(), s.as_str())) {
                    new_seqs[*i].push(r.try_get("seq")?);
                }
            }
        }
        // Alarms and drift records stored for the first time feed their tables.
        for (i, b) in batches.iter().enumerate() {
            let derived =
                Stream::from_name(b.stream).filter(|s| matches!(s, Stream::Alarms | Stream::Drift));
            let Some(s) = derived else { continue };
            let seqs = &mut new_seqs[i];
            seqs.sort_unstable();
            let bodies: HashMap<i64, &[u8]> =
                b.records.iter().map(|(q, _, body)| (*q, *body)).collect();
            for seq in seqs.iter() {
                let Some(body) = bodies.get(seq) else {
                    continue;
                };
                match s {
                    Stream::Alarms => {
                        apply_alarm(tx, b.device, *seq, body).await?;
                    }
                    _ => index_drift(tx, b.device, *seq, body).await?,
                }
            }
            if s == Stream::Alarms && !seqs.is_empty() {
                count_drift_alarms(tx, b.device).await?;
            }
        }
        // The new acks: past what the device gave up, then over the records now stored.
        let mut results = Vec::with_capacity(batches.len());
        let mut probe = Vec::new();
        for (i, (b, (through0, lost0))) in batches.iter().zip(&state).enumerate() {
            let (mut through, mut lost) = (*through0, *lost0);
            if b.first_available - 1 > through {
                // Records the device dropped under its limits will never come.
                let held = sqlx::query("SELECT COUNT(*) AS n FROM records WHERE device_id = $1 AND stream = $2 AND seq > $3 AND seq < $4")
                    .bind(b.device)
                    .bind(b.stream)
                    .bind(through)
                    .bind(b.first_available)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get::<i64, _>("n")?;
                lost += b.first_available - 1 - through - held;
                through = b.first_available - 1;
            }
            // Every record of the batch above the ack is stored now (new or a duplicate).
            let mut present: Vec<i64> = b
                .records
                .iter()
                .map(|(seq, _, _)| *seq)
                .filter(|seq| *seq > through)
                .collect();
            present.sort_unstable();
            for seq in present {
                if seq == through + 1 {
                    through = seq;
                } else if seq > through + 1 {
                    break;
                }
            }
            let inserted = new_seqs[i].len() as u64;
            results.push((
                through,
                lost,
                IngestResult {
                    acked_through: through,
                    inserted,
                    duplicates: b.records.len() as u64 - inserted,
                },
            ));
            probe.push(i);
        }
        // Records stored earlier, out of order, may continue a run: one probe for all
        // streams asks whether the record after each new ack exists; only those streams
        // (rare) are walked.
        let mut q = Sql::many(
            self.backend,
            "SELECT device_id, stream FROM records WHERE (device_id, stream, seq) IN (VALUES ",
        );
        for (n, i) in probe.iter().enumerate() {
            let b = &batches[*i];
            q.row(
                n,
                [
                    Arg::T(b.device),
                    Arg::T(b.stream),
                    Arg::I(results[*i].0 + 1),
                ],
            );
        }
        q.push(")");
        let continued: Vec<usize> = q
            .query()
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .filter_map(|r| {
                let d: String = r.try_get("device_id").ok()?;
                let s: String = r.try_get("stream").ok()?;
                index.get(&(d.as_str(), s.as_str())).copied()
            })
            .collect();
        for i in continued {
            let b = &batches[i];
            let mut through = results[i].0;
            let next = sqlx::query("SELECT seq FROM records WHERE device_id = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT 100000")
                .bind(b.device)
                .bind(b.stream)
                .bind(through)
                .fetch_all(&mut **tx)
                .await?;
            for r in next {
                let s: i64 = r.try_get("seq")?;
                if s != through + 1 {
                    break;
                }
                through = s;
            }
            results[i].0 = through;
            results[i].2.acked_through = through;
        }
        // Every mark moved in one statement.
        let mut q = Sql::many(
            self.backend,
            "WITH v (k_dev, k_stream, k_through, k_lost, k_ins, k_dup) AS (VALUES ",
        );
        for (n, (b, (through, lost, r))) in batches.iter().zip(&results).enumerate() {
            q.row(
                n,
                [
                    Arg::T(b.device),
                    Arg::T(b.stream),
                    Arg::I(*through),
                    Arg::I(*lost),
                    Arg::I(r.inserted as i64),
                    Arg::I(r.duplicates as i64),
                ],
            );
        }
        q.push(") UPDATE stream_marks SET acked_through = v.k_through, lost_on_device = v.k_lost, records = stream_marks.records + v.k_ins, duplicates = stream_marks.duplicates + v.k_dup FROM v WHERE stream_marks.device_id = v.k_dev AND stream_marks.stream = v.k_stream");
        q.query().execute(&mut **tx).await?;
        Ok(results.into_iter().map(|(_, _, r)| r).collect())
    }

    /// Retention: deletes the records of `stream` older than `before_ms` (their measurement
    /// time), in batches of `batch` (each its own short transaction, so ingest is never held
    /// up for long), with the drift index rows of deleted drift records. Upload cursors are
    /// unchanged, and a deleted record is never stored again (ingest skips what is at or
    /// below the ack). Returns how many records were deleted.
    pub async fn prune_records(&self, stream: &str, before_ms: i64, batch: i64) -> Result<u64> {
        // A row's address: on PostgreSQL `ctid` within its partition, so with the partition.
        let pick = match self.backend {
            super::Backend::Postgres => "(tableoid, ctid) IN (SELECT tableoid, ctid",
            super::Backend::Sqlite => "rowid IN (SELECT rowid",
        };
        let sql = format!(
            "DELETE FROM records WHERE {pick} FROM records WHERE stream = $1 AND ts_ms < $2 LIMIT $3)"
        );
        let mut total = 0u64;
        loop {
            let (_writer, mut tx) = self.begin_write().await?;
            let n = sqlx::query(&sql)
                .bind(stream)
                .bind(before_ms)
                .bind(batch.max(1))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            total += n;
            if n < u64::try_from(batch.max(1)).unwrap_or(1) {
                break;
            }
        }
        if stream == Stream::Drift.name() {
            let _writer = self.writer.lock().await;
            sqlx::query("DELETE FROM drift_index WHERE end_ns < $1")
                .bind(before_ms.saturating_mul(1_000_000))
                .execute(&self.pool)
                .await?;
        }
        Ok(total)
    }

    /// Every stream mark of a device, by stream name.
    pub async fn stream_marks(&self, device: &str) -> Result<Vec<StreamMark>> {
        let rows = sqlx::query("SELECT stream, acked_through, lost_on_device, records, duplicates FROM stream_marks WHERE device_id = $1 ORDER BY stream")
            .bind(device)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StreamMark {
                    stream: r.try_get("stream")?,
                    acked_through: r.try_get("acked_through")?,
                    lost_on_device: r.try_get("lost_on_device")?,
                    records: r.try_get("records")?,
                    duplicates: r.try_get("duplicates")?,
                })
            })
            .collect()
    }

    /// Stored records of a device's stream in sequence order: (seq, ts_ms, body).
    pub async fn records(
        &self,
        device: &str,
        stream: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64, Vec<u8>)>> {
        let rows = sqlx::query("SELECT seq, ts_ms, body FROM records WHERE device_id = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT $4")
            .bind(device)
            .bind(stream)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("ts_ms")?, r.try_get("body")?)))
            .collect()
    }

    /// The newest `limit` records of a device's stream, newest first.
    pub async fn latest_records(
        &self,
        device: &str,
        stream: &str,
        limit: i64,
    ) -> Result<Vec<(i64, i64, Vec<u8>)>> {
        let rows = sqlx::query("SELECT seq, ts_ms, body FROM records WHERE device_id = $1 AND stream = $2 ORDER BY seq DESC LIMIT $3")
            .bind(device)
            .bind(stream)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("ts_ms")?, r.try_get("body")?)))
            .collect()
    }

    /// One stored record's body.
    pub async fn record(&self, device: &str, stream: &str, seq: i64) -> Result<Option<Vec<u8>>> {
        let r = sqlx::query(
            "SELECT body FROM records WHERE device_id = $1 AND stream = $2 AND seq = $3",
        )
        .bind(device)
        .bind(stream)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| Ok(r.try_get("body")?)).transpose()
    }

    // ---- alarms ----

    /// Alarms, most recently changed first, and how many match.
    pub async fn alarms(&self, q: &AlarmQuery) -> Result<(Vec<AlarmRow>, i64)> {
        let mut cond = Sql::new(" WHERE 1 = 1");
        if let Some(d) = &q.device {
            cond.push(" AND a.device_id = ").arg(Arg::S(d.clone()));
        }
        if q.active_only {
            cond.push(" AND a.active = 1");
        }
        if q.unacked_only {
            cond.push(" AND a.acked_at IS NULL");
        }
        if let Some(k) = q.kind {
            cond.push(" AND a.kind = ").arg(Arg::S(k.as_str().into()));
        }
        let mut count = Sql::new("SELECT COUNT(*) AS n FROM alarms a");
        count.push(&cond.text);
        count.args = cond.args.clone();
        let total: i64 = count.query().fetch_one(&self.pool).await?.try_get("n")?;
        let mut sel = Sql::new("SELECT a.*, d.name AS device_name FROM alarms a LEFT JOIN devices d ON d.id = a.device_id");
        sel.push(&cond.text);
        sel.args = cond.args;
        sel.push(" ORDER BY a.updated_at DESC, a.id DESC LIMIT ")
            .arg(Arg::I(q.limit.max(0)))
            .push(" OFFSET ")
            .arg(Arg::I(q.offset.max(0)));
        let rows = sel.query().fetch_all(&self.pool).await?;
        Ok((rows.iter().map(alarm_of).collect::<Result<_>>()?, total))
    }

    /// The alarm `id`, if any.
    pub async fn alarm(&self, id: &str) -> Result<Option<AlarmRow>> {
        let r = sqlx::query("SELECT a.*, d.name AS device_name FROM alarms a LEFT JOIN devices d ON d.id = a.device_id WHERE a.id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(alarm_of).transpose()
    }

    /// Acknowledges an alarm (first acknowledgement wins); false if there is no such alarm
    /// or it was acknowledged already.
    pub async fn ack_alarm(&self, id: &str, by: &str) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query(
            "UPDATE alarms SET acked_by = $1, acked_at = $2 WHERE id = $3 AND acked_at IS NULL",
        )
        .bind(by)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- drift index ----

    /// The newest indexed drift record of each (device, model) for a bundle version,
    /// among records ending at or after `since_ns`.
    pub async fn latest_drift(
        &self,
        bundle: &str,
        version_number: i64,
        since_ns: i64,
    ) -> Result<Vec<DriftIndexRow>> {
        let rows = sqlx::query("SELECT * FROM drift_index di WHERE di.bundle = $1 AND di.version_number = $2 AND di.end_ns >= $3 AND di.seq = (SELECT MAX(d2.seq) FROM drift_index d2 WHERE d2.device_id = di.device_id AND d2.model = di.model AND d2.bundle = di.bundle AND d2.version_number = di.version_number) ORDER BY di.device_id, di.model")
            .bind(bundle)
            .bind(version_number)
            .bind(since_ns)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(drift_index_of).collect()
    }

    /// The newest indexed drift record of each (device, model) for a bundle version among
    /// records ending at or after `since_ns`, of the devices carrying all `labels`: the
    /// `limit` most drifting (dataset drift, then drifting columns, then the largest score),
    /// and how many there are in all.
    pub async fn latest_drift_ranked(
        &self,
        bundle: &str,
        version_number: i64,
        since_ns: i64,
        labels: &[String],
        limit: i64,
    ) -> Result<(Vec<DriftIndexRow>, i64)> {
        let mut cond = Sql::new(" FROM drift_index di WHERE di.bundle = ");
        cond.arg(Arg::S(bundle.into()))
            .push(" AND di.version_number = ")
            .arg(Arg::I(version_number))
            .push(" AND di.end_ns >= ")
            .arg(Arg::I(since_ns))
            .push(" AND di.seq = (SELECT MAX(d2.seq) FROM drift_index d2 WHERE d2.device_id = di.device_id AND d2.bundle = di.bundle AND d2.version_number = di.version_number AND d2.model = di.model)");
        for l in labels {
            cond.push(" AND EXISTS (SELECT 1 FROM device_labels dl WHERE dl.device_id = di.device_id AND dl.label = ")
                .arg(Arg::S(l.clone()))
                .push(")");
        }
        let mut count = Sql::new("SELECT COUNT(*) AS n");
        count.push(&cond.text);
        count.args = cond.args.clone();
        let total: i64 = count.query().fetch_one(&self.pool).await?.try_get("n")?;
        let mut q = Sql::new("SELECT di.*");
        q.push(&cond.text);
        q.args = cond.args;
        q.push(" ORDER BY di.dataset_drift DESC, di.drifting_count DESC, COALESCE(di.max_score, -1) DESC, di.device_id, di.model LIMIT ")
            .arg(Arg::I(limit.max(0)));
        let rows = q.query().fetch_all(&self.pool).await?;
        Ok((
            rows.iter().map(drift_index_of).collect::<Result<_>>()?,
            total,
        ))
    }

    /// A device's indexed drift records (optionally of one bundle) ending at or after
    /// `since_ns`, oldest first, at most `limit` (the newest ones when there are more).
    pub async fn device_drift_index(
        &self,
        device: &str,
        bundle: Option<&str>,
        since_ns: i64,
        limit: i64,
    ) -> Result<Vec<DriftIndexRow>> {
        let mut q = Sql::new("SELECT * FROM drift_index WHERE device_id = ");
        q.arg(Arg::S(device.into()))
            .push(" AND end_ns >= ")
            .arg(Arg::I(since_ns));
        if let Some(b) = bundle {
            q.push(" AND bundle = ").arg(Arg::S(b.into()));
        }
        q.push(" ORDER BY end_ns DESC, seq DESC LIMIT ")
            .arg(Arg::I(limit.max(0)));
        let rows = q.query().fetch_all(&self.pool).await?;
        let mut out = rows
            .iter()
            .map(drift_index_of)
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// A device's drift records of one bundle (optionally one version) ending in
    /// `[since_ns, until_ns)`, after sequence `after`, in sequence order: (seq, body).
    #[allow(clippy::too_many_arguments)]
    pub async fn drift_records(
        &self,
        device: &str,
        bundle: &str,
        version_number: Option<i64>,
        since_ns: i64,
        until_ns: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut q = Sql::new("SELECT r.seq AS seq, r.body AS body FROM drift_index di JOIN records r ON r.device_id = di.device_id AND r.stream = 'drift' AND r.seq = di.seq WHERE di.device_id = ");
        q.arg(Arg::S(device.into()))
            .push(" AND di.bundle = ")
            .arg(Arg::S(bundle.into()))
            .push(" AND di.end_ns >= ")
            .arg(Arg::I(since_ns))
            .push(" AND di.end_ns < ")
            .arg(Arg::I(until_ns))
            .push(" AND di.seq > ")
            .arg(Arg::I(after));
        if let Some(v) = version_number {
            q.push(" AND di.version_number = ").arg(Arg::I(v));
        }
        q.push(" ORDER BY di.seq LIMIT ").arg(Arg::I(limit));
        let rows = q.query().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("body")?)))
            .collect()
    }

    /// Bundle versions with drift records: (bundle, version number, records, devices).
    pub async fn drift_versions(&self) -> Result<Vec<(String, i64, i64, i64)>> {
        let rows = sqlx::query("SELECT bundle, version_number, COUNT(*) AS n, COUNT(DISTINCT device_id) AS devices FROM drift_index GROUP BY bundle, version_number ORDER BY bundle, version_number")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("bundle")?,
                    r.try_get("version_number")?,
                    r.try_get("n")?,
                    r.try_get("devices")?,
                ))
            })
            .collect()
    }

    // ---- update reports ----

    /// Records a device's update report and its effect on the `update_failed` problem.
    pub async fn record_update(&self, device: &str, u: &UpdateRow) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query("INSERT INTO update_history (device_id, at, model, bundle, from_version_number, to_version_number, rollout_id, outcome, method, bytes, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(device)
            .bind(u.at)
            .bind(&u.model)
            .bind(&u.bundle)
            .bind(u.from_version_number)
            .bind(u.to_version_number)
            .bind(&u.rollout_id)
            .bind(u.outcome.as_str())
            .bind(&u.method)
            .bind(u.bytes)
            .bind(&u.detail)
            .execute(&mut *tx)
            .await?;
        let failed_at = (u.outcome != UpdateOutcome::Applied).then_some(u.at);
        sqlx::query("UPDATE devices SET update_failed_at = $1 WHERE id = $2")
            .bind(failed_at)
            .bind(device)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A device's update reports, newest first.
    pub async fn updates(&self, device: &str, limit: i64) -> Result<Vec<UpdateRow>> {
        let rows = sqlx::query(
            "SELECT * FROM update_history WHERE device_id = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(device)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UpdateRow {
                    at: r.try_get("at")?,
                    model: r.try_get("model")?,
                    bundle: r.try_get("bundle")?,
                    from_version_number: r.try_get("from_version_number")?,
                    to_version_number: r.try_get("to_version_number")?,
                    rollout_id: r.try_get("rollout_id")?,
                    outcome: parse_enum(&r.try_get::<String, _>("outcome")?)?,
                    method: r.try_get("method")?,
                    bytes: r.try_get("bytes")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store;
    use edge_wire::records::{AlarmEvent, BundleRef, DriftAlarm, DriftAlarmKind};
    use std::sync::Arc;

    #[tokio::test]
    async fn ingest_is_idempotent_and_acks_contiguous() {
        let (s, dir) = store().await;
        let b = b"x".as_slice();
        let r = s
            .ingest("d1", "samples", 1, &[(1, 0, b), (2, 0, b), (4, 0, b)])
            .await
            .unwrap();
        assert_eq!((r.acked_through, r.inserted, r.duplicates), (2, 3, 0));
        // Replay plus the missing record: nothing stored twice, the mark jumps over 4.
        let r = s
            .ingest("d1", "samples", 1, &[(2, 0, b), (3, 0, b), (4, 0, b)])
            .await
            .unwrap();
        assert_eq!((r.acked_through, r.inserted, r.duplicates), (4, 1, 2));
        // Another device's stream is separate.
        let r = s.ingest("d2", "samples", 1, &[(1, 0, b)]).await.unwrap();
        assert_eq!(r.acked_through, 1);
        // The device dropped 5..=9 under its limits: the mark skips them, counted.
        let r = s.ingest("d1", "samples", 10, &[(10, 0, b)]).await.unwrap();
        assert_eq!(r.acked_through, 10);
        let m = s.stream_marks("d1").await.unwrap();
        assert_eq!(m[0].lost_on_device, 5);
        assert_eq!(m[0].records, 5);
        assert_eq!(m[0].duplicates, 2);
        assert_eq!(s.records("d1", "samples", 0, 100).await.unwrap().len(), 5);
        let latest = s.latest_records("d1", "samples", 2).await.unwrap();
        assert_eq!(latest.iter().map(|r| r.0).collect::<Vec<_>>(), [10, 4]);
        std::fs::remove_dir_all(dir).ok();
    }

    fn alarm(active: bool, drift: Option<(DriftAlarmKind, &str)>, ts: i64) -> Vec<u8> {
        records::encode_alarm(&AlarmEvent {
            source: Arc::new(BundleRef {
                model: "pump".into(),
                bundle: "pump-anomaly".into(),
                version: "1.0.0".into(),
                version_number: 1,
                sha256: "ab".into(),
            }),
            ts_ns: ts,
            active,
            score: 0.7,
            threshold: Some(0.5),
            drift: drift.map(|(kind, subject)| DriftAlarm {
                subject: subject.into(),
                kind,
                metric: "psi".into(),
                intervals: 2,
            }),
        })
    }

    #[tokio::test]
    async fn alarms_open_and_close_once_however_often_they_are_uploaded() {
        let (s, dir) = store().await;
        s.add_token("t", &[], "op", now_ms() + 60_000)
            .await
            .unwrap();
        s.enroll("t", "d1", "gw1", &crate::store::IssuedCert::test("c1"))
            .await
            .unwrap();
        let col = Some((DriftAlarmKind::Column, "temp_mean"));
        let batch = [
            alarm(true, None, 1),
            alarm(true, col, 2),
            alarm(false, None, 3),
            alarm(true, None, 4),
        ];
        let recs: Vec<(i64, i64, &[u8])> = batch
            .iter()
            .enumerate()
            .map(|(i, b)| (i as i64 + 1, 0, b.as_slice()))
            .collect();
        s.ingest("d1", "alarms", 1, &recs).await.unwrap();
        s.ingest("d1", "alarms", 1, &recs).await.unwrap(); // a replay
        let q = AlarmQuery {
            limit: 100,
            ..Default::default()
        };
        let (all, n) = s.alarms(&q).await.unwrap();
        assert_eq!(n, 3, "{all:?}");
        let active: Vec<_> = all.iter().filter(|a| a.active).collect();
        assert_eq!(active.len(), 2);
        assert!(all
            .iter()
            .any(|a| !a.active && a.raised_ns == Some(1) && a.cleared_ns == Some(3)));
        assert_eq!(all[0].device_name, "gw1");
        let d = s.device("d1").await.unwrap().unwrap();
        assert_eq!(
            d.drift_alarms, 1,
            "the column alarm; the model alarm is no drift"
        );
        // The drift alarm clears; acknowledging works once.
        let clear = alarm(false, col, 5);
        s.ingest("d1", "alarms", 1, &[(5, 0, clear.as_slice())])
            .await
            .unwrap();
        assert_eq!(s.device("d1").await.unwrap().unwrap().drift_alarms, 0);
        let id = all[0].id.clone();
        assert!(s.ack_alarm(&id, "alice").await.unwrap());
        assert!(!s.ack_alarm(&id, "bob").await.unwrap());
        assert_eq!(
            s.alarm(&id).await.unwrap().unwrap().acked_by.as_deref(),
            Some("alice")
        );
        let (unacked, _) = s
            .alarms(&AlarmQuery {
                unacked_only: true,
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(unacked.len(), 2);
        // An undecodable record is stored (and acked) but changes no alarm.
        let r = s
            .ingest("d1", "alarms", 1, &[(6, 0, b"\xff".as_slice())])
            .await
            .unwrap();
        assert_eq!(r.acked_through, 6);
        assert_eq!(s.alarms(&q).await.unwrap().1, 3);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_streams_batches_on_two_replicas_at_once_never_move_the_ack_back() {
        let (s, dir) = store().await;
        let other = s.another_pool().await.unwrap(); // a second replica's pool
        let b = b"x".as_slice();
        let first: Vec<(i64, i64, &[u8])> = (1..=40).map(|q| (q, 0, b)).collect();
        let second: Vec<(i64, i64, &[u8])> = (41..=80).map(|q| (q, 0, b)).collect();
        for i in 0..32 {
            let dev = format!("d{i}");
            // Both streams' rows exist, so neither call waits on the other's INSERT.
            s.ingest(&dev, "samples", 1, &[]).await.unwrap();
            let (a, c) = {
                let (s1, s2, d1, d2) = (s.clone(), other.clone(), dev.clone(), dev.clone());
                let (f1, f2) = (first.clone(), second.clone());
                let f1: Vec<(i64, i64, Vec<u8>)> =
                    f1.iter().map(|(q, t, b)| (*q, *t, b.to_vec())).collect();
                let f2: Vec<(i64, i64, Vec<u8>)> =
                    f2.iter().map(|(q, t, b)| (*q, *t, b.to_vec())).collect();
                let t1 = tokio::spawn(async move {
                    let r: Vec<(i64, i64, &[u8])> =
                        f1.iter().map(|(q, t, b)| (*q, *t, b.as_slice())).collect();
                    s1.ingest(&d1, "samples", 1, &r).await
                });
                let t2 = tokio::spawn(async move {
                    let r: Vec<(i64, i64, &[u8])> =
                        f2.iter().map(|(q, t, b)| (*q, *t, b.as_slice())).collect();
                    s2.ingest(&d2, "samples", 1, &r).await
                });
                (t1.await.unwrap().unwrap(), t2.await.unwrap().unwrap())
            };
            // Whichever committed last saw the other: it acks all 80.
            assert_eq!(
                a.acked_through.max(c.acked_through),
                80,
                "{dev}: {a:?} {c:?}"
            );
            let marks = s.stream_marks(&dev).await.unwrap();
            assert_eq!(marks[0].acked_through, 80, "{dev}: the ack moved back");
        }
        // Records at or below the ack are never stored again (even if deleted meanwhile).
        sqlx::query("DELETE FROM records WHERE device_id = 'd0' AND seq <= 10")
            .execute(s.pool())
            .await
            .unwrap();
        let r = s.ingest("d0", "samples", 1, &first).await.unwrap();
        assert_eq!((r.acked_through, r.duplicates), (80, 40));
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM records WHERE device_id = 'd0'")
            .fetch_one(s.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(n, 70);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn retention_deletes_old_records_of_one_stream_and_they_never_come_back() {
        let (s, dir) = store().await;
        let b = b"x".as_slice();
        let recs: Vec<(i64, i64, &[u8])> = (1..=100).map(|q| (q, q * 1000, b)).collect();
        s.ingest("d1", "samples", 1, &recs).await.unwrap();
        s.ingest("d1", "features", 1, &recs).await.unwrap();
        // Older than ts 51 s, in batches of 7.
        assert_eq!(s.prune_records("samples", 51_000, 7).await.unwrap(), 50);
        assert_eq!(s.prune_records("samples", 51_000, 7).await.unwrap(), 0);
        let count = |stream: &'static str| {
            let s = s.clone();
            async move {
                let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM records WHERE stream = $1")
                    .bind(stream)
                    .fetch_one(s.pool())
                    .await
                    .unwrap()
                    .try_get("n")
                    .unwrap();
                n
            }
        };
        assert_eq!(count("samples").await, 50);
        assert_eq!(count("features").await, 100, "other streams keep theirs");
        let marks = s.stream_marks("d1").await.unwrap();
        assert!(marks.iter().all(|m| m.acked_through == 100), "{marks:?}");
        // The device re-sends old records (a replay): acked, not stored again.
        let r = s.ingest("d1", "samples", 1, &recs).await.unwrap();
        assert_eq!((r.acked_through, r.inserted, r.duplicates), (100, 0, 100));
        assert_eq!(count("samples").await, 50);
        std::fs::remove_dir_all(dir).ok();
    }

    /// Many writers at once (the server's pool and a CLI process): no "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_wait_instead_of_failing() {
        let (s, dir) = store().await;
        let other = s.another_pool().await.unwrap(); // a second process's pool
        for i in 0..64 {
            s.add_token(&format!("t{i}"), &[], "op", now_ms() + 60_000)
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..64 {
            let st = if i % 2 == 0 { s.clone() } else { other.clone() };
            tasks.push(tokio::spawn(async move {
                let d = st
                    .enroll(
                        &format!("t{i}"),
                        &format!("d{i}"),
                        "gw",
                        &crate::store::IssuedCert::test(format!("c{i}")),
                    )
                    .await?;
                let b = b"x".as_slice();
                st.ingest(&format!("d{i}"), "samples", 1, &[(1, 0, b), (2, 0, b)])
                    .await?;
                let report = edge_wire::sync::CheckIn {
                    agent_version: "t".into(),
                    models: vec![],
                    streams: vec![],
                    last_error: None,
                    uptime_s: 0,
                    config: None,
                    agent: None,
                };
                st.check_in(&d, &report, "{}", 60_000).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.devices().await.unwrap().len(), 64);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn tokens_are_one_time_and_expire() {
        let (s, dir) = store().await;
        s.add_token("t1", &["site=a".into()], "op", now_ms() + 60_000)
            .await
            .unwrap();
        s.add_token("t2", &[], "op", now_ms() - 1).await.unwrap();
        let d = s
            .enroll(
                "t1",
                "dev-1",
                "gw1",
                &crate::store::IssuedCert::test("cert1"),
            )
            .await
            .unwrap();
        assert_eq!(d.labels, vec!["site=a".to_string()]);
        let e = s
            .enroll(
                "t1",
                "dev-2",
                "gw2",
                &crate::store::IssuedCert::test("cert2"),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");
        let e = s
            .enroll(
                "t2",
                "dev-3",
                "gw3",
                &crate::store::IssuedCert::test("cert3"),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let e = s
            .enroll(
                "nope",
                "dev-4",
                "gw4",
                &crate::store::IssuedCert::test("cert4"),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unknown"), "{e}");
        assert_eq!(s.devices().await.unwrap().len(), 1);
        assert!(s.revoke("dev-1").await.unwrap());
        assert!(s
            .device_by_cert("cert1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
        std::fs::remove_dir_all(dir).ok();
    }
}
