//! Installing an agent release the fleet asks for: download, verify, write beside the
//! others, try its `--version`, switch (the layout, the switch and what happens next:
//! [`crate::agent_update`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edge_wire::release::{Release, ReleaseSeal};
use edge_wire::sync::{AgentReport, DesiredRelease, UpdateOutcome};

use super::client::FleetClient;
use super::update::{fetch, Retry};
use crate::agent_update::{Installed, PendingRelease, ReleaseStore, TARGET};

/// How long the new binary's `--version` may take.
const VERSION_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What the sync task keeps for agent updates.
#[derive(Debug)]
pub struct AgentUpdater {
    /// The releases on this device.
    pub store: Arc<ReleaseStore>,
    /// `[sync.agent_update] trusted_keys` (empty: agent updates are refused).
    pub trusted: Vec<ed25519_dalek::VerifyingKey>,
    /// Where downloads are kept until complete (shared with bundle downloads).
    pub downloads: PathBuf,
    /// `[sync] max_bytes_per_s`.
    pub max_bytes_per_s: u64,
    /// Bytes downloaded per artifact over every attempt.
    pub downloaded: HashMap<String, u64>,
}

/// A release that will not be installed: reported `failed` and not tried again.
fn refuse(
    u: &AgentUpdater,
    d: &DesiredRelease,
    method: &str,
    bytes: u64,
    detail: String,
) -> Result<bool, Retry> {
    tracing::error!(version = %d.version, version_number = d.version_number,
        "agent release refused: {detail}");
    let report = AgentReport {
        version: d.version.clone(),
        version_number: d.version_number,
        sha256: d.sha256.clone(),
        from_version: crate::version().to_string(),
        rollout: d.rollout.clone(),
        outcome: UpdateOutcome::Failed,
        method: method.into(),
        downloaded_bytes: bytes,
        detail,
    };
    u.store
        .update(|s| {
            s.given_up.push(d.sha256.clone());
            s.owed.push(report);
        })
        .map_err(|e| Retry(e.to_string()))?;
    Ok(false)
}

/// Installs `d` and switches to it. `Ok(true)`: switched, the agent must exit for systemd
/// to start the new binary; `Ok(false)`: nothing to do (already running it, given up on,
/// another release being checked) or refused (a report is owed); `Err`: a temporary
/// problem, tried again at the next check-in.
pub async fn install(
    u: &mut AgentUpdater,
    client: &mut FleetClient,
    d: &DesiredRelease,
) -> Result<bool, Retry> {
    let state = u.store.state().map_err(|e| Retry(e.to_string()))?;
    let running = u.store.running(&state);
    if running.as_ref().is_some_and(|r| r.sha256 == d.sha256)
        || state.given_up.contains(&d.sha256)
        || state.pending.is_some()
    {
        return Ok(false);
    }
    if u.trusted.is_empty() {
        return refuse(
            u,
            d,
            "none",
            0,
            "agent updates are not enabled on this device (no [sync.agent_update] trusted_keys)"
                .into(),
        );
    }
    if d.target != TARGET {
        return refuse(
            u,
            d,
            "none",
            0,
            format!("release is for {}, this device runs {TARGET}", d.target),
        );
    }
    // A release kept on the device (an operator's rollback to the previous one): no
    // download, and the floor does not apply to a release this device committed before.
    let kept = [&state.current, &state.previous]
        .into_iter()
        .flatten()
        .find(|i| i.sha256 == d.sha256)
        .cloned();
    if let Some(k) = kept {
        if u.store.binary(&k.sha256).exists() {
            return switch(u, d, k, "local", 0, &running);
        }
    }
    if d.version_number < state.floor {
        return refuse(
            u,
            d,
            "none",
            0,
            format!(
                "release number {} is below this device's floor {}: refusing a downgrade",
                d.version_number, state.floor
            ),
        );
    }
    // The bytes a delta applies to: the running release file, rebuilt from its binary
    // and seal (the server sends a full release to a device on its base binary).
    let needs_base =
        edge_wire::delta::Method::from_name(&d.artifact.method).is_some_and(|m| m.needs_base());
    let base = if d.artifact.method == "full" {
        None
    } else if !needs_base {
        Some(Vec::new()) // a compressed full release (`zstd-full`)
    } else {
        let Some(r) = &running else {
            return refuse(
                u,
                d,
                &d.artifact.method,
                0,
                "the server sent a delta, but this device runs no fleet release to apply it to"
                    .into(),
            );
        };
        let bin = std::fs::read(u.store.binary(&r.sha256))
            .map_err(|e| Retry(format!("running release binary: {e}")))?;
        let seal: ReleaseSeal = std::fs::read(u.store.seal(&r.sha256))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Retry("running release: seal.json missing or unreadable".into()))?;
        match Release::from_parts(bin, &seal, &u.trusted, TARGET) {
            Ok(rel) => Some(rel.to_bytes()),
            Err(e) => {
                return refuse(
                    u,
                    d,
                    &d.artifact.method,
                    0,
                    format!("the running release cannot be rebuilt as a delta base: {e}"),
                )
            }
        }
    };
    let (artifact, got) = fetch(
        client,
        &u.downloads,
        &d.artifact,
        u.max_bytes_per_s,
        &mut u.downloaded,
    )
    .await?;
    let method = d.artifact.method.clone();
    let bytes = match &base {
        None => artifact,
        Some(b) => match edge_wire::delta::apply(b, &artifact) {
            Ok(x) => x,
            Err(e) => {
                return refuse(
                    u,
                    d,
                    &method,
                    got,
                    format!("delta ({method}) does not apply: {e}"),
                )
            }
        },
    };
    let rel = match Release::from_bytes(&bytes, &u.trusted, TARGET, state.floor) {
        Ok(r) => r,
        Err(e) => return refuse(u, d, &method, got, format!("release refused: {e}")),
    };
    if rel.sha256() != d.sha256 || rel.manifest().version_number != d.version_number {
        return refuse(
            u,
            d,
            &method,
            got,
            format!(
                "release is #{} ({}), not the announced #{} ({})",
                rel.manifest().version_number,
                rel.sha256(),
                d.version_number,
                d.sha256
            ),
        );
    }
    if let Err(e) = write_release(&u.store, &rel) {
        return Err(Retry(format!("cannot write the release: {e}")));
    }
    if let Err(why) = version_check(&u.store, &rel).await {
        let _ = crate::agent_update::remove_release_dir(&u.store.release_dir(rel.sha256()));
        return refuse(u, d, &method, got, why);
    }
    let k = Installed {
        sha256: rel.sha256().to_string(),
        version: rel.manifest().version.clone(),
        version_number: rel.manifest().version_number,
    };
    switch(u, d, k, &method, got, &running)
}

