//! A store that cannot be reached is `503` with `Retry-After`, never a hang and never a 500 with the driver's text,
//! and berth recovers by itself when the store comes back (design "Errors", invariant 11).
//!
//! Each test runs its own stores: a throwaway PostgreSQL cluster (initdb/pg_ctl, as `.ci/run` does) that it stops
//! with `pg_ctl stop -m fast` and starts again on the same port, and an S3 server (moto) behind a TCP relay the
//! test cuts and restores, then a real restart of moto itself. They run once per suite: the scale-out pass
//! (`BERTH_TEST_METADATA=postgres`) skips them quietly, since they bring their own stores.

mod common;
#[path = "common/spec.rs"]
mod h;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use h::*;
use reqwest::{Method, Response};

/// How long any request may take while a store is down: object-store retries are bounded at 10 s, a PostgreSQL
/// connection attempt to a stopped server fails at once.
const ANSWER_WITHIN: Duration = Duration::from_secs(25);

/// Words of driver and transport messages that must not reach a client.
const INTERNALS: [&str; 9] = [
    "postgres",
    "connection",
    "connect",
    "sql",
    "select ",
    "os error",
    "127.0.0.1",
    "error sending request",
    "tcp",
];

/// Whether this pass runs these tests; prints why not.
fn runs_here(test: &str) -> bool {
    if common::on_postgres() {
        eprintln!("{test}: runs in the single-node pass only (it starts its own stores)");
        return false;
    }
    true
}

// ---- PostgreSQL ----

/// A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, with its socket in its own directory. As root it
/// runs as the `postgres` user (postgres refuses to run as root).
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn start() -> Result<Postgres, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "no /usr/lib/postgresql (apt-get install -y postgresql)".to_string())?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
            .max()
            .ok_or("no initdb/pg_ctl under /usr/lib/postgresql/*/bin")?;
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let dir = tempfile::Builder::new()
            .prefix("berth-outage-pg")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "chown postgres {}: {}",
                    dir.path().display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let pg = Postgres {
            bin,
            dir,
            port: common::free_port(),
            as_postgres,
        };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres"])?;
        pg.start_server()?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    fn start_server(&self) -> Result<(), String> {
        let log = self.dir.path().join("log").to_string_lossy().into_owned();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-w", "-o", &opts, "start"],
        )
    }

    /// `pg_ctl stop -m fast`: clients are disconnected, the server is gone until started again.
    fn stop_server(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .expect("stop PostgreSQL");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}

// ---- Assertions ----

/// Sends a request, failing if the answer takes longer than [`ANSWER_WITHIN`].
async fn timed(r: &Reg, rb: reqwest::RequestBuilder, what: &str) -> Response {
    let start = Instant::now();
    let resp = tokio::time::timeout(ANSWER_WITHIN, r.send(rb))
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: no answer within {ANSWER_WITHIN:?} while a store is down")
        });
    eprintln!("{what}: {} in {:?}", resp.status(), start.elapsed());
    resp
}

/// A 503 with a numeric `Retry-After`, an OCI error body with code `UNAVAILABLE`, and nothing of the driver's text.
async fn expect_unavailable(resp: Response, what: &str) {
    let retry = header(&resp, "retry-after");
    let (_, body) = expect_status(resp, 503).await;
    let retry = retry.unwrap_or_else(|| panic!("{what}: 503 without Retry-After"));
    let secs: u64 = retry
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After {retry:?} is not seconds"));
    assert!((1..=60).contains(&secs), "{what}: Retry-After {secs}");
    if !body.is_empty() {
        assert_no_internals(&body, what);
    }
}

async fn expect_unavailable_json(resp: Response, what: &str) {
    let retry = header(&resp, "retry-after");
    let (_, body) = expect_status(resp, 503).await;
    assert!(retry.is_some(), "{what}: 503 without Retry-After");
    assert_eq!(error_codes(what, &body), ["UNAVAILABLE"], "{what}");
    assert_no_internals(&body, what);
}

