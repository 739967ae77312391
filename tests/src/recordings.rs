//! Recordings and packed models the tests and benchmarks share.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::peer::{workspace, workspace_bin};

/// The grid start of [`pump_recording`]: 2026-01-01T00:00:00Z (on every grid).
pub const RECORDING_T0: i64 = 1_767_225_600_000_000_000;

/// `points` grid points at 10 Hz from [`RECORDING_T0`] of a pump's temperature (a 10-minute
/// cycle), vibration and current with deterministic noise, in the agent's recording format;
/// with `label = Some((tag, every, value))` also a ground-truth sample every `every` points.
/// Returns the number of sensor samples.
pub fn pump_recording(path: &Path, points: i64, label: Option<(&str, i64, f64)>) -> u64 {
    use std::fmt::Write as _;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let mut s = String::from("tag,ts_ns,value,quality\n");
    for i in 0..points {
        let ts = RECORDING_T0 + i * 100_000_000;
        let t = i as f64 / 10.0;
        let v = [
            55.0 + 2.0 * (t / 600.0 * std::f64::consts::TAU).sin() + 0.5 * noise(),
            1.8 + 0.3 * noise(),
            38.0 + 2.0 * noise(),
        ];
        for (tag, x) in ["pump1.temperature", "pump1.vibration", "pump1.current"]
            .iter()
            .zip(v)
        {
            let _ = writeln!(s, "{tag},{ts},{x:?},good");
        }
        if let Some((tag, every, value)) = label {
            if i % every == 0 {
                let _ = writeln!(s, "{tag},{ts},{value:?},good");
            }
        }
    }
    std::fs::write(path, s).expect("write the recording");
    (points * 3) as u64
}

/// The 1-D conv net (`tests/models/conv1d.onnx`, spec `agent/tests/fixtures/raw_pack.toml`)
/// packed as version `n` (`0.n.0`) with its score rule's `threshold = …` text replaced by
/// `threshold` (e.g. `"0.5, raise_after = 1"`), trained on `train`, signed with `key`.
pub fn pack_conv_net(dir: &Path, key: &Path, train: &Path, n: u64, threshold: &str) -> PathBuf {
    let spec = dir.join(format!("conv-{n}.toml"));
    let text = std::fs::read_to_string(workspace().join("agent/tests/fixtures/raw_pack.toml"))
        .expect("raw_pack.toml")
        .replace("version_number = 1", &format!("version_number = {n}"))
        .replace("\"0.1.0\"", &format!("\"0.{n}.0\""))
        .replace("threshold = 0.9", &format!("threshold = {threshold}"));
    std::fs::write(&spec, text).expect("spec");
    let out = dir.join(format!("conv-{n}.bundle"));
    let o = Command::new(workspace_bin("edge-agent"))
        .args(["bundle", "pack", "--spec"])
        .arg(&spec)
        .arg("--model")
        .arg(workspace().join("tests/models/conv1d.onnx"))
        .arg("--train")
        .arg(train)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("edge-agent bundle pack");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Measurement time a recording in the agent's CSV (`tag,ts_ns,value,quality`) spans so far,
/// in ns: its first sample's to its last complete row's. Reads the first rows and the file's
/// last 4 KiB, not the whole file (the agent is still writing it). `None` before two rows.
pub fn recording_span_ns(path: &Path) -> Option<i64> {
    use std::io::{BufRead, Read, Seek, SeekFrom};
    let ts = |l: &str| l.split(',').nth(1).and_then(|t| t.parse::<i64>().ok());
    let mut f = std::fs::File::open(path).ok()?;
    let first = std::io::BufReader::new(&f)
        .lines()
        .nth(1)?
        .ok()
        .as_deref()
        .and_then(ts)?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = String::new();
    f.read_to_string(&mut tail).ok()?;
    // Complete rows only: the last may be half written.
    let complete = &tail[..tail.rfind('\n')?];
    let last = complete.lines().rev().find_map(ts)?;
    Some(last - first)
}
