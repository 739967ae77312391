//! Modbus TCP and RTU against the pymodbus peer (an independent implementation): every data
//! type, both float word orders at the peer's known addresses, coalescing, exceptions,
//! reconnects. Plus a raw in-process responder for what pymodbus cannot produce
//! (unknown exception codes, a device that never answers).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use edge_sources::modbus::{ModbusPoller, ModbusSourceConfig};
use edge_wire::{Quality, Value};
use interop_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KNOWN_TAGS: &str = r#"
[[tags]]
name = "counter"
table = "holding"
address = 0
[[tags]]
name = "int16"
table = "holding"
address = 1
type = "i16"
[[tags]]
name = "temp_abcd"
table = "holding"
address = 2
type = "f32"
order = "abcd"
[[tags]]
name = "temp_cdab"
table = "holding"
address = 4
type = "f32"
order = "cdab"
[[tags]]
name = "uint32"
table = "holding"
address = 6
type = "u32"
[[tags]]
name = "f_abcd"
table = "holding"
address = 8
type = "f32"
[[tags]]
name = "f_cdab"
table = "holding"
address = 10
type = "f32"
order = "cdab"
[[tags]]
name = "vibration"
table = "input"
address = 0
type = "f32"
[[tags]]
name = "temp_scaled"
table = "input"
address = 4
scale = 0.1
[[tags]]
name = "minus40"
table = "input"
address = 5
type = "i16"
[[tags]]
name = "coil0"
table = "coil"
address = 0
[[tags]]
name = "coil1"
table = "coil"
address = 1
[[tags]]
name = "alarm"
table = "discrete"
address = 0
"#;

fn config(transport: &str, extra: &str, tags: &str) -> ModbusSourceConfig {
    toml_config(&format!(
        "name = \"plc\"\n{transport}\npoll_interval = \"100ms\"\ntimeout = \"500ms\"\n\
         reconnect = {{ initial = \"100ms\", max = \"500ms\" }}\n{extra}\n{tags}"
    ))
}

fn value(samples: &[edge_wire::Sample], tag: &str) -> Value {
    samples
        .iter()
        .rev()
        .find(|s| &*s.tag == tag && s.quality == Quality::Good)
        .map(|s| s.value.clone())
        .unwrap_or_else(|| panic!("no good sample of {tag}"))
}

