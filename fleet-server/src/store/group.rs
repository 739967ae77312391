//! Group commit: many devices' check-ins and uploads stored in one transaction, with
//! statements shared by all of them ([`FleetStore::commit_group`]). The device API queues its
//! writes for [`crate::group_commit`], which calls this with whatever queued while the
//! previous group was being committed.

use std::collections::HashMap;

use sqlx::Row;

use super::devices::CheckInWrite;
use super::ingest::IngestBatch;
use super::{Arg, Device, FleetStore, IngestResult, Result, Sql};

/// Which device a write is for: the client certificate it came with (the device API; the
/// group checks it in the same transaction), or its id (tests, tools).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    /// SHA-256 (hex) of the device's client certificate.
    Cert(String),
    /// The device id.
    Id(String),
}

/// One upload batch for [`FleetStore::commit_group`].
#[derive(Debug, Clone)]
pub struct UploadWrite {
    /// The uploading device.
    pub device: DeviceRef,
    /// Stream name.
    pub stream: String,
    /// The device no longer has records below this sequence number (the mark may skip them).
    pub first_available: i64,
    /// (seq, ts_ms, body)
    pub records: Vec<(i64, i64, Vec<u8>)>,
}

/// What a group commit did for each write, in the order given. `None`: the reference names
/// no enrolled device, or a revoked one (nothing was written for it).
#[derive(Debug, Default)]
pub struct GroupResult {
    /// Per check-in, the device as stored after it.
    pub check_ins: Vec<Option<Device>>,
    /// The device id and what was stored.
    pub uploads: Vec<Option<(String, IngestResult)>>,
}

