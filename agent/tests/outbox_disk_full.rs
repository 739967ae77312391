//! The outbox on a file system that fills up (a real tmpfs, real sled): the reserve keeps
//! room for alarms, samples are evicted and refused first, and every record that could not be
//! stored is counted — offered == stored + dropped, exactly, through the whole episode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::outbox::{OutboxConfig, OutboxWriter, SledOutbox, Stream};
use edge_agent::pipeline::record::Record;
use edge_agent::pipeline::{Output, OutputStats};
use edge_wire::bundle::BundleRef;
use edge_wire::records::AlarmEvent;
use edge_wire::{Quality, Sample, Value};

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` where this machine does not allow mounting (not root).
    fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Waits until `cond` holds (checked every 20 ms), at most `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn samples(i: u64) -> Record {
    let tag: edge_wire::Tag = Arc::from("pump1.flow");
    // ~1 KiB per record: the disk fills in a few thousand records.
    let batch: Vec<Sample> = (0..40)
        .map(|k| {
            Sample::new(
                tag.clone(),
                (i * 40 + k) as i64,
                Value::Float(k as f64),
                Quality::Good,
            )
        })
        .collect();
    Record::Samples(Arc::new(batch))
}

fn alarm(ts: i64) -> Record {
    Record::Alarm(Arc::new(AlarmEvent {
        source: Arc::new(BundleRef {
            model: Arc::from("pump"),
            bundle: Arc::from("pump-anomaly"),
            version: Arc::from("1.0.0"),
            version_number: 1,
            sha256: Arc::from("00"),
        }),
        ts_ns: ts,
        active: true,
        score: 0.97,
        threshold: Some(0.6),
        drift: None,
    }))
}

fn stat(o: &SledOutbox, s: Stream) -> edge_agent::outbox::StreamStats {
    o.stats()[s].clone()
}

#[test]
fn a_full_disk_keeps_room_for_alarms_and_counts_every_lost_record() {
    let dir = std::env::temp_dir().join(format!("outbox-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(_disk) = SmallDisk::mount(&dir, "24m") else {
        eprintln!("SKIPPED: this machine does not allow mounting a tmpfs (needs root)");
        return;
    };
    let cfg = OutboxConfig {
        commit_interval: Duration::from_millis(20),
        reserve_mb: 2,
        ..OutboxConfig::default()
    };
    // A historian that never confirms: nothing is deleted except by eviction.
    let consumers = vec![(
        "historian".to_string(),
        vec![Stream::Samples, Stream::Alarms],
    )];
    let (ob, _) = SledOutbox::open(&dir.join("outbox"), &cfg, &consumers).unwrap();
    let ob = Arc::new(ob);
    assert_eq!(
        std::fs::metadata(dir.join("outbox.reserve")).unwrap().len(),
        2 << 20,
        "the reserve is written at open"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let committer = rt.spawn(ob.clone().run_committer(stop.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let stats = Arc::new(OutputStats::default());
    let writer = rt.spawn(Box::new(OutboxWriter::new(ob.clone(), None)).run(rx, stats.clone()));

    // Fill the rest of the disk with a file, then keep writing samples until the outbox
    // notices and frees its reserve.
    let filler = dir.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let mut offered = 0u64;
    let full = wait_until(Duration::from_secs(60), || {
        for _ in 0..50 {
            tx.blocking_send(samples(offered)).unwrap();
            offered += 1;
        }
        ob.low_space()
    });
    assert!(full, "the outbox never entered low-space mode");
    assert!(
        !dir.join("outbox.reserve").exists(),
        "the reserve is freed for the alarms"
    );

    // While the disk is full: an alarm is stored (durable), samples are refused and counted.
    tx.blocking_send(alarm(1)).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || stat(&ob, Stream::Alarms)
            .durable
            >= 1),
        "the alarm raised on a full disk was not stored: {:?}",
        stat(&ob, Stream::Alarms)
    );
    let refused_before = stat(&ob, Stream::Samples).dropped;
    for _ in 0..20 {
        tx.blocking_send(samples(offered)).unwrap();
        offered += 1;
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            stat(&ob, Stream::Samples).dropped >= refused_before + 20
        }),
        "samples on a full disk are not counted as dropped"
    );
    let stored = ob.read(Stream::Alarms, "historian", 10).unwrap();
    assert_eq!(stored.len(), 1, "exactly the one alarm is stored");
    assert!(edge_wire::records::decode_alarm(&stored[0].2).is_ok_and(|a| a.active));

    // Space comes back: the reserve is written again and samples are stored again.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !ob.low_space()),
        "the outbox did not leave low-space mode after space returned"
    );
    assert!(dir.join("outbox.reserve").exists());
    let head_before = stat(&ob, Stream::Samples).head;
    for _ in 0..10 {
        tx.blocking_send(samples(offered)).unwrap();
        offered += 1;
    }
    assert!(
        wait_until(Duration::from_secs(20), || stat(&ob, Stream::Samples)
            .durable
            >= head_before + 10),
        "samples are not stored after space returned: {:?}",
        stat(&ob, Stream::Samples)
    );

    // The books balance: every sample record offered is stored or counted as dropped.
    drop(tx);
    rt.block_on(writer).unwrap();
    stop.cancel();
    rt.block_on(committer).unwrap();
    let s = stat(&ob, Stream::Samples);
    assert_eq!(
        s.records + s.dropped,
        offered,
        "offered {offered} sample records; stored {} + dropped {} (evicted, refused or lost in \
         the failed write) must add up: {s:?}",
        s.records,
        s.dropped
    );
    assert!(s.dropped > 0 && s.records > 0, "{s:?}");
}
