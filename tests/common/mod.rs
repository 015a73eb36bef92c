//! Shared harness for black-box tests: starts the real `berth` binary on a free loopback port with a fresh data
//! directory and stops it when dropped.
//!
//! `start`, `start_with` and `start_on` run berth with `BERTH_OPEN_ACCESS=1` (`serve --open-access`): every
//! repository open to anonymous pull, push and delete, as the protocol and client tests assume. Access-control tests
//! use `start_secure*`, which keeps berth's secure defaults and sets the admin password to [`ADMIN_PASSWORD`].
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
    /// The data directory whose metadata store this server uses (its own, except for replicas).
    metadata_dir: PathBuf,
    /// Keeps the temporary data directory alive for the server's lifetime.
    _tmp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    /// Started with `--open-access` (the default for tests not about access control).
    open_access: bool,
}

/// The password of the `admin` user created on first start by the `start_secure*` constructors.
pub const ADMIN_PASSWORD: &str = "admin-test-password";

/// Which metadata store the suite runs against: `BERTH_TEST_METADATA=postgres` (with `BERTH_TEST_POSTGRES`, a
/// server URL without a database, e.g. `postgres://postgres@127.0.0.1:5432`) runs every test on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("BERTH_TEST_METADATA").as_deref() == Ok("postgres")
}

/// Environment that points a `berth` process at the metadata store of `data_dir`: nothing for SQLite (`berth.db`
/// inside it); for PostgreSQL, a database of its own named after the directory, created on first use, so every
/// process on that directory (server, restarts, CLI commands) shares it and tests stay isolated from each other.
pub fn metadata_env(data_dir: &Path) -> Vec<(String, String)> {
    if !on_postgres() {
        return Vec::new();
    }
    vec![
        ("BERTH_METADATA".into(), "postgres".into()),
        ("BERTH_POSTGRES_URL".into(), postgres_url(data_dir)),
    ]
}

/// Test databases this process created and has not dropped, by name.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// `(server URL, database name)` of `data_dir`'s test database.
fn test_database(data_dir: &Path) -> (String, String) {
    use sha2::Digest as _;
    let server = std::env::var("BERTH_TEST_POSTGRES")
        .expect("BERTH_TEST_METADATA=postgres needs BERTH_TEST_POSTGRES=postgres://user@host:port");
    let absolute = std::path::absolute(data_dir).expect("absolute data dir");
    let hash = hex::encode(sha2::Sha256::digest(
        absolute.as_os_str().as_encoded_bytes(),
    ));
    (
        server.trim_end_matches('/').to_string(),
        format!("berth_test_{}", &hash[..20]),
    )
}