fn assert_no_internals(body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body).to_lowercase();
    for word in INTERNALS {
        assert!(
            !text.contains(word),
            "{what}: the body shows internals ({word:?}): {text}"
        );
    }
}

/// Polls `/readyz` until it is 200 again (recovery needs no restart of berth).
async fn wait_ready(r: &Reg, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = r.get("/readyz").await;
        if resp.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz still {} a minute after the store came back",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pulls an image's manifest and both blobs and checks the bytes.
async fn pull_ok(r: &Reg, repo: &str, tag: &str, img: &Image) {
    let (_, body) = expect_status(r.get(&format!("/v2/{repo}/manifests/{tag}")).await, 200).await;
    assert_eq!(body, img.body, "manifest {repo}:{tag}");
    for (digest, bytes) in [
        (&img.config_digest, &img.config),
        (&img.layer_digest, &img.layer),
    ] {
        let (_, got) = expect_status(r.get(&format!("/v2/{repo}/blobs/{digest}")).await, 200).await;
        assert_eq!(&got, bytes, "blob {digest}");
    }
}

// ---- PostgreSQL outage ----

#[tokio::test]
async fn postgres_outage_is_503_with_retry_after_and_recovers_without_restart() {
    const TEST: &str = "postgres_outage_is_503_with_retry_after_and_recovers_without_restart";
    if !runs_here(TEST) {
        return;
    }
    let pg = match Postgres::start() {
        Ok(pg) => pg,
        Err(e) => return common::skip(TEST, &e),
    };
    let url = pg.url();
    let b = common::Berth::start_with_env(
        &[],
        &[("BERTH_METADATA", "postgres"), ("BERTH_POSTGRES_URL", &url)],
    );
    let r = Reg::new(b.url(), common::client());
    let before = r.push_image("outage/pg", "v1", "before").await;
    pull_ok(&r, "outage/pg", "v1", &before).await;

    pg.stop_server();

    let admin = |rb: reqwest::RequestBuilder| rb.basic_auth("admin", Some(common::ADMIN_PASSWORD));
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "GET manifest by tag",
            r.req(Method::GET, "/v2/outage/pg/manifests/v1"),
        ),
        (
            "GET manifest by digest",
            r.req(
                Method::GET,
                &format!("/v2/outage/pg/manifests/{}", before.digest),
            ),
        ),
        (
            "GET blob",
            r.req(
                Method::GET,
                &format!("/v2/outage/pg/blobs/{}", before.layer_digest),
            ),
        ),
        (
            "GET tags list",
            r.req(Method::GET, "/v2/outage/pg/tags/list"),
        ),
        ("GET catalog", r.req(Method::GET, "/v2/_catalog")),
        (
            "POST upload",
            r.req(Method::POST, "/v2/outage/pg/blobs/uploads/"),
        ),
        (
            "PUT manifest",
            r.req(Method::PUT, "/v2/outage/pg/manifests/v2")
                .header("content-type", OCI_MANIFEST)
                .body(before.body.clone()),
        ),
        (
            "GET /token with Basic credentials",
            admin(r.req(Method::GET, "/token?scope=repository:outage/pg:pull")),
        ),
        (
            "GET /v2/ with Basic credentials",
            admin(r.req(Method::GET, "/v2/")),
        ),
        (
            "GET /api/v1/users",
            admin(r.req(Method::GET, "/api/v1/users")),
        ),
    ];
    for (what, rb) in cases {
        let resp = timed(&r, rb, what).await;
        expect_unavailable_json(resp, what).await;
    }
    let what = "HEAD blob";
    let rb = r.req(
        Method::HEAD,
        &format!("/v2/outage/pg/blobs/{}", before.layer_digest),
    );
    expect_unavailable(timed(&r, rb, what).await, what).await;
    // The UI: a plain 503 page.
    let resp = timed(&r, r.req(Method::GET, "/ui"), "GET /ui").await;
    expect_unavailable(resp, "GET /ui").await;
    let resp = timed(&r, r.req(Method::GET, "/readyz"), "GET /readyz").await;
    let (_, body) = expect_status(resp, 503).await;
    assert_no_internals(&body, "/readyz");

    pg.start_server()
        .expect("start PostgreSQL again on the same port");
    wait_ready(&r, TEST).await;

    // Everything works again, on the same berth process.
    pull_ok(&r, "outage/pg", "v1", &before).await;
    let after = r.push_image("outage/pg", "v2", "after").await;
    pull_ok(&r, "outage/pg", "v2", &after).await;
    let resp = r
        .send(admin(
            r.req(Method::GET, "/token?scope=repository:outage/pg:pull"),
        ))
        .await;
    expect_status(resp, 200).await;
}

