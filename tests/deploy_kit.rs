//! The deployment kit in `deploy/`: the systemd unit verifies, the Kubernetes and compose files parse and carry the
//! probes and health check they should, every config they embed passes `berth config check`, and `berth
//! healthcheck` (the container's HEALTHCHECK) tells a live server from a dead one.

#[path = "common/auth.rs"]
mod auth;
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
    if !common::tools_available(&["systemd-analyze"], "systemd") {
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

/// The environment of a compose service, as (name, value) pairs in file order.
fn compose_env(service: &serde_yaml_ng::Value) -> Vec<(String, String)> {
    service["environment"]
        .as_mapping()
        .expect("environment is a mapping")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                serde_yaml_ng::Value::String(s) => s.clone(),
                other => panic!("environment value {other:?} is not a string"),
            };
            (k.as_str().expect("string key").to_string(), value)
        })
        .collect()
}

/// A berth process killed when dropped.
struct Replica(std::process::Child, u16);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scale-out compose example: its two replicas, started as berth processes with exactly their environment and
/// the container's config file (only the database URL, bucket, endpoint and secrets swapped for this run's
/// servers), share one registry: what is pushed through one is pulled through the other, with a token the first
/// one issued.
#[tokio::test]
async fn compose_scale_out_replicas_share_one_registry() {
    let compose = &yaml_docs("compose-scale-out.yaml")[0];
    let services = &compose["services"];
    let env = compose_env(&services["berth-a"]);
    assert_eq!(env, compose_env(&services["berth-b"]), "replicas differ");
    for svc in ["berth-a", "berth-b"] {
        let volumes = format!("{:?}", services[svc]["volumes"]);
        assert!(
            volumes.contains("/var/lib/berth/jwt-signing.key"),
            "{svc} must mount the shared signing key: {volumes}"
        );
        let health = format!("{:?}", services[svc]["healthcheck"]["test"]);
        assert!(health.contains("/readyz"), "{svc} health check: {health}");
    }
    let caddyfile = std::fs::read_to_string(deploy("scale-out/Caddyfile")).unwrap();
    assert!(
        caddyfile.contains("berth-a:5000 berth-b:5000") && caddyfile.contains("health_uri /readyz")
    );

    let Some(endpoint) = common::s3_endpoint().filter(|_| common::on_postgres()) else {
        eprintln!("skipped starting the replicas: they need PostgreSQL and S3 (CI's second pass)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tmp.path().join("a"), tmp.path().join("b")];
    let mut run_env = Vec::new();
    for (key, value) in &env {
        let value = match key.as_str() {
            "BERTH_POSTGRES_URL" => common::postgres_url(&dirs[0]),
            "BERTH_S3_BUCKET" => common::s3_bucket(&dirs[0]),
            "BERTH_S3_ENDPOINT" => endpoint.clone(),
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => "berth-test".into(),
            "BERTH_ADMIN_PASSWORD" => common::ADMIN_PASSWORD.into(),
            _ => {
                assert!(
                    !value.contains("${"),
                    "{key} needs a substitution this test does not make"
                );
                value.clone()
            }
        };
        run_env.push((key.clone(), value));
    }
    let key = "5a".repeat(32);
    let mut replicas = Vec::new();
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("jwt-signing.key"), format!("{key}\n")).unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(deploy("container/berth.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .env_remove("BERTH_OPEN_ACCESS")
            .env("RUST_LOG", "warn")
            .envs(run_env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start a replica");
        replicas.push(Replica(child, port));
    }
    for r in &mut replicas {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", r.1)).is_err() {
            assert!(
                r.0.try_wait().unwrap().is_none(),
                "a replica exited at start"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "a replica did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let [a, b] = [0, 1].map(|i| format!("http://127.0.0.1:{}", replicas[i].1));

    let pushed = auth::push_image(&a, &auth::admin(), "team/app", "v1", "compose").await;
    let (status, token) =
        auth::fetch_token(&a, &auth::admin(), &["repository:team/app:pull"]).await;
    assert_eq!(status, 200, "{token}");
    let bearer = auth::Creds::Bearer(token["token"].as_str().expect("token").to_string());
    let (status, _, manifest) = auth::send(
        reqwest::Method::GET,
        &format!("{b}/v2/team/app/manifests/v1"),
        &bearer,
        &[("Accept", auth::OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&manifest));
    assert_eq!(auth::sha256(&manifest), pushed.manifest);
    let (status, _, layer) = auth::send(
        reqwest::Method::GET,
        &format!("{b}/v2/team/app/blobs/{}", pushed.layer),
        &bearer,
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(auth::sha256(&layer), pushed.layer);
    // Anonymous pulls of the private repository stay refused on either replica.
    let (status, _, _) = auth::send(
        reqwest::Method::GET,
        &format!("{b}/v2/team/app/manifests/v1"),
        &auth::Creds::Anonymous,
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 401);
    drop(replicas);
    common::drop_database(&dirs[0]);
}
