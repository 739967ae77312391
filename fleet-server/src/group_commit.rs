//! The device API's write path: check-ins and uploads queue here and are stored in groups,
//! one transaction and a handful of statements per group ([`FleetStore::commit_group`])
//! instead of a transaction and ten statements per request. A group is whatever queued
//! while the previous one was being committed (up to [`GroupCommit::new`]'s limits), so a
//! lone request is stored at once and a busy server commits hundreds of devices together:
//! nothing waits for a timer.
//!
//! A group that fails (a database error) is retried write by write, so one bad write fails
//! only its own request. Every request gets its answer after its transaction committed:
//! an acknowledged record is durable.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::store::{CheckInWrite, Device, FleetStore, IngestResult, StoreError, UploadWrite};

type Reply<T> = oneshot::Sender<Result<Option<T>, StoreError>>;

enum Job {
    CheckIn(CheckInWrite, Reply<Device>),
    Upload(UploadWrite, Reply<(String, IngestResult)>),
}

impl Job {
    fn records(&self) -> usize {
        match self {
            Job::CheckIn(..) => 1,
            Job::Upload(u, _) => u.records.len().max(1),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Job::CheckIn(w, _) => w.status_json.len(),
            Job::Upload(u, _) => u.records.iter().map(|r| r.2.len()).sum(),
        }
    }
}

/// Limits of one group.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Requests per group (1: every request in its own transaction).
    pub requests: usize,
    /// Records per group (a group stops growing past it).
    pub records: usize,
    /// Record bytes per group.
    pub bytes: usize,
}

impl GroupLimits {
    /// Groups of at most `requests` requests (at least 1), 20 000 records and 8 MiB of records.
    pub fn with_requests(requests: usize) -> GroupLimits {
        GroupLimits {
            requests: requests.max(1),
            records: 20_000,
            bytes: 8 << 20,
        }
    }
}

/// Handle to the group-commit task (cheap to clone).
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Job>,
    stats: std::sync::Arc<GroupStats>,
}

/// What the task has done since it started.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Transactions committed (or tried) for a group.
    pub groups: AtomicU64,
    /// Writes in them.
    pub writes: AtomicU64,
    /// Groups that failed and were retried write by write.
    pub split: AtomicU64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

impl GroupCommit {
    /// Starts the task; it ends when every handle is dropped.
    pub fn new(store: FleetStore, limits: GroupLimits) -> GroupCommit {
        let (tx, rx) = mpsc::channel(4096);
        let stats = std::sync::Arc::new(GroupStats::default());
        tokio::spawn(run(store, limits, rx, stats.clone()));
        GroupCommit { tx, stats }
    }

    /// What the task has done since it started.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Stores a check-in; `None` when the reference names no enrolled, unrevoked device.
    pub async fn check_in(&self, w: CheckInWrite) -> Result<Option<Device>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::CheckIn(w, reply), rx).await
    }

    /// Stores an upload batch; `None` when the reference names no enrolled, unrevoked
    /// device.
    pub async fn upload(
        &self,
        w: UploadWrite,
    ) -> Result<Option<(String, IngestResult)>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Upload(w, reply), rx).await
    }

    async fn send<T>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<Option<T>, StoreError>>,
    ) -> Result<Option<T>, StoreError> {
        let gone = || StoreError::Invalid("the group-commit task has stopped".into());
        self.tx.send(job).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(
    store: FleetStore,
    limits: GroupLimits,
    mut rx: mpsc::Receiver<Job>,
    stats: std::sync::Arc<GroupStats>,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let (mut records, mut bytes) = (first.records(), first.bytes());
        let mut group = vec![first];
        while group.len() < limits.requests && records < limits.records && bytes < limits.bytes {
            match rx.try_recv() {
                Ok(j) => {
                    if records + j.records() > limits.records || bytes + j.bytes() > limits.bytes {
                        carry = Some(j);
                        break;
                    }
                    records += j.records();
                    bytes += j.bytes();
                    group.push(j);
                }
                Err(_) => break,
            }
        }
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        commit(&store, group, &stats).await;
    }
}