/// Runs one statement on the server's `postgres` database; returns stdout, or stderr on failure.
fn psql_admin(server: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{server}/postgres"))
        .arg("-c")
        .arg(sql)
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The PostgreSQL URL of `data_dir`'s test database, creating the database if needed.
pub fn postgres_url(data_dir: &Path) -> String {
    let (server, db) = test_database(data_dir);
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    if !created.contains(&db) {
        // FILE_COPY: no WAL for the copied template, which would otherwise dominate the cluster's disk use.
        if let Err(err) = psql_admin(
            &server,
            &format!("CREATE DATABASE {db} STRATEGY = FILE_COPY"),
        ) {
            assert!(
                err.contains("already exists"),
                "cannot create test database {db}: {err}"
            );
        }
        created.push(db.clone());
    }
    format!("{server}/{db}")
}

/// Whether `data_dir`'s test database exists, for failure messages.
fn database_state(data_dir: &Path) -> String {
    let (server, db) = test_database(data_dir);
    match psql_admin(
        &server,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) {
        Ok(n) if n.trim() == "1" => format!("test database {db} exists"),
        Ok(_) => format!("test database {db} does not exist"),
        Err(e) => format!("cannot query the test database {db}: {e}"),
    }
}

/// Runs SQL with `psql` on `data_dir`'s PostgreSQL test database; returns the rows, `|`-separated, one a line.
pub fn psql(data_dir: &Path, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(postgres_url(data_dir))
        .arg("-c")
        .arg(sql)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
        let mut b = Self::spawn(&data_dir, extra, true);
        b._tmp = Some(tmp);
        b
    }

    /// Starts berth on an existing data directory (for restart tests).
    pub fn start_on(data_dir: &Path, extra: &[&str]) -> Berth {
        Self::spawn(data_dir, extra, true)
    }

    /// [`Berth::start_with`] with extra environment variables set after the suite's own (e.g. stores a test runs
    /// itself: `BERTH_METADATA`, `BERTH_POSTGRES_URL`, `BERTH_BLOBS`, `BERTH_S3_*`).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Berth {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut b = Self::launch(&data_dir, &data_dir, extra, true, |c| {
            c.envs(env.iter().copied());
        });
        b._tmp = Some(tmp);
        b.wait_ready();
        b
    }

    /// Starts berth with its secure defaults (no `--open-access`) on a fresh data directory; the first start
    /// creates `admin` with [`ADMIN_PASSWORD`].
    pub fn start_secure(extra: &[&str]) -> Berth {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut b = Self::spawn(&data_dir, extra, false);
        b._tmp = Some(tmp);
        b
    }

    /// [`Berth::start_secure`] on an existing data directory.
    pub fn start_secure_on(data_dir: &Path, extra: &[&str]) -> Berth {
        Self::spawn(data_dir, extra, false)
    }

    /// [`Berth::start_secure_on`] with the server's log at `info` written to `log` (for tests that read it).
    pub fn start_secure_logging(data_dir: &Path, extra: &[&str], log: &Path) -> Berth {
        let file = std::fs::File::create(log).expect("create log file");
        let mut b = Self::launch(data_dir, data_dir, extra, false, |c| {
            c.env("RUST_LOG", "info").stderr(file);
        });
        b.wait_ready();
        b
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; returns its status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for berth") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "berth did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// PostgreSQL only: starts a second replica of `of` on `data_dir`, sharing `of`'s database and, through
    /// symbolic links, its blob store (`blobs/`, `uploads/`): the scale-out shape on one machine, where a shared
    /// object store would hold the blobs. Each replica keeps its own `tmp/` (a starting replica clears its staging
    /// files) and `berth.lock`.
    pub fn start_replica(data_dir: &Path, of: &Berth, extra: &[&str]) -> Berth {
        Self::replica(data_dir, of, extra, true)
    }

    /// [`Berth::start_replica`] with berth's secure defaults, like [`Berth::start_secure`] (the replica shares the
    /// users of `of`, which live in the database).
    pub fn start_replica_secure(data_dir: &Path, of: &Berth, extra: &[&str]) -> Berth {
        Self::replica(data_dir, of, extra, false)
    }

    fn replica(data_dir: &Path, of: &Berth, extra: &[&str], open_access: bool) -> Berth {
        std::fs::create_dir_all(data_dir).expect("create replica data dir");
        // On the object store the replicas share one bucket (the links below then only cover uploads' spools).
        share_bucket(data_dir, &of.data_dir);
        for sub in ["blobs", "uploads"] {
            let shared = of.data_dir.join(sub);
            std::fs::create_dir_all(&shared).expect("create shared dir");
            std::os::unix::fs::symlink(&shared, data_dir.join(sub)).expect("link shared dir");
        }
        let mut b = Self::launch(data_dir, &of.metadata_dir, extra, open_access, |_| {});
        b.wait_ready();
        b
    }

    fn command(
        port: u16,
        data_dir: &Path,
        metadata_dir: &Path,
        extra: &[&str],
        open_access: bool,
    ) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .envs(metadata_env(metadata_dir))
            .stdin(Stdio::null());
        blob_env(&mut c, data_dir);
        if open_access {
            c.env("BERTH_OPEN_ACCESS", "true");
        } else {
            c.env_remove("BERTH_OPEN_ACCESS");
        }
        c
    }

    /// Starts `berth serve` on a free port (not waiting for it); `configure` adds to the command line.
    fn launch(
        data_dir: &Path,
        metadata_dir: &Path,
        extra: &[&str],
        open_access: bool,
        configure: impl FnOnce(&mut Command),
    ) -> Berth {
        let port = free_port();
        let mut cmd = Self::command(port, data_dir, metadata_dir, extra, open_access);
        configure(&mut cmd);
        Berth {
            child: cmd.spawn().expect("spawn berth"),
            port,
            data_dir: data_dir.to_path_buf(),
            metadata_dir: metadata_dir.to_path_buf(),
            _tmp: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            open_access,
        }
    }

    fn spawn(data_dir: &Path, extra: &[&str], open_access: bool) -> Berth {
        let mut b = Self::launch(data_dir, data_dir, extra, open_access, |_| {});
        let port = b.port;
        if let Err(e) = b.try_wait_ready() {
            // CI once saw a fresh test database missing right after its creation; say so loudly, create it
            // again and start once more, so the run reports on berth rather than on the test cluster.
            if !(on_postgres() && e.contains("does not exist")) {
                panic!("{e}");
            }
            eprintln!("warning: {e}; creating it again and restarting");
            CREATED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|d| *d != test_database(data_dir).1);
            b.child = Self::command(port, data_dir, data_dir, extra, open_access)
                .spawn()
                .expect("spawn berth");
            b.wait_ready();
        }
        b
    }

    /// Waits until the server accepts connections; panics when it exits or does not listen within 30 s.
    fn wait_ready(&mut self) {
        if let Err(e) = self.try_wait_ready() {
            panic!("{e}");
        }
    }

    /// Waits until the server accepts connections; fails at once, with its exit status, when it exits instead.
    fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let db = if on_postgres() {
                    format!("; {}", database_state(&self.metadata_dir))
                } else {
                    String::new()
                };
                return Err(format!(
                    "berth on port {} exited before listening ({status}){db}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "berth did not start listening on port {}",
            self.port
        ))
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
        let child = Self::command(
            self.port,
            &self.data_dir,
            &self.metadata_dir,
            &extra,
            self.open_access,
        )
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
        // A server that owns its temporary data directory owns its test database too: drop it with the directory.
        if self._tmp.is_some() && on_postgres() {
            drop_database(&self.data_dir);
        }
    }
}