/// One full poll of the known addresses, checked value by value.
async fn check_known_values(h: &mut Harness) {
    // Wait for a poll where every tag is present, then take the last of each.
    h.wait_for(Duration::from_secs(10), "a good alarm sample", |s| {
        &*s.tag == "alarm" && s.quality == Quality::Good
    })
    .await;
    let s = h.collect_for(Duration::from_millis(400)).await;
    assert_eq!(value(&s, "int16"), Value::Int(-1234));
    assert_eq!(value(&s, "uint32"), Value::UInt(123_456_789));
    assert_eq!(value(&s, "f_abcd"), Value::Float(1234.5));
    assert_eq!(value(&s, "f_cdab"), Value::Float(1234.5));
    assert_eq!(value(&s, "minus40"), Value::Int(-40));
    assert_eq!(value(&s, "coil0"), Value::Bool(true));
    assert_eq!(value(&s, "coil1"), Value::Bool(false));
    assert_eq!(value(&s, "alarm"), Value::Bool(true));
    // The dynamic temperature is stored twice, ABCD and CDAB: one poll reads both equal.
    let same_poll: Vec<_> = s
        .iter()
        .filter(|x| &*x.tag == "temp_abcd" || &*x.tag == "temp_cdab")
        .collect();
    let pairs = same_poll
        .windows(2)
        .filter(|w| w[0].ts_ns == w[1].ts_ns && w[0].tag != w[1].tag);
    let mut n = 0;
    for w in pairs {
        assert_eq!(w[0].value, w[1].value, "ABCD and CDAB copies differ: {w:?}");
        n += 1;
    }
    assert!(n > 0, "no poll with both temperatures");
    let t = value(&s, "temp_abcd").as_f64().unwrap_or(f64::NAN);
    assert!(
        (55.0..=65.0).contains(&t),
        "temperature {t} outside the peer's 60±5"
    );
    let scaled = value(&s, "temp_scaled").as_f64().unwrap_or(f64::NAN);
    assert!(
        (55.0..=65.0).contains(&scaled),
        "scaled temperature {scaled}"
    );
    let vib = value(&s, "vibration").as_f64().unwrap_or(f64::NAN);
    assert!((0.3..=0.7).contains(&vib), "vibration {vib}");
    // The counter moves between polls.
    let counters: Vec<f64> = s
        .iter()
        .filter(|x| &*x.tag == "counter")
        .filter_map(|x| x.usable_f64())
        .collect();
    assert!(
        counters.len() >= 2 && counters.last() != counters.first(),
        "counter {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_reads_every_type_and_both_word_orders_in_four_requests() {
    let dir = tempdir();
    let port = free_port();
    let _server = modbus_tcp(dir.path(), port);
    let cfg = config(
        &format!("tcp = {{ address = \"127.0.0.1:{port}\" }}"),
        "",
        KNOWN_TAGS,
    );
    let poller = ModbusPoller::new(cfg);
    // holding 0..12, input 0..6, coils 0..2, discrete 0: one request each.
    assert_eq!(poller.request_count(), 4);
    let mut h = Harness::start("plc", Box::new(poller));
    check_known_values(&mut h).await;
    assert_eq!(h.stat(|s| &s.errors), 0);
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rtu_over_a_serial_line_reads_the_same_values() {
    let dir = tempdir();
    let line = modbus_rtu(dir.path(), 19200);
    let rtu = format!(
        "[rtu]\ndevice = \"{}\"\nbaud_rate = 19200\nparity = \"none\"\n",
        line.client_tty.display()
    );
    // TOML: top-level keys must come before the [rtu] table.
    let cfg: ModbusSourceConfig = toml_config(&format!(
        "name = \"rtu\"\npoll_interval = \"200ms\"\ntimeout = \"1s\"\n{KNOWN_TAGS}\n{rtu}"
    ));
    let mut h = Harness::start("rtu", Box::new(ModbusPoller::new(cfg)));
    check_known_values(&mut h).await;
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmapped_address_is_bad_without_blanking_its_neighbours() {
    let dir = tempdir();
    let port = free_port();
    let _server = modbus_tcp(dir.path(), port);
    // A 200-register gap bridge joins address 1 and 100 into one read; 22..=100 is unmapped
    // on the peer, so the device rejects the read with exception 02 and the poller splits it.
    let tags = r#"
[[tags]]
name = "int16"
table = "holding"
address = 1
type = "i16"
[[tags]]
name = "unmapped"
table = "holding"
address = 100
"#;
    let cfg = config(
        &format!("tcp = {{ address = \"127.0.0.1:{port}\" }}"),
        "max_register_gap = 120",
        tags,
    );
    let poller = ModbusPoller::new(cfg);
    assert_eq!(poller.request_count(), 1, "coalesced into one read");
    let mut h = Harness::start("plc", Box::new(poller));
    h.wait_for(Duration::from_secs(10), "good int16 after the split", |s| {
        &*s.tag == "int16" && s.value == Value::Int(-1234) && s.quality == Quality::Good
    })
    .await;
    h.wait_for(Duration::from_secs(5), "bad unmapped", |s| {
        &*s.tag == "unmapped" && s.quality == Quality::Bad
    })
    .await;
    // Both keep coming, poll after poll.
    let later = h.collect_for(Duration::from_millis(600)).await;
    assert!(
        later
            .iter()
            .filter(|s| &*s.tag == "int16" && s.quality == Quality::Good)
            .count()
            >= 3
    );
    assert!(later
        .iter()
        .filter(|s| &*s.tag == "unmapped")
        .all(|s| s.quality == Quality::Bad));
    assert!(h.stat(|s| &s.errors) >= 1);
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_the_device_restarts_and_marks_tags_bad_in_between() {
    let dir = tempdir();
    let port = free_port();
    let mut server = modbus_tcp(dir.path(), port);
    let cfg = config(
        &format!("tcp = {{ address = \"127.0.0.1:{port}\" }}"),
        "",
        KNOWN_TAGS,
    );
    let mut h = Harness::start("plc", Box::new(ModbusPoller::new(cfg)));
    h.wait_for(Duration::from_secs(10), "first good value", |s| {
        &*s.tag == "int16" && s.quality == Quality::Good
    })
    .await;
    server.kill();
    h.wait_for(
        Duration::from_secs(10),
        "bad quality while the device is gone",
        |s| &*s.tag == "int16" && s.quality == Quality::Bad,
    )
    .await;
    assert!(!h.stats.is_connected());
    server.restart();
    h.wait_for(Duration::from_secs(20), "good values again", |s| {
        &*s.tag == "int16" && s.quality == Quality::Good
    })
    .await;
    assert!(h.stat(|s| &s.reconnects) >= 1);
    assert!(h.stats.is_connected());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_device_gives_bad_samples_and_stops_promptly() {
    let port = free_port(); // nothing listens
    let cfg = config(
        &format!("tcp = {{ address = \"127.0.0.1:{port}\" }}"),
        "",
        KNOWN_TAGS,
    );
    let mut h = Harness::start("plc", Box::new(ModbusPoller::new(cfg)));
    let s = h
        .wait_for(Duration::from_secs(5), "bad sample", |s| {
            s.quality == Quality::Bad
        })
        .await;
    assert_eq!(s.value, Value::Null);
    h.wait_stats(Duration::from_secs(10), "retries counted as errors", |s| {
        s.errors.load(std::sync::atomic::Ordering::Relaxed) >= 2
    })
    .await;
    h.stop().await.unwrap();
}

/// A minimal Modbus TCP responder: answers every request with exception `code`, or never
/// answers at all (`code = None`).
async fn fake_device(code: Option<u8>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut hdr = [0u8; 7];
                while sock.read_exact(&mut hdr).await.is_ok() {
                    let len = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
                    let mut pdu = vec![0u8; len.saturating_sub(1)];
                    if sock.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let Some(code) = code else { continue };
                    let resp = [hdr[0], hdr[1], 0, 0, 0, 3, hdr[6], pdu[0] | 0x80, code];
                    if sock.write_all(&resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_exception_codes_and_silent_devices_are_bad_quality() {
    let one_tag = "[[tags]]\nname = \"x\"\ntable = \"holding\"\naddress = 0\n";
    // Exception 0x19 is not in the Modbus spec: it must not choke the poller.
    let port = fake_device(Some(0x19)).await;
    let cfg = config(
        &format!("tcp = {{ address = \"127.0.0.1:{port}\" }}"),
        "",
        one_tag,
    );
    let mut h = Harness::start("odd", Box::new(ModbusPoller::new(cfg)));
    h.wait_for(Duration::from_secs(5), "bad sample", |s| {
        s.quality == Quality::Bad
    })
    .await;
    h.wait_for(Duration::from_secs(5), "second bad sample", |s| {
        s.quality == Quality::Bad
    })
    .await;
    assert!(
        h.stats.is_connected(),
        "an exception is an answer: the connection stays up"
    );
    h.stop().await.unwrap();

    let port = fake_device(None).await;
    let cfg = config(
        &format!("tcp = {{ address = \"127.0.0.1:{port}\" }}"),
        "retries = 1",
        one_tag,
    );
    let mut h = Harness::start("silent", Box::new(ModbusPoller::new(cfg)));
    h.wait_for(Duration::from_secs(5), "bad sample after timeouts", |s| {
        s.quality == Quality::Bad
    })
    .await;
    assert!(h.stat(|s| &s.errors) >= 1);
    h.stop().await.unwrap();
}
