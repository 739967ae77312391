//! Mosquitto, the MQTT broker peer, and publishing to it with `mosquitto_pub`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::peer::{free_port, peers_dir, wait_port, Peer};

/// Mosquitto with three listeners: anonymous, user/password (`edge`/`edge-pass`), and mTLS.
#[derive(Debug)]
pub struct Broker {
    pub anon: u16,
    pub userpass: u16,
    pub mtls: u16,
    pub certs: PathBuf,
    pub peer: Peer,
}

pub fn mosquitto(dir: &Path) -> Broker {
    let certs = peers_dir().join("certs");
    let (anon, userpass, mtls) = (free_port(), free_port(), free_port());
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").expect("passwd file");
    let st = Command::new("mosquitto_passwd")
        .args([
            "-b",
            passwd.to_str().unwrap_or_default(),
            "edge",
            "edge-pass",
        ])
        .status()
        .expect("mosquitto_passwd (apt mosquitto)");
    assert!(st.success());
    let conf = format!(
        "per_listener_settings true\nlog_type all\nmax_queued_messages 100000\n\
         listener {anon} 127.0.0.1\nallow_anonymous true\n\n\
         listener {userpass} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n\n\
         listener {mtls} 127.0.0.1\ncafile {c}/ca.crt\ncertfile {c}/server.crt\nkeyfile {c}/server.key\n\
         require_certificate true\nuse_identity_as_username true\nallow_anonymous true\n",
        passwd = passwd.display(),
        c = certs.display()
    );
    let peer = start(dir, "mosquitto", &conf, mtls);
    wait_port(anon, Duration::from_secs(5));
    wait_port(userpass, Duration::from_secs(5));
    Broker {
        anon,
        userpass,
        mtls,
        certs,
        peer,
    }
}

/// A Mosquitto broker with one anonymous listener on every address (so that a network
/// namespace behind a [`crate::faults::Wire`] reaches it at the wire's host address).
pub fn mosquitto_everywhere(dir: &Path) -> (Peer, u16) {
    let port = free_port();
    let conf = format!(
        "log_type error\nlog_type warning\nlog_type notice\nmax_queued_messages 1000000\n\
         listener {port} 0.0.0.0\nallow_anonymous true\n"
    );
    let peer = start(dir, "mosquitto-wire", &conf, port);
    wait_port(port, Duration::from_secs(5));
    (peer, port)
}

/// Starts Mosquitto as peer `name` with `settings` (listeners and their options) after what
/// every test broker has: no persistence, logs to stderr, and running as root when the tests
/// are (Mosquitto started as root otherwise drops to a user that cannot read the test keys).
fn start(dir: &Path, name: &str, settings: &str, ready_port: u16) -> Peer {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let conf = format!(
        "{}persistence false\nlog_dest stderr\n{settings}",
        if root { "user root\n" } else { "" }
    );
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).expect("mosquitto conf");
    Peer::start(
        name,
        "mosquitto",
        &["-c", conf_path.to_str().unwrap_or_default()],
        dir,
        Some(ready_port),
    )
}

/// Publishes one message with mosquitto_pub (an independent client).
pub fn mqtt_publish(port: u16, topic: &str, payload: &str, extra: &[&str]) {
    mosquitto_pub(port, topic, &["-m", payload], extra);
}

/// Publishes a file's bytes with mosquitto_pub (binary payloads such as Sparkplug NCMD).
pub fn mqtt_publish_file(port: u16, topic: &str, file: &Path) {
    mosquitto_pub(port, topic, &["-f", file.to_str().unwrap_or_default()], &[]);
}

/// Publishes each line of `lines` as one message (QoS 1, in order) with `mosquitto_pub -l`.
pub fn mqtt_publish_lines(port: u16, topic: &str, lines: &str) {
    use std::io::Write;
    let mut child = mosquitto_pub_cmd(port, topic)
        .arg("-l")
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.as_bytes())
            .expect("write to mosquitto_pub");
    }
    let st = child.wait().expect("mosquitto_pub");
    assert!(st.success(), "mosquitto_pub -l to {topic} failed");
}

fn mosquitto_pub_cmd(port: u16, topic: &str) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
    ]);
    c
}

fn mosquitto_pub(port: u16, topic: &str, payload: &[&str], extra: &[&str]) {
    let st = mosquitto_pub_cmd(port, topic)
        .args(payload)
        .args(extra)
        .status()
        .expect("mosquitto_pub");
    assert!(st.success(), "mosquitto_pub to {topic} failed");
}