/// Drops `data_dir`'s PostgreSQL test database (best effort: a leftover only costs disk in a throwaway cluster).
pub fn drop_database(data_dir: &Path) {
    let (server, db) = test_database(data_dir);
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    created.retain(|d| *d != db);
    let _ = psql_admin(
        &server,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
}

/// Runs a prepared `berth` command with `stdin` piped in and its output captured; logs the command line (`shown`),
/// its status, and its stdout and stderr.
pub fn run_piped(mut cmd: Command, shown: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for berth");
    eprintln!(
        "$ berth {}\n  -> {}\n  stdout: {}\n  stderr: {}",
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// True when every one of `tools` is on PATH. When one is missing: false (the caller skips, with a message) if `CI`
/// is unset; a panic if `CI` is set. `package` is the Debian package to install.
pub fn tools_available(tools: &[&str], package: &str) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("which")
                .arg(t)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{missing:?} not installed but CI is set: .ci/run must `apt-get install -y {package}`"
        );
    }
    eprintln!(
        "SKIPPED: {missing:?} not installed (apt-get install -y {package}); this test did not run"
    );
    false
}

/// A test that cannot run here: prints `SKIP <test>: <reason>` and lets the caller return, or fails when `CI` is
/// set (CI installs everything, so a missing tool there is a broken pipeline, not a reason to pass).
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run but CI is set: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
}

/// The Prometheus text a server exposes at `{base}/metrics`.
pub async fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The value of the first sample in `text` whose line starts with `prefix` (a name with its labels), 0 if absent.
pub fn metric_sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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

// ---- Blob backend of the suite ----
//
// `BERTH_TEST_BLOBS=s3` with `BERTH_TEST_S3_ENDPOINT=http://127.0.0.1:PORT` (an S3-compatible server such as the
// one `.ci/run` starts) runs every berth process of the suite with its blobs in a bucket instead of under the data
// directory: one bucket per data directory, so a restarted server and the CLI commands run on its data directory
// see the same blobs, and tests stay independent. Berth reads the bucket from `BERTH_BLOBS` / `BERTH_S3_*`, which
// override any `--config` file a test writes.

/// The S3 endpoint when the suite runs on the object store.
pub fn s3_endpoint() -> Option<String> {
    match std::env::var("BERTH_TEST_BLOBS").as_deref() {
        Ok("s3") => Some(
            std::env::var("BERTH_TEST_S3_ENDPOINT")
                .expect("BERTH_TEST_BLOBS=s3 needs BERTH_TEST_S3_ENDPOINT"),
        ),
        _ => None,
    }
}

/// Data directories whose servers use another data directory's bucket (replicas sharing one object store).
static SHARED_BUCKETS: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// Makes servers on `data_dir` use the bucket of `owner` (two replicas, each with its own metadata, one bucket).
pub fn share_bucket(data_dir: &Path, owner: &Path) {
    SHARED_BUCKETS
        .lock()
        .expect("lock")
        .push((data_dir.to_path_buf(), owner.to_path_buf()));
}

/// The bucket holding the blobs of `data_dir` (a name derived from its path), created on first use.
pub fn s3_bucket(data_dir: &Path) -> String {
    use sha2::Digest;
    let owner = SHARED_BUCKETS
        .lock()
        .expect("lock")
        .iter()
        .find(|(d, _)| d == data_dir)
        .map(|(_, o)| o.clone());
    let data_dir = owner.as_deref().unwrap_or(data_dir);
    let path = data_dir.to_string_lossy();
    let bucket = format!(
        "berth-test-{}",
        &hex::encode(sha2::Sha256::digest(path.as_bytes()))[..24]
    );
    let (status, _) = s3_request("PUT", &format!("/{bucket}"), &[]);
    // 409: it already exists (a restart on the same data directory).
    assert!(
        status == 200 || status == 409,
        "cannot create bucket {bucket}: HTTP {status}"
    );
    bucket
}

