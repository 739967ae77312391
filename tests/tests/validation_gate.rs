//! The validation gate end to end: the fleet server runs each pushed version of a gated
//! bundle name over a holdout recording with `edge-agent replay` (the devices' own code),
//! stores its metrics, and refuses to roll out a version below the limits unless forced
//! (audited) — locally on the data directory and through the operator API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use interop_tests::fleet::*;
use interop_tests::*;
use serde_json::Value;

fn validation_of(server: &FleetServer, n: i64) -> Value {
    let list: Value =
        serde_json::from_str(&server.cli(&["model", "list", "--json"])).expect("list json");
    list.as_array()
        .expect("array")
        .iter()
        .find(|b| b["version_number"] == n)
        .map(|b| b["validation"].clone())
        .expect("version listed")
}

#[test]
fn a_version_below_its_gate_is_refused_for_rollout_unless_forced() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let (key, public) = keygen(d, "ml");
    server.cli(&["model", "trust", &public.display().to_string()]);
    // 10 minutes of a healthy pump with its ground truth `pump1.fault` = 0 every second.
    let hold = d.join("holdout.csv");
    pump_recording(&hold, 6000, Some(("pump1.fault", 10, 0.0)));
    // v1 alarms above 0.9 (never on a healthy pump); v2 above 0.3 (on almost every window).
    let v1 = pack_conv_net(d, &key, &hold, 1, "0.9");
    let v2 = pack_conv_net(d, &key, &hold, 2, "0.3");

    let gate = server.cli(&[
        "model",
        "gate",
        "set",
        "pump-conv",
        "--holdout",
        &hold.display().to_string(),
        "--label-tag",
        "pump1.fault",
        "--min-accuracy",
        "0.9",
        "--max-alarm-rate",
        "0.05",
    ]);
    let gate: Value = serde_json::from_str(&gate).expect("gate json");
    assert_eq!(gate["holdout_name"], "holdout.csv");
    assert_eq!(gate["rules"]["min_accuracy"], 0.9);

    // Each push is validated at once.
    server.cli(&["model", "push", &v1.display().to_string()]);
    let val1 = validation_of(&server, 1);
    assert_eq!(val1["status"], "passed", "{val1}");
    let m = &val1["metrics"];
    assert!(
        m["predictions"].as_u64().expect("predictions") >= 180,
        "{m}"
    );
    assert_eq!(m["alarm_rate"], 0.0, "{m}");
    assert!(m["labelled"].as_u64().expect("labelled") > 100, "{m}");
    assert_eq!(m["accuracy"], 1.0, "{m}");
    server.cli(&["model", "push", &v2.display().to_string()]);
    let val2 = validation_of(&server, 2);
    assert_eq!(val2["status"], "failed", "{val2}");
    let detail = val2["detail"].as_str().expect("detail");
    assert!(
        detail.contains("accuracy") && detail.contains("< min 0.9"),
        "{detail}"
    );
    assert!(
        detail.contains("alarm_rate") && detail.contains("> max 0.05"),
        "{detail}"
    );

    // v2 is refused for rollout, with the reason; v1 goes.
    let (ok, _, err) = server.cli_status(&["model", "rollout", "start", "pump-conv", "2"]);
    assert!(!ok);
    assert!(err.contains("did not pass its validation gate"), "{err}");
    assert!(err.contains("--force"), "{err}");
    server.cli(&["model", "rollout", "start", "pump-conv", "1"]);
    // Forced: it starts, and the audit log says so under the operator's name.
    server.cli(&["model", "rollout", "start", "pump-conv", "2", "--force"]);
    let audit = server.audit();
    assert!(audit.contains("rollout.refused"), "{audit}");
    assert!(audit.contains("FORCED past the validation gate"), "{audit}");
    assert!(audit.contains("model.gate.set"), "{audit}");
    assert!(audit.contains("model.validate"), "{audit}");

    // Through the operator API: the gate is listed and a version validated again.
    let (ok, out, err) = server.cli_status(&["user", "add", "olga", "--role", "operator"]);
    assert!(ok, "user add: {err}{out}");
    let (ok, out, err) = server.cli_status(&[
        "token", "create", "--name", "cli", "--user", "olga", "--ttl", "1h",
    ]);
    assert!(ok, "token create: {err}");
    let token = d.join("olga.token");
    std::fs::write(&token, out.trim()).expect("token file");
    let (ok, out, err) = server.remote(&token, &["model", "gate", "list"]);
    assert!(ok, "remote gate list: {err}");
    let listed: Value = serde_json::from_str(out.trim()).expect("gate line");
    assert_eq!(listed["bundle"], "pump-conv");
    let (ok, out, err) = server.remote(&token, &["model", "validate", "pump-conv", "1"]);
    assert!(ok, "remote validate: {err}");
    let v: Value = serde_json::from_str(out.trim()).expect("validation json");
    assert_eq!(v["status"], "passed");
    let (ok, _, err) = server.remote(&token, &["model", "validate", "pump-conv", "2"]);
    assert!(!ok, "a failing validation exits non-zero");
    assert!(err.contains("failed"), "{err}");
    // A gate that cannot be met without labels is refused when set.
    let (ok, _, err) = server.remote(
        &token,
        &[
            "model",
            "gate",
            "set",
            "pump-conv",
            "--holdout",
            &hold.display().to_string(),
            "--min-recall",
            "0.5",
        ],
    );
    assert!(!ok);
    assert!(err.contains("need label_tag"), "{err}");
}
