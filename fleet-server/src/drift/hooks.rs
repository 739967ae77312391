//! What runs when a retrain policy fires: a command (event JSON on stdin and in a file) or
//! an HTTP POST, bounded by [`HOOK_TIMEOUT`].

use std::path::Path;

use super::*;
use crate::store::DriftEventRow;

/// The last `n` characters of `s`.
fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// Runs a hook for an event: (status `ok` | `failed` | `timeout` | `error`, detail).
pub async fn run_hook(hook: &Hook, event: &DriftEventRow, data_dir: &Path) -> (String, String) {
    match hook {
        Hook::Command(cmd) => run_command(cmd, event, data_dir).await,
        Hook::Url(url) => {
            match tokio::time::timeout(HOOK_TIMEOUT, post_json(url, &event.body)).await {
                Ok(Ok((status, body))) if (200..300).contains(&status) => {
                    ("ok".into(), format!("HTTP {status}; {}", tail(&body, 2000)))
                }
                Ok(Ok((status, body))) => (
                    "failed".into(),
                    format!("HTTP {status}; {}", tail(&body, 2000)),
                ),
                Ok(Err(e)) => ("error".into(), e.to_string()),
                Err(_) => (
                    "timeout".into(),
                    format!("no answer within {}s", HOOK_TIMEOUT.as_secs()),
                ),
            }
        }
    }
}

async fn run_command(cmd: &str, event: &DriftEventRow, data_dir: &Path) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    let dir = data_dir.join("drift-events");
    let file = dir.join(format!("{}.json", event.id));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| crate::registry::write_atomic(&file, event.body.as_bytes()));
    if let Err(e) = written {
        return (
            "error".into(),
            format!("cannot write {}: {e}", file.display()),
        );
    }
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FLEET_DRIFT_EVENT_FILE", &file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return ("error".into(), format!("cannot start sh: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let body = event.body.clone();
        // On its own task: a command that does not read stdin must not block us.
        tokio::spawn(async move {
            let _ = stdin.write_all(body.as_bytes()).await;
        });
    }
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let stderr = tail(&String::from_utf8_lossy(&out.stderr), 2000);
            let detail = format!("exit status {}; stderr: {stderr}", out.status);
            (
                if out.status.success() { "ok" } else { "failed" }.into(),
                detail,
            )
        }
        Ok(Err(e)) => ("error".into(), format!("waiting for the command: {e}")),
        // Dropping the child (kill_on_drop) kills it.
        Err(_) => (
            "timeout".into(),
            format!("killed after {}s", HOOK_TIMEOUT.as_secs()),
        ),
    }
}

/// `http://host[:port][/path]` → (host, port, path).
pub(super) fn parse_http_url(url: &str) -> Result<(String, u16, String), DriftError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid(format!(
            "hook URL `{url}` must be plain http:// (https hooks are not supported yet)"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bad_port = |p: &str| invalid(format!("hook URL `{url}`: bad port `{p}`"));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| invalid(format!("hook URL `{url}`: unclosed [")))?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad_port(p))?,
            None => 80,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| bad_port(p))?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err(invalid(format!("hook URL `{url}` has no host")));
    }
    Ok((host, port, path.to_string()))
}

/// Why a URL hook's POST did not get an answer (the event's hook status `error`).
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error(transparent)]
    Url(#[from] DriftError),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake { addr: String, source: hyper::Error },
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    #[error("POST {url}: {source}")]
    Send { url: String, source: hyper::Error },
    #[error("POST {url}: reading the answer: {source}")]
    Answer { url: String, source: hyper::Error },
}

/// POSTs `body` as JSON; (status, response body).
async fn post_json(url: &str, body: &str) -> Result<(u16, String), PostError> {
    use http_body_util::{BodyExt, Full};
    let (host, port, path) = parse_http_url(url)?;
    let addr = format!("{host}:{port}");
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| PostError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|source| PostError::Handshake { addr, source })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(hyper::body::Bytes::from(body.to_string())))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|source| PostError::Send {
            url: url.to_string(),
            source,
        })?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| PostError::Answer {
            url: url.to_string(),
            source,
        })?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
