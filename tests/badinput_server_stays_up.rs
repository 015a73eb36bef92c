//! Hostile and malformed input: each case expects the exact OCI error (status and code), and the server must still
//! answer `GET /v2/` with 200 afterwards. Paths that HTTP client libraries would normalise (`..`, `%2e%2e`, `//`)
//! are sent over a raw TCP connection exactly as written.

mod common;
#[path = "common/image.rs"]
mod image;

use common::{Berth, sha256_digest};
use image::{OCI_INDEX, OCI_MANIFEST, pseudo_random, with_digest};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn codes(&self) -> Vec<String> {
        error_codes(&self.body)
    }
}

fn error_codes(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|a| {
                a.iter()
                    .filter_map(|e| e["code"].as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_str = String::from_utf8_lossy(&b[..i]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        b = &b[i + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
}

/// Sends `head` (request line + headers, without the blank line; `Host` and `Connection: close` are added) and
/// `body` over a fresh connection and reads the whole response.
async fn raw(port: u16, head: &str, body: &[u8]) -> RawResponse {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req = format!("{head}\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if !body.is_empty() && !head.to_ascii_lowercase().contains("content-length") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let (mut rd, mut wr) = s.into_split();
    // Write and read concurrently: the server may answer early (e.g. 413) and close; a failed write is fine then,
    // and reading at once keeps the response from being lost to a reset.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.unwrap_or_else(|_| panic!("no complete response within 30 s to: {head}"));
    let _ = writer.await;
    parse_response(&buf).unwrap_or_else(|| {
        panic!(
            "unparseable response to {head}: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(500)])
        )
    })
}

fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// The server is still up and healthy: the process runs and `GET /v2/` answers 200.
async fn assert_alive(b: &mut Berth, after: &str) {
    assert!(b.is_running(), "server process exited after: {after}");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        common::client().get(format!("{}/v2/", b.url())).send(),
    )
    .await
    .unwrap_or_else(|_| panic!("GET /v2/ hung after: {after}"))
    .unwrap_or_else(|e| panic!("GET /v2/ failed after: {after}: {e}"));
    assert_eq!(r.status(), 200, "GET /v2/ after: {after}");
}

async fn assert_error(r: reqwest::Response, status: u16, code: &str, ctx: &str) {
    let got = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    let codes = error_codes(&body);
    assert!(
        got == status && codes.iter().any(|c| c == code),
        "{ctx}: expected {status} {code}, got {got} {codes:?} body {:?}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
}

async fn put_manifest(
    b: &Berth,
    repo: &str,
    reference: &str,
    ct: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    common::client()
        .put(format!("{}/v2/{repo}/manifests/{reference}", b.url()))
        .header("Content-Type", ct)
        .body(body)
        .send()
        .await
        .expect("PUT manifest")
}

fn absolute(b: &Berth, location: &str) -> String {
    image::absolute(&b.url(), location)
}

/// Path (and query) of a Location value, for raw requests.
fn path_of(location: &str) -> String {
    match location.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/').unwrap()..].to_string(),
        None => location.to_string(),
    }
}

async fn start_upload(b: &Berth, repo: &str) -> String {
    let r = common::client()
        .post(format!("{}/v2/{repo}/blobs/uploads/", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "POST /v2/{repo}/blobs/uploads/");
    absolute(b, r.headers()["location"].to_str().unwrap())
}

async fn patch(loc: &str, range: Option<&str>, data: &[u8]) -> reqwest::Response {
    let mut rb = common::client()
        .patch(loc)
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec());
    if let Some(r) = range {
        rb = rb.header("Content-Range", r);
    }
    rb.send().await.unwrap()
}

fn new_location(b: &Berth, r: &reqwest::Response, old: &str) -> String {
    r.headers()
        .get("location")
        .map(|v| absolute(b, v.to_str().unwrap()))
        .unwrap_or_else(|| old.to_string())
}

/// GET upload status; returns (status, uploaded byte count from `Range: 0-<end>`, Location).
async fn upload_offset(b: &Berth, loc: &str) -> (u16, Option<u64>, String) {
    let r = common::client().get(loc).send().await.unwrap();
    let status = r.status().as_u16();
    let off = r
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim_start_matches("bytes=")
                .split_once('-')
                .map(|(_, e)| e.to_string())
        })
        .and_then(|e| e.parse::<u64>().ok())
        .map(|e| e + 1);
    let loc = new_location(b, &r, loc);
    (status, off, loc)
}

async fn blob_status(b: &Berth, repo: &str, digest: &str) -> u16 {
    common::client()
        .get(format!("{}/v2/{repo}/blobs/{digest}", b.url()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

// ---------------------------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_manifest_json_is_manifest_invalid() {
    let mut b = Berth::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JSON", br#"{"schemaVersion": 2, "config": {"mediaType": "#.to_vec()),
        ("not JSON", b"this is not json".to_vec()),
        ("empty body", Vec::new()),
        ("JSON array", b"[]".to_vec()),
        ("JSON string", br#""manifest""#.to_vec()),
        ("binary garbage", vec![0xff, 0xfe, 0x00, 0x7b, 0x22, 0x80]),
        ("config of the wrong type", br#"{"schemaVersion": 2, "config": 5, "layers": []}"#.to_vec()),
        ("layers of the wrong type", format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":"nope"}}"#, sha256_digest(b"{}")).into_bytes()),
        ("trailing garbage", br#"{"schemaVersion": 2} xyz"#.to_vec()),
        ("invalid UTF-8 in a string", b"{\"schemaVersion\": 2, \"mediaType\": \"\xc3\x28\"}".to_vec()),
    ];
    for (what, body) in cases {
        let r = put_manifest(&b, "bad/app", "v1", OCI_MANIFEST, body).await;
        assert_error(
            r,
            400,
            "MANIFEST_INVALID",
            &format!("PUT manifest ({what})"),
        )
        .await;
        assert_alive(&mut b, what).await;
    }
    let r = common::client()
        .get(format!("{}/v2/bad/app/manifests/v1", b.url()))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a rejected manifest must not be stored");
}

#[tokio::test]
async fn oversized_manifest_is_413() {
    let mut b = Berth::start();
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [],
    });
    m["annotations"] = json!({"big": "x".repeat(5 * 1024 * 1024)});
    let body = serde_json::to_vec(&m).unwrap();
    assert!(body.len() > 5 * 1024 * 1024);

    // With Content-Length.
    match common::client()
        .put(format!("{}/v2/big/app/manifests/v1", b.url()))
        .header("Content-Type", OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status(), 413, "5 MiB manifest with Content-Length"),
        Err(e) => eprintln!("oversized manifest: client error {e} (server closed early)"),
    }
    assert_alive(&mut b, "5 MiB manifest").await;

    // Without Content-Length (chunked): the server must stop reading at its limit, not buffer everything.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = common::client()
        .put(format!("{}/v2/big/app/manifests/v2", b.url()))
        .header("Content-Type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413, "5 MiB chunked manifest"),
        // The server may answer 413 and close before the client finished sending; check via raw TCP below.
        Err(e) => eprintln!("chunked oversized manifest: client error {e} (server closed early)"),
    }
    let head = format!(
        "PUT /v2/big/app/manifests/v3 HTTP/1.1\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}",
        body.len()
    );
    let r = raw(b.port, &head, &body).await;
    assert_eq!(r.status, 413, "raw 5 MiB manifest: {:?}", r.codes());
    assert_alive(&mut b, "chunked 5 MiB manifest").await;
    for tag in ["v1", "v2", "v3"] {
        let r = common::client()
            .get(format!("{}/v2/big/app/manifests/{tag}", b.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "oversized manifest {tag} must not be stored"
        );
    }
}

fn manifest_with_unknown_layers(n: usize) -> Vec<u8> {
    let mut s = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},"layers":["#,
        sha256_digest(b"unknown config")
    );
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
            sha256_digest(&(i as u64).to_le_bytes()),
            i + 1
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

#[tokio::test]
async fn manifest_with_thousands_of_unknown_blobs() {
    let mut b = Berth::start();
    let body = manifest_with_unknown_layers(5_000);
    assert!(body.len() < 1024 * 1024, "{} bytes", body.len());
    let started = std::time::Instant::now();
    let r = put_manifest(&b, "many/app", "v1", OCI_MANIFEST, body).await;
    assert_error(
        r,
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest with 5,000 unknown layers",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_alive(&mut b, "5,000 unknown layers").await;

    // 100,000 descriptors (about 12 MiB): over any sane manifest limit, or rejected for the unknown blobs.
    let body = manifest_with_unknown_layers(100_000);
    let started = std::time::Instant::now();
    // Raw connection: a server may answer 413 from the Content-Length alone and close without reading the body,
    // which an ordinary client reports as a broken pipe instead of the response.
    let head = format!(
        "PUT /v2/many/app/manifests/v2 HTTP/1.1\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}",
        body.len()
    );
    let r = raw(b.port, &head, &body).await;
    let (status, codes) = (r.status, r.codes());
    assert!(
        status == 413 || (status == 400 && codes.iter().any(|c| c == "MANIFEST_BLOB_UNKNOWN")),
        "manifest with 100,000 unknown layers: {status} {codes:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_alive(&mut b, "100,000 unknown layers").await;

    // An index listing thousands of unknown manifests.
    let mut entries = Vec::new();
    for i in 0..3_000u64 {
        entries.push(json!({"mediaType": OCI_MANIFEST, "digest": sha256_digest(&i.to_be_bytes()), "size": 100,
            "platform": {"architecture": "amd64", "os": "linux"}}));
    }
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let r = put_manifest(
        &b,
        "many/app",
        "idx",
        OCI_INDEX,
        serde_json::to_vec(&idx).unwrap(),
    )
    .await;
    assert_error(
        r,
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "index with 3,000 unknown manifests",
    )
    .await;
    assert_alive(&mut b, "index with 3,000 unknown manifests").await;
}

#[tokio::test]
async fn deeply_nested_json_is_manifest_invalid() {
    let mut b = Berth::start();
    let cfg = format!(
        r#"{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}}"#,
        sha256_digest(b"{}")
    );
    for depth in [10_000usize, 200_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let cases = vec![
            (
                "nested arrays in layers",
                OCI_MANIFEST,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":{arrays}}}"#
                ),
            ),
            (
                "nested objects in annotations",
                OCI_MANIFEST,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":[],"annotations":{{"x":{objects}}}}}"#
                ),
            ),
            (
                "nested arrays as an unknown field",
                OCI_MANIFEST,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{cfg},"layers":[],"zzz":{arrays}}}"#
                ),
            ),
            (
                "nested arrays in an index",
                OCI_INDEX,
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":{arrays}}}"#),
            ),
            ("bare nested arrays", OCI_MANIFEST, arrays.clone()),
            ("unclosed nested arrays", OCI_MANIFEST, "[".repeat(depth)),
        ];
        for (what, ct, body) in cases {
            let what = format!("{what}, depth {depth}");
            let r = put_manifest(&b, "deep/app", "v1", ct, body.into_bytes()).await;
            if what.starts_with("nested arrays as an unknown field") {
                // Unknown fields are to be ignored; skipping one (without recursion) and then finding the
                // config blob unknown is as good as rejecting the depth. Anything else is not.
                let status = r.status().as_u16();
                let codes = error_codes(&r.bytes().await.unwrap_or_default());
                assert!(
                    status == 400
                        && codes
                            .iter()
                            .any(|c| c == "MANIFEST_INVALID" || c == "MANIFEST_BLOB_UNKNOWN"),
                    "{what}: {status} {codes:?}"
                );
            } else {
                assert_error(r, 400, "MANIFEST_INVALID", &what).await;
            }
            assert_alive(&mut b, &what).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Blobs and digests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_digest_on_blob_put_is_digest_invalid() {
    let mut b = Berth::start();
    let data = pseudo_random(1, 100_000);
    let real = sha256_digest(&data);
    let claimed = sha256_digest(b"something else entirely");

    // POST then PUT with the body.
    let loc = start_upload(&b, "dig/app").await;
    let r = common::client()
        .put(with_digest(&loc, &claimed))
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_error(
        r,
        400,
        "DIGEST_INVALID",
        "PUT with a digest that does not match the body",
    )
    .await;

    // PATCH then an empty PUT.
    let loc = start_upload(&b, "dig/app").await;
    let r = patch(&loc, Some(&format!("0-{}", data.len() - 1)), &data).await;
    assert_eq!(r.status(), 202);
    let loc = new_location(&b, &r, &loc);
    let r = common::client()
        .put(with_digest(&loc, &claimed))
        .send()
        .await
        .unwrap();
    assert_error(
        r,
        400,
        "DIGEST_INVALID",
        "PATCH then PUT with a wrong digest",
    )
    .await;

    // Single POST with ?digest= (if the server supports it; 202 means it opened a session instead).
    let r = common::client()
        .post(format!(
            "{}/v2/dig/app/blobs/uploads/?digest={claimed}",
            b.url()
        ))
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    if r.status() != 202 {
        assert_error(
            r,
            400,
            "DIGEST_INVALID",
            "monolithic POST with a wrong digest",
        )
        .await;
    }

    for d in [&claimed, &real] {
        assert_eq!(
            blob_status(&b, "dig/app", d).await,
            404,
            "GET blob {d} after a failed upload"
        );
        let r = common::client()
            .head(format!("{}/v2/dig/app/blobs/{d}", b.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "HEAD blob {d} after a failed upload");
    }

    // Malformed and unsupported digests on PUT.
    for bad in [
        "sha256:zz",
        "sha256:",
        "sha256",
        "nothex",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let loc = start_upload(&b, "dig/app").await;
        let r = common::client()
            .put(with_digest(&loc, bad))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let codes = error_codes(&r.bytes().await.unwrap_or_default());
        assert!(
            status == 400
                && codes
                    .iter()
                    .any(|c| c == "DIGEST_INVALID" || c == "UNSUPPORTED"),
            "PUT ?digest={bad}: {status} {codes:?}"
        );
    }
    assert_alive(&mut b, "wrong digests").await;
}

#[tokio::test]
async fn digest_path_traversal_is_digest_invalid() {
    let mut b = Berth::start();
    // Something real in the repository, so a traversal bug has a filesystem to walk.
    let loc = start_upload(&b, "team/app").await;
    let r = common::client()
        .put(with_digest(&loc, &sha256_digest(b"hello")))
        .body(b"hello".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let encoded = "sha256:..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd";
    for (method, path) in [
        ("GET", format!("/v2/team/app/blobs/{encoded}")),
        ("HEAD", format!("/v2/team/app/blobs/{encoded}")),
        (
            "GET",
            "/v2/team/app/blobs/sha256:%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(),
        ),
        (
            "GET",
            "/v2/team/app/blobs/sha256:....%2F%2F....%2F%2Fetc%2Fpasswd".to_string(),
        ),
        (
            "GET",
            format!("/v2/team/app/blobs/sha256:{}", "a".repeat(63)),
        ),
        (
            "GET",
            format!("/v2/team/app/blobs/sha256:{}", "A".repeat(64)),
        ),
        (
            "GET",
            format!("/v2/team/app/blobs/sha256:{}", "a".repeat(65)),
        ),
        (
            "GET",
            format!("/v2/team/app/blobs/sha256:{}%00", "a".repeat(64)),
        ),
    ] {
        let r = raw(b.port, &format!("{method} {path} HTTP/1.1"), b"").await;
        assert!(
            r.status == 400
                && (method == "HEAD" || r.codes().iter().any(|c| c == "DIGEST_INVALID")),
            "{method} {path}: expected 400 DIGEST_INVALID, got {} {:?}",
            r.status,
            r.codes()
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("root:"),
            "{path} leaked /etc/passwd"
        );
    }

    // With raw slashes the digest cannot even be told apart from the name: any 400/404, never content.
    for path in [
        "/v2/team/app/blobs/sha256:../../../../../../etc/passwd",
        "/v2/team/app/blobs/../../../../../../etc/passwd",
        "/v2/team/app/manifests/../../../../../../etc/passwd",
        "/v2/team/app/manifests/sha256:..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    ] {
        let r = raw(b.port, &format!("GET {path} HTTP/1.1"), b"").await;
        assert!(
            r.status == 400 || r.status == 404,
            "GET {path}: {} {:?}",
            r.status,
            r.codes()
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("root:"),
            "{path} leaked /etc/passwd"
        );
    }

    // Traversal in the ?digest= of an upload: rejected, nothing committed.
    let data = b"traversal payload".to_vec();
    let loc = start_upload(&b, "team/app").await;
    let r = common::client()
        .put(format!(
            "{loc}{}digest=sha256%3A..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            if loc.contains('?') { '&' } else { '?' }
        ))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_error(
        r,
        400,
        "DIGEST_INVALID",
        "PUT ?digest=sha256:../../../../etc/passwd",
    )
    .await;
    let marker = format!("berth-traversal-{}", std::process::id());
    let loc = start_upload(&b, "team/app").await;
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = raw(
        b.port,
        &format!(
            "PUT {}{sep}digest=sha256:../../../../../../../../tmp/{marker} HTTP/1.1",
            path_of(&loc)
        ),
        &data,
    )
    .await;
    assert!(
        r.status == 400 && r.codes().iter().any(|c| c == "DIGEST_INVALID"),
        "raw PUT ?digest=sha256:../../tmp/{marker}: {} {:?}",
        r.status,
        r.codes()
    );
    assert!(
        !std::path::Path::new("/tmp").join(&marker).exists(),
        "/tmp/{marker} was written"
    );
    assert!(
        !std::path::Path::new("/").join(&marker).exists(),
        "/{marker} was written"
    );

    // Traversal in a mount request: rejected or treated as a plain upload start, never a mount.
    let r = raw(
        b.port,
        "POST /v2/team/other/blobs/uploads/?mount=sha256:..%2F..%2F..%2Fetc%2Fpasswd&from=team/app HTTP/1.1",
        b"",
    )
    .await;
    assert!(
        (r.status == 400 && r.codes().iter().any(|c| c == "DIGEST_INVALID")) || r.status == 202,
        "mount with a traversal digest: {} {:?}",
        r.status,
        r.codes()
    );

    // Nothing was created outside the data directory.
    let parent = b.data_dir.parent().unwrap();
    let entries: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        vec![
            b.data_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        ],
        "files appeared next to the data dir"
    );
    assert_alive(&mut b, "digest traversal").await;
}

#[tokio::test]
async fn invalid_repository_names_are_rejected() {
    let mut b = Berth::start();
    let long = "a".repeat(256);
    let long_parts = vec!["abcdefghij"; 30].join("/");
    let names = [
        "a/../b",
        "../etc",
        "a/%2e%2e/b",
        "%2e%2e/etc",
        "a/%2E%2E/b",
        "a/./b",
        "Team/App",
        "team/App",
        long.as_str(),
        long_parts.as_str(),
        "team/app/",
        "team//app",
        "/team/app",
        "-team/app",
        "team-/app",
        "team/app_",
        "team/.app",
        "team/app%2Fx",
        "team/app%00",
        "team/ap%20p",
        "team/%C3%A4pp",
    ];
    let digest = sha256_digest(b"x");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":1}},"layers":[]}}"#
    );
    for name in names {
        for (method, suffix, body, ct) in [
            ("GET", "tags/list".to_string(), "", ""),
            ("POST", "blobs/uploads/".to_string(), "", ""),
            (
                "POST",
                format!("blobs/uploads/?digest={digest}"),
                "x",
                "application/octet-stream",
            ),
            (
                "PUT",
                "manifests/v1".to_string(),
                manifest.as_str(),
                OCI_MANIFEST,
            ),
            ("GET", "manifests/v1".to_string(), "", ""),
            ("HEAD", format!("blobs/{digest}"), "", ""),
        ] {
            let mut head = format!("{method} /v2/{name}/{suffix} HTTP/1.1");
            if !ct.is_empty() {
                head.push_str(&format!("\r\nContent-Type: {ct}"));
            }
            if method == "POST" && body.is_empty() {
                head.push_str("\r\nContent-Length: 0");
            }
            let r = raw(b.port, &head, body.as_bytes()).await;
            let ok = r.status == 404
                || (r.status == 400
                    && (method == "HEAD" || r.codes().iter().any(|c| c == "NAME_INVALID")));
            assert!(
                ok,
                "{method} /v2/{name}/{suffix}: expected 400 NAME_INVALID or 404, got {} {:?} {:?}",
                r.status,
                r.codes(),
                r.header("location")
            );
        }
    }
    assert_alive(&mut b, "invalid names").await;
    let parent = b.data_dir.parent().unwrap();
    let entries: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "files appeared next to the data dir: {entries:?}"
    );
    let r = common::client()
        .get(format!("{}/v2/_catalog", b.url()))
        .send()
        .await
        .unwrap();
    if r.status() == 200 {
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["repositories"],
            json!([]),
            "invalid names created repositories: {v}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Upload sessions
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn bogus_content_range_is_416() {
    let mut b = Berth::start();
    let data = pseudo_random(2, 10_000);
    let loc = start_upload(&b, "range/app").await;
    for bogus in [
        "garbage",
        "10-5",
        "0-x",
        "x-9",
        "-1-9998",
        "0-99999999999999999999999",
        "bytes 0-9999 trailing",
        "0--9999",
    ] {
        let r = patch(&loc, Some(bogus), &data).await;
        assert_eq!(r.status(), 416, "PATCH with Content-Range {bogus:?}");
        assert_alive(&mut b, &format!("Content-Range {bogus:?}")).await;
    }
    // A range whose length disagrees with the body.
    let r = patch(&loc, Some("0-99"), &data).await;
    assert!(
        r.status() == 416 || r.status() == 400,
        "PATCH Content-Range 0-99 with 10000 bytes: {}",
        r.status()
    );
    // The session is still usable from offset 0 (nothing was accepted).
    let r = patch(&loc, Some(&format!("0-{}", data.len() - 1)), &data).await;
    assert_eq!(r.status(), 202, "valid PATCH after rejected ones");
    let loc = new_location(&b, &r, &loc);
    let digest = sha256_digest(&data);
    let r = common::client()
        .put(with_digest(&loc, &digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = common::client()
        .get(format!("{}/v2/range/app/blobs/{digest}", b.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        got.as_ref() == data.as_slice(),
        "blob assembled after rejected PATCHes is wrong"
    );
}

#[tokio::test]
async fn patch_not_at_current_offset_is_416() {
    let mut b = Berth::start();
    let data = pseudo_random(3, 3000);
    let loc = start_upload(&b, "offset/app").await;
    let r = patch(&loc, Some("0-999"), &data[..1000]).await;
    assert_eq!(r.status(), 202);
    let loc = new_location(&b, &r, &loc);
    for (range, slice) in [
        ("2000-2999", &data[2000..]),
        ("500-1499", &data[500..1500]),
        ("0-999", &data[..1000]),
        ("1001-2000", &data[1001..2001]),
        ("999-1998", &data[999..1999]),
    ] {
        let r = patch(&loc, Some(range), slice).await;
        assert_eq!(r.status(), 416, "PATCH {range} when the offset is 1000");
    }
    let (status, off, loc) = upload_offset(&b, &loc).await;
    assert_eq!(status, 204, "upload status after rejected PATCHes");
    assert_eq!(off, Some(1000), "offset after rejected PATCHes");
    let r = patch(&loc, Some("1000-2999"), &data[1000..]).await;
    assert_eq!(r.status(), 202, "PATCH at the right offset");
    let loc = new_location(&b, &r, &loc);
    let digest = sha256_digest(&data);
    let r = common::client()
        .put(with_digest(&loc, &digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = common::client()
        .get(format!("{}/v2/offset/app/blobs/{digest}", b.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got.as_ref() == data.as_slice());
    assert_alive(&mut b, "out-of-order PATCHes").await;
}

/// Opens a raw connection, announces `announced` body bytes but sends only `sent` of `body`, then closes.
async fn send_truncated(port: u16, head: &str, body: &[u8], announced: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("{head}\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {announced}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let _ = s.flush().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    // Give the server time to notice the reset.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn truncated_upload_leaves_a_consistent_session() {
    let mut b = Berth::start();
    const MIB: usize = 1024 * 1024;
    let data = pseudo_random(4, 1000 + MIB);
    let digest = sha256_digest(&data);
    for with_range in [true, false] {
        let repo = if with_range {
            "trunc/ranged"
        } else {
            "trunc/plain"
        };
        let loc = start_upload(&b, repo).await;
        let r = patch(&loc, Some("0-999"), &data[..1000]).await;
        assert_eq!(r.status(), 202);
        let loc = new_location(&b, &r, &loc);

        // Announce 1 MiB, send 100 KiB, hang up.
        let mut head = format!(
            "PATCH {} HTTP/1.1\r\nContent-Type: application/octet-stream",
            path_of(&loc)
        );
        if with_range {
            head.push_str(&format!("\r\nContent-Range: 1000-{}", 1000 + MIB - 1));
        }
        send_truncated(b.port, &head, &data[1000..1000 + 100 * 1024], MIB).await;
        assert_alive(&mut b, "truncated PATCH").await;

        // The session survives, its offset counts only bytes actually received, and those bytes are right:
        // resuming from the reported offset yields exactly the original blob.
        let (status, off, loc) = upload_offset(&b, &loc).await;
        assert_eq!(
            status, 204,
            "upload status after a truncated PATCH ({repo})"
        );
        let off = off.expect("Range header on upload status") as usize;
        assert!(
            (1000..=1000 + 100 * 1024).contains(&off),
            "offset {off} after a truncated PATCH (1000 acknowledged, 102400 more sent, {MIB} announced)"
        );
        let r = patch(
            &loc,
            Some(&format!("{off}-{}", data.len() - 1)),
            &data[off..],
        )
        .await;
        assert_eq!(
            r.status(),
            202,
            "PATCH at the reported offset {off} ({repo})"
        );
        let loc = new_location(&b, &r, &loc);
        let r = common::client()
            .put(with_digest(&loc, &digest))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "PUT after resuming a truncated upload ({repo})"
        );
        let got = common::client()
            .get(format!("{}/v2/{repo}/blobs/{digest}", b.url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            got.as_ref() == data.as_slice(),
            "blob after resuming a truncated upload is wrong ({repo})"
        );
    }

    // A truncated monolithic PUT must not commit anything.
    let loc = start_upload(&b, "trunc/put").await;
    let head = format!(
        "PUT {} HTTP/1.1\r\nContent-Type: application/octet-stream",
        with_digest(&path_of(&loc), &digest)
    );
    send_truncated(b.port, &head, &data[..100 * 1024], data.len()).await;
    assert_alive(&mut b, "truncated PUT").await;
    assert_eq!(
        blob_status(&b, "trunc/put", &digest).await,
        404,
        "truncated PUT committed a blob"
    );
    let (status, off, _) = upload_offset(&b, &loc).await;
    assert!(
        status == 404 || (status == 204 && off.unwrap_or(0) <= 100 * 1024),
        "upload status after a truncated PUT: {status} offset {off:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Volume of garbage
// ---------------------------------------------------------------------------------------------------------------

fn garbage_request(i: usize) -> Vec<u8> {
    let noise = pseudo_random(i as u64 + 1000, 64 + (i * 37) % 4000);
    match i % 10 {
        0 => noise,
        1 => {
            let mut v = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
            v.extend(std::iter::repeat_n(b'a', 200_000));
            v.extend_from_slice(b"\r\n\r\n");
            v
        }
        2 => b"PUT /v2/g/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{".to_vec(),
        3 => b"PATCH /v2/g/app/blobs/uploads/nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n"
            .to_vec(),
        4 => {
            let mut v = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
            v.extend_from_slice(&noise);
            v
        }
        5 => format!(
            "PUT /v2/g/app/manifests/t{i} HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 11\r\n\r\n{{\"bogus\": ["
        )
        .into_bytes(),
        6 => {
            let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            v.extend_from_slice(&noise);
            v
        }
        7 => b"GET /v2/ HT".to_vec(),
        8 => {
            let mut v = b"GET /v2/".to_vec();
            v.extend(std::iter::repeat_n(b'/', 70_000));
            v.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
            v
        }
        _ => {
            let mut v = Vec::new();
            for k in 0..2000 {
                v.extend_from_slice(format!("X-H{k}: v\r\n").as_bytes());
            }
            let mut r = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n".to_vec();
            r.extend(v);
            r.extend_from_slice(b"\r\n");
            r
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_garbage_requests_do_not_kill_the_server() {
    let mut b = Berth::start();
    let port = b.port;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return 0usize;
                };
                let _ = s.write_all(&garbage_request(i)).await;
                if i % 3 == 0 {
                    let _ = s.shutdown().await;
                }
                let mut buf = vec![0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
                1
            })
        })
        .collect();
    // Meanwhile the server keeps serving real requests.
    let c = common::client();
    for _ in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            c.get(format!("{}/v2/", b.url())).send(),
        )
        .await
        .expect("GET /v2/ hung during the garbage storm")
        .expect("GET /v2/ failed during the garbage storm");
        assert_eq!(r.status(), 200, "GET /v2/ during the garbage storm");
    }
    let mut connected = 0;
    for t in tasks {
        connected += t.await.unwrap();
    }
    eprintln!("{connected} garbage connections in {:?}", started.elapsed());
    assert_alive(&mut b, "1000 concurrent garbage requests").await;

    // And real work still succeeds.
    let data = pseudo_random(9, 50_000);
    let digest = sha256_digest(&data);
    let loc = start_upload(&b, "after/garbage").await;
    let r = common::client()
        .put(with_digest(&loc, &digest))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = common::client()
        .get(format!("{}/v2/after/garbage/blobs/{digest}", b.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got.as_ref() == data.as_slice());
    let r = common::client()
        .get(format!("{}/v2/g/app/tags/list", b.url()))
        .send()
        .await
        .unwrap();
    if r.status() == 200 {
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["tags"].as_array().map(|a| a.len()).unwrap_or(0),
            0,
            "garbage created tags: {v}"
        );
    }
}