/// Commits `group` together, or, when that fails, each write alone.
async fn commit(store: &FleetStore, group: Vec<Job>, stats: &GroupStats) {
    let mut check_ins = Vec::new();
    let mut check_in_replies = Vec::new();
    let mut uploads = Vec::new();
    let mut upload_replies = Vec::new();
    for j in group {
        match j {
            Job::CheckIn(w, r) => {
                check_ins.push(w);
                check_in_replies.push(r);
            }
            Job::Upload(w, r) => {
                uploads.push(w);
                upload_replies.push(r);
            }
        }
    }
    let n = check_ins.len() + uploads.len();
    match store.commit_group(&check_ins, &uploads).await {
        Ok(done) => {
            for (r, d) in check_in_replies.into_iter().zip(done.check_ins) {
                let _ = r.send(Ok(d));
            }
            for (r, u) in upload_replies.into_iter().zip(done.uploads) {
                let _ = r.send(Ok(u));
            }
        }
        Err(e) if n == 1 => {
            if let Some(r) = check_in_replies.pop() {
                let _ = r.send(Err(e));
            } else if let Some(r) = upload_replies.pop() {
                let _ = r.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!("a group of {n} device writes failed ({e}); storing them one by one");
            stats.split.fetch_add(1, Ordering::Relaxed);
            for (w, r) in check_ins.into_iter().zip(check_in_replies) {
                let res = store
                    .commit_group(std::slice::from_ref(&w), &[])
                    .await
                    .map(|mut d| d.check_ins.pop().flatten());
                let _ = r.send(res);
            }
            for (w, r) in uploads.into_iter().zip(upload_replies) {
                let res = store
                    .commit_group(&[], std::slice::from_ref(&w))
                    .await
                    .map(|mut d| d.uploads.pop().flatten());
                let _ = r.send(res);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store;
    use crate::store::{Backend, DeviceRef};

    #[tokio::test]
    async fn a_failing_write_fails_alone_and_its_group_is_stored() {
        let (s, dir) = store().await;
        for i in 0..8 {
            let t = format!("t{i}");
            s.add_token(&t, &[], "test", i64::MAX).await.unwrap();
            s.enroll(
                &t,
                &format!("d{i}"),
                &format!("dev{i}"),
                &crate::store::IssuedCert::test(format!("c{i}")),
            )
            .await
            .unwrap();
        }
        // The database refuses the records of one stream (as it would a broken write).
        let ddl: &[&str] = match s.backend() {
            Backend::Sqlite => &["CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.stream = 'refused' BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"],
            Backend::Postgres => &[
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.stream = 'refused' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse BEFORE INSERT ON records FOR EACH ROW EXECUTE FUNCTION refuse()",
            ],
        };
        for q in ddl {
            sqlx::query(q).execute(s.pool()).await.unwrap();
        }
        let gc = GroupCommit::new(s.clone(), GroupLimits::with_requests(64));
        // Every write is queued before the task runs (one thread): they form one group.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                gc.upload(UploadWrite {
                    device: DeviceRef::Cert(format!("c{i}")),
                    stream: if i == 5 { "refused" } else { "samples" }.into(),
                    first_available: 1,
                    records: vec![(1, 0, b"x".to_vec()), (2, 0, b"y".to_vec())],
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(Some((id, r))) => {
                    assert_ne!(i, 5);
                    assert_eq!((id, r.acked_through), (format!("d{i}"), 2));
                }
                Err(e) => {
                    assert_eq!(i, 5);
                    assert!(e.to_string().contains("refused by the test trigger"), "{e}");
                }
                Ok(None) => panic!("write {i}: device not found"),
            }
        }
        let st = gc.stats();
        assert_eq!(st.groups.load(Ordering::Relaxed), 1, "one group");
        assert_eq!(st.writes.load(Ordering::Relaxed), 8);
        assert_eq!(st.split.load(Ordering::Relaxed), 1, "split once");
        for i in 0..8 {
            let stored = s.records(&format!("d{i}"), "samples", 0, 10).await.unwrap();
            assert_eq!(stored.len(), if i == 5 { 0 } else { 2 }, "d{i}");
        }
        std::fs::remove_dir_all(dir).ok();
    }
}
