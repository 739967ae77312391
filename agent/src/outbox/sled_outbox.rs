//! [`SledOutbox`]: the outbox on sled. One tree per stream; in each tree, records under
//! `0x01 ‖ seq (u64 BE)` and the stream's metadata under `0x00 ‖ name` (the last durable
//! sequence number, stored bytes, drop count, each destination's cursor).
//!
//! A record value is `append time (u64 ms, LE) ‖ payload`. An append is one plain insert per
//! record (no batch, no metadata write: sled rewrites a hot key as a page delta every time,
//! which measured 10x slower). Durability comes from group commits, driven by the agent
//! every `commit_interval`: the commit writes each changed stream's metadata, then flushes, so
//! the metadata on disk always describes a durable prefix.
//!
//! Two ways out: [`SledOutbox::read`] hands out committed records only (the fleet upload);
//! [`SledOutbox::read_live`] hands out records as soon as they are appended (the MQTT outputs,
//! live-first), but only numbers covered by the stream's durable *lease*: every commit also
//! persists `lease = max(lease, head + span)` before the flush, and a number above the durable
//! lease waits for the next commit. After an unclean stop the head resumes at the lease, so a
//! number a consumer may have seen live is never given to a different record; the numbers
//! between the last durable record and the lease are skipped (logged and counted in
//! `skipped`). A clean stop (`commit_final`) lowers the lease to the head: no gap.
//! A destination's cursor moves only to records that are both confirmed and durable
//! ([`SledOutbox::confirm`] remembers the rest until the commit that makes them durable).
//!
//! On open, records found past the stored head (written after the last commit) are kept if
//! they continue the sequence without a gap, else truncated.
//!
//! Failure handling: a database that sled reports as corrupt (or panics on) is moved aside and
//! a fresh one opened. Some corruptions make sled panic; the agent binary first opens the
//! database in a probe process (`edge-agent` re-executed with a hidden subcommand, see
//! [`use_probe_process`]), so a crash there cannot take the agent down, even in builds that
//! abort on panic (`release-arm-small`); without a probe binary, the panic is caught. An I/O
//! error (disk full, read-only remount) is not corruption: the database is closed and
//! reopened from what is on disk, retried until it works; meanwhile appends fail and the agent
//! counts the records it could not store as dropped. Records numbered but not yet durable when
//! the store failed are counted as dropped too; consumers
//! never saw their numbers, so the sequence stays gap-free for them.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edge_wire::records::PerStream;

use super::config::{OutboxConfig, Stream, WhenFull};
use super::{OutboxError, StreamStats};

const REC: u8 = 0x01;
const META_HEAD: &[u8] = b"\x00head";
/// The highest sequence number that may have been handed out live (see the module docs).
const META_LEASE: &[u8] = b"\x00lease";
/// The smallest lease span: numbers reserved past the head at each commit.
const MIN_LEASE_SPAN: u64 = 16;
const META_DROPS: &[u8] = b"\x00drops";
/// Bytes stored (payloads + overhead), kept with every change so opening never scans.
const META_BYTES: &[u8] = b"\x00bytes";
const META_CURSOR: &[u8] = b"\x00cursor:";
/// Bytes a record costs beyond its payload (header + key), for the size limit.
const OVERHEAD: u64 = 8 + 9;

fn rec_key(seq: u64) -> [u8; 9] {
    let mut k = [REC; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// A stored record (key, value) as (seq, append time ms, payload); `None` for a key that is
/// not a record's or a value too short to hold its append time.
fn stored_record(k: &[u8], v: &[u8]) -> Option<(u64, u64, Vec<u8>)> {
    let seq = seq_of(k)?;
    let ts = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    Some((seq, ts, v[8..].to_vec()))
}

fn seq_of(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == REC)
        .then(|| u64::from_be_bytes(key[1..].try_into().unwrap_or([0; 8])))
}

fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0)
}

fn cursor_key(dest: &str) -> Vec<u8> {
    [META_CURSOR, dest.as_bytes()].concat()
}

/// Moves `dest`'s cursor forward to `to` (never back); the write is durable with the next
/// commit.
fn advance_cursor(tree: &sled::Tree, dest: &str, cursor: &mut u64, to: u64) -> sled::Result<()> {
    if to > *cursor {
        *cursor = to;
        tree.insert(cursor_key(dest), &to.to_le_bytes())?;
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// In-memory state of one stream, guarded by its mutex (appends to one stream are serialized).
#[derive(Debug, Default)]
struct StreamState {
    /// Last assigned sequence number (0 = none yet).
    head: u64,
    /// Lowest stored sequence number (head + 1 when empty). Records are removed only from
    /// the front, so `first..=head` are the stored ones except the `holes`.
    first: u64,
    bytes: u64,
    dropped: u64,
    /// Confirmed sequence number per destination.
    cursors: HashMap<String, u64>,
    /// What each destination confirmed past the durable head: applied to its cursor by the
    /// commit that makes it durable.
    confirmed_ahead: HashMap<String, u64>,
    /// The metadata keys as last written.
    persisted: Meta,
    /// The head at the last commit (the lease span follows the append rate).
    head_at_commit: u64,
    /// Numbers skipped at open after an unclean stop (reserved by the lease, never durable).
    skipped: u64,
    /// Ranges of numbers in `first..=head` that hold no record (skipped at this open, or
    /// handed out and lost in a failed write before a reopen): not counted as stored.
    holes: Vec<(u64, u64)>,
}

/// A stream's metadata keys (`META_*`), written by the commit before its flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Meta {
    head: u64,
    bytes: u64,
    dropped: u64,
    lease: u64,
}

impl StreamState {
    fn records(&self) -> u64 {
        let span = (self.head + 1).saturating_sub(self.first);
        let empty: u64 = self
            .holes
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(self.first), b.min(self.head));
                (b + 1).saturating_sub(a)
            })
            .sum();
        span.saturating_sub(empty)
    }
}

#[derive(Debug)]
struct StreamSlot {
    tree: sled::Tree,
    state: Mutex<StreamState>,
    /// Last durable sequence number (set after a commit).
    durable: AtomicU64,
    /// The lease made durable by the last commit: records up to here may be read live.
    lease: AtomicU64,
}

/// How opening went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenReport {
    /// The database opened as it was.
    Opened,
    /// The database was corrupt and was moved aside to this path; a fresh one was created.
    /// Records in it were not delivered (they are still on disk there).
    MovedAside {
        /// Where the corrupt database now is.
        path: PathBuf,
        /// Why it was judged corrupt (sled's error, or the panic).
        reason: String,
    },
    /// The database cannot be opened right now (I/O error: disk full, permissions); the agent
    /// runs without it, counts what it cannot store, and retries.
    Unavailable {
        /// The I/O error.
        reason: String,
    },
}

/// The open database: one slot per stream.
#[derive(Debug)]
struct Store {
    db: sled::Db,
    streams: PerStream<StreamSlot>,
}

