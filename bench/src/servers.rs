//! Starting and stopping the servers under test (berth, CNCF distribution)
//! and the nginx ceiling, each on a free loopback port with its own data
//! under a scratch directory that is removed at the end.
//!
//! Every server runs in its own process group so that stopping it also stops
//! any workers it forked (nginx), and [`ServerProcess`] kills it on drop, so
//! servers die on errors and on Ctrl-C too (main turns Ctrl-C into an error).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hyper::{Method, StatusCode};

use crate::client::{Endpoint, ReqBody};

/// A directory removed (with everything in it) when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating scratch directory {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh subdirectory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

/// A loopback port nobody is listening on right now. The port is released
/// before the server binds it; on a quiet machine nothing else grabs it meanwhile.
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr().context("reading bound port")?.port())
}

/// A running server child process, killed with its process group on drop.
pub struct ServerProcess {
    pub name: String,
    pub endpoint: Endpoint,
    /// First line of `BIN --version`, if it has one.
    pub version: Option<String>,
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    /// Spawns `cmd` in its own process group with stdout/stderr going to `log`.
    fn spawn(
        name: &str,
        mut cmd: Command,
        endpoint: Endpoint,
        log: PathBuf,
    ) -> Result<ServerProcess> {
        use std::os::unix::process::CommandExt;
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let version = Command::new(cmd.get_program())
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .filter(|s| !s.is_empty());
        Ok(ServerProcess {
            name: name.to_string(),
            endpoint,
            version,
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `GET path` until it answers 200, the process exits, or `timeout` passes.
    pub async fn wait_ready(&mut self, path: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("checking server process")? {
                bail!(
                    "{} exited during startup ({status}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            match self.probe(path).await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} not ready on {}{path} after {timeout:?} ({last_err}); log {}:\n{}",
            self.name,
            self.endpoint.url(),
            self.log.display(),
            self.log_tail()
        )
    }

    async fn probe(&self, path: &str) -> Result<()> {
        let mut conn = self.endpoint.connect().await?;
        let req = conn.request(Method::GET, path).body(ReqBody::Empty)?;
        conn.call(req, StatusCode::OK).await?;
        Ok(())
    }

    /// Last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM to the group, then SIGKILL if it lingers; reaps the child.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created
        // for this child (process_group(0) makes its pid the group id).
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; also catches forked workers that outlived their parent.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts berth: `BERTH serve --listen 127.0.0.1:PORT --data-dir DIR`.
pub async fn start_berth(bin: &Path, data_dir: &Path, log_dir: &Path) -> Result<ServerProcess> {
    start_berth_with(bin, data_dir, log_dir, "berth", &[], &[]).await
}

/// Starts berth as a pull-through mirror of `upstream` under the path prefix
/// `name`: `BERTH serve ... --mirror NAME=UPSTREAM`. Logs to `berth-mirror.log`.
pub async fn start_berth_mirror(
    bin: &Path,
    data_dir: &Path,
    log_dir: &Path,
    name: &str,
    upstream: &str,
) -> Result<ServerProcess> {
    let flag = format!("{name}={upstream}");
    start_berth_with(
        bin,
        data_dir,
        log_dir,
        "berth-mirror",
        &["--mirror".to_string(), flag],
        &[],
    )
    .await
}

/// Starts berth with extra `serve` arguments and environment (e.g. `BERTH_METADATA`), logging to `LOG_NAME.log`.
pub async fn start_berth_with(
    bin: &Path,
    data_dir: &Path,
    log_dir: &Path,
    log_name: &str,
    extra: &[String],
    env: &[(String, String)],
) -> Result<ServerProcess> {
    if !bin.exists() {
        bail!(
            "berth binary not found at {} (build it with `cargo build --release -p berth`, or pass --berth)",
            bin.display()
        );
    }
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    // Anonymous access, like the distribution it is compared with (which runs without auth).
    cmd.arg("serve")
        .arg("--open-access")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut server = ServerProcess::spawn(
        log_name,
        cmd,
        Endpoint::from_port(port),
        log_dir.join(format!("{log_name}.log")),
    )?;
    server.wait_ready("/v2/", Duration::from_secs(30)).await?;
    Ok(server)
}

/// Where CNCF distribution keeps its data.
pub enum DistributionStorage<'a> {
    /// Its `filesystem` driver under this directory.
    Filesystem(&'a Path),
    /// Its `s3` driver on an S3-compatible server (path-style requests to `endpoint`, any credentials).
    S3 { endpoint: &'a str, bucket: &'a str },
}

/// YAML config for CNCF distribution: deletes enabled, errors-only logging, no
/// access log, and the in-memory blob descriptor cache that upstream's shipped
/// config enables. With `proxy`, distribution runs as a pull-through cache of
/// that registry (`proxy: remoteurl:`).
pub fn distribution_config(
    storage: &DistributionStorage,
    port: u16,
    proxy: Option<&str>,
) -> String {
    let driver = match storage {
        DistributionStorage::Filesystem(root) => {
            format!("  filesystem:\n    rootdirectory: {}\n", root.display())
        }
        // A region endpoint makes the driver use path-style requests; `secure: false` allows plain HTTP. Blob GETs
        // are served through distribution rather than redirected to the S3 server, as berth serves them.
        DistributionStorage::S3 { endpoint, bucket } => format!(
            "  s3:\n    accesskey: berth-bench\n    secretkey: berth-bench\n    region: us-east-1\n    \
             regionendpoint: {endpoint}\n    bucket: {bucket}\n    secure: false\n    v4auth: true\n    \
             rootdirectory: /registry\n  redirect:\n    disable: true\n"
        ),
    };
    let mut config = format!(
        "version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
{driver}  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"
    );
    if let Some(url) = proxy {
        config.push_str(&format!("proxy:\n  remoteurl: {url}\n"));
    }
    config
}

/// Starts CNCF distribution (`docker-registry serve CONFIG.yml`).
pub async fn start_distribution(
    bin: &Path,
    data_dir: &Path,
    log_dir: &Path,
) -> Result<ServerProcess> {
    start_distribution_with(
        bin,
        &DistributionStorage::Filesystem(data_dir),
        log_dir,
        "distribution",
        None,
    )
    .await
}

/// Starts CNCF distribution with its config and log named after `log_name`,
/// optionally in proxy mode (a pull-through cache of `proxy`).
pub async fn start_distribution_with(
    bin: &Path,
    storage: &DistributionStorage<'_>,
    log_dir: &Path,
    log_name: &str,
    proxy: Option<&str>,
) -> Result<ServerProcess> {
    if !bin.exists() {
        bail!(
            "distribution binary not found at {} (apt-get install docker-registry, or pass --distribution)",
            bin.display()
        );
    }
    let port = free_port()?;
    let config = log_dir.join(format!("{log_name}.yml"));
    std::fs::write(&config, distribution_config(storage, port, proxy))
        .with_context(|| format!("writing {}", config.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg(&config);
    if let DistributionStorage::S3 { .. } = storage {
        // distribution's AWS SDK aborts at start when AWS_CA_BUNDLE is set (it cannot add a bundle to its own
        // HTTP transport); the S3 server here is plain HTTP, so no bundle is needed.
        cmd.env_remove("AWS_CA_BUNDLE");
    }
    let mut server = ServerProcess::spawn(
        log_name,
        cmd,
        Endpoint::from_port(port),
        log_dir.join(format!("{log_name}.log")),
    )?;
    server.wait_ready("/v2/", Duration::from_secs(30)).await?;
    Ok(server)
}

/// The nginx binary, if installed (Debian puts it in /usr/sbin, often not on a user's PATH).
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// Starts nginx serving `dir/www` as static files, at `/` with sendfile off
/// and at `/sendfile/` with it on. It runs in the foreground (`daemon off`)
/// with one worker per core, like a production nginx, so it can use both
/// cores the way the registries can; `reuseport` spreads connections over the
/// workers (without it a burst of 8 connections tends to land on one worker).
/// Access logging is off.
pub async fn start_nginx(bin: &Path, dir: &Path, ready_path: &str) -> Result<ServerProcess> {
    let port = free_port()?;
    for sub in ["www", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let d = dir.display();
    let config = format!(
        "daemon off;
master_process on;
worker_processes auto;
{user}pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile off;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 10000000;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {d}/www;
        location /sendfile/ {{
            alias {d}/www/;
            sendfile on;
            tcp_nopush on;
        }}
    }}
}}
",
        // Workers of a root-started nginx drop to `nobody`, which cannot enter a 0700 temp dir.
        user = if root { "user root;\n" } else { "" },
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, config)
        .with_context(|| format!("writing {}", conf_path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.join("error.log"));
    let mut server = ServerProcess::spawn(
        "nginx",
        cmd,
        Endpoint::from_port(port),
        dir.join("stdout.log"),
    )?;
    server
        .wait_ready(ready_path, Duration::from_secs(10))
        .await?;
    Ok(server)
}
