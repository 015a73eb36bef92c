//! Shared helpers for the OCI distribution-spec black-box tests (`tests/spec_*.rs`).
//!
//! Each spec test file includes this with `#[path = "spec_helpers.rs"] mod h;`. Built on its own (cargo treats every
//! `tests/*.rs` as a target) it holds no tests. It deliberately does not use `common` so that it compiles standalone.
#![allow(dead_code)]

use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `sha512:<hex>` of `data`.
pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// A descriptor (`mediaType`, `digest`, `size`) of `data`.
pub fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// An OCI image manifest with the given config and layer descriptors.
pub fn oci_manifest(config: &Value, layers: &[Value]) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .unwrap()
}

/// Adds `param` (`k=v`) to a URL that may already carry a query.
pub fn add_query(url: &str, param: &str) -> String {
    if url.contains('?') {
        format!("{url}&{param}")
    } else {
        format!("{url}?{param}")
    }
}

/// The value of header `name`, if present and valid UTF-8.
pub fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// All values of header `name`.
pub fn headers_all(resp: &Response, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

/// The value of header `name`; panics with context when absent.
pub fn must_header(resp: &Response, name: &str) -> String {
    header(resp, name).unwrap_or_else(|| {
        panic!(
            "{} {}: missing header {name}; headers: {:?}",
            resp.status(),
            resp.url(),
            resp.headers()
        )
    })
}

/// Asserts the status, with the URL and body in the panic message.
pub async fn expect_status(resp: Response, want: u16) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let status = resp.status();
    let url = resp.url().to_string();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    assert_eq!(
        status.as_u16(),
        want,
        "{url}: expected {want}, got {status}; body: {}",
        String::from_utf8_lossy(&body[..body.len().min(2000)])
    );
    (headers, body)
}

/// Checks that `body` is a spec error envelope `{"errors":[{"code":..,"message":..},..]}` and returns the codes.
pub fn error_codes(ctx: &str, body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{ctx}: error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let errors = v
        .get("errors")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{ctx}: error body lacks an `errors` array: {v}"));
    assert!(!errors.is_empty(), "{ctx}: empty `errors` array: {v}");
    errors
        .iter()
        .map(|e| {
            let code = e
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{ctx}: error entry lacks string `code`: {v}"));
            assert!(
                !code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{ctx}: code {code:?} is not uppercase letters and underscores"
            );
            if let Some(m) = e.get("message") {
                assert!(m.is_string(), "{ctx}: `message` is not a string: {v}");
            }
            code.to_string()
        })
        .collect()
}

/// Asserts `resp` has status `status` and a spec error body carrying one of `codes`; returns the parsed body.
pub async fn expect_error(resp: Response, status: u16, codes: &[&str]) -> Value {
    let ctx = format!("{}", resp.url());
    let (_, body) = expect_status(resp, status).await;
    let got = error_codes(&ctx, &body);
    assert!(
        got.iter().any(|c| codes.contains(&c.as_str())),
        "{ctx}: expected error code in {codes:?}, got {got:?}"
    );
    serde_json::from_slice(&body).unwrap()
}

/// Parses a `Link: <url>; rel="next"` header into the URL.
pub fn next_link(resp: &Response) -> Option<String> {
    let v = header(resp, "link")?;
    assert!(
        v.contains("rel=\"next\""),
        "Link header without rel=\"next\": {v}"
    );
    let start = v
        .find('<')
        .unwrap_or_else(|| panic!("Link header without <url>: {v}"));
    let end = v
        .find('>')
        .unwrap_or_else(|| panic!("Link header without <url>: {v}"));
    Some(v[start + 1..end].to_string())
}

/// A client bound to one registry.
pub struct Reg {
    pub http: Client,
    pub base: String,
}

/// Blobs and manifest of an image pushed with [`Reg::push_image`].
pub struct Image {
    pub digest: String,
    pub body: Vec<u8>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

impl Image {
    /// The descriptor of this image's manifest.
    pub fn desc(&self) -> Value {
        json!({"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.body.len()})
    }
}

impl Reg {
    pub fn new(base: String, http: Client) -> Reg {
        Reg { http, base }
    }

    /// An absolute URL for a path (`/v2/...`) or an absolute URL (returned as is).
    pub fn resolve(&self, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else {
            assert!(
                loc.starts_with('/'),
                "location {loc:?} is neither absolute nor rooted"
            );
            format!("{}{}", self.base, loc)
        }
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.resolve(path))
    }

    pub async fn send(&self, rb: RequestBuilder) -> Response {
        rb.send()
            .await
            .expect("request failed at the transport level")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(self.req(Method::GET, path)).await
    }

    pub async fn head(&self, path: &str) -> Response {
        self.send(self.req(Method::HEAD, path)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.send(self.req(Method::DELETE, path)).await
    }

    /// `POST /v2/<repo>/blobs/uploads/<query>` with an empty body.
    pub async fn post_upload(&self, repo: &str, query: &str) -> Response {
        let rb = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/{query}"))
            .body(Vec::new());
        self.send(rb).await
    }

    /// Starts an upload session; asserts 202 and returns the absolute upload URL.
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = self.post_upload(repo, "").await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
        self.resolve(&must_header(&resp, "location"))
    }

    /// `PATCH <loc>` with `data`, optionally with a `Content-Range`.
    pub async fn patch(&self, loc: &str, data: &[u8], range: Option<&str>) -> Response {
        let mut rb = self
            .req(Method::PATCH, loc)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec());
        if let Some(r) = range {
            rb = rb.header("content-range", r);
        }
        self.send(rb).await
    }

