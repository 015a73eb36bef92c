//! Hostile conditions (issue 15), each against the real binary over loopback TCP: connections that drip their
//! headers or send nothing, more connections than the server serves at once, a principal opening upload sessions
//! without end, bodies far over their limit, and blob files truncated or removed behind berth's back. Every attack
//! loop is bounded in count and time.

mod common;
#[path = "common/upstream.rs"]
mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{ADMIN_PASSWORD, Berth, sha256_digest};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use upstream::{Upstream, berth_mirroring, berth_with_config, random_bytes};

/// The `server.header_read_timeout` the slow-client tests run with.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How much later than the timeout a connection may be closed (a loaded 2-core machine).
const MARGIN: Duration = Duration::from_secs(3);

/// A client that opens a fresh connection for every request, so a kept-alive one never hides a refusal.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A config file for `berth serve --config`, kept while the returned directory lives.
fn config_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, toml).expect("write config");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}

fn basic(user: &str, password: &str) -> String {
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {creds}")
}

// ---------------------------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------------------------

/// Reads until the server closes the connection (or resets it); how long after `since` that was. `None` when it
/// was still open at `limit`.
async fn closed_after(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dripping_and_silent_connections_are_closed_at_the_header_read_timeout() {
    let b = berth_with_config("[server]\nheader_read_timeout = \"2s\"\n");
    let (port, base) = (b.port, b.url());
    const ATTACKERS: usize = 50;
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        attackers.push(tokio::spawn(async move {
            let s = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let opened = Instant::now();
            let (mut rd, mut wr) = s.into_split();
            // One in five sends nothing at all; the others drip a request line and an endless header, one byte
            // every 100 ms, each byte well within any per-read timeout.
            let silent = i % 5 == 0;
            let drip = async move {
                if !silent {
                    let head = format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Drip: ");
                    for byte in head.bytes().chain(std::iter::repeat(b'a')) {
                        if wr.write_all(&[byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                std::future::pending::<()>().await;
            };
            let limit = HEADER_TIMEOUT + MARGIN + Duration::from_secs(5);
            tokio::select! {
                closed = closed_after(&mut rd, opened, limit) => (silent, closed),
                _ = drip => unreachable!("the drip never ends by itself"),
            }
        }));
    }

    // A normal client keeps being served during the attack.
    let normal = fresh_client();
    let attack_until = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(1);
    let mut served = 0;
    while Instant::now() < attack_until {
        let t = Instant::now();
        let r = normal
            .get(format!("{base}/v2/"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("a normal request during the attack");
        assert_eq!(r.status(), 200, "a normal request during the attack");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a normal request took {:?} during the attack",
            t.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served >= 10,
        "only {served} normal requests during the attack"
    );

    for a in attackers {
        let (silent, closed) = a.await.expect("attacker task");
        let kind = if silent { "silent" } else { "dripping" };
        let after = closed
            .unwrap_or_else(|| panic!("a {kind} connection was still open long after the timeout"));
        assert!(
            after <= HEADER_TIMEOUT + MARGIN,
            "a {kind} connection was closed only after {after:?}"
        );
        assert!(
            after >= HEADER_TIMEOUT - Duration::from_millis(300),
            "a {kind} connection was closed after {after:?}, before the header timeout"
        );
    }
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let b = berth_with_config("[server]\nheader_read_timeout = \"2s\"\nmax_connections = 4\n");
    // Give the readiness probe's connection time to be closed, then hold every slot with silent connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            TcpStream::connect(("127.0.0.1", b.port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = fresh_client()
        .get(format!("{}/v2/", b.url()))
        .timeout(HEADER_TIMEOUT + MARGIN + Duration::from_secs(5))
        .send()
        .await
        .expect("the fifth connection is served once a slot frees");
    let waited = t.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        waited >= Duration::from_millis(1200),
        "served after {waited:?} while every slot was held: the connection limit did not hold"
    );
    assert!(
        waited <= HEADER_TIMEOUT + MARGIN,
        "waited {waited:?}: the held connections should have been closed at the header timeout"
    );
    drop(held);
}

// ---------------------------------------------------------------------------------------------------------------
// Upload sessions per principal
// ---------------------------------------------------------------------------------------------------------------

/// `POST` a new upload session as `auth` (anonymous when `None`): status, `Location`, body.
async fn open_session(base: &str, repo: &str, auth: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut req = fresh_client().post(format!("{base}/v2/{repo}/blobs/uploads/"));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = req.send().await.expect("POST upload");
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, location, r.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn upload_sessions_over_the_per_principal_limit_are_429_until_one_closes() {
    let b = berth_with_config("[limits]\nmax_upload_sessions_per_principal = 3\n");
    let base = b.url();
    let mut open = Vec::new();
    for i in 0..3 {
        let (status, location, _) = open_session(&base, "lim/app", None).await;
        assert_eq!(status, 202, "session {i} under the limit");
        open.push(location);
    }
    for repo in ["lim/app", "lim/other"] {
        let (status, _, body) = open_session(&base, repo, None).await;
        assert_eq!(status, 429, "a fourth session (in {repo})");
        assert_eq!(error_code(&body), "TOOMANYREQUESTS");
        let message = error_message(&body);
        assert!(
            message.contains("max_upload_sessions_per_principal") && message.contains('3'),
            "the refusal names the limit: {message}"
        );
    }

    // Cancelling a session frees its slot.
    let r = fresh_client()
        .delete(format!("{base}{}", open.remove(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, location, _) = open_session(&base, "lim/app", None).await;
    assert_eq!(status, 202, "a session after one was cancelled");
    open.push(location);
    assert_eq!(open_session(&base, "lim/app", None).await.0, 429);

    // So does finishing one.
    let data = b"a finished upload".to_vec();
    let loc = open.remove(0);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = fresh_client()
        .put(format!("{base}{loc}{sep}digest={}", sha256_digest(&data)))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        open_session(&base, "lim/app", None).await.0,
        202,
        "after one was finished"
    );
    assert_eq!(open_session(&base, "lim/app", None).await.0, 429);
}

#[tokio::test]
async fn upload_session_limit_counts_each_user_apart() {
    let (_cfg, path) = config_file("[limits]\nmax_upload_sessions_per_principal = 2\n");
    let b = Berth::start_secure(&["--config", &path]);
    let base = b.url();
    let admin = basic("admin", ADMIN_PASSWORD);
    for user in ["alice", "bob"] {
        let r = fresh_client()
            .post(format!("{base}/api/v1/users"))
            .header("Authorization", &admin)
            .json(&json!({"name": user, "password": format!("{user}-pw")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create {user}");
    }
    let (alice, bob) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    for _ in 0..2 {
        assert_eq!(open_session(&base, "alice/app", Some(&alice)).await.0, 202);
    }
    let (status, _, body) = open_session(&base, "alice/app", Some(&alice)).await;
    assert_eq!(status, 429);
    assert!(
        error_message(&body).contains("alice"),
        "{}",
        error_message(&body)
    );
    assert_eq!(
        open_session(&base, "bob/app", Some(&bob)).await.0,
        202,
        "another user's sessions do not count against alice's"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Bodies over their limit
// ---------------------------------------------------------------------------------------------------------------

/// What came of sending an endless chunked body.
struct Cut {
    status: u16,
    body: Vec<u8>,
    /// Body bytes the client had handed to its socket when the response arrived.
    sent_at_response: usize,
    /// Body bytes handed to the socket by the time the server stopped reading (the client's writes failed or
    /// blocked for good).
    sent: usize,
}

const TOTAL: usize = 100 << 20;
/// How far past a limit the client may get: what the server read (the limit plus one read buffer) plus the two
/// kernel socket buffers on loopback (a few MiB each), far below the 100 MiB the client would send.
const MAX_SENT: usize = 24 << 20;

/// Sends `head` (request line and headers, without the final blank line) and a 100 MiB chunked body, reading the
/// response while writing, as RFC 9112 asks of clients; stops when the server stops reading.
async fn send_100mib_chunked(port: u16, head: &str) -> Cut {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let request = format!("{head}\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        const CHUNK: usize = 64 << 10;
        let framed = [
            format!("{CHUNK:x}\r\n").into_bytes(),
            vec![b' '; CHUNK],
            b"\r\n".to_vec(),
        ]
        .concat();
        if wr.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        while counter.load(Ordering::SeqCst) < TOTAL {
            if wr.write_all(&framed).await.is_err() {
                return;
            }
            counter.fetch_add(CHUNK, Ordering::SeqCst);
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    let mut sent_at_response = None;
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent_at_response.get_or_insert_with(|| sent.load(Ordering::SeqCst));
                    buf.extend_from_slice(&chunk[..n]);
                    if response_complete(&buf) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no response within 60 s to {head}");
    // The server has answered; give the writer time to find out that nobody reads any more.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut last = sent.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = sent.load(Ordering::SeqCst);
            if writer.is_finished() || now == last {
                return;
            }
            last = now;
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in the response to {head}: {text:?}"));
    let body = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => buf[i + 4..].to_vec(),
        None => Vec::new(),
    };
    Cut {
        status,
        body,
        sent_at_response: sent_at_response.unwrap_or(usize::MAX),
        sent: sent.load(Ordering::SeqCst),
    }
}

/// Whether `buf` holds a response's headers and its whole `Content-Length` body.
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

fn assert_cut_off(what: &str, cut: &Cut) {
    assert!(
        cut.sent_at_response <= MAX_SENT,
        "{what}: the response came only after {} MiB of the body",
        cut.sent_at_response >> 20
    );
    assert!(
        cut.sent <= MAX_SENT,
        "{what}: the server went on reading after it answered ({} MiB sent)",
        cut.sent >> 20
    );
}

#[tokio::test]
async fn chunked_bodies_over_their_limit_are_refused_as_soon_as_they_cross_it() {
    let b = Berth::start_secure(&[]);
    let admin = basic("admin", ADMIN_PASSWORD);

    // A manifest over limits.max_manifest_size (4 MiB).
    let cut = send_100mib_chunked(
        b.port,
        &format!(
            "PUT /v2/big/app/manifests/latest HTTP/1.1\r\nAuthorization: {admin}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json"
        ),
    )
    .await;
    assert_eq!(cut.status, 413, "{}", String::from_utf8_lossy(&cut.body));
    assert_eq!(error_code(&cut.body), "SIZE_INVALID");
    assert_cut_off("manifest PUT", &cut);

    // A JSON body of the admin API (64 KiB limit).
    let cut = send_100mib_chunked(
        b.port,
        &format!("POST /api/v1/users HTTP/1.1\r\nAuthorization: {admin}\r\nContent-Type: application/json"),
    )
    .await;
    assert_eq!(cut.status, 413, "{}", String::from_utf8_lossy(&cut.body));
    assert_eq!(error_code(&cut.body), "SIZE_INVALID");
    assert_cut_off("admin API POST", &cut);

    // The token endpoint reads no body at all.
    let cut = send_100mib_chunked(b.port, "GET /token?service=berth HTTP/1.1").await;
    assert_eq!(cut.status, 200, "{}", String::from_utf8_lossy(&cut.body));
    assert_cut_off("token GET", &cut);

    // And the server is fine.
    let r = fresh_client()
        .get(format!("{}/healthz", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------------------------------
// Damaged storage
// ---------------------------------------------------------------------------------------------------------------

async fn push_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let d = sha256_digest(data);
    let r = fresh_client()
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "push {d}");
    d
}

async fn damaged_count(base: &str) -> f64 {
    common::metric_sample(
        &common::metrics_text(base).await,
        "berth_blobs_damaged_total",
    )
}

/// HEAD, whole GET and ranged GET of a damaged blob: a `500` naming only the request id, never `200`/`206`.
async fn assert_refused_cleanly(base: &str, url: &str, what: &str) {
    let before = damaged_count(base).await;
    let client = fresh_client();
    let r = client.head(url).send().await.unwrap();
    assert_eq!(r.status(), 500, "HEAD of a {what} blob");
    for range in [None, Some("bytes=0-9")] {
        let mut req = client.get(url);
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 500, "GET (range {range:?}) of a {what} blob");
        let id = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = r.bytes().await.unwrap();
        let v: Value = serde_json::from_slice(&body).expect("an OCI error body");
        assert_eq!(v["errors"][0]["code"], "UNKNOWN");
        assert_eq!(v["errors"][0]["detail"]["request_id"], id.as_str());
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("blobs/") && !text.contains("sha256:"),
            "{text}"
        );
    }
    let after = damaged_count(base).await;
    assert!(
        after >= before + 3.0,
        "berth_blobs_damaged_total went from {before} to {after}"
    );
}

#[tokio::test]
async fn truncated_or_removed_blob_files_are_never_answered_200_or_206() {
    let b = Berth::start();
    let base = b.url();
    let truncated = random_bytes(31, 200_000);
    let removed = random_bytes(33, 200_000);
    let dt = push_blob(&base, "dmg/app", &truncated).await;
    let dr = push_blob(&base, "dmg/app", &removed).await;
    for d in [&dt, &dr] {
        let r = fresh_client()
            .head(format!("{base}/v2/dmg/app/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "intact blob");
    }
    // Half the bytes are left: a range inside them would still be readable.
    common::overwrite_blob(&b.data_dir, &dt, &truncated[..truncated.len() / 2]);
    common::remove_blob(&b.data_dir, &dr);
    assert_refused_cleanly(&base, &format!("{base}/v2/dmg/app/blobs/{dt}"), "truncated").await;
    assert_refused_cleanly(&base, &format!("{base}/v2/dmg/app/blobs/{dr}"), "removed").await;
}

/// GETs a mirrored blob through berth and checks every byte.
async fn pull_whole(base: &str, d: &str, data: &[u8]) {
    let r = fresh_client()
        .get(format!("{base}/v2/up/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "pull {d}");
    let body = r.bytes().await.unwrap();
    assert!(
        body[..] == data[..],
        "pull {d}: {} bytes, not the blob's {}",
        body.len(),
        data.len()
    );
}

/// Waits until berth answers a HEAD of the blob from its cache (the upstream sees no HEAD for it).
async fn wait_cached(up: &Upstream, base: &str, d: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = format!("/v2/team/app/blobs/{d}");
    loop {
        let heads = up.count("HEAD", &path);
        let r = fresh_client()
            .head(format!("{base}/v2/up/team/app/blobs/{d}"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 && up.count("HEAD", &path) == heads {
            return;
        }
        assert!(Instant::now() < deadline, "{d} was not cached within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mirror_fetches_a_damaged_cached_blob_again_and_serves_it_whole() {
    let up = Upstream::start();
    let data = random_bytes(41, 300_000);
    let d = up.put_blob(data.clone());
    let berth = berth_mirroring(&up, "up", &[]);
    let base = berth.url();
    pull_whole(&base, &d, &data).await;
    wait_cached(&up, &base, &d).await;
    assert_eq!(up.blob_gets("team/app", &d), 1);

    // Truncated: a HEAD is answered with the whole blob's size (from the upstream), a GET fetches it again.
    common::overwrite_blob(&berth.data_dir, &d, &data[..1000]);
    let r = fresh_client()
        .head(format!("{base}/v2/up/team/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "HEAD of a truncated cached blob");
    assert_eq!(
        r.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(data.len().to_string().as_str())
    );
    pull_whole(&base, &d, &data).await;
    assert_eq!(
        up.blob_gets("team/app", &d),
        2,
        "fetched again after truncation"
    );
    wait_cached(&up, &base, &d).await;
    assert_eq!(
        common::read_blob(&berth.data_dir, &d).as_deref(),
        Some(&data[..])
    );

    // Removed: a ranged GET is a miss again, answered whole or with the right range, never a 500.
    common::remove_blob(&berth.data_dir, &d);
    let r = fresh_client()
        .get(format!("{base}/v2/up/team/app/blobs/{d}"))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    match status {
        206 => assert_eq!(&body[..], &data[..10]),
        200 => assert!(body[..] == data[..], "a whole body of {} bytes", body.len()),
        s => panic!("ranged GET of a removed cached blob: {s}"),
    }
    assert_eq!(
        up.blob_gets("team/app", &d),
        3,
        "fetched again after removal"
    );
    wait_cached(&up, &base, &d).await;
    pull_whole(&base, &d, &data).await;
    assert_eq!(
        up.blob_gets("team/app", &d),
        3,
        "served from the repaired cache"
    );
}
