//! The object-store blob backend on Azure Blob Storage, against Azurite (Microsoft's storage emulator): monolithic
//! and chunked pushes, a digest committed twice, whole and ranged reads, a restart, and pre-signed (SAS) redirects.
//! The S3 backend has the whole suite (`tests/object_store.rs` and the scale-out CI pass); this covers what differs
//! per provider: authentication, conditional creates and copies, multipart (block list) uploads, signing.
//!
//! Runs when `BERTH_TEST_AZURE_ENDPOINT` names an Azurite blob endpoint with its well-known development account,
//! e.g. `http://127.0.0.1:10000/devstoreaccount1` (`.ci/run` starts one); otherwise returns at once.

mod common;
#[path = "common/spec.rs"]
mod spec;

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use common::{Berth, client};
use spec::{Reg, expect_status, sha256};

/// Azurite's development account and its published key (not a secret: it is the same in every Azurite).
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn endpoint() -> Option<String> {
    let e = std::env::var("BERTH_TEST_AZURE_ENDPOINT").ok();
    if e.is_none() {
        eprintln!("skipped: set BERTH_TEST_AZURE_ENDPOINT to an Azurite blob endpoint");
    }
    e.map(|e| e.trim_end_matches('/').to_string())
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |b: u8| block.iter().map(|k| k ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Creates a container with a Shared Key request (berth expects its container to exist, as a bucket).
fn create_container(endpoint: &str, name: &str) {
    let host = endpoint
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .expect("http://host:port/account");
    let date = httpdate_now();
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(ACCOUNT_KEY)
        .expect("key");
    let signature =
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
    let mut conn = std::net::TcpStream::connect(host).expect("connect to Azurite");
    write!(
        conn,
        "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: {host}\r\nx-ms-date: {date}\r\n\
         x-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    conn.read_to_string(&mut resp).expect("read");
    assert!(
        resp.starts_with("HTTP/1.1 201"),
        "cannot create container {name}: {resp}"
    );
}

/// The current time in the HTTP date format (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        months[month as usize - 1]
    )
}

/// A berth config on Azure for a fresh container.
fn config(dir: &Path, endpoint: &str, container: &str, redirect: bool) -> std::path::PathBuf {
    let path = dir.join(format!("berth-{redirect}.toml"));
    let redirect = if redirect {
        "redirect_ttl = \"5m\"\n"
    } else {
        ""
    };
    std::fs::write(
        &path,
        format!(
            "[storage]\nblobs = \"azure\"\n{redirect}\n[storage.azure]\naccount = \"{ACCOUNT}\"\n\
             container = \"{container}\"\naccess_key_env = \"BERTH_TEST_AZURE_KEY\"\n\
             endpoint = \"{endpoint}\"\nallow_http = true\n"
        ),
    )
    .expect("write config");
    path
}

/// Reads a blob of `az/app` whole and compares it.
async fn check(r: &Reg, digest: &str, bytes: &[u8]) {
    let (_, body) = expect_status(r.get(&format!("/v2/az/app/blobs/{digest}")).await, 200).await;
    assert_eq!(body.len(), bytes.len());
    assert!(body == bytes, "{digest}: bytes differ");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_reads_restarts_and_redirects_on_azure() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    // SAFETY: set before any server starts; the servers inherit it (the key is Azurite's public one).
    unsafe { std::env::set_var("BERTH_TEST_AZURE_KEY", ACCOUNT_KEY) };
    let tmp = tempfile::tempdir().expect("tempdir");
    let container = format!(
        "berth-{}",
        &sha256(tmp.path().to_string_lossy().as_bytes())[7..27]
    );
    create_container(&endpoint, &container);
    let data_dir = tmp.path().join("data");
    let plain = config(tmp.path(), &endpoint, &container, false);
    let mut b = Berth::start_on(&data_dir, &["--config", plain.to_str().expect("utf-8")]);
    let r = Reg::new(b.url(), client());

    // Monolithic, then the same digest into a second repository (the conditional copy finds it present).
    let small = pattern(300_000, 1);
    let small_digest = r.push_blob("az/app", &small).await;
    assert_eq!(r.push_blob("az/other", &small).await, small_digest);

    // Chunked, spanning a multipart part (8 MiB): published by streaming the chunks into the blob's key.
    let big = pattern(9 * 1024 * 1024 + 4321, 2);
    let big_digest = sha256(&big);
    let mut loc = r.start_upload("az/app").await;
    let split = 5 * 1024 * 1024;
    for (start, chunk) in [(0, &big[..split]), (split, &big[split..])] {
        let range = format!("{start}-{}", start + chunk.len() - 1);
        let (h, _) = expect_status(r.patch(&loc, chunk, Some(&range)).await, 202).await;
        loc = r.resolve(h["location"].to_str().expect("location"));
    }
    expect_status(r.put_upload(&loc, &big_digest, b"").await, 201).await;

    check(&r, &small_digest, &small).await;
    check(&r, &big_digest, &big).await;
    let ranged = r
        .send(
            r.req(
                reqwest::Method::GET,
                &format!("/v2/az/app/blobs/{big_digest}"),
            )
            .header("Range", "bytes=8388600-8388615"),
        )
        .await;
    let (_, body) = expect_status(ranged, 206).await;
    assert_eq!(body, big[8_388_600..8_388_616]);

    // A restart on the same container and data directory serves the same bytes.
    b.restart_after_kill9();
    check(&r, &big_digest, &big).await;
    drop(b);

    // With redirect_ttl, a GET is sent to a SAS URL the client reads without credentials.
    let redirecting = config(tmp.path(), &endpoint, &container, true);
    let b = Berth::start_on(
        &data_dir,
        &["--config", redirecting.to_str().expect("utf-8")],
    );
    let r = Reg::new(b.url(), client());
    let resp = r.get(&format!("/v2/az/app/blobs/{small_digest}")).await;
    assert_eq!(resp.status().as_u16(), 307);
    let location = spec::must_header(&resp, "location");
    assert!(
        location.starts_with(&endpoint) && location.contains("sig="),
        "not a SAS URL: {location}"
    );
    let direct = reqwest::get(&location).await.expect("GET SAS URL");
    assert_eq!(direct.status().as_u16(), 200);
    assert_eq!(
        direct.bytes().await.expect("body").as_ref(),
        small.as_slice()
    );
}
