//! Shared runners for the real client tools the interoperability tests drive: skopeo (with a private HOME), an
//! isolated podman (storage, run state, configuration and HOME in a temporary directory) and a private containerd
//! daemon (root, state and sockets in a temporary directory).
//!
//! Included by each test file that needs it with `#[path = "common/tools.rs"] mod tools;`. Self-contained (it uses
//! neither `crate::common` nor `crate::image`); whether a tool is installed at all is still checked by the caller
//! with `common::tools_available`. Not every file uses every runner, hence the `dead_code` allowance.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------------------------

/// Runs `skopeo --insecure-policy ARGS` with `home` as HOME and XDG_RUNTIME_DIR (so no auth file or policy of the
/// machine is read); logs the command, its status and stderr.
pub fn skopeo(args: &[&str], home: &Path) -> Output {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .output()
        .expect("run skopeo");
    eprintln!(
        "$ skopeo {}\n  -> {}\n  stderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// [`skopeo`], asserting success; returns stdout.
pub fn skopeo_ok(args: &[&str], home: &Path) -> Vec<u8> {
    let out = skopeo(args, home);
    assert!(
        out.status.success(),
        "skopeo {} failed: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The top-level manifest digest named `tag` in the index.json of the OCI layout at `dir` (as skopeo wrote it).
pub fn layout_ref(dir: &Path, tag: &str) -> String {
    let idx: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {}/index.json: {idx}", dir.display()))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// An isolated podman
// ---------------------------------------------------------------------------------------------------------------

/// A registries.conf that makes `host` a plain-HTTP registry and searches no registry for unqualified names.
pub fn insecure_registries_conf(host: &str) -> String {
    format!(
        "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
    )
}

/// podman with everything it writes under one temporary directory: storage (vfs driver), run state, events,
/// network config, registries.conf, policy and HOME. The only shared state is c/image's blob-info cache (for root
/// under /var/lib/containers/cache).
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// Writes the configuration (`registries` as registries.conf) and checks podman can open its storage;
    /// Err(reason) if it cannot run here.
    pub fn new(registries: &str) -> Result<Podman, String> {
        let dir = tempfile::Builder::new()
            .prefix("podman")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let write = |name: &str, text: String| {
            std::fs::write(d.join(name), text).map_err(|e| e.to_string())
        };
        write("registries.conf", registries.to_string())?;
        write(
            "storage.conf",
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("runroot").display()
            ),
        )?;
        // tmp_dir keeps libpod's state out of /run/libpod and image_copy_tmp_dir c/image's buffers out of /var/tmp;
        // the CNI backend with its own config dir keeps the network layer out of /etc/containers/networks and
        // /run/containers/networks (netavark, as root, always uses them). No container runs, so no network plugin is
        // needed: an empty plugin dir satisfies podman's check that one exists.
        write(
            "containers.conf",
            format!(
                r#"[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}"
image_copy_tmp_dir = "{tmp}"

[network]
network_backend = "cni"
network_config_dir = "{net}"
cni_plugin_dirs = ["{cni}"]
"#,
                tmp = d.join("tmp").display(),
                net = d.join("net").display(),
                cni = d.join("cni").display()
            ),
        )?;
        // c/image reads $HOME/.config/containers/policy.json before /etc/containers/policy.json.
        let policy_dir = d.join("home/.config/containers");
        std::fs::create_dir_all(&policy_dir).map_err(|e| e.to_string())?;
        std::fs::write(
            policy_dir.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .map_err(|e| e.to_string())?;
        for sub in ["xdg", "cni"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
        }
        let p = Podman { dir };
        let out = p.run(&["images", "-q"]);
        if !out.status.success() {
            return Err(format!(
                "`podman images` failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(p)
    }

    /// `name` inside podman's temporary directory (also its working directory).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs podman with the isolated storage, run state and configuration; logs the command, its status and stderr.
    pub fn run(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        let out = Command::new("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(args)
            .env("HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("XDG_CONFIG_HOME", d.join("home/.config"))
            .env("XDG_DATA_HOME", d.join("home/.local/share"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRIES_CONFIG_PATH", d.join("registries.conf"))
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .expect("run podman");
        eprintln!(
            "$ podman {}\n  -> {}\n  stderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out
    }

    /// Runs podman, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {} failed: {}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman image inspect` of one image.
    pub fn inspect(&self, image: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["image", "inspect", image])).unwrap();
        v[0].clone()
    }
}

/// An isolated podman with `registries` as its registries.conf, or None (the caller skips) when it cannot run here
/// outside CI; panics under CI. Does not check that podman is installed.
pub fn podman_or_skip(registries: &str) -> Option<Podman> {
    match Podman::new(registries) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("podman cannot run but CI is set: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: podman cannot run in this environment: {e}");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A private containerd daemon
// ---------------------------------------------------------------------------------------------------------------

/// A containerd daemon with its root, state, sockets and log under `dir` (CRI plugin disabled); killed on drop.
pub struct Containerd {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    /// The daemon's temporary directory; tests may put more files in it (e.g. a hosts dir).
    pub dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    /// Starts containerd with everything under a fresh temporary directory and waits (up to 30 s) until `ctr
    /// version` answers; Err(reason, with the daemon's log) if it cannot run here.
    pub fn start() -> Result<Containerd, String> {
        // Short path: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let sock = d.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            opt = d.join("opt").display(),
        );
        let cfg_path = d.join("config.toml");
        std::fs::write(&cfg_path, config).map_err(|e| e.to_string())?;
        let log = d.join("containerd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn containerd: {e}"))?;
        let mut c = Containerd {
            child,
            sock,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(format!(
                    "containerd exited with {status}; log:\n{}",
                    std::fs::read_to_string(&c.log).unwrap_or_default()
                ));
            }
            if c.sock.exists() && c.ctr(&["version"]).status.success() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer within 30 s; log:\n{}",
                    std::fs::read_to_string(&c.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `ctr ARGS` against this daemon.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// [`Containerd::ctr`], asserting success (the failure shows the daemon's log tail); returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        eprintln!("$ ctr {} -> {}", args.join(" "), out.status);
        assert!(
            out.status.success(),
            "ctr {} failed: {}\nstdout: {}\nstderr: {}\ncontainerd log tail:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last 30 lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Starts containerd, or prints why it cannot run and returns None (the caller skips).
pub fn containerd_or_skip() -> Option<Containerd> {
    match Containerd::start() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("SKIPPED: the containerd daemon cannot start in this environment: {e}");
            None
        }
    }
}