impl Store {
    fn slot(&self, s: Stream) -> &StreamSlot {
        &self.streams[s]
    }
}

/// Why a database could not be opened.
struct OpenFailure {
    corrupt: bool,
    reason: String,
}

/// The executable that probes a database before the agent opens it (see the module docs).
static PROBE_EXE: OnceLock<PathBuf> = OnceLock::new();

/// The hidden subcommand of `exe` that runs [`SledOutbox::probe`] on a path.
pub const PROBE_SUBCOMMAND: &str = "__probe-outbox";

/// Exit code of the probe when sled returned an error instead of crashing.
pub const PROBE_SLED_ERROR: i32 = 3;

/// From now on, every open first runs `exe __probe-outbox PATH` and treats a crash of that
/// process as corruption. Called by the agent binary with its own path.
pub fn use_probe_process(exe: PathBuf) {
    let _ = PROBE_EXE.set(exe);
}

/// Runs the probe process on an existing database. `Err` = it is corrupt (the probe crashed).
/// A probe that cannot be started (no binary, exec refused) is skipped: the open goes on
/// in-process as without a probe.
fn probe_in_subprocess(exe: &Path, path: &Path) -> Result<(), OpenFailure> {
    let out = match std::process::Command::new(exe)
        .arg(PROBE_SUBCOMMAND)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            tracing::debug!("outbox probe process not started ({e}); opening in-process");
            return Ok(());
        }
    };
    // 0: it opened; PROBE_SLED_ERROR: sled returned an error, which the open in-process meets
    // and classifies itself. Anything else (a panic's 101, a signal) is a crash.
    match out.status.code() {
        Some(0) | Some(PROBE_SLED_ERROR) => Ok(()),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            Err(OpenFailure {
                corrupt: true,
                reason: format!(
                    "the database is corrupt (sled crashed opening it in a probe process: {}; {last})",
                    out.status
                ),
            })
        }
    }
}

/// How long an open waits for the database's file lock (held briefly after a close).
const LOCK_WAIT: Duration = Duration::from_secs(3);

impl From<sled::Error> for OpenFailure {
    fn from(e: sled::Error) -> Self {
        OpenFailure {
            corrupt: !matches!(e, sled::Error::Io(_)),
            reason: e.to_string(),
        }
    }
}

/// The outbox (module doc): one sled database with a tree per stream and a cursor per
/// destination. Shared behind an `Arc` by the writer, the destinations and the metrics; all
/// methods take `&self`, and blocking ones belong on the blocking pool.
#[derive(Debug)]
pub struct SledOutbox {
    path: PathBuf,
    /// `None` while the database is unavailable (being reopened after an I/O error).
    store: RwLock<Option<Store>>,
    /// Destinations and the streams each takes.
    consumers: Vec<(String, Vec<Stream>)>,
    cfg: OutboxConfig,
    uncommitted: AtomicUsize,
    /// The store hit an I/O error and must be reopened.
    broken: std::sync::atomic::AtomicBool,
    /// Records lost while the store was unavailable, per stream, not yet persisted.
    lost: PerStream<AtomicU64>,
    /// Room kept for alarms, drift and events when the disk fills up.
    reserve: super::DiskReserve,
    commit_wake: tokio::sync::Notify,
    durable_tx: tokio::sync::watch::Sender<u64>,
    appended_tx: tokio::sync::watch::Sender<u64>,
}

impl SledOutbox {
    /// Opens (or creates) the outbox at `path` for these destinations. A corrupt database is
    /// moved aside and replaced by an empty one; an unavailable one (I/O error) is retried by
    /// the committer. Either way the agent keeps running; the caller logs the report loudly.
    /// `consumers`: each destination with the streams it takes. A stream nobody takes is not
    /// written at all.
    pub fn open(
        path: &Path,
        cfg: &OutboxConfig,
        consumers: &[(String, Vec<Stream>)],
    ) -> Result<(SledOutbox, OpenReport), OutboxError> {
        let (store, report) = match Self::try_open(path, cfg, consumers) {
            Ok(s) => (Some(s), OpenReport::Opened),
            Err(OpenFailure {
                corrupt: false,
                reason,
            }) => (None, OpenReport::Unavailable { reason }),
            Err(OpenFailure {
                corrupt: true,
                reason,
            }) => {
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
                std::fs::rename(path, &aside).map_err(|e| {
                    OutboxError::Storage(format!(
                        "outbox {} is corrupt ({reason}) and cannot be moved aside: {e}",
                        path.display()
                    ))
                })?;
                match Self::try_open(path, cfg, consumers) {
                    Ok(s) => (
                        Some(s),
                        OpenReport::MovedAside {
                            path: aside,
                            reason,
                        },
                    ),
                    Err(f) => return Err(OutboxError::Storage(f.reason)),
                }
            }
        };
        // (A reopen after an I/O error logs its own skips.)
        for (s, slot) in store.iter().flat_map(|st| st.streams.iter()) {
            let st = Self::lock(slot);
            if st.skipped > 0 {
                tracing::warn!(
                    stream = s.name(),
                    seq_skipped_from = st.head + 1 - st.skipped,
                    seq_skipped_to = st.head,
                    "the last stop was unclean: sequence numbers reserved for live delivery and \
                     never committed are skipped (records among them that were not committed \
                     are lost; some may have been delivered live)"
                );
            }
        }
        let (durable_tx, _) = tokio::sync::watch::channel(0);
        let (appended_tx, _) = tokio::sync::watch::channel(0);
        let broken = store.is_none();
        let outbox = SledOutbox {
            path: path.to_path_buf(),
            store: RwLock::new(store),
            consumers: consumers.to_vec(),
            cfg: cfg.clone(),
            uncommitted: AtomicUsize::new(0),
            broken: std::sync::atomic::AtomicBool::new(broken),
            lost: Default::default(),
            reserve: super::DiskReserve::open(path, cfg.reserve_mb << 20),
            commit_wake: tokio::sync::Notify::new(),
            durable_tx,
            appended_tx,
        };
        Ok((outbox, report))
    }