/// Points a berth command at the suite's blob backend for `data_dir` (nothing to do on the filesystem).
pub fn blob_env(cmd: &mut Command, data_dir: &Path) {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    cmd.env("BERTH_BLOBS", "s3")
        .env("BERTH_S3_BUCKET", s3_bucket(data_dir))
        .env("BERTH_S3_ENDPOINT", endpoint)
        .env("BERTH_S3_REGION", "us-east-1")
        .env("BERTH_S3_PATH_STYLE", "true")
        .env("BERTH_S3_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "berth-test")
        .env("AWS_SECRET_ACCESS_KEY", "berth-test");
}

/// One HTTP/1.1 request to the test S3 server: status and body. The server does not verify signatures, but it
/// treats a request without credentials as anonymous, so a placeholder `Authorization` names the test account.
pub fn s3_request(method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    s3_request_at(
        &s3_endpoint().expect("the suite runs on S3"),
        method,
        path,
        body,
    )
}

/// [`s3_request`] to the S3 server at `endpoint` (`http://127.0.0.1:PORT`), e.g. one a test runs itself.
pub fn s3_request_at(endpoint: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let host = endpoint
        .strip_prefix("http://")
        .expect("test S3 endpoint is http://")
        .trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("connect to the test S3 server");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=berth-test/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=0\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("send");
    conn.write_all(body).expect("send body");
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).expect("read response");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has headers");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut body = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&data[..eol]).to_string();
        let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// Where a blob's bytes live for the suite's backend.
fn blob_location(data_dir: &Path, digest: &str) -> Result<PathBuf, String> {
    let (alg, hex) = digest.split_once(':').expect("digest");
    match s3_endpoint() {
        None => Ok(data_dir.join("blobs").join(alg).join(&hex[..2]).join(hex)),
        Some(_) => Err(format!("/{}/blobs/{alg}/{hex}", s3_bucket(data_dir))),
    }
}

/// A stored blob's bytes, or `None` when absent, from whichever backend the suite runs on.
pub fn read_blob(data_dir: &Path, digest: &str) -> Option<Vec<u8>> {
    match blob_location(data_dir, digest) {
        Ok(path) => std::fs::read(path).ok(),
        Err(key) => match s3_request("GET", &key, &[]) {
            (200, body) => Some(body),
            (404, _) => None,
            (status, _) => panic!("GET {key}: HTTP {status}"),
        },
    }
}

/// Whether a blob's bytes are stored.
pub fn blob_exists(data_dir: &Path, digest: &str) -> bool {
    read_blob(data_dir, digest).is_some()
}

/// Replaces a stored blob's bytes (to simulate corruption behind berth's back).
pub fn overwrite_blob(data_dir: &Path, digest: &str, bytes: &[u8]) {
    match blob_location(data_dir, digest) {
        Ok(path) => {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write blob file");
        }
        Err(key) => {
            let (status, _) = s3_request("PUT", &key, bytes);
            assert_eq!(status, 200, "PUT {key}");
        }
    }
}

/// Removes a stored blob's bytes behind berth's back.
pub fn remove_blob(data_dir: &Path, digest: &str) {
    match blob_location(data_dir, digest) {
        Ok(path) => std::fs::remove_file(path).expect("remove blob file"),
        Err(key) => {
            let (status, _) = s3_request("DELETE", &key, &[]);
            assert_eq!(status, 204, "DELETE {key}");
        }
    }
}

/// How many blobs are stored (files under `blobs/`, or objects under `blobs/` in the bucket).
pub fn count_blobs(data_dir: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("read blob dir") {
            let e = e.expect("dir entry");
            if e.file_type().expect("file type").is_dir() {
                n += walk(&e.path());
            } else {
                n += 1;
            }
        }
        n
    }
    if s3_endpoint().is_none() {
        return walk(&data_dir.join("blobs"));
    }
    let bucket = s3_bucket(data_dir);
    let mut n = 0;
    let mut token = String::new();
    loop {
        let (status, body) = s3_request(
            "GET",
            &format!("/{bucket}?list-type=2&prefix=blobs/{token}"),
            &[],
        );
        assert_eq!(status, 200, "list {bucket}");
        let body = String::from_utf8_lossy(&body).to_string();
        n += body.matches("<Key>").count() as u64;
        match body
            .split_once("<NextContinuationToken>")
            .and_then(|(_, rest)| rest.split_once("</NextContinuationToken>"))
        {
            Some((t, _)) => {
                token = format!(
                    "&continuation-token={}",
                    form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
                )
            }
            None => return n,
        }
    }
}