    /// `PUT <loc>?digest=<digest>` with `data` as the final chunk (may be empty).
    pub async fn put_upload(&self, loc: &str, digest: &str, data: &[u8]) -> Response {
        let rb = self
            .req(Method::PUT, &add_query(loc, &format!("digest={digest}")))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec());
        self.send(rb).await
    }

    /// Pushes a blob with POST then monolithic PUT; asserts 201 and returns its sha256 digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let loc = self.start_upload(repo).await;
        let resp = self.put_upload(&loc, &digest, data).await;
        expect_status(resp, 201).await;
        digest
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the given Content-Type.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        let rb = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header(CONTENT_TYPE, media_type)
            .body(body.to_vec());
        self.send(rb).await
    }

    /// Pushes a manifest; asserts 201 and returns its sha256 digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let resp = self.put_manifest(repo, reference, media_type, body).await;
        expect_status(resp, 201).await;
        sha256(body)
    }

    /// Pushes one small manifest (its config blob once) and tags it with every tag in `tags`; returns its digest.
    pub async fn push_tags(&self, repo: &str, tags: &[&str]) -> String {
        let config = format!("{{\"repo\":\"{repo}\"}}").into_bytes();
        self.push_blob(repo, &config).await;
        let body = oci_manifest(&desc(OCI_CONFIG, &config), &[]);
        for t in tags {
            self.push_manifest(repo, t, OCI_MANIFEST, &body).await;
        }
        sha256(&body)
    }

    /// Pushes a config blob, a layer blob and an OCI image manifest (tagged `tag`, or by digest when `tag` is
    /// empty). `seed` makes the content unique.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> Image {
        let config =
            serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed}))
                .unwrap();
        let layer = format!("layer-bytes-{seed}").into_bytes();
        let config_digest = self.push_blob(repo, &config).await;
        let layer_digest = self.push_blob(repo, &layer).await;
        let body = oci_manifest(&desc(OCI_CONFIG, &config), &[desc(OCI_LAYER, &layer)]);
        let digest = sha256(&body);
        let reference = if tag.is_empty() {
            digest.clone()
        } else {
            tag.to_string()
        };
        self.push_manifest(repo, &reference, OCI_MANIFEST, &body)
            .await;
        Image {
            digest,
            body,
            config,
            config_digest,
            layer,
            layer_digest,
        }
    }

    /// `host:port` of the registry (for raw requests).
    pub fn host(&self) -> String {
        self.base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// Sends a raw HTTP/1.1 request (no client-side path normalisation, no default headers).
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
        raw(&self.host(), method, path, headers).await
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` over a fresh TCP connection with `Connection: close` and reads the whole response.
pub async fn raw(host: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    raw_with_body(host, method, path, headers, Vec::new()).await
}

/// Like [`raw`] with a request body (with `Content-Length`), written while the response is read, as RFC 9112
/// (section 9.3) asks of clients: a server may answer (e.g. 413) and close before the whole body is sent.
pub async fn raw_with_body(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Raw {
    let mut extra = String::new();
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        extra = format!("Content-Length: {}\r\n", body.len());
    }
    raw_exchange(host, method, path, headers, &extra, body).await
}

/// Like [`raw_with_body`] but sends the body with `Transfer-Encoding: chunked` (no `Content-Length`).
pub async fn raw_chunked(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunk_size: usize,
) -> Raw {
    let mut wire = Vec::with_capacity(body.len() + body.len() / chunk_size * 8 + 16);
    for c in body.chunks(chunk_size) {
        wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        wire.extend_from_slice(c);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    raw_exchange(
        host,
        method,
        path,
        headers,
        "Transfer-Encoding: chunked\r\n",
        wire,
    )
    .await
}

async fn raw_exchange(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    extra_headers: &str,
    wire_body: Vec<u8>,
) -> Raw {
    let s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(extra_headers);
    req.push_str("\r\n");
    let writer = tokio::spawn(async move {
        // Errors (the server closing early) are fine: the response is what matters.
        if wr.write_all(req.as_bytes()).await.is_ok() {
            let _ = wr.write_all(&wire_body).await;
        }
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                assert!(
                    !buf.is_empty(),
                    "{method} {path}: connection failed before any response: {e}"
                );
                break;
            }
        }
    }
    drop(writer.await);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header terminator in raw response");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut rest = buf[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked && method != "HEAD" {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(nl) = rest[i..].windows(2).position(|w| w == b"\r\n") {
            let size_line = String::from_utf8_lossy(&rest[i..i + nl]).to_string();
            let size =
                usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            i += nl + 2;
            if size == 0 || i + size > rest.len() {
                break;
            }
            out.extend_from_slice(&rest[i..i + size]);
            i += size + 2;
        }
        rest = out;
    }
    Raw {
        status,
        headers,
        body: rest,
    }
}

/// `$SPEC_REGISTRY_URL`, if set: run the spec tests against that registry instead of a fresh berth.
pub fn external_registry() -> Option<String> {
    std::env::var("SPEC_REGISTRY_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
}