impl FleetStore {
    /// Stores `check_ins` and `uploads` in one transaction: all of them or none (an error
    /// fails the group; [`crate::group_commit`] then stores each write alone, so one bad
    /// write fails only itself). Several check-ins of one device keep the last; several
    /// uploads of one (device, stream) are stored one after the other, as if they had come
    /// in separate transactions.
    pub async fn commit_group(
        &self,
        check_ins: &[CheckInWrite],
        uploads: &[UploadWrite],
    ) -> Result<GroupResult> {
        let (_writer, mut tx) = self.begin_write().await?;
        let mut out = GroupResult::default();

        // Check-ins: the last one per device.
        let mut last: HashMap<&DeviceRef, usize> = HashMap::new();
        for (i, w) in check_ins.iter().enumerate() {
            last.insert(&w.device, i);
        }
        let mut distinct: Vec<usize> = last.values().copied().collect();
        distinct.sort_unstable();
        let writes: Vec<&CheckInWrite> = distinct.iter().map(|i| &check_ins[*i]).collect();
        let done = self.check_in_in(&mut tx, &writes).await?;
        let by_ref: HashMap<&DeviceRef, Option<Device>> =
            writes.iter().map(|w| &w.device).zip(done).collect();
        out.check_ins = check_ins
            .iter()
            .map(|w| by_ref.get(&w.device).cloned().flatten())
            .collect();

        // Uploads: who they are from (one statement), then in rounds of distinct streams.
        let ids = self
            .resolve_in(&mut tx, uploads.iter().map(|u| &u.device))
            .await?;
        let views: Vec<Vec<(i64, i64, &[u8])>> = uploads
            .iter()
            .map(|u| {
                u.records
                    .iter()
                    .map(|(s, t, b)| (*s, *t, b.as_slice()))
                    .collect()
            })
            .collect();
        out.uploads = vec![None; uploads.len()];
        let mut pending: Vec<usize> = (0..uploads.len())
            .filter(|i| ids.contains_key(&uploads[*i].device))
            .collect();
        while !pending.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let (round, later): (Vec<usize>, Vec<usize>) = pending.iter().partition(|i| {
                let u = &uploads[**i];
                seen.insert((&ids[&u.device], u.stream.as_str()))
            });
            let batches: Vec<IngestBatch<'_>> = round
                .iter()
                .map(|i| IngestBatch {
                    device: ids[&uploads[*i].device].as_str(),
                    stream: uploads[*i].stream.as_str(),
                    first_available: uploads[*i].first_available,
                    records: &views[*i],
                })
                .collect();
            let results = self.ingest_in(&mut tx, &batches).await?;
            for (i, r) in round.iter().zip(results) {
                out.uploads[*i] = Some((ids[&uploads[*i].device].clone(), r));
            }
            pending = later;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The ids of the enrolled, unrevoked devices `refs` name (one statement).
    async fn resolve_in<'r>(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        refs: impl Iterator<Item = &'r DeviceRef>,
    ) -> Result<HashMap<&'r DeviceRef, String>> {
        let refs: Vec<&DeviceRef> = refs.collect();
        let mut out = HashMap::new();
        if refs.is_empty() {
            return Ok(out);
        }
        let mut q = Sql::many(
            self.backend,
            "SELECT id, cert_sha256 FROM devices WHERE revoked_at IS NULL AND (cert_sha256 IN (''",
        );
        for r in &refs {
            if let DeviceRef::Cert(c) = r {
                q.push(", ").arg(Arg::T(c));
            }
        }
        q.push(") OR id IN (''");
        for r in &refs {
            if let DeviceRef::Id(i) = r {
                q.push(", ").arg(Arg::T(i));
            }
        }
        q.push("))");
        let mut by_cert = HashMap::new();
        let mut known_ids = std::collections::HashSet::new();
        for row in q.query().fetch_all(&mut **tx).await? {
            let id: String = row.try_get("id")?;
            let cert: String = row.try_get("cert_sha256")?;
            by_cert.insert(cert, id.clone());
            known_ids.insert(id);
        }
        for r in refs {
            let id = match r {
                DeviceRef::Cert(c) => by_cert.get(c).cloned(),
                DeviceRef::Id(i) => known_ids.contains(i).then(|| i.clone()),
            };
            if let Some(id) = id {
                out.insert(r, id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store;
    use edge_wire::sync::{CheckIn, StreamStatus};

    fn sha(s: &str) -> String {
        crate::ca::sha256_hex(s.as_bytes())
    }

    /// Devices d0..d{n-1} with certificates cert0.. (hashed).
    async fn enrolled(s: &FleetStore, n: usize) {
        for i in 0..n {
            let t = sha(&format!("token{i}"));
            s.add_token(&t, &[], "test", i64::MAX).await.unwrap();
            s.enroll(
                &t,
                &format!("d{i}"),
                &format!("dev{i}"),
                &crate::store::IssuedCert::test(sha(&format!("cert{i}"))),
            )
            .await
            .unwrap();
        }
    }

    fn check_in(i: usize, backlog: u64, error: Option<&str>) -> CheckInWrite {
        let c = CheckIn {
            agent_version: "1.0".into(),
            models: vec![],
            streams: vec![StreamStatus {
                stream: "samples".into(),
                backlog,
                bytes: 0,
                dropped: 0,
            }],
            last_error: error.map(str::to_string),
            uptime_s: 1,
            config: None,
            agent: None,
        };
        let json = serde_json::to_string(&c).unwrap();
        CheckInWrite::new(DeviceRef::Cert(sha(&format!("cert{i}"))), &c, json, 0).unwrap()
    }

    fn upload(i: usize, stream: &str, first: i64, seqs: &[i64]) -> UploadWrite {
        UploadWrite {
            device: DeviceRef::Cert(sha(&format!("cert{i}"))),
            stream: stream.into(),
            first_available: first,
            records: seqs
                .iter()
                .map(|s| (*s, *s * 1000, format!("r{s}").into_bytes()))
                .collect(),
        }
    }

    /// Two rounds of writes from five devices (d3 revoked, one certificate unknown):
    /// repeated check-ins, one stream twice in a group, gaps filled later, records stored
    /// out of order continuing a run, records the device gave up.
    fn rounds() -> Vec<(Vec<CheckInWrite>, Vec<UploadWrite>)> {
        let stranger = UploadWrite {
            device: DeviceRef::Cert(sha("stranger")),
            ..upload(0, "samples", 1, &[1])
        };
        vec![
            (
                vec![
                    check_in(0, 10, None),
                    check_in(1, 500, Some("sensor offline")),
                    check_in(2, 0, None),
                    check_in(3, 0, None),
                ],
                vec![
                    upload(0, "samples", 1, &[1, 2, 3]),
                    upload(0, "samples", 1, &[5, 6]),
                    upload(1, "samples", 1, &[2, 3]),
                    upload(1, "predictions", 1, &[1]),
                    upload(3, "samples", 1, &[1]),
                    stranger,
                ],
            ),
            (
                vec![
                    check_in(0, 20, None),
                    check_in(0, 900, Some("disk full")),
                    check_in(1, 1000, Some("sensor offline")),
                ],
                vec![
                    upload(1, "samples", 1, &[1]),
                    upload(0, "samples", 1, &[4, 5]),
                    upload(2, "samples", 10, &[10, 11]),
                ],
            ),
        ]
    }

    type Outcome = (Vec<Option<String>>, Vec<Option<(String, IngestResult)>>);

    async fn state(s: &FleetStore) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..4 {
            let id = format!("d{i}");
            let d = s.device(&id).await.unwrap().unwrap();
            out.push(format!(
                "{id}: seen {} backlog {} rises {} error {:?} history {} errors {:?}",
                d.last_seen.is_some(),
                d.backlog,
                d.backlog_rises,
                d.last_error,
                s.history(&id, 0, 100).await.unwrap().len(),
                s.device_errors(&id, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.1)
                    .collect::<Vec<_>>(),
            ));
            out.push(format!("{id}: {:?}", s.stream_marks(&id).await.unwrap()));
            for stream in ["samples", "predictions"] {
                let r: Vec<i64> = s
                    .records(&id, stream, 0, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.0)
                    .collect();
                out.push(format!("{id} {stream}: {r:?}"));
            }
        }
        out
    }

    #[tokio::test]
    async fn a_group_stores_exactly_what_its_writes_store_one_by_one() {
        let (grouped, dir1) = store().await;
        let (single, dir2) = store().await;
        for s in [&grouped, &single] {
            enrolled(s, 4).await;
            assert!(s.revoke("d3").await.unwrap());
        }
        let mut got: Vec<Outcome> = Vec::new();
        let mut want: Vec<Outcome> = Vec::new();
        for (c, u) in rounds() {
            let g = grouped.commit_group(&c, &u).await.unwrap();
            got.push((
                g.check_ins.into_iter().map(|d| d.map(|d| d.id)).collect(),
                g.uploads,
            ));
            let mut one: Outcome = Default::default();
            // A group keeps a device's last check-in: so does the baseline.
            for (i, w) in c.iter().enumerate() {
                let last = c.iter().rposition(|x| x.device == w.device) == Some(i);
                let r = if last {
                    single
                        .commit_group(std::slice::from_ref(w), &[])
                        .await
                        .unwrap()
                } else {
                    // Its result is the device the later check-in names.
                    let DeviceRef::Cert(cert) = &w.device else {
                        panic!("the rounds name devices by certificate")
                    };
                    let mut r = GroupResult::default();
                    r.check_ins.push(single.device_by_cert(cert).await.unwrap());
                    r
                };
                one.0
                    .extend(r.check_ins.into_iter().map(|d| d.map(|d| d.id)));
            }
            for w in &u {
                let r = single
                    .commit_group(&[], std::slice::from_ref(w))
                    .await
                    .unwrap();
                one.1.extend(r.uploads);
            }
            want.push(one);
        }
        assert_eq!(got, want);
        // And what they are: revoked and unknown devices get nothing stored.
        let ack = |round: usize, i: usize| got[round].1[i].as_ref().map(|r| r.1.acked_through);
        assert_eq!(
            got[0].0,
            [
                Some("d0".into()),
                Some("d1".into()),
                Some("d2".into()),
                None
            ]
        );
        assert_eq!(
            (0..6).map(|i| ack(0, i)).collect::<Vec<_>>(),
            [Some(3), Some(3), Some(0), Some(1), None, None]
        );
        // d1's gap filled; d0's 4 continues the run to the 5, 6 stored out of order; d2
        // gave up 1..=9.
        assert_eq!(
            (0..3).map(|i| ack(1, i)).collect::<Vec<_>>(),
            [Some(3), Some(6), Some(11)]
        );
        let st = state(&grouped).await;
        assert_eq!(st, state(&single).await);
        assert!(st[0].contains("backlog 900 rises 1"), "{}", st[0]);
        assert!(st[0].contains(r#"errors ["disk full"]"#), "{}", st[0]);
        assert!(st[4].contains(r#"errors ["sensor offline"]"#), "{}", st[4]);
        assert!(st[12].contains("seen false"), "revoked: {}", st[12]);
        let marks = grouped.stream_marks("d2").await.unwrap();
        assert_eq!((marks[0].acked_through, marks[0].lost_on_device), (11, 9));
        assert_eq!(st[2], "d0 samples: [1, 2, 3, 4, 5, 6]");
        std::fs::remove_dir_all(dir1).ok();
        std::fs::remove_dir_all(dir2).ok();
    }
}
