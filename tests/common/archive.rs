//! Helpers for the export/import tests: running `berth export|import|import-distribution`, reading a tar back
//! into memory, and writing hand-made (including hostile) tars.
//!
//! Included with `#[path = "common/archive.rs"] mod archive;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs the berth binary with `args`; logs the command, status and stderr.
pub fn berth(args: &[&str]) -> Output {
    berth_env(args, &[])
}

/// [`berth`] with extra environment variables (credentials are otherwise removed from its environment).
pub fn berth_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let data_dir = args
        .iter()
        .position(|a| *a == "--data-dir")
        .and_then(|i| args.get(i + 1));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    if let Some(d) = data_dir {
        crate::common::blob_env(&mut cmd, Path::new(d));
    }
    let out = cmd
        .args(args)
        .envs(data_dir.map_or_else(Vec::new, |d| crate::common::metadata_env(Path::new(d))))
        .env_remove("BERTH_USER")
        .env_remove("BERTH_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run berth");
    eprintln!(
        "$ berth {}\n  -> {}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// [`berth`], asserting success; returns stdout.
pub fn berth_ok(args: &[&str]) -> String {
    let out = berth(args);
    assert!(
        out.status.success(),
        "berth {} failed: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`berth`], asserting failure; returns stderr.
pub fn berth_fails(args: &[&str]) -> String {
    let out = berth(args);
    assert!(
        !out.status.success(),
        "berth {} unexpectedly succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every regular file of a tar (names without a leading `./`), and the names of its other entries.
pub fn read_tar(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path().unwrap().display().to_string();
        let name = name.trim_start_matches("./").to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.insert(name, data);
    }
    out
}

/// One entry of a hand-made tar.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Dir(&'a str),
}

/// Writes a tar of `entries` (GNU headers, so names are taken verbatim, `..` included).
pub fn write_tar(path: &Path, entries: &[Entry]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        match e {
            Entry::File(name, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                set_raw_name(&mut h, name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            Entry::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                set_raw_name(&mut h, name);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            Entry::Dir(name) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                set_raw_name(&mut h, name);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    b.finish().unwrap();
}

/// Puts a name into the header as bytes (the tar crate's setters refuse `..`, which hostile archives need).
fn set_raw_name(h: &mut tar::Header, name: &str) {
    let bytes = name.as_bytes();
    assert!(bytes.len() < 100, "test names must fit the header");
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
}

/// Gzip-compresses `data` (for `docker save | gzip` inputs).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A CNCF distribution (`docker-registry`, Debian package `docker-registry`) with filesystem storage at `root`,
/// listening on a free loopback port; killed when dropped.
pub struct Distribution {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Distribution {
    pub fn start(root: &Path) -> Distribution {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::common::free_port();
        std::fs::create_dir_all(root).unwrap();
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root:?}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-archive-test\n"
        );
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // REGISTRY_* variables override the config file; none may leak in from the environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("spawn docker-registry");
        let mut d = Distribution {
            child: Some(child),
            port,
            dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({st}); its log:\n{}", d.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen within 30 s; its log:\n{}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the process and waits for it (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}