// ---- S3 outage ----

/// moto's S3 server, installed by `.ci/run` into `BERTH_TEST_MOTO_DIR` (default `/tmp/berth-moto-5.2.1`).
struct Moto {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Moto {
    fn start() -> Result<Moto, String> {
        let dir = PathBuf::from(
            std::env::var("BERTH_TEST_MOTO_DIR").unwrap_or_else(|_| "/tmp/berth-moto-5.2.1".into()),
        );
        if !dir.join("moto").is_dir() {
            return Err(format!(
                "moto is not installed in {} (set BERTH_TEST_MOTO_DIR, or see .ci/run)",
                dir.display()
            ));
        }
        let mut m = Moto {
            dir,
            port: common::free_port(),
            child: None,
        };
        m.start_server()?;
        Ok(m)
    }

    fn start_server(&mut self) -> Result<(), String> {
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .env("PYTHONPATH", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("python3 -m moto.server: {e}"))?;
        self.child = Some(child);
        wait_listening(self.port, Duration::from_secs(30))
    }

    fn stop_server(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop_server();
    }
}

fn wait_listening(port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "nothing listens on 127.0.0.1:{port} after {within:?}"
    ))
}

/// A TCP relay between berth and the S3 server that the test can cut (listener closed, open connections reset:
/// to berth the store is gone, exactly as when the server stops) and restore on the same port, so moto keeps
/// its in-memory bucket across the outage.
struct Relay {
    port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let mut r = Relay {
            port: common::free_port(),
            target,
            task: None,
        };
        r.open().await;
        r
    }

    async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind relay port");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        }));
    }

    /// Closes the listener and resets every relayed connection (aborting the task drops them all).
    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn create_bucket(endpoint: &str, bucket: &str) {
    let (status, body) = common::s3_request_at(endpoint, "PUT", &format!("/{bucket}"), &[]);
    assert!(
        status == 200 || status == 409,
        "create bucket {bucket}: HTTP {status} {}",
        String::from_utf8_lossy(&body)
    );
}

