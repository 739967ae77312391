//! End to end: the real `edge-agent` binary reading OPC-UA (asyncua), Modbus TCP (pymodbus),
//! MQTT (Mosquitto) and the simulated plant at once, with one unreachable device and one
//! wrong password among them; a peer is killed mid-run; SIGTERM; everything read is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interop_tests::*;

#[test]
fn all_sources_at_once_survive_broken_peers_and_shut_down_cleanly() {
    let dir = tempdir();
    let d = dir.path();
    let broker = mosquitto(d);
    let ua_port = free_port();
    let _ua = opcua_server(d, ua_port, false);
    let mb_port = free_port();
    let mut modbus = modbus_tcp(d, mb_port);
    let dead_port = free_port();
    let csv = d.join("samples.csv");
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "e2e"
data_dir = "{d}"

[[sources.simulated]]
name = "plant"
sample_interval = "100ms"

[[sources.opcua]]
name = "ua"
endpoint = "opc.tcp://127.0.0.1:{ua_port}"
publishing_interval = "100ms"
[[sources.opcua.tags]]
name = "ua.counter"
node_id = "ns=2;s=Pump1.Counter"

[[sources.modbus]]
name = "plc"
tcp = {{ address = "127.0.0.1:{mb_port}" }}
poll_interval = "100ms"
reconnect = {{ initial = "100ms", max = "500ms" }}
[[sources.modbus.tags]]
name = "plc.f_cdab"
table = "holding"
address = 10
type = "f32"
order = "cdab"

[[sources.modbus]]
name = "dead-plc"
tcp = {{ address = "127.0.0.1:{dead_port}" }}
[[sources.modbus.tags]]
name = "dead.x"
table = "holding"
address = 0

[[sources.mqtt]]
name = "mq"
[sources.mqtt.broker]
url = "mqtt://127.0.0.1:{anon}"
[[sources.mqtt.tags]]
name = "mq.flow"
topic = "e2e/flow"

[[sources.mqtt]]
name = "mq-badpass"
[sources.mqtt.broker]
url = "mqtt://127.0.0.1:{userpass}"
username = "edge"
password = "wrong"
[[sources.mqtt.tags]]
name = "mq.secret"
topic = "e2e/secret"

[[outputs.file]]
name = "rec"
path = "{csv}"
format = "csv"
"#,
            d = d.display(),
            anon = broker.anon,
            userpass = broker.userpass,
            csv = csv.display()
        ),
    )
    .unwrap();
    let log_path = d.join("agent.log");
    let mut agent = Command::new(workspace_bin("edge-agent"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let log_now = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let recorded = || {
        let text = std::fs::read_to_string(&csv).unwrap_or_default();
        // Complete lines only: the agent is writing the file.
        tally(&text[..text.rfind('\n').map_or(0, |i| i + 1)])
    };
    let good = |counts: &HashMap<String, (usize, usize)>, t: &str| counts.get(t).map_or(0, |c| c.0);
    wait_until(
        "the MQTT source subscribed and the PLC read well",
        Duration::from_secs(30),
        log_now,
        || {
            let (counts, _) = recorded();
            (log_now().contains("mqtt subscribed") && good(&counts, "plc.f_cdab") > 0).then_some(())
        },
    );
    for i in 0..10 {
        mqtt_publish(broker.anon, "e2e/flow", &format!("{i}.5"), &[]);
    }
    // The Modbus device dies and comes back while the others keep going.
    modbus.kill();
    wait_until("bad PLC quality", Duration::from_secs(30), log_now, || {
        recorded().1.contains(&false).then_some(())
    });
    modbus.restart();
    wait_until(
        "good PLC values again, and every other source's samples",
        Duration::from_secs(60),
        log_now,
        || {
            let (counts, plc) = recorded();
            let first_bad = plc.iter().position(|g| !g)?;
            let bad = |t: &str| counts.get(t).map_or(0, |c| c.1);
            (plc[first_bad..].contains(&true)
                && good(&counts, "pump1.temperature") > 50
                && good(&counts, "ua.counter") > 10
                && good(&counts, "mq.flow") == 10
                && bad("dead.x") >= 1
                && bad("mq.secret") >= 1)
                .then_some(())
        },
    );
    let t0 = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "agent did not exit within 6 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = log_now();
    assert!(status.success(), "{status:?}\n{log}");

    // Per tag: (good, bad) counts, and the order of qualities for the Modbus tag.
    let text = std::fs::read_to_string(&csv).unwrap();
    let (counts, plc_sequence) = tally(&text);
    for row in text
        .lines()
        .filter(|r| r.starts_with("plc.f_cdab,") && r.ends_with(",good"))
    {
        assert!(row.contains(",1234.5,"), "{row}");
    }
    let get = |t: &str| counts.get(t).copied().unwrap_or_default();
    assert!(
        get("pump1.temperature").0 > 50,
        "simulated: {:?}",
        get("pump1.temperature")
    );
    assert!(
        get("ua.counter").0 > 10,
        "opc-ua: {:?}\n{log}",
        get("ua.counter")
    );
    assert_eq!(get("mq.flow").0, 10, "mqtt: every published message");
    assert!(
        get("dead.x").1 >= 1 && get("dead.x").0 == 0,
        "unreachable device: {:?}",
        get("dead.x")
    );
    assert!(
        get("mq.secret").1 >= 1 && get("mq.secret").0 == 0,
        "wrong password: {:?}",
        get("mq.secret")
    );
    // good -> bad (device killed) -> good again (device back)
    let first_bad = plc_sequence
        .iter()
        .position(|g| !g)
        .expect("bad quality while the device was down");
    assert!(
        plc_sequence[..first_bad].iter().any(|g| *g),
        "good before the outage"
    );
    assert!(
        plc_sequence[first_bad..].iter().any(|g| *g),
        "good after the restart: {plc_sequence:?}"
    );
    // The log names the problems.
    let logged = |source: &str, text: &str| {
        log.lines()
            .any(|l| l.contains(&format!("source={source}")) && l.contains(text))
    };
    assert!(
        logged("dead-plc", "modbus unreachable: connect to"),
        "{log}"
    );
    assert!(
        logged("mq-badpass", "refused the user name/password"),
        "{log}"
    );
    // Everything read was recorded.
    let stopped = log
        .lines()
        .find(|l| l.contains("pipeline stopped"))
        .unwrap_or_default();
    assert!(
        stopped.contains("dropped=0") && stopped.contains("clean=true"),
        "{stopped}"
    );
    let rows = text.lines().count() - 1;
    assert!(
        stopped.contains(&format!("samples={rows} ")),
        "{stopped} vs {rows} rows"
    );
}

/// Per tag of a recording: (good, bad) sample counts; and the qualities of the Modbus tag
/// `plc.f_cdab` in order (true = good).
fn tally(text: &str) -> (HashMap<String, (usize, usize)>, Vec<bool>) {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    let mut plc = Vec::new();
    for row in text.lines().skip(1) {
        let tag = row.split(',').next().unwrap_or_default().to_string();
        let good = row.ends_with(",good");
        let c = counts.entry(tag.clone()).or_default();
        if good {
            c.0 += 1
        } else {
            c.1 += 1
        }
        if tag == "plc.f_cdab" {
            plc.push(good);
        }
    }
    (counts, plc)
}