/// Makes `k` current and pending, the running release previous: one atomic state write.
fn switch(
    u: &AgentUpdater,
    d: &DesiredRelease,
    k: Installed,
    method: &str,
    got: u64,
    running: &Option<Installed>,
) -> Result<bool, Retry> {
    let pending = PendingRelease {
        release: k.clone(),
        from_version: crate::version().to_string(),
        rollout: d.rollout.clone(),
        method: method.into(),
        downloaded_bytes: got,
        starts: 0,
    };
    u.store
        .update(|s| {
            s.previous = running.clone();
            s.current = Some(k.clone());
            s.pending = Some(pending);
        })
        .map_err(|e| Retry(e.to_string()))?;
    tracing::info!(version = %k.version, version_number = k.version_number, method,
        downloaded_bytes = got, "agent release installed; restarting into it");
    Ok(true)
}

/// Writes the binary (0755, fsynced, renamed into place) and its seal.
fn write_release(store: &ReleaseStore, rel: &Release) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = store.release_dir(rel.sha256());
    std::fs::create_dir_all(&dir)?;
    let bin = store.binary(rel.sha256());
    let tmp = dir.join("edge-agent.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(rel.binary())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &bin)?;
    let seal = serde_json::to_vec_pretty(&rel.seal()).map_err(std::io::Error::other)?;
    crate::remote_config::write_atomic(&store.seal(rel.sha256()), &seal)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs `BINARY --version`: it must start on this machine and name the manifest's version.
/// (std's process API on a blocking thread, polled for the timeout: tokio's process driver
/// would add its child reaper to a binary measured in bytes for this one call.)
async fn version_check(store: &ReleaseStore, rel: &Release) -> Result<(), String> {
    let bin = store.binary(rel.sha256());
    let want = rel.manifest().version.clone();
    let run = move || -> Result<(std::process::ExitStatus, String), String> {
        use std::io::Read;
        let mut child = std::process::Command::new(&bin)
            .arg("--version")
            .env_remove(crate::agent_update::RELEASE_ENV)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("the new binary does not start here: {e}"))?;
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if started.elapsed() < VERSION_CHECK_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the new binary's --version did not finish within {VERSION_CHECK_TIMEOUT:?}"
                    ));
                }
                Err(e) => return Err(format!("waiting for the new binary: {e}")),
            }
        };
        let mut text = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        Ok((status, text))
    };
    let (status, text) = tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| format!("version check: {e}"))??;
    let said = text.split_whitespace().nth(1).unwrap_or("");
    if !status.success() || said != want {
        return Err(format!(
            "the new binary's --version said `{}` ({status}), the release names version {want}",
            text.trim()
        ));
    }
    Ok(())
}
