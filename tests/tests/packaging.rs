//! The Debian package: built from this build's binary, it holds the binary, the hardened unit,
//! the config as a conffile and the docs; as root, a full install -> upgrade -> remove ->
//! purge cycle runs on this machine (`packaging/deb/test-cycle.sh`): the system user is
//! created, an edited config and the state directory survive the upgrade, the state survives
//! `remove`, and `purge` deletes it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use interop_tests::*;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

#[test]
fn package_contents_and_install_upgrade_remove_cycle() {
    let dir = tempdir();
    // This build's binary without its debug info (a debug build is ~450 MB).
    let bin = dir.path().join("edge-agent");
    let st = Command::new("strip")
        .arg("--strip-debug")
        .arg(workspace_bin("edge-agent"))
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new(workspace().join("packaging/deb/build.sh"))
        .arg("amd64")
        .arg(&bin)
        .arg(dir.path())
        .env("DEB_COMPRESS", "none")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let list = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for path in [
        "./usr/bin/edge-agent",
        "./lib/systemd/system/edge-agent.service",
        "./etc/edge-agent/agent.toml",
        "./usr/share/doc/edge-agent/README.md",
        "./usr/share/doc/edge-agent/docs/config.md",
        "./usr/share/doc/edge-agent/docs/install.md",
        "./usr/share/doc/edge-agent/examples/demo.toml",
    ] {
        assert!(
            list.contains(path),
            "{path} missing from the package:\n{list}"
        );
    }
    assert!(
        list.lines()
            .next()
            .is_some_and(|l| l.starts_with("drwxr-xr-x")),
        "the package root must be 0755: {list}"
    );
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("conffiles") && info.contains("Package: edge-agent"),
        "{info}"
    );
    // The shipped config is valid.
    let check = Command::new(workspace_bin("edge-agent"))
        .args(["check", "--config"])
        .arg(workspace().join("packaging/deb/agent.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    if !is_root() {
        eprintln!("SKIPPED the install cycle: needs root for dpkg -i");
        return;
    }
    let cycle = Command::new(workspace().join("packaging/deb/test-cycle.sh"))
        .arg(&bin)
        .env("DEB_COMPRESS", "none")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&cycle.stdout),
        String::from_utf8_lossy(&cycle.stderr)
    );
    assert!(cycle.status.success(), "{text}");
    assert!(text.contains("install/upgrade/remove/purge: OK"), "{text}");
}
