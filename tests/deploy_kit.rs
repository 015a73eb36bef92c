//! The deployment kit in `deploy/`: the systemd unit verifies, the Kubernetes and compose files parse and carry the
//! probes and health check they should, every config they embed passes `berth config check`, and `berth
//! healthcheck` (the container's HEALTHCHECK) tells a live server from a dead one.

mod common;
#[path = "common/image.rs"]
mod image;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Berth, free_port};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn berth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("run berth")
}

/// Runs `berth config check` on TOML text.
fn config_check(toml: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, toml).unwrap();
    let out = berth(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{what}: berth config check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml_docs(file: &str) -> Vec<serde_yaml_ng::Value> {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect()
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !image::tools_available(&["systemd-analyze"], "systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(deploy("systemd/berth.service"))
        .unwrap()
        .replace("/usr/local/bin/berth", env!("CARGO_BIN_EXE_berth"));
    let path = dir.path().join("berth.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for berth.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(
        level < 2.0,
        "exposure {level}: the unit lost its hardening\n{text}"
    );
    config_check(
        &std::fs::read_to_string(deploy("systemd/berth.toml")).unwrap(),
        "systemd/berth.toml",
    );
}

#[test]
fn kubernetes_manifests_probe_the_right_endpoints_and_embed_a_valid_config() {
    let docs = yaml_docs("kubernetes/berth.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Service", "StatefulSet"]);
    config_check(
        docs[0]["data"]["berth.toml"].as_str().unwrap(),
        "ConfigMap berth.toml",
    );
    let set = &docs[2];
    let c = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        set["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    // The config the container is told to read is the one the ConfigMap mounts.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["serve", "--config", "/etc/berth/berth.toml"]);
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/etc/berth" && m["name"] == "config")
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/lib/berth" && m["name"] == "data")
    );
    assert_eq!(docs[1]["spec"]["ports"][0]["port"].as_u64(), Some(5000));
}

#[test]
fn compose_and_container_files_agree() {
    let compose = &yaml_docs("compose.yaml")[0];
    let svc = &compose["services"]["berth"];
    assert_eq!(
        svc["build"]["dockerfile"].as_str(),
        Some("deploy/container/Containerfile")
    );
    let hc: Vec<&str> = svc["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(hc[1..3], ["/usr/local/bin/berth", "healthcheck"]);
    config_check(
        &std::fs::read_to_string(deploy("container/berth.toml")).unwrap(),
        "container/berth.toml",
    );
    let containerfile = std::fs::read_to_string(deploy("container/Containerfile")).unwrap();
    for needle in [
        "USER 10001",
        "HEALTHCHECK",
        "\"healthcheck\"",
        "/healthz",
        "AS build",
        "COPY --from=build",
    ] {
        assert!(
            containerfile.contains(needle),
            "Containerfile lacks {needle:?}"
        );
    }
}

#[test]
fn healthcheck_command_tells_a_live_server_from_a_dead_one() {
    let b = Berth::start();
    let ok = berth(&["healthcheck", "--url", &format!("{}/healthz", b.url())]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ready = berth(&["healthcheck", "--url", &format!("{}/readyz", b.url())]);
    assert!(ready.status.success());
    let dead = berth(&[
        "healthcheck",
        "--url",
        &format!("http://127.0.0.1:{}/healthz", free_port()),
    ]);
    assert_eq!(dead.status.code(), Some(1));
    assert!(!dead.stderr.is_empty(), "a failed check says why");
}