// Multi-threaded: the relay runs on the test's runtime while the harness blocks a thread waiting for berth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_is_503_with_retry_after_and_recovers_without_restart() {
    const TEST: &str = "s3_outage_is_503_with_retry_after_and_recovers_without_restart";
    if !runs_here(TEST) {
        return;
    }
    let mut moto = match Moto::start() {
        Ok(m) => m,
        Err(e) => return common::skip(TEST, &e),
    };
    let mut relay = Relay::start(moto.port).await;
    let bucket = "berth-outage";
    create_bucket(&moto.endpoint(), bucket);
    let endpoint = relay.endpoint();
    let b = common::Berth::start_with_env(
        &[],
        &[
            ("BERTH_BLOBS", "s3"),
            ("BERTH_S3_BUCKET", bucket),
            ("BERTH_S3_ENDPOINT", &endpoint),
            ("BERTH_S3_REGION", "us-east-1"),
            ("BERTH_S3_PATH_STYLE", "true"),
            ("BERTH_S3_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "berth-test"),
            ("AWS_SECRET_ACCESS_KEY", "berth-test"),
        ],
    );
    let r = Reg::new(b.url(), common::client());
    let before = r.push_image("outage/s3", "v1", "before").await;
    pull_ok(&r, "outage/s3", "v1", &before).await;

    // An upload session opened before the outage (staging objects are written with the first chunk).
    let session = r.start_upload("outage/s3").await;
    let chunk = b"first chunk, sent while the object store is down".to_vec();

    relay.cut();

    let what = "PATCH upload chunk";
    let rb = r
        .req(Method::PATCH, &r.resolve(&session))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", chunk.len() - 1))
        .body(chunk.clone());
    expect_unavailable_json(timed(&r, rb, what).await, what).await;

    let fresh = b"bytes pushed while the object store is down".to_vec();
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "GET blob",
            r.req(
                Method::GET,
                &format!("/v2/outage/s3/blobs/{}", before.layer_digest),
            ),
        ),
        (
            "GET blob range",
            r.req(
                Method::GET,
                &format!("/v2/outage/s3/blobs/{}", before.layer_digest),
            )
            .header("range", "bytes=0-3"),
        ),
        (
            "POST monolithic upload",
            r.req(
                Method::POST,
                &format!("/v2/outage/s3/blobs/uploads/?digest={}", sha256(&fresh)),
            )
            .header("content-type", "application/octet-stream")
            .body(fresh.clone()),
        ),
    ];
    for (what, rb) in cases {
        let resp = timed(&r, rb, what).await;
        expect_unavailable_json(resp, what).await;
    }
    let resp = timed(&r, r.req(Method::GET, "/readyz"), "GET /readyz").await;
    let (_, body) = expect_status(resp, 503).await;
    assert_no_internals(&body, "/readyz");

    // The store answers again at the same address: old content and new pushes work on the same berth.
    relay.open().await;
    wait_ready(&r, TEST).await;
    pull_ok(&r, "outage/s3", "v1", &before).await;
    // The session kept its last good offset (0) through the failed chunk and goes on from there.
    let resp = r
        .patch(&session, &chunk, Some(&format!("0-{}", chunk.len() - 1)))
        .await;
    let (headers, _) = expect_status(resp, 202).await;
    let loc = headers["location"].to_str().expect("Location").to_string();
    let resp = r.put_upload(&loc, &sha256(&chunk), &[]).await;
    expect_status(resp, 201).await;
    let (_, got) = expect_status(
        r.get(&format!("/v2/outage/s3/blobs/{}", sha256(&chunk)))
            .await,
        200,
    )
    .await;
    assert_eq!(got, chunk, "the resumed upload holds exactly the chunk");
    let after = r.push_image("outage/s3", "v2", "after").await;
    pull_ok(&r, "outage/s3", "v2", &after).await;

    // moto itself restarts, empty (it keeps its data in memory only). Once the bucket exists again new pushes
    // work, and a blob whose bytes went with the old server is a clean error, never a 200 with a short body.
    moto.stop_server();
    let resp = timed(
        &r,
        r.req(
            Method::GET,
            &format!("/v2/outage/s3/blobs/{}", after.layer_digest),
        ),
        "GET blob, S3 server stopped",
    )
    .await;
    expect_unavailable_json(resp, "GET blob, S3 server stopped").await;
    moto.start_server().expect("restart moto on the same port");
    create_bucket(&moto.endpoint(), bucket);
    wait_ready(&r, TEST).await;
    let again = r.push_image("outage/s3", "v3", "after-restart").await;
    pull_ok(&r, "outage/s3", "v3", &again).await;
    let resp = r
        .get(&format!("/v2/outage/s3/blobs/{}", before.layer_digest))
        .await;
    let status = resp.status().as_u16();
    let (_, body) = expect_status(resp, status).await;
    assert!(
        !(200..300).contains(&status),
        "a blob whose bytes are gone must not be a {status}"
    );
    assert_no_internals(&body, "GET blob whose bytes are gone");
}
