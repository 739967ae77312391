//! Network fault injection for the real binaries: [`Wire`] puts a process in its own network
//! namespace, connected to the host only through `tests/peers/netem.py` (a user-space netem
//! over two TUN devices: loss, delay, jitter, reordering, duplication, link down), and
//! [`Sampler`] watches a process's memory, file descriptors and disk use over a long run.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::Peer;

/// What the wire does to every packet, both directions (`netem.py`'s control file).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Impairment {
    pub loss: f64,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub reorder: f64,
    pub duplicate: f64,
    pub down: bool,
}

impl Impairment {
    pub const CLEAN: Impairment = Impairment {
        loss: 0.0,
        delay_ms: 0.0,
        jitter_ms: 0.0,
        reorder: 0.0,
        duplicate: 0.0,
        down: false,
    };
    /// A bad plant network: 5 % loss, 40 ± 30 ms, 10 % reordered, 1 % duplicated.
    pub const LOSSY: Impairment = Impairment {
        loss: 0.05,
        delay_ms: 40.0,
        jitter_ms: 30.0,
        reorder: 0.1,
        duplicate: 0.01,
        down: false,
    };
    pub const DOWN: Impairment = Impairment {
        down: true,
        ..Impairment::CLEAN
    };
}

/// A network namespace wired to the host through the user-space netem. The namespace sees the
/// host as [`Wire::host_ip`]; servers it must reach listen there (or on 0.0.0.0).
#[derive(Debug)]
pub struct Wire {
    ns: String,
    subnet: String,
    control: PathBuf,
    child: Child,
    /// Lines the wire prints after "ready" (its packet counts at shutdown).
    lines: std::sync::mpsc::Receiver<String>,
    stopped: bool,
}

static WIRES: AtomicU32 = AtomicU32::new(0);

impl Wire {
    /// `None` where namespaces or TUN devices cannot be made (not root): the caller skips,
    /// saying so.
    pub fn start(dir: &Path) -> Option<Wire> {
        let n = WIRES.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = format!("edge-{}-{n}", pid % 100_000);
        // A subnet per process and wire: 10.<100..199>.<10..209>.0/24.
        let subnet = format!("10.{}.{}", 100 + (pid % 100), 10 + n % 200);
        let control = dir.join(format!("{ns}.json"));
        write_control(&control, Impairment::CLEAN);
        let mut child = Command::new("python3")
            .arg(crate::peer_script("netem.py"))
            .args([&ns, &subnet])
            .arg(&control)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let mut reader = std::io::BufReader::new(child.stdout.take()?);
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        if first.trim() != "ready" {
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            eprintln!("netem wire unavailable: {err}");
            return None;
        }
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = tx.send(line.trim().to_string());
                line.clear();
            }
        });
        Some(Wire {
            ns,
            subnet,
            control,
            child,
            lines,
            stopped: false,
        })
    }

    /// The namespace's name (`ip netns exec <ns> …`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The host as seen from inside the namespace.
    pub fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Changes what the wire does, from the next packet on.
    pub fn set(&self, imp: Impairment) {
        write_control(&self.control, imp);
    }

    /// Starts `program args` inside the namespace (as [`Peer::start`]).
    pub fn start_peer(&self, name: &str, program: &Path, args: &[&str], dir: &Path) -> Peer {
        let prog = program.display().to_string();
        let mut all = vec!["netns", "exec", self.ns.as_str(), prog.as_str()];
        all.extend_from_slice(args);
        Peer::start(name, "ip", &all, dir, None)
    }

    /// Stops the wire (removing the namespace) and returns its packet counts (JSON).
    pub fn stop(mut self) -> Option<String> {
        self.shutdown();
        self.lines.recv_timeout(Duration::from_secs(2)).ok()
    }

    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // SIGTERM through kill(1): the wire prints its counts and removes the namespace.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

fn write_control(path: &Path, imp: Impairment) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&imp).unwrap_or_default()).expect("netem control");
    std::fs::rename(&tmp, path).expect("netem control");
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One observation of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub at_s: f64,
    pub rss_kb: u64,
    pub fds: u64,
    pub disk_bytes: u64,
}

/// Samples a process's resident memory, open file descriptors and a folder's size.
#[derive(Debug)]
pub struct Sampler {
    pid: u32,
    folder: PathBuf,
    start: Instant,
    pub seen: Vec<Observation>,
}

impl Sampler {
    pub fn new(pid: u32, folder: &Path) -> Sampler {
        Sampler {
            pid,
            folder: folder.to_path_buf(),
            start: Instant::now(),
            seen: Vec::new(),
        }
    }

    /// Takes one observation (`None` if the process is gone).
    pub fn sample(&mut self) -> Option<Observation> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()?
            .count() as u64;
        let o = Observation {
            at_s: self.start.elapsed().as_secs_f64(),
            rss_kb,
            fds,
            disk_bytes: folder_size(&self.folder),
        };
        self.seen.push(o);
        Some(o)
    }

    /// The largest value of `f` over observations in `[from_s, to_s)`.
    pub fn max_between(&self, from_s: f64, to_s: f64, f: impl Fn(&Observation) -> u64) -> u64 {
        self.seen
            .iter()
            .filter(|o| o.at_s >= from_s && o.at_s < to_s)
            .map(f)
            .max()
            .unwrap_or(0)
    }

    /// Writes the observations as CSV.
    pub fn write_csv(&self, path: &Path) {
        let mut out = String::from("seconds,rss_kb,fds,disk_bytes\n");
        for o in &self.seen {
            out.push_str(&format!(
                "{:.0},{},{},{}\n",
                o.at_s, o.rss_kb, o.fds, o.disk_bytes
            ));
        }
        let _ = std::fs::write(path, out);
    }
}

/// Bytes of the files under `dir` (allocated size would hide sparse files; this is what
/// they hold).
pub fn folder_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
