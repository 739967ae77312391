//! The asyncua OPC-UA server peer.

use std::path::Path;

use crate::peer::{peer_script, python, Peer};

/// The asyncua test server (`tests/peers/opcua_server.py`): None, or Basic256Sha256
/// SignAndEncrypt with user `edge`/`edge-pass`.
pub fn opcua_server(dir: &Path, port: u16, secure: bool) -> Peer {
    let endpoint = format!("opc.tcp://127.0.0.1:{port}");
    let pki = dir.join(format!("server-pki-{port}"));
    let script = peer_script("opcua_server.py");
    let args = [
        script.to_str().unwrap_or_default(),
        "--endpoint",
        &endpoint,
        "--security",
        if secure { "secure" } else { "none" },
        "--rate",
        "20",
        "--user",
        "edge:edge-pass",
        "--pki",
        pki.to_str().unwrap_or_default(),
    ];
    Peer::start(&format!("opcua-{port}"), python(), &args, dir, Some(port))
}
