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
