//! Shared harness for black-box tests: starts the real `berth` binary on a free loopback port with a fresh data
//! directory and stops it when dropped.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `berth serve` process.
pub struct Berth {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Keeps the temporary data directory alive for the server's lifetime.
    _tmp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
}

/// Asks the OS for a free loopback port.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr").port()
}

impl Berth {
    /// Starts berth on a fresh temporary data directory.
    pub fn start() -> Berth {
        Self::start_with(&[])
    }

    /// Starts berth with extra command-line arguments after `serve`.
    pub fn start_with(extra: &[&str]) -> Berth {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut b = Self::spawn(&data_dir, extra);
        b._tmp = Some(tmp);
        b
    }

    /// Starts berth on an existing data directory (for restart tests).
    pub fn start_on(data_dir: &Path, extra: &[&str]) -> Berth {
        Self::spawn(data_dir, extra)
    }

    fn spawn(data_dir: &Path, extra: &[&str]) -> Berth {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn berth");
        let b = Berth {
            child,
            port,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        b.wait_ready();
        b
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("berth did not start listening on port {}", self.port);
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the form skopeo and containerd take.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server with SIGKILL and starts it again on the same data directory and port.
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra_args.iter().map(|s| s.as_str()).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&extra)
            .env(
                "RUST_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("respawn berth");
        self.child = child;
        self.wait_ready();
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// An async HTTP client that does not follow redirects (tests check `Location` themselves).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}