    fn try_open(
        path: &Path,
        cfg: &OutboxConfig,
        consumers: &[(String, Vec<Stream>)],
    ) -> Result<Store, OpenFailure> {
        if let Some(exe) = PROBE_EXE.get() {
            if path.exists() {
                probe_in_subprocess(exe, path)?;
            }
        }
        let open = || Self::open_db(path, cfg.cache_mb);
        let panicked = |what: &str| OpenFailure {
            corrupt: true,
            reason: format!("the database is corrupt (sled panicked while {what} it)"),
        };
        // sled may panic on some corruptions instead of returning an error.
        let db = match std::panic::catch_unwind(open) {
            Ok(r) => r?,
            Err(_) => return Err(panicked("opening")),
        };
        let streams = PerStream::try_from_fn(|s| {
            let tree = db.open_tree(s.name())?;
            let dests: Vec<String> = consumers
                .iter()
                .filter(|c| c.1.contains(&s))
                .map(|c| c.0.clone())
                .collect();
            let scan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Self::scan(&tree, &dests)
            }))
            .map_err(|_| panicked("reading"))?;
            let state = scan?;
            Ok::<_, OpenFailure>(StreamSlot {
                durable: AtomicU64::new(state.head),
                lease: AtomicU64::new(state.head),
                tree,
                state: Mutex::new(state),
            })
        })?;
        Ok(Store { db, streams })
    }

    /// Opens the database. sled's file lock outlives a dropped handle for a moment (its
    /// background threads hold the last references), so an open right after a close retries
    /// the lock briefly; a lock another process holds still fails after [`LOCK_WAIT`].
    fn open_db(path: &Path, cache_mb: u64) -> sled::Result<sled::Db> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match Self::sled_config(path, cache_mb).open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    fn sled_config(path: &Path, cache_mb: u64) -> sled::Config {
        sled::Config::new()
            .path(path)
            .cache_capacity(cache_mb * (1 << 20))
            // We commit ourselves, on our cadence.
            .flush_every_ms(None)
    }

    /// What the probe process does: open the database and read what an open reads (each
    /// stream's metadata and the tail past the last commit), changing nothing. A corruption
    /// sled panics on crashes this process, not the agent. `Err` = sled returned an error.
    pub fn probe(path: &Path) -> Result<(), OutboxError> {
        let storage = |e: sled::Error| OutboxError::Storage(e.to_string());
        let db = Self::open_db(path, 4).map_err(storage)?;
        for s in Stream::ALL {
            let tree = db.open_tree(s.name()).map_err(storage)?;
            let head = u64_of(tree.get(META_HEAD).map_err(storage)?);
            for kv in tree.range(rec_key(head + 1)..) {
                kv.map_err(storage)?;
            }
            if let Some(kv) = tree.range(rec_key(0)..).next() {
                kv.map_err(storage)?;
            }
            for kv in tree.scan_prefix(META_CURSOR) {
                kv.map_err(storage)?;
            }
        }
        Ok(())
    }

    fn scan(tree: &sled::Tree, dests: &[String]) -> sled::Result<StreamState> {
        let mut st = StreamState {
            head: u64_of(tree.get(META_HEAD)?),
            bytes: u64_of(tree.get(META_BYTES)?),
            dropped: u64_of(tree.get(META_DROPS)?),
            ..Default::default()
        };
        let lease = u64_of(tree.get(META_LEASE)?);
        // Records written after the last commit: keep those that continue the sequence,
        // drop everything after a gap (nobody ever saw those numbers). Only this tail is read:
        // opening a large backlog stays cheap.
        let mut gap = false;
        for kv in tree.range(rec_key(st.head + 1)..) {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            if !gap && seq == st.head + 1 {
                st.head = seq;
                st.bytes += v.len() as u64 + 9;
            } else {
                gap = true;
                tree.remove(k)?;
            }
        }
        // Records are contiguous (removed only from the front), so the first key and the head
        // give the count.
        st.first = st.head + 1;
        if let Some(kv) = tree.range(rec_key(0)..).next() {
            let (k, _) = kv?;
            if let Some(seq) = seq_of(&k) {
                st.first = seq;
            }
        }
        if st.records() == 0 {
            st.bytes = 0;
        }
        // Numbers up to the lease may have been seen live: never reuse them.
        if lease > st.head {
            // `head - skipped` is what the tail recovery found (see `reopen`).
            st.skipped = lease - st.head;
            if st.records() == 0 {
                st.first = lease + 1;
            } else {
                let from = st.head + 1;
                st.holes.push((from, lease));
            }
            st.head = lease;
        }
        st.head_at_commit = st.head;
        st.persisted = Meta {
            head: st.head,
            bytes: st.bytes,
            dropped: st.dropped,
            lease,
        };
        // Cursors of destinations no longer configured are forgotten (they would pin records).
        for kv in tree.scan_prefix(META_CURSOR) {
            let (k, _) = kv?;
            let dest = String::from_utf8_lossy(&k[META_CURSOR.len()..]).into_owned();
            if !dests.contains(&dest) {
                tree.remove(k)?;
            }
        }
        for d in dests {
            st.cursors
                .insert(d.clone(), u64_of(tree.get(cursor_key(d))?));
        }
        Ok(st)
    }

    /// Runs `f` on the open store; `Unavailable` while it is being reopened.
    fn with<R>(&self, f: impl FnOnce(&Store) -> Result<R, OutboxError>) -> Result<R, OutboxError> {
        let g = self.store.read().unwrap_or_else(|p| p.into_inner());
        let r = match g.as_ref() {
            Some(s) => f(s),
            None => Err(OutboxError::Unavailable),
        };
        if let Err(OutboxError::Io(_)) = &r {
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    /// Closes the database and opens it again from what is on disk (after an I/O error).
    /// Records that were numbered but did not make it to disk are counted as dropped.
    pub fn reopen(&self) -> Result<(), OutboxError> {
        let mut g = self.store.write().unwrap_or_else(|p| p.into_inner());
        let old_heads: Option<PerStream<u64>> = g
            .as_ref()
            .map(|s| PerStream::from_fn(|stream| Self::lock(&s.streams[stream]).head));
        if let Some(old) = g.take() {
            // Dropping releases sled's file lock; it may try (and fail) to flush.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(old)));
        }
        let store = Self::try_open(&self.path, &self.cfg, &self.consumers)
            .map_err(|f| OutboxError::Storage(f.reason))?;
        for (stream, slot) in store.streams.iter() {
            let mut st = Self::lock(slot);
            let old_head = old_heads.as_ref().map_or(0, |h| h[stream]);
            let found = st.head - st.skipped;
            let vanished = old_head.saturating_sub(found);
            // Skipped at this reopen: only numbers this run never handed out.
            st.skipped = st.head.saturating_sub(old_head);
            let lost = self.lost[stream].swap(0, Ordering::AcqRel) + vanished;
            // Persisted with the next commit, like every drop count.
            st.dropped += lost;
            // Numbers handed out before the failure are not given out again.
            if old_head > st.head {
                if st.records() == 0 {
                    st.first = old_head + 1;
                } else {
                    let from = st.head + 1;
                    st.holes.push((from, old_head));
                }
                st.head = old_head;
                slot.durable.store(old_head, Ordering::Release);
                slot.lease.store(old_head, Ordering::Release);
            }
            if st.head > found {
                tracing::warn!(
                    stream = stream.name(),
                    seq_skipped_from = found + 1,
                    seq_skipped_to = st.head,
                    dropped = vanished,
                    "outbox reopened after an I/O error: sequence numbers handed out or reserved \
                     but not stored are skipped (records among them are counted as dropped; some \
                     may have been delivered live)"
                );
            }
        }
        *g = Some(store);
        self.broken.store(false, Ordering::Release);
        drop(g);
        self.durable_tx.send_modify(|v| *v = v.wrapping_add(1));
        Ok(())
    }

    fn lock(slot: &StreamSlot) -> std::sync::MutexGuard<'_, StreamState> {
        slot.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records; returns their sequence numbers. Enforces the stream's size limit
    /// (counting drops). Records can be read live at once (within the durable lease), and by
    /// [`SledOutbox::read`] after the next commit.
    pub fn append(&self, stream: Stream, payloads: &[Vec<u8>]) -> Result<Range<u64>, OutboxError> {
        self.with(|store| self.append_in(store, stream, payloads))
    }

    fn append_in(
        &self,
        store: &Store,
        stream: Stream,
        payloads: &[Vec<u8>],
    ) -> Result<Range<u64>, OutboxError> {
        if self.reserve.low_space() && !super::reserve::protected(stream) && !payloads.is_empty() {
            return Err(OutboxError::LowSpace(stream.name()));
        }
        let slot = store.slot(stream);
        let limits = self.cfg.limits(stream);
        let mut st = Self::lock(slot);
        let incoming: u64 = payloads.iter().map(|p| p.len() as u64 + OVERHEAD).sum();
        let mut dropped_now = 0u64;
        let mut payloads = payloads;
        if st.bytes + incoming > limits.max_bytes {
            match limits.when_full {
                WhenFull::DropNewest => {
                    // Keep what fits of this append, drop the rest.
                    let mut room = limits.max_bytes.saturating_sub(st.bytes);
                    let mut keep = 0;
                    for p in payloads {
                        let c = p.len() as u64 + OVERHEAD;
                        if c > room {
                            break;
                        }
                        room -= c;
                        keep += 1;
                    }
                    dropped_now = (payloads.len() - keep) as u64;
                    payloads = &payloads[..keep];
                }
                WhenFull::DropOldest => {
                    let need = st.bytes + incoming - limits.max_bytes;
                    dropped_now = Self::drop_oldest(slot, &mut st, need)?;
                }
            }
        }
        let start = st.head + 1;
        let ts = now_ms().to_le_bytes();
        for (i, p) in payloads.iter().enumerate() {
            let mut v = Vec::with_capacity(8 + p.len());
            v.extend_from_slice(&ts);
            v.extend_from_slice(p);
            slot.tree.insert(rec_key(start + i as u64), v)?;
            // Numbered as soon as it is in the tree: a failure after this point must not
            // reuse the number.
            st.head = start + i as u64;
            st.bytes += p.len() as u64 + OVERHEAD;
        }
        let end = start + payloads.len() as u64;
        st.dropped += dropped_now;
        if dropped_now > 0 {
            tracing::warn!(stream = stream.name(), dropped = dropped_now, total = st.dropped, policy = ?limits.when_full,
                "outbox stream full ({} bytes): dropped records", limits.max_bytes);
        }
        let n = self
            .uncommitted
            .fetch_add(payloads.len(), Ordering::Relaxed)
            + payloads.len();
        let past_lease = end > slot.lease.load(Ordering::Acquire) + 1;
        drop(st);
        // A burst past the lease waits for a commit to be read live: commit now.
        if n >= self.cfg.commit_max_records || (past_lease && !payloads.is_empty()) {
            self.commit_wake.notify_one();
        }
        if !payloads.is_empty() {
            self.appended_tx.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(start..end)
    }

    /// Deletes the oldest records of a stream until `need` bytes are freed; returns how many.
    /// The caller counts them as dropped.
    fn drop_oldest(slot: &StreamSlot, st: &mut StreamState, need: u64) -> Result<u64, OutboxError> {
        let mut need = need;
        let doomed: Vec<(sled::IVec, u64)> = slot
            .tree
            .range(rec_key(st.first)..rec_key(st.head + 1))
            .map(|kv| kv.map(|(k, v)| (k, v.len() as u64 + 9)))
            .take_while(|r| {
                let go = need > 0;
                if let Ok((_, c)) = r {
                    need = need.saturating_sub(*c);
                }
                go
            })
            .collect::<Result<_, _>>()?;
        let n = doomed.len() as u64;
        for (k, c) in doomed {
            slot.tree.remove(k)?;
            st.bytes = st.bytes.saturating_sub(c);
            st.first += 1;
        }
        Ok(n)
    }

    /// Entering low-space mode: evicts the oldest samples (then features, then predictions)
    /// worth twice the reserve, so the database has pages to reuse for alarms and drift.
    /// Evicted records are counted as dropped.
    fn evict_for_space(&self) -> Result<(), OutboxError> {
        let mut need = 2 * (self.cfg.reserve_mb << 20);
        self.with(|store| {
            for stream in [Stream::Samples, Stream::Features, Stream::Predictions] {
                if need == 0 {
                    break;
                }
                let slot = store.slot(stream);
                let mut st = Self::lock(slot);
                let before = st.bytes;
                let n = Self::drop_oldest(slot, &mut st, need)?;
                need = need.saturating_sub(before - st.bytes);
                if n > 0 {
                    st.dropped += n;
                    tracing::warn!(
                        stream = stream.name(),
                        dropped = n,
                        total = st.dropped,
                        "disk full: evicted the oldest records to keep room for alarms and drift"
                    );
                }
            }
            Ok(())
        })
    }

    /// Whether the disk is full and only alarms, drift and events are stored.
    pub fn low_space(&self) -> bool {
        self.reserve.low_space()
    }

    /// Whether any destination takes this stream (if not, nothing is written to it).
    pub fn consumed(&self, stream: Stream) -> bool {
        self.consumers.iter().any(|c| c.1.contains(&stream))
    }

    /// Counts records lost by a failed write (disk full, I/O error): they never got a
    /// sequence number, so consumers see no gap, but the loss is reported.
    pub fn count_lost(&self, stream: Stream, n: u64) {
        self.lost[stream].fetch_add(n, Ordering::AcqRel);
    }

    /// Up to `max` committed records after `dest`'s cursor, in order: (seq, append time ms, payload).
    pub fn read(
        &self,
        stream: Stream,
        dest: &str,
        max: usize,
    ) -> Result<Vec<(u64, u64, Vec<u8>)>, OutboxError> {
        self.with(|store| Self::read_in(store, stream, dest, max))
    }

    fn read_in(
        store: &Store,
        stream: Stream,
        dest: &str,
        max: usize,
    ) -> Result<Vec<(u64, u64, Vec<u8>)>, OutboxError> {
        let slot = store.slot(stream);
        let from = {
            let st = Self::lock(slot);
            let c = *st
                .cursors
                .get(dest)
                .ok_or_else(|| OutboxError::UnknownDestination(dest.into()))?;
            c.max(st.first.saturating_sub(1)) + 1
        };
        let durable = slot.durable.load(Ordering::Acquire);
        if from > durable {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for kv in slot
            .tree
            .range(rec_key(from)..rec_key(durable + 1))
            .take(max)
        {
            let (k, v) = kv?;
            out.extend(stored_record(&k, &v));
        }
        Ok(out)
    }

    /// The highest sequence number that [`SledOutbox::read_live`] hands out now: the head,
    /// within the durable lease.
    pub fn live_head(&self, stream: Stream) -> u64 {
        self.with(|store| Ok(Self::live_bounds(store.slot(stream)).1))
            .unwrap_or(0)
    }

    /// (first stored, last readable live) of a stream: the head, within the durable lease.
    fn live_bounds(slot: &StreamSlot) -> (u64, u64) {
        let st = Self::lock(slot);
        (st.first, st.head.min(slot.lease.load(Ordering::Acquire)))
    }

    /// Up to `max` records with `after < seq <= through` (bounded by [`SledOutbox::live_head`]),
    /// committed or not: (seq, append time ms, payload). For destinations that deliver live
    /// and confirm through [`SledOutbox::confirm`], which only moves the cursor over durable
    /// records.
    pub fn read_live(
        &self,
        stream: Stream,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<Vec<(u64, u64, Vec<u8>)>, OutboxError> {
        self.with(|store| {
            let slot = store.slot(stream);
            let (first, live) = Self::live_bounds(slot);
            let to = through.min(live);
            let from = after.max(first.saturating_sub(1)) + 1;
            let mut out = Vec::new();
            if from > to {
                return Ok(out);
            }
            for kv in slot.tree.range(rec_key(from)..rec_key(to + 1)).take(max) {
                let (k, v) = kv?;
                out.extend(stored_record(&k, &v));
            }
            Ok(out)
        })
    }

    /// Where `dest` resumes: everything up to here is confirmed (or no longer stored).
    pub fn cursor(&self, stream: Stream, dest: &str) -> Result<u64, OutboxError> {
        self.with(|store| {
            let st = Self::lock(store.slot(stream));
            let c = *st
                .cursors
                .get(dest)
                .ok_or_else(|| OutboxError::UnknownDestination(dest.into()))?;
            Ok(c.max(st.first.saturating_sub(1)))
        })
    }

    /// The newest `max` records of `stream` readable live, newest first: (seq, append time
    /// ms, payload). Whatever the cursors say (Sparkplug births read the last known values here).
    pub fn latest(
        &self,
        stream: Stream,
        max: usize,
    ) -> Result<Vec<(u64, u64, Vec<u8>)>, OutboxError> {
        self.with(|store| {
            let slot = store.slot(stream);
            let (first, last) = Self::live_bounds(slot);
            let first = first.max(1);
            let mut out = Vec::new();
            if last < first {
                return Ok(out);
            }
            // Forward reads of chunks walking back from the head, not a reverse scan: sled's
            // reverse iterator carries a 1 MiB constant key into the binary (+1 MB on ARM).
            let mut hi = last;
            while out.len() < max {
                let want = (max - out.len()) as u64;
                let lo = hi
                    .saturating_sub(want.saturating_mul(2).max(16) - 1)
                    .max(first);
                let mut chunk = Vec::new();
                for kv in slot.tree.range(rec_key(lo)..rec_key(hi + 1)) {
                    let (k, v) = kv?;
                    chunk.extend(stored_record(&k, &v));
                }
                out.extend(chunk.into_iter().rev().take(max - out.len()));
                if lo == first {
                    break;
                }
                hi = lo - 1;
            }
            Ok(out)
        })
    }

    /// Records that `dest` has everything up to `seq` of `stream`. The cursor moves at once
    /// over durable records; past the durable head, with the commit that makes them durable
    /// (after a crash, a record that was delivered live but not durable is not in the outbox
    /// any more, and one that is durable was not confirmed: it is sent again).
    pub fn confirm(&self, stream: Stream, dest: &str, seq: u64) -> Result<(), OutboxError> {
        self.with(|store| {
            let slot = store.slot(stream);
            let mut st = Self::lock(slot);
            let durable = slot.durable.load(Ordering::Acquire);
            let c = st
                .cursors
                .get_mut(dest)
                .ok_or_else(|| OutboxError::UnknownDestination(dest.into()))?;
            advance_cursor(&slot.tree, dest, c, seq.min(durable))?;
            if seq > durable {
                st.confirmed_ahead.insert(dest.to_string(), seq);
            }
            Ok(())
        })
    }

    /// The last durable sequence number of a stream.
    pub fn durable(&self, stream: Stream) -> u64 {
        self.with(|s| Ok(s.slot(stream).durable.load(Ordering::Acquire)))
            .unwrap_or(0)
    }

    /// Makes everything written so far durable and renews each stream's lease; then moves
    /// cursors over what destinations confirmed and is now durable, and deletes records every
    /// destination confirmed and records past their max age. Blocking (fsync): call off the
    /// async runtime.
    pub fn commit(&self) -> Result<(), OutboxError> {
        self.commit_with(false)
    }

    /// The last commit before a clean stop: like [`SledOutbox::commit`], but the lease ends
    /// at the head (nothing appended after it is read live), so the next start skips nothing.
    pub fn commit_final(&self) -> Result<(), OutboxError> {
        self.commit_with(true)
    }

    fn commit_with(&self, last: bool) -> Result<(), OutboxError> {
        self.with(|store| {
            let mut marks = Vec::with_capacity(Stream::ALL.len());
            for (stream, slot) in store.streams.iter() {
                let mut st = Self::lock(slot);
                // Records refused since the last commit (low space): persisted with it.
                st.dropped += self.lost[stream].swap(0, Ordering::AcqRel);
                let lease = if last {
                    // Under the stream's lock: no append can slip in above the new lease.
                    slot.lease.store(st.head, Ordering::Release);
                    st.head
                } else if st.head == st.head_at_commit && st.persisted.lease >= st.head {
                    // An idle stream keeps its lease (its first record wakes a commit).
                    st.persisted.lease
                } else {
                    let span = (2 * (st.head - st.head_at_commit)).max(MIN_LEASE_SPAN);
                    (st.head + span).max(st.persisted.lease)
                };
                st.head_at_commit = st.head;
                marks.push((st.head, lease));
                let now = Meta {
                    head: st.head,
                    bytes: st.bytes,
                    dropped: st.dropped,
                    lease,
                };
                if now != st.persisted {
                    let mut b = sled::Batch::default();
                    b.insert(META_HEAD, &now.head.to_le_bytes());
                    b.insert(META_BYTES, &now.bytes.to_le_bytes());
                    b.insert(META_DROPS, &now.dropped.to_le_bytes());
                    b.insert(META_LEASE, &now.lease.to_le_bytes());
                    slot.tree.apply_batch(b)?;
                    st.persisted = now;
                }
            }
            self.uncommitted.store(0, Ordering::Relaxed);
            store.db.flush()?;
            for (slot, (head, lease)) in store.streams.values().zip(marks) {
                slot.durable.fetch_max(head, Ordering::AcqRel);
                if !last {
                    slot.lease.fetch_max(lease, Ordering::AcqRel);
                }
                let mut st = Self::lock(slot);
                let st = &mut *st;
                let durable = slot.durable.load(Ordering::Acquire);
                for (dest, ahead) in st.confirmed_ahead.iter() {
                    if let Some(c) = st.cursors.get_mut(dest) {
                        advance_cursor(&slot.tree, dest, c, (*ahead).min(durable))?;
                    }
                }
                st.confirmed_ahead.retain(|_, ahead| *ahead > durable);
            }
            self.durable_tx.send_modify(|v| *v = v.wrapping_add(1));
            self.collect_garbage(store)
        })
    }

    /// Whether the store failed and waits to be reopened.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn collect_garbage(&self, store: &Store) -> Result<(), OutboxError> {
        let now = now_ms();
        for (s, slot) in store.streams.iter() {
            let max_age_ms = self.cfg.limits(s).max_age.as_millis() as u64;
            let mut st = Self::lock(slot);
            let confirmed = st.cursors.values().copied().min().unwrap_or(st.head);
            let mut batch = sled::Batch::default();
            let mut removed = 0u64;
            let mut aged = 0u64;
            for kv in slot.tree.range(rec_key(st.first)..rec_key(st.head + 1)) {
                let (k, v) = kv?;
                let Some(seq) = seq_of(&k) else { continue };
                let ts = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                let old = now.saturating_sub(ts) > max_age_ms;
                if seq > confirmed && !old {
                    break;
                }
                if seq > confirmed {
                    aged += 1;
                }
                batch.remove(k);
                st.bytes = st.bytes.saturating_sub(v.len() as u64 + 9);
                st.first = seq + 1;
                removed += 1;
            }
            if removed > 0 {
                if aged > 0 {
                    st.dropped += aged;
                    tracing::warn!(
                        stream = s.name(),
                        dropped = aged,
                        "outbox: records older than max_age dropped undelivered"
                    );
                }
                slot.tree.apply_batch(batch)?;
            }
        }
        Ok(())
    }

    /// Runs group commits until `stop`: every `commit_interval`, or earlier when
    /// `commit_max_records` wait. A failed commit is logged and retried next time.
    pub async fn run_committer(
        self: std::sync::Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let interval = self.cfg.commit_interval;
        let mut latch = edge_sources::error_latch::ErrorLatch::default();
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(interval) => false,
                _ = self.commit_wake.notified() => false,
            };
            let me = self.clone();
            let res = tokio::task::spawn_blocking(move || {
                if me.is_broken() {
                    let entered = me.reserve.release();
                    if entered {
                        tracing::error!(outbox = %me.path.display(), reserve_mb = me.cfg.reserve_mb,
                            "disk full: freed the outbox's reserve; until space returns only alarms, \
                             drift and events are stored, samples, features and predictions are \
                             dropped and counted");
                    }
                    me.reopen()?;
                    tracing::info!(outbox = %me.path.display(), "outbox reopened");
                    if entered {
                        me.evict_for_space()?;
                    }
                } else if me.reserve.try_restore() {
                    tracing::info!(outbox = %me.path.display(),
                        "disk space is back: the outbox's reserve is restored and every stream is stored again");
                }
                if stopping {
                    me.commit_final()
                } else {
                    me.commit()
                }
            })
            .await;
            match res {
                Ok(Ok(())) => {
                    if latch.ok().is_some() {
                        tracing::info!("outbox commits work again");
                    }
                }
                Ok(Err(e)) => {
                    if latch.fail(&e.to_string()) {
                        tracing::error!(outbox = %self.path.display(),
                            "outbox commit failed: {e}; records that cannot be stored are dropped and counted; \
                             reopening and retrying every {interval:?}");
                    }
                }
                Err(e) => tracing::error!("outbox commit task failed: {e}"),
            }
            if stopping {
                break;
            }
        }
    }

    /// A receiver that changes after every commit (destinations wait on it for new data).
    pub fn committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }

    /// A receiver that changes after every append (live destinations wait on it).
    pub fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended_tx.subscribe()
    }

    /// Per-stream counters now; while the database is unavailable only the drops are known (the
    /// rest read 0).
    pub fn stats(&self) -> PerStream<StreamStats> {
        let g = self.store.read().unwrap_or_else(|p| p.into_inner());
        PerStream::from_fn(|s| {
            let lost = self.lost[s].load(Ordering::Acquire);
            match g.as_ref() {
                Some(store) => {
                    let slot = store.slot(s);
                    let st = Self::lock(slot);
                    StreamStats {
                        stream: s.name(),
                        head: st.head,
                        durable: slot.durable.load(Ordering::Acquire),
                        records: st.records(),
                        bytes: st.bytes,
                        dropped: st.dropped + lost,
                        skipped: st.skipped,
                    }
                }
                None => StreamStats {
                    stream: s.name(),
                    dropped: lost,
                    ..Default::default()
                },
            }
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.with(|s| Ok(s.db.size_on_disk().unwrap_or(0)))
            .unwrap_or(0)
    }

    /// How often the agent commits (`[outbox] commit_interval`).
    pub fn commit_interval(&self) -> Duration {
        self.cfg.commit_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("outbox-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The probe's verdicts: a clean exit or a sled error lets the open go on; a panic exit
    /// or a signal (what an abort-on-panic build does) is corruption, with the probe's last
    /// stderr line in the reason; a probe that cannot be started is skipped.
    #[test]
    fn probe_process_crash_means_corrupt() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp("probe");
        std::fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let db = dir.join("db");
        let ok = script("ok", "test \"$1\" = __probe-outbox || exit 9");
        assert!(probe_in_subprocess(&ok, &db).is_ok());
        let sled_err = script("err", "echo 'error: corrupted' >&2; exit 3");
        assert!(probe_in_subprocess(&sled_err, &db).is_ok());
        let panicked = script(
            "panic",
            "echo \"thread 'main' panicked at sled/src/pagecache/segment.rs\" >&2; exit 101",
        );
        let f = probe_in_subprocess(&panicked, &db).unwrap_err();
        assert!(f.corrupt);
        assert!(f.reason.contains("panicked at sled"), "{}", f.reason);
        let aborted = script("abort", "echo 'fatal' >&2; kill -ABRT $$");
        let f = probe_in_subprocess(&aborted, &db).unwrap_err();
        assert!(f.corrupt && f.reason.contains("SIGABRT"), "{}", f.reason);
        assert!(probe_in_subprocess(&dir.join("missing"), &db).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The probe itself reads an outbox without changing it.
    #[test]
    fn probe_reads_a_healthy_outbox() {
        let dir = tmp("probe-healthy");
        {
            let (o, _) = SledOutbox::open(&dir, &OutboxConfig::default(), &dests()).unwrap();
            o.append(Stream::Samples, &[b"x".to_vec()]).unwrap();
            o.commit_final().unwrap();
        }
        SledOutbox::probe(&dir).unwrap();
        let (o, r) = SledOutbox::open(&dir, &OutboxConfig::default(), &dests()).unwrap();
        assert!(matches!(r, OpenReport::Opened));
        assert_eq!(o.stats()[Stream::Samples].records, 1);
        drop(o);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn dests() -> Vec<(String, Vec<Stream>)> {
        vec![
            ("mqtt".into(), Stream::ALL.to_vec()),
            ("sync".into(), Stream::ALL.to_vec()),
        ]
    }

    fn one() -> Vec<(String, Vec<Stream>)> {
        vec![("mqtt".into(), Stream::ALL.to_vec())]
    }

    fn payloads(n: usize, tag: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![tag, i as u8, 0xAB, 0xCD]).collect()
    }

    /// `latest` reads newest first across its chunks and stops at the oldest live record.
    #[test]
    fn latest_returns_the_newest_records_newest_first() {
        let p = tmp("latest");
        let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
        assert!(o.latest(Stream::Samples, 5).unwrap().is_empty());
        o.append(Stream::Samples, &payloads(100, 1)).unwrap();
        o.commit().unwrap(); // a burst past the sequence lease is readable once committed
        let seqs = |max| -> Vec<u64> {
            o.latest(Stream::Samples, max)
                .unwrap()
                .iter()
                .map(|r| r.0)
                .collect()
        };
        assert_eq!(seqs(3), [100, 99, 98]);
        assert_eq!(seqs(40), (61..=100).rev().collect::<Vec<_>>());
        assert_eq!(seqs(1000), (1..=100).rev().collect::<Vec<_>>());
        let newest = o.latest(Stream::Samples, 1).unwrap();
        assert_eq!(newest[0].2, payloads(100, 1)[99]);
    }

    #[test]
    fn sequences_cursors_and_deletion_need_every_destination() {
        let p = tmp("cursors");
        let (o, r) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
        assert_eq!(r, OpenReport::Opened);
        assert_eq!(o.append(Stream::Samples, &payloads(3, 1)).unwrap(), 1..4);
        assert_eq!(o.append(Stream::Samples, &payloads(2, 2)).unwrap(), 4..6);
        assert_eq!(
            o.append(Stream::Alarms, &payloads(1, 3)).unwrap(),
            1..2,
            "streams count separately"
        );
        assert!(
            o.read(Stream::Samples, "mqtt", 10).unwrap().is_empty(),
            "nothing readable before a commit"
        );
        o.commit().unwrap();
        let got = o.read(Stream::Samples, "mqtt", 10).unwrap();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(got[3].2, vec![2, 0, 0xAB, 0xCD]);
        o.confirm(Stream::Samples, "mqtt", 4).unwrap();
        assert_eq!(o.read(Stream::Samples, "mqtt", 10).unwrap().len(), 1);
        assert_eq!(
            o.read(Stream::Samples, "sync", 10).unwrap().len(),
            5,
            "cursors are independent"
        );
        o.commit().unwrap();
        assert_eq!(
            o.stats()[Stream::Samples].records,
            5,
            "sync has confirmed nothing: nothing deleted"
        );
        o.confirm(Stream::Samples, "sync", 2).unwrap();
        o.commit().unwrap();
        assert_eq!(
            o.stats()[Stream::Samples].records,
            3,
            "1 and 2 are confirmed everywhere"
        );
        assert!(matches!(
            o.read(Stream::Samples, "nobody", 1),
            Err(OutboxError::UnknownDestination(_))
        ));
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn state_survives_reopen_and_numbering_continues() {
        let p = tmp("reopen");
        {
            let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
            o.append(Stream::Features, &payloads(4, 1)).unwrap();
            o.commit().unwrap();
            o.confirm(Stream::Features, "mqtt", 4).unwrap();
            o.confirm(Stream::Features, "sync", 4).unwrap();
            o.commit_final().unwrap();
        }
        let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
        let s = &o.stats()[Stream::Features];
        assert_eq!(
            (s.head, s.records),
            (4, 0),
            "all delivered and deleted, head remembered"
        );
        assert_eq!(
            o.append(Stream::Features, &payloads(1, 2)).unwrap(),
            5..6,
            "never reuses a number"
        );
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn full_streams_drop_per_policy_and_count() {
        let p = tmp("full");
        let mut cfg = OutboxConfig::default();
        let per = 100 + OVERHEAD;
        cfg.samples.max_bytes = 10 * per;
        cfg.alarms.max_bytes = 10 * per;
        cfg.alarms.when_full = WhenFull::DropNewest;
        let (o, _) = SledOutbox::open(&p, &cfg, &one()).unwrap();
        let big = |n| vec![vec![7u8; 100]; n];
        o.append(Stream::Samples, &big(8)).unwrap();
        o.append(Stream::Samples, &big(5)).unwrap();
        o.commit().unwrap();
        let got = o.read(Stream::Samples, "mqtt", 100).unwrap();
        assert_eq!(got.first().map(|r| r.0), Some(4), "oldest three dropped");
        assert_eq!(got.last().map(|r| r.0), Some(13));
        assert_eq!(o.stats()[Stream::Samples].dropped, 3);
        o.append(Stream::Alarms, &big(8)).unwrap();
        let r = o.append(Stream::Alarms, &big(5)).unwrap();
        assert_eq!(r, 9..11, "newest that do not fit are refused");
        assert_eq!(o.stats()[Stream::Alarms].dropped, 3);
        // Drop counts are persisted by the commit (the agent commits on its way out).
        o.commit_final().unwrap();
        drop(o);
        let (o, _) = SledOutbox::open(&p, &cfg, &one()).unwrap();
        assert_eq!(
            (
                o.stats()[Stream::Samples].dropped,
                o.stats()[Stream::Alarms].dropped
            ),
            (3, 3)
        );
        assert_eq!(
            (
                o.stats()[Stream::Samples].records,
                o.stats()[Stream::Samples].bytes
            ),
            (10, 10 * per),
            "counts rebuilt on open"
        );
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn records_past_the_last_commit_are_kept_only_without_a_gap() {
        let p = tmp("tail");
        {
            let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &one()).unwrap();
            o.append(Stream::Samples, &payloads(3, 1)).unwrap();
            o.commit().unwrap();
            o.commit_final().unwrap();
            // As after a crash: 4 made it to disk after the commit, 5 did not, 6 did.
            let g = o.store.read().unwrap();
            let tree = &g.as_ref().unwrap().slot(Stream::Samples).tree;
            tree.insert(rec_key(4), vec![0u8; 12]).unwrap();
            tree.insert(rec_key(6), vec![0u8; 12]).unwrap();
            g.as_ref().unwrap().db.flush().unwrap();
        }
        let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &one()).unwrap();
        let s = &o.stats()[Stream::Samples];
        assert_eq!(
            (s.head, s.records),
            (4, 4),
            "4 continues the sequence, 6 is cut"
        );
        assert_eq!(o.append(Stream::Samples, &payloads(1, 2)).unwrap(), 5..6);
        o.commit().unwrap();
        let got: Vec<u64> = o
            .read(Stream::Samples, "mqtt", 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        std::fs::remove_dir_all(&p).unwrap();
    }

    /// Live-first: appended records are readable live at once (not by `read`), a cursor
    /// moves only over confirmed records that are durable, a burst past the lease waits for
    /// the commit, and numbers are never reused: an unclean stop skips the lease's numbers,
    /// a clean one skips nothing.
    #[test]
    fn live_reads_durable_cursors_and_lease_numbers_never_reused() {
        let p = tmp("live");
        let seqs = |r: Vec<(u64, u64, Vec<u8>)>| r.iter().map(|x| x.0).collect::<Vec<_>>();
        let head_at_crash;
        {
            let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
            o.append(Stream::Samples, &payloads(3, 1)).unwrap();
            assert_eq!(
                o.live_head(Stream::Samples),
                0,
                "an idle stream's first records wait for the commit they wake"
            );
            o.commit().unwrap(); // lease 3 + 16
            o.append(Stream::Samples, &payloads(2, 2)).unwrap();
            assert_eq!(o.live_head(Stream::Samples), 5);
            assert_eq!(
                seqs(o.read_live(Stream::Samples, 0, u64::MAX, 10).unwrap()),
                [1, 2, 3, 4, 5]
            );
            assert_eq!(seqs(o.read_live(Stream::Samples, 1, 2, 10).unwrap()), [2]);
            assert_eq!(
                seqs(o.read(Stream::Samples, "sync", 10).unwrap()),
                [1, 2, 3],
                "read hands out durable records only"
            );
            // Confirmed before it is durable: the cursor waits for the commit.
            o.confirm(Stream::Samples, "mqtt", 5).unwrap();
            assert_eq!(o.cursor(Stream::Samples, "mqtt").unwrap(), 3);
            o.commit().unwrap(); // lease 5 + 16
            assert_eq!(o.cursor(Stream::Samples, "mqtt").unwrap(), 5);
            assert_eq!(o.cursor(Stream::Samples, "sync").unwrap(), 0);
            // A burst beyond the lease is readable live only after a commit.
            o.append(Stream::Samples, &payloads(100, 3)).unwrap();
            assert_eq!(o.live_head(Stream::Samples), 21);
            o.commit().unwrap();
            assert_eq!(o.live_head(Stream::Samples), 105);
            o.append(Stream::Samples, &payloads(2, 4)).unwrap(); // 106, 107: live, not durable
            assert_eq!(o.live_head(Stream::Samples), 107);
            o.confirm(Stream::Samples, "mqtt", 107).unwrap();
            head_at_crash = o.stats()[Stream::Samples].head;
            // Dropped without a final commit: an unclean stop.
        }
        let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
        let s = o.stats()[Stream::Samples].clone();
        assert!(s.head > head_at_crash, "{s:?}");
        // 106 and 107 may have reached the disk (sled writes on drop): kept then, as the
        // tail recovery keeps what continues the sequence; the rest of the lease is skipped.
        assert!(
            s.skipped == s.head - 105 || s.skipped == s.head - 107,
            "everything past the last record on disk is skipped: {s:?}"
        );
        assert_eq!(
            o.cursor(Stream::Samples, "mqtt").unwrap(),
            105,
            "the cursor only ever covered durable records"
        );
        let next = o.append(Stream::Samples, &payloads(1, 5)).unwrap();
        assert!(next.start > 107, "106 and 107 were seen live: not reused");
        assert_eq!(
            o.stats()[Stream::Features].skipped,
            0,
            "idle streams skip nothing"
        );
        o.commit_final().unwrap();
        drop(o);
        let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
        let s2 = o.stats()[Stream::Samples].clone();
        assert_eq!(
            (s2.head, s2.skipped),
            (next.start, 0),
            "a clean stop skips nothing"
        );
        drop(o);
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn expired_records_are_dropped_undelivered_and_counted() {
        let p = tmp("age");
        let mut cfg = OutboxConfig::default();
        cfg.events.max_age = Duration::from_millis(1);
        let (o, _) = SledOutbox::open(&p, &cfg, &one()).unwrap();
        o.append(Stream::Events, &payloads(3, 1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        o.commit().unwrap();
        let s = &o.stats()[Stream::Events];
        assert_eq!((s.records, s.dropped), (0, 3));
        assert!(o.read(Stream::Events, "mqtt", 10).unwrap().is_empty());
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn reopen_after_an_io_failure_keeps_durable_records_and_counts_the_rest() {
        let p = tmp("reopen-io");
        let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &one()).unwrap();
        o.append(Stream::Samples, &payloads(3, 1)).unwrap();
        o.commit().unwrap();
        o.append(Stream::Samples, &payloads(2, 2)).unwrap(); // numbered, not yet durable
        o.count_lost(Stream::Samples, 4); // e.g. appends that failed while the disk was full
        assert_eq!(
            o.stats()[Stream::Samples].dropped,
            4,
            "losses are reported at once"
        );
        o.reopen().unwrap();
        let s = o.stats()[Stream::Samples].clone();
        assert!(s.head >= 5, "numbers handed out are never given out again");
        o.commit().unwrap();
        let got: Vec<u64> = o
            .read(Stream::Samples, "mqtt", 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(got[..3], [1, 2, 3], "durable records survive, in order");
        // The two undurable records either made it to disk or are counted as dropped.
        assert_eq!(got.len() as u64 - 3 + (s.dropped - 4), 2, "{got:?} {s:?}");
        assert_eq!(
            o.append(Stream::Samples, &payloads(1, 3)).unwrap(),
            s.head + 1..s.head + 2
        );
        drop(o);
        let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &one()).unwrap();
        assert!(
            o.stats()[Stream::Samples].dropped >= 4,
            "the drop count was persisted"
        );
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn a_corrupt_database_is_moved_aside_and_replaced() {
        let p = tmp("corrupt");
        {
            let (o, _) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
            o.append(Stream::Samples, &payloads(100, 1)).unwrap();
            o.commit().unwrap();
        }
        // Scribble over every file of the database.
        for e in std::fs::read_dir(&p).unwrap() {
            let f = e.unwrap().path();
            if f.is_file() {
                let len = std::fs::metadata(&f).unwrap().len() as usize;
                std::fs::write(&f, vec![0x5Au8; len.max(64)]).unwrap();
            }
        }
        let (o, r) = SledOutbox::open(&p, &OutboxConfig::default(), &dests()).unwrap();
        let OpenReport::MovedAside { path, .. } = r else {
            panic!("expected the database to be moved aside")
        };
        assert!(path.exists());
        assert_eq!(
            o.append(Stream::Samples, &payloads(1, 1)).unwrap(),
            1..2,
            "a fresh outbox"
        );
        std::fs::remove_dir_all(&p).unwrap();
        std::fs::remove_dir_all(&path).unwrap();
    }
}
