//! The Docker engine pulling through berth as its `registry-mirrors` entry (README "Mirrors", Docker): a mirror
//! listener answers Docker Hub names at its root, the upstream being a second, real berth that stands in for Docker
//! Hub and holds a multi-arch image. dockerd asks the mirror first and would fall back to registry-1.docker.io,
//! which is unreachable here, so a successful pull went through berth; the image ID (the config digest) and the
//! upstream's own digests prove the bytes are the upstream's.
//!
//! Skipped with a message when dockerd is not installed and `CI` is unset (a failure under CI), or when the daemon
//! cannot start in the sandbox (as the containerd tests do).

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Berth, client, free_port};
use image::build_multiarch;
use tools::{layout_ref, skopeo_ok};

/// A private dockerd (own data root, socket and containerd namespace), killed with its process group on drop.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    /// Starts dockerd with `mirror` as its only registry mirror; `None` when the daemon cannot run here.
    fn start(dir: &Path, mirror: &str) -> Option<Dockerd> {
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let out = std::fs::File::create(&log).expect("dockerd log");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            // No network set-up: pulls need none, and a sandbox may not allow it.
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args([
                "--storage-driver=vfs",
                "--containerd-namespace",
                "berth-test",
            ])
            .arg("--registry-mirror")
            .arg(format!("http://{mirror}"))
            .arg("--insecure-registry")
            .arg(mirror)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn dockerd");
        let mut d = Dockerd { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if d.docker(&["info"]).status.success() {
                return Some(d);
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                eprintln!(
                    "SKIPPED: dockerd cannot run here ({status}): {}",
                    d.log_tail()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "SKIPPED: dockerd did not answer within 30 s: {}",
            d.log_tail()
        );
        None
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.socket.with_file_name("client"))
            .output()
            .expect("run docker")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group this test created for dockerd (and the containerd it started).
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above; whatever is left of the group goes.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_through_the_mirror_listener() {
    if !common::tools_available(&["dockerd", "docker", "skopeo"], "docker.io skopeo") {
        return;
    }
    // "Docker Hub": a berth holding library/berthtest:1, a two-platform index.
    let upstream = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout_dir = tmp.path().join("layout");
    let (layout, index, children) = build_multiarch(&layout_dir, 0x5eed_d0c4, "1");
    assert_eq!(layout_ref(&layout_dir, "1"), index.digest);
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", layout_dir.display()),
            &format!("docker://{}/library/berthtest:1", upstream.host()),
        ],
        tmp.path(),
    );

    // berth: the mirror named docker.io answers at the root of its own listener.
    let mirror_port = free_port();
    let config = tmp.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\n[[server.mirror_listener]]\nlisten = \"127.0.0.1:{mirror_port}\"\nmirror = \"docker.io\"\n\
             [[mirror]]\nname = \"docker.io\"\nupstream = \"{}\"\n",
            upstream.url()
        ),
    )
    .expect("write config");
    let b = Berth::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    let mirror = format!("127.0.0.1:{mirror_port}");

    let docker_dir = tmp.path().join("docker");
    std::fs::create_dir_all(&docker_dir).expect("docker dir");
    let Some(dockerd) = Dockerd::start(&docker_dir, &mirror) else {
        return;
    };
    let pull = dockerd.docker(&["pull", "berthtest:1"]);
    assert!(
        pull.status.success(),
        "docker pull through the mirror failed: {}\n{}\ndockerd: {}",
        String::from_utf8_lossy(&pull.stdout),
        String::from_utf8_lossy(&pull.stderr),
        dockerd.log_tail()
    );
    let stdout = String::from_utf8_lossy(&pull.stdout).to_string();
    let upstream_digest = client()
        .head(format!(
            "{}/v2/library/berthtest/manifests/1",
            upstream.url()
        ))
        .header("accept", image::ACCEPT_ALL)
        .send()
        .await
        .expect("HEAD upstream")
        .headers()["docker-content-digest"]
        .to_str()
        .expect("digest header")
        .to_string();
    assert!(
        stdout.contains(&format!("Digest: {upstream_digest}")),
        "the pulled digest is the upstream's {upstream_digest}: {stdout}"
    );

    // The image Docker stored is the platform's child of that index: its ID is that child's config digest.
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let child = &children[if arch == "arm64" { 1 } else { 0 }];
    let manifest: serde_json::Value =
        serde_json::from_slice(&layout.blobs[&child.digest]).expect("child manifest");
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let inspect = dockerd.docker(&["image", "inspect", "--format", "{{.Id}}", "berthtest:1"]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        config_digest
    );

    // Berth cached it under the mirror's prefix.
    let catalog: serde_json::Value = client()
        .get(format!("{}/v2/_catalog", b.url()))
        .send()
        .await
        .expect("catalog")
        .json()
        .await
        .expect("catalog JSON");
    assert!(
        catalog["repositories"]
            .as_array()
            .expect("repositories")
            .iter()
            .any(|r| r == "docker.io/library/berthtest"),
        "{catalog}"
    );
}
