//! A fault-injecting fake upstream registry for the mirror tests, plus helpers to start berth as its mirror and to
//! read a response while telling a clean body from an aborted one.
//!
//! The fake is a small hyper 1 HTTP/1.1 server on `127.0.0.1:0`, running on its own tokio runtime (so it keeps
//! serving while a test blocks on a client tool, and so "down" can drop every socket at once). It serves `/v2/`,
//! `GET/HEAD /v2/<name>/manifests/<reference>` and `GET/HEAD /v2/<name>/blobs/<digest>` from in-memory maps the test
//! fills, counts every request by (method, path), and can be told to misbehave globally or for one path: empty body,
//! body cut half-way, wrong bytes, 500/503/429, stall before headers or mid-body, trickle, or stop listening. It can
//! also demand Basic credentials or run the Docker Bearer token flow (`/token`, counting token requests per scope).
//!
//! Included with `#[path = "common/upstream.rs"] mod upstream;` next to `mod common;` (it uses `crate::common`).
#![allow(dead_code)]

use crate::common::{Berth, sha256_digest};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Body = BoxBody<Bytes, std::io::Error>;

// ---------------------------------------------------------------------------------------------------------------
// Faults and auth modes
// ---------------------------------------------------------------------------------------------------------------

/// How the fake answers a manifest or blob request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Correct status, headers and body.
    Ok,
    /// 200 with the full `Content-Length`, then the connection closes without a single body byte.
    ZeroBytes,
    /// 200 with the full `Content-Length`, half the body, then the connection closes.
    Truncate,
    /// 200 with the full `Content-Length` and a body of the right length with one byte changed (wrong digest).
    WrongBytes,
    /// This status (e.g. 500, 503) with an OCI error body.
    Status(u16),
    /// 429 with `Retry-After: <secs>` and a `TOOMANYREQUESTS` error body.
    TooManyRequests { retry_after: u64 },
    /// Sleep this long before sending the status line (then answer correctly).
    StallBeforeHeaders(Duration),
    /// Send headers and half the body, sleep this long, then send the rest.
    StallMidBody(Duration),
    /// Send `chunk` bytes every `every`.
    Trickle { chunk: usize, every: Duration },
    /// Trickle like [`Fault::Trickle`], then close the connection half-way (so concurrent clients join a download
    /// that then fails).
    TrickleTruncate { chunk: usize, every: Duration },
    /// Trickle like [`Fault::Trickle`] a body of the right length with one byte changed.
    TrickleWrongBytes { chunk: usize, every: Duration },
}

/// Whether and how the fake asks for credentials on `/v2/...`.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Anonymous access.
    None,
    /// Every `/v2/...` request needs `Authorization: Basic` with these credentials.
    Basic { username: String, password: String },
    /// Docker token flow: `/v2/...` needs `Authorization: Bearer <token>` whose scope covers the repository and
    /// that is younger than `expires_in` seconds; the token comes from `GET /token?service=fake&scope=...`, which
    /// needs these Basic credentials when set.
    Token {
        credentials: Option<(String, String)>,
        expires_in: u64,
    },
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub at: Instant,
}

// ---------------------------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Inner {
    blobs: HashMap<String, Bytes>,
    /// (repository, tag or digest) → (media type, bytes).
    manifests: HashMap<(String, String), (String, Bytes)>,
    counts: HashMap<(String, String), usize>,
    seen: Vec<Seen>,
    global_fault: Option<Fault>,
    /// (path or path suffix, fault); the last matching entry wins.
    path_faults: Vec<(String, Fault)>,
    auth: Option<Auth>,
    /// token → (scope string it was issued for, when it stops being accepted).
    tokens: HashMap<String, (String, Instant)>,
    /// scope string → tokens issued.
    token_requests: HashMap<String, usize>,
    next_token: u64,
    /// path → when a GET body for it was last sent completely.
    body_done: HashMap<String, Instant>,
    /// path → when a GET response for it last started (headers about to be sent).
    body_started: HashMap<String, Instant>,
    /// When set, blob GETs answer `307` to `<base>/storage/<digest>` (served by any fake, without auth).
    blob_redirect: Option<String>,
}

type Shared = Arc<Mutex<Inner>>;

/// The fake upstream registry. Stops (drops every socket) when dropped.
pub struct Upstream {
    pub port: u16,
    state: Shared,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Upstream {
    /// Starts an anonymous, well-behaved fake on a free loopback port.
    pub fn start() -> Upstream {
        let state: Shared = Arc::new(Mutex::new(Inner::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
        let port = listener.local_addr().unwrap().port();
        let up = Upstream {
            port,
            state,
            rt: Mutex::new(None),
        };
        up.serve_on(listener);
        up
    }

    /// Starts a fake that demands `auth`.
    pub fn start_with_auth(auth: Auth) -> Upstream {
        let up = Self::start();
        up.state.lock().unwrap().auth = Some(auth);
        up
    }

    fn serve_on(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-upstream")
            .enable_all()
            .build()
            .expect("fake upstream runtime");
        let state = self.state.clone();
        let port = self.port;
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, port, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        *self.rt.lock().unwrap() = Some(rt);
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    // --- content ---------------------------------------------------------------------------------------------

    /// Stores a blob (served under every repository name); returns its digest.
    pub fn put_blob(&self, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let digest = sha256_digest(&data);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), data);
        digest
    }

    /// Stores a manifest under `name:tag` and `name@digest`; returns its digest. `tag` may be the digest itself.
    pub fn put_manifest(
        &self,
        name: &str,
        tag: &str,
        media_type: &str,
        data: impl Into<Bytes>,
    ) -> String {
        let data = data.into();
        let digest = sha256_digest(&data);
        let mut s = self.state.lock().unwrap();
        let v = (media_type.to_string(), data);
        s.manifests
            .insert((name.to_string(), digest.clone()), v.clone());
        s.manifests.insert((name.to_string(), tag.to_string()), v);
        digest
    }

    /// Points `name:tag` at the manifest `name@digest` already stored.
    pub fn retag(&self, name: &str, tag: &str, digest: &str) {
        let mut s = self.state.lock().unwrap();
        let v = s
            .manifests
            .get(&(name.to_string(), digest.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("fake upstream: no manifest {name}@{digest} to tag"));
        s.manifests.insert((name.to_string(), tag.to_string()), v);
    }

    /// Forgets a manifest reference (tag or digest) of `name`.
    pub fn remove_manifest(&self, name: &str, reference: &str) {
        self.state
            .lock()
            .unwrap()
            .manifests
            .remove(&(name.to_string(), reference.to_string()));
    }

    /// Makes blob GETs redirect (307) to `<base>/storage/<digest>`, e.g. another fake's [`Upstream::url`], as
    /// registries do to blob storage. `None` serves blobs directly again.
    pub fn redirect_blobs_to(&self, base: Option<&str>) {
        self.state.lock().unwrap().blob_redirect = base.map(str::to_string);
    }

    /// Invalidates every token issued so far (as a token service does when its signing key rotates).
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    // --- faults ----------------------------------------------------------------------------------------------

    /// Applies `fault` to every manifest and blob request without a path fault.
    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().global_fault = Some(fault);
    }

    /// Applies `fault` to requests whose path equals or ends with `path_or_suffix` (e.g. a digest).
    pub fn set_path_fault(&self, path_or_suffix: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .path_faults
            .push((path_or_suffix.to_string(), fault));
    }

    /// Removes every fault (requests already stalled keep stalling).
    pub fn heal(&self) {
        let mut s = self.state.lock().unwrap();
        s.global_fault = None;
        s.path_faults.clear();
    }

    /// Stops listening and drops every open connection (clients get "connection refused" afterwards).
    pub fn down(&self) {
        let rt = self.rt.lock().unwrap().take();
        if let Some(rt) = rt {
            // Dropping a runtime may block; do it off any async context.
            std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(2)))
                .join()
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "fake upstream still accepting");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Listens again on the same port after [`Upstream::down`].
    pub fn up(&self) {
        if self.rt.lock().unwrap().is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_reuse_address(true).unwrap();
            let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
            match sock.bind(&addr.into()).and_then(|_| sock.listen(1024)) {
                Ok(()) => break std::net::TcpListener::from(sock),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("fake upstream rebind: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("fake upstream cannot rebind port {}: {e}", self.port),
            }
        };
        self.serve_on(listener);
    }

    // --- observations ----------------------------------------------------------------------------------------

    /// How many `method` requests arrived for exactly `path` (no query).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .counts
            .get(&(method.to_string(), path.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// GET count of `/v2/<name>/blobs/<digest>`.
    pub fn blob_gets(&self, name: &str, digest: &str) -> usize {
        self.count("GET", &format!("/v2/{name}/blobs/{digest}"))
    }

    /// GET count of `/v2/<name>/manifests/<reference>`.
    pub fn manifest_gets(&self, name: &str, reference: &str) -> usize {
        self.count("GET", &format!("/v2/{name}/manifests/{reference}"))
    }

    /// HEAD count of `/v2/<name>/manifests/<reference>`.
    pub fn manifest_heads(&self, name: &str, reference: &str) -> usize {
        self.count("HEAD", &format!("/v2/{name}/manifests/{reference}"))
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Total requests seen.
    pub fn total_requests(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Tokens issued for exactly this scope string.
    pub fn token_requests(&self, scope: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .token_requests
            .get(scope)
            .copied()
            .unwrap_or(0)
    }

    /// Requests to `/token` (successful or not).
    pub fn token_endpoint_hits(&self) -> usize {
        self.count("GET", "/token")
    }

    /// Tokens issued for any scope that mentions `repository:<name>:`.
    pub fn token_requests_for_repo(&self, name: &str) -> usize {
        let needle = format!("repository:{name}:");
        self.state
            .lock()
            .unwrap()
            .token_requests
            .iter()
            .filter(|(k, _)| k.split(' ').any(|s| s.starts_with(&needle)))
            .map(|(_, v)| v)
            .sum()
    }

    /// When the last chunk of the last complete GET body for `path` was handed to hyper.
    pub fn body_done_at(&self, path: &str) -> Option<Instant> {
        self.state.lock().unwrap().body_done.get(path).copied()
    }

    /// When the last GET response for `path` started.
    pub fn body_started_at(&self, path: &str) -> Option<Instant> {
        self.state.lock().unwrap().body_started.get(path).copied()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.lock().unwrap().take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------------------------

fn full(status: StatusCode, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.header("Content-Length", body.len().to_string())
        .body(Full::new(body).map_err(|e| match e {}).boxed())
        .unwrap()
}

fn oci_error(status: u16, code: &str, message: &str, extra: &[(&str, String)]) -> Response<Body> {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    headers.extend(extra.iter().cloned());
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    full(StatusCode::from_u16(status).unwrap(), &headers, body)
}

fn header(req: &Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn query_param(query: &str, key: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

async fn handle(state: Shared, port: u16, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let authorization = header(&req, "authorization");
    let auth = {
        let mut s = state.lock().unwrap();
        *s.counts.entry((method.clone(), path.clone())).or_insert(0) += 1;
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            authorization: authorization.clone(),
            user_agent: header(&req, "user-agent"),
            at: Instant::now(),
        });
        s.auth.clone().unwrap_or(Auth::None)
    };

    if path == "/token" {
        return token_endpoint(&state, &auth, &query, authorization.as_deref());
    }
    if let Some(digest) = path.strip_prefix("/storage/") {
        // "Blob storage": no registry auth, just the bytes.
        let data = state.lock().unwrap().blobs.get(digest).cloned();
        return match data {
            Some(d) => full(
                StatusCode::OK,
                &[("Content-Type", "application/octet-stream".into())],
                d,
            ),
            None => full(StatusCode::NOT_FOUND, &[], "no such object"),
        };
    }
    if path != "/v2/" && path != "/v2" && !path.starts_with("/v2/") {
        return oci_error(404, "NOT_FOUND", "not a registry path", &[]);
    }
    if method != "GET" && method != "HEAD" {
        return oci_error(405, "UNSUPPORTED", "the fake upstream is read-only", &[]);
    }

    // Which repository the request is about (for token scopes).
    let parsed = parse_v2(&path);
    let repo = parsed.as_ref().map(|(n, _, _)| n.clone());

    // Authentication.
    match &auth {
        Auth::None => {}
        Auth::Basic { username, password } => {
            if authorization.as_deref() != Some(basic(username, password).as_str()) {
                return oci_error(
                    401,
                    "UNAUTHORIZED",
                    "authentication required",
                    &[("WWW-Authenticate", r#"Basic realm="fake""#.to_string())],
                );
            }
        }
        Auth::Token { .. } => {
            let scope = repo
                .as_ref()
                .map(|r| format!("repository:{r}:pull"))
                .unwrap_or_default();
            let granted = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|t| state.lock().unwrap().tokens.get(t).cloned())
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(scope, _)| scope);
            let ok = match &granted {
                None => false,
                Some(_) if scope.is_empty() => true,
                Some(g) => g.split(' ').any(|s| {
                    s.strip_prefix(&format!("repository:{}:", repo.as_ref().unwrap()))
                        .is_some_and(|acts| acts.split(',').any(|a| a == "pull" || a == "*"))
                }),
            };
            if !ok {
                let mut chal =
                    format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake""#);
                if !scope.is_empty() {
                    chal.push_str(&format!(r#",scope="{scope}""#));
                }
                if granted.is_some() {
                    chal.push_str(r#",error="insufficient_scope""#);
                }
                return oci_error(
                    401,
                    "UNAUTHORIZED",
                    "authentication required",
                    &[("WWW-Authenticate", chal)],
                );
            }
        }
    }

    let Some((name, kind, reference)) = parsed else {
        if path == "/v2/" || path == "/v2" {
            return full(
                StatusCode::OK,
                &[
                    ("Content-Type", "application/json".into()),
                    ("Docker-Distribution-API-Version", "registry/2.0".into()),
                ],
                "{}",
            );
        }
        return oci_error(404, "NAME_UNKNOWN", "unknown path", &[]);
    };

    // Look the object up.
    let found = {
        let s = state.lock().unwrap();
        match kind {
            Kind::Manifest => s
                .manifests
                .get(&(name.clone(), reference.clone()))
                .map(|(mt, b)| (mt.clone(), b.clone())),
            Kind::Blob => s
                .blobs
                .get(&reference)
                .map(|b| ("application/octet-stream".to_string(), b.clone())),
        }
    };
    let fault = {
        let s = state.lock().unwrap();
        s.path_faults
            .iter()
            .rev()
            .find(|(k, _)| path == *k || path.ends_with(k.as_str()))
            .map(|(_, f)| f.clone())
            .or_else(|| s.global_fault.clone())
            .unwrap_or(Fault::Ok)
    };

    match &fault {
        Fault::Status(code) => {
            let c = if *code == 503 {
                "UNAVAILABLE"
            } else {
                "UNKNOWN"
            };
            return oci_error(*code, c, "injected failure", &[]);
        }
        Fault::TooManyRequests { retry_after } => {
            return oci_error(
                429,
                "TOOMANYREQUESTS",
                "injected rate limit",
                &[("Retry-After", retry_after.to_string())],
            );
        }
        Fault::StallBeforeHeaders(d) => tokio::time::sleep(*d).await,
        _ => {}
    }

    if kind == Kind::Blob
        && method == "GET"
        && found.is_some()
        && let Some(base) = state.lock().unwrap().blob_redirect.clone()
    {
        return full(
            StatusCode::TEMPORARY_REDIRECT,
            &[("Location", format!("{base}/storage/{reference}"))],
            "",
        );
    }
    let Some((media_type, data)) = found else {
        return match kind {
            Kind::Manifest => oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", &[]),
            Kind::Blob => oci_error(404, "BLOB_UNKNOWN", "blob unknown", &[]),
        };
    };
    let digest = sha256_digest(&data);
    let builder = Response::builder()
        .status(200)
        .header("Content-Type", media_type)
        .header("Content-Length", data.len().to_string())
        .header("Docker-Content-Digest", &digest)
        .header("Etag", format!("\"{digest}\""));
    if method == "HEAD" {
        return builder
            .body(Empty::new().map_err(|e| match e {}).boxed())
            .unwrap();
    }
    state
        .lock()
        .unwrap()
        .body_started
        .insert(path.clone(), Instant::now());
    builder
        .body(body_with_fault(data, fault, state.clone(), path))
        .unwrap()
}

fn token_endpoint(
    state: &Shared,
    auth: &Auth,
    query: &str,
    authorization: Option<&str>,
) -> Response<Body> {
    let Auth::Token {
        credentials,
        expires_in,
    } = auth
    else {
        return oci_error(404, "NOT_FOUND", "no token service", &[]);
    };
    if let Some((u, p)) = credentials
        && authorization != Some(basic(u, p).as_str())
    {
        return oci_error(
            401,
            "UNAUTHORIZED",
            "bad credentials",
            &[(
                "WWW-Authenticate",
                r#"Basic realm="fake-token""#.to_string(),
            )],
        );
    }
    let scope = query_param(query, "scope").join(" ");
    let mut s = state.lock().unwrap();
    s.next_token += 1;
    let token = format!("tok-{}-{}", s.next_token, std::process::id());
    s.tokens.insert(
        token.clone(),
        (
            scope.clone(),
            Instant::now() + Duration::from_secs(*expires_in),
        ),
    );
    *s.token_requests.entry(scope).or_insert(0) += 1;
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": "2024-01-01T00:00:00Z",
    })
    .to_string();
    full(
        StatusCode::OK,
        &[("Content-Type", "application/json".into())],
        body,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Manifest,
    Blob,
}

/// `/v2/<name>/(manifests|blobs)/<reference>` → (name, kind, reference).
fn parse_v2(path: &str) -> Option<(String, Kind, String)> {
    let rest = path.strip_prefix("/v2/")?;
    for (marker, kind) in [("/manifests/", Kind::Manifest), ("/blobs/", Kind::Blob)] {
        if let Some(i) = rest.rfind(marker) {
            let name = &rest[..i];
            let reference = &rest[i + marker.len()..];
            if !name.is_empty() && !reference.is_empty() && !reference.contains('/') {
                return Some((name.to_string(), kind, reference.to_string()));
            }
        }
    }
    None
}

/// The same bytes with the middle one changed: right length, wrong digest.
fn corrupt(data: &Bytes) -> Bytes {
    let mut v = data.to_vec();
    if !v.is_empty() {
        let i = v.len() / 2;
        v[i] ^= 0x5a;
    }
    Bytes::from(v)
}

struct Plan {
    data: Bytes,
    pos: usize,
    /// Stop with an error when reaching this offset.
    cut: Option<usize>,
    /// Sleep once when reaching this offset.
    stall: Option<(usize, Duration)>,
    chunk: usize,
    every: Duration,
    state: Shared,
    path: String,
    finished: bool,
}

fn body_with_fault(data: Bytes, fault: Fault, state: Shared, path: String) -> Body {
    let len = data.len();
    let mut plan = Plan {
        data,
        pos: 0,
        cut: None,
        stall: None,
        chunk: 256 * 1024,
        every: Duration::ZERO,
        state,
        path,
        finished: false,
    };
    match fault {
        Fault::ZeroBytes => plan.cut = Some(0),
        Fault::Truncate => plan.cut = Some(len / 2),
        Fault::WrongBytes => plan.data = corrupt(&plan.data),
        Fault::StallMidBody(d) => plan.stall = Some((len / 2, d)),
        Fault::Trickle { chunk, every } => {
            plan.chunk = chunk.max(1);
            plan.every = every;
        }
        Fault::TrickleTruncate { chunk, every } => {
            plan.chunk = chunk.max(1);
            plan.every = every;
            plan.cut = Some(len / 2);
        }
        Fault::TrickleWrongBytes { chunk, every } => {
            plan.chunk = chunk.max(1);
            plan.every = every;
            plan.data = corrupt(&plan.data);
        }
        _ => {}
    }
    let stream = futures_util::stream::unfold(plan, |mut p| async move {
        if p.finished {
            return None;
        }
        if p.cut.is_some_and(|c| p.pos >= c) {
            p.finished = true;
            // Let hyper flush the headers and bytes so far before the connection is closed.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Some((
                Err(std::io::Error::other("fake upstream: injected body cut")),
                p,
            ));
        }
        if let Some((at, d)) = p.stall
            && p.pos >= at
        {
            p.stall = None;
            tokio::time::sleep(d).await;
        }
        if p.pos >= p.data.len() {
            return None;
        }
        if p.pos > 0 && !p.every.is_zero() {
            tokio::time::sleep(p.every).await;
        }
        let mut end = (p.pos + p.chunk).min(p.data.len());
        if let Some(c) = p.cut {
            end = end.min(c);
        }
        if let Some((at, _)) = p.stall
            && at > p.pos
        {
            end = end.min(at);
        }
        let chunk = p.data.slice(p.pos..end);
        p.pos = end;
        if end == p.data.len() {
            // hyper stops polling once Content-Length bytes are out, so the last chunk marks the end.
            p.state
                .lock()
                .unwrap()
                .body_done
                .insert(p.path.clone(), Instant::now());
        }
        Some((Ok(Frame::data(chunk)), p))
    });
    StreamBody::new(stream).boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// Test images
// ---------------------------------------------------------------------------------------------------------------

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `n` reproducible pseudo-random bytes from `seed` (xorshift64).
pub fn random_bytes(seed: u64, n: usize) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    Bytes::from(v)
}

/// A single-platform OCI image: config, layers and the manifest bytes naming them.
#[derive(Clone)]
pub struct TestImage {
    pub manifest: Bytes,
    pub digest: String,
    pub config: (String, Bytes),
    /// (digest, bytes) of each layer.
    pub layers: Vec<(String, Bytes)>,
}

impl TestImage {
    /// An image whose config embeds `seed` and whose layers are pseudo-random blobs of the given sizes.
    pub fn new(seed: u64, layer_sizes: &[usize]) -> TestImage {
        let config = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Env": [format!("SEED={seed}")]},
                "rootfs": {"type": "layers", "diff_ids": []},
            }))
            .unwrap(),
        );
        let layers: Vec<(String, Bytes)> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let b = random_bytes(seed.wrapping_mul(31).wrapping_add(i as u64 + 1), *n);
                (sha256_digest(&b), b)
            })
            .collect();
        let desc = |mt: &str, d: &str, n: usize| serde_json::json!({"mediaType": mt, "digest": d, "size": n});
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &sha256_digest(&config), config.len()),
            "layers": layers.iter().map(|(d, b)| desc(OCI_LAYER, d, b.len())).collect::<Vec<_>>(),
            "annotations": {"seed": seed.to_string()},
        }))
        .unwrap();
        let manifest = Bytes::from(manifest);
        TestImage {
            digest: sha256_digest(&manifest),
            manifest,
            config: (sha256_digest(&config), config),
            layers,
        }
    }

    /// Every blob (config first, then layers).
    pub fn blobs(&self) -> Vec<(String, Bytes)> {
        let mut v = vec![self.config.clone()];
        v.extend(self.layers.iter().cloned());
        v
    }
}

impl Upstream {
    /// Stores `img` (its blobs, and its manifest under `name:tag` and by digest).
    pub fn put_image(&self, name: &str, tag: &str, img: &TestImage) {
        for (_, b) in img.blobs() {
            self.put_blob(b);
        }
        self.put_manifest(name, tag, OCI_MANIFEST, img.manifest.clone());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Berth as a mirror of the fake
// ---------------------------------------------------------------------------------------------------------------

/// A berth started with a config file declaring mirrors; keeps the file alive for restarts.
pub struct MirrorBerth {
    pub berth: Berth,
    pub config: std::path::PathBuf,
    _cfg_dir: tempfile::TempDir,
}

impl std::ops::Deref for MirrorBerth {
    type Target = Berth;
    fn deref(&self) -> &Berth {
        &self.berth
    }
}

impl std::ops::DerefMut for MirrorBerth {
    fn deref_mut(&mut self) -> &mut Berth {
        &mut self.berth
    }
}

/// One `[[mirror]]` table: `name`, `upstream` and further string-valued keys (e.g. `("tag_ttl", "1s")`).
pub fn mirror_toml(name: &str, upstream: &str, options: &[(&str, &str)]) -> String {
    let mut s = format!("[[mirror]]\nname = {name:?}\nupstream = {upstream:?}\n");
    for (k, v) in options {
        s.push_str(&format!("{k} = {v:?}\n"));
    }
    s
}

/// Starts berth with `--config` holding `toml` (e.g. one or more [`mirror_toml`] tables).
pub fn berth_with_config(toml: &str) -> MirrorBerth {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, toml).unwrap();
    let berth = Berth::start_with(&["--config", config.to_str().unwrap()]);
    MirrorBerth {
        berth,
        config,
        _cfg_dir: dir,
    }
}

/// Starts berth mirroring `up` as mirror `name` with short timeouts and the given extra options.
pub fn berth_mirroring(up: &Upstream, name: &str, options: &[(&str, &str)]) -> MirrorBerth {
    let mut opts: Vec<(&str, &str)> = vec![
        ("connect_timeout", "2s"),
        ("response_timeout", "3s"),
        ("idle_timeout", "3s"),
    ];
    for o in options {
        opts.retain(|(k, _)| *k != o.0);
        opts.push(*o);
    }
    berth_with_config(&mirror_toml(name, &up.url(), &opts))
}

// ---------------------------------------------------------------------------------------------------------------
// Reading responses
// ---------------------------------------------------------------------------------------------------------------

/// What a client got: the status and headers, and the body or the error that ended it.
#[derive(Debug)]
pub struct Outcome {
    /// 0 when the request failed before a response arrived.
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The whole body, or (bytes received before the error, the error).
    pub body: Result<Vec<u8>, (Vec<u8>, String)>,
    pub started: Instant,
    pub headers_at: Instant,
    pub first_byte_at: Option<Instant>,
    pub ended_at: Instant,
}

impl Outcome {
    /// The value of header `name`, if any.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The complete body; panics if it ended with an error.
    pub fn bytes(&self) -> &[u8] {
        match &self.body {
            Ok(b) => b,
            Err((got, e)) => panic!("body ended with an error after {} bytes: {e}", got.len()),
        }
    }

    /// The `errors[0].code` of an OCI error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        let b = self.body.as_ref().ok()?;
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    }

    /// A one-line description for assertion messages.
    pub fn describe(&self) -> String {
        let body = match &self.body {
            Ok(b) if b.len() <= 400 => format!("complete body {:?}", String::from_utf8_lossy(b)),
            Ok(b) => format!("complete body of {} bytes ({})", b.len(), sha256_digest(b)),
            Err((b, e)) => format!("body error after {} bytes: {e}", b.len()),
        };
        format!(
            "status {} after {:?}, {body}; headers {:?}",
            self.status,
            self.ended_at - self.started,
            self.headers
        )
    }

    /// Panics unless the client saw a failure: no response, a non-200 status, or a body that ended with an error. A
    /// 200 with a body that completes cleanly is a failure to report the fault, whatever its bytes. (Bytes streamed
    /// before the abort may be wrong: a digest mismatch is only known at the end.)
    pub fn assert_failed(&self, what: &str, good: &[u8]) {
        if self.status == 200
            && let Ok(b) = &self.body
        {
            let verdict = if b == good {
                "the correct bytes (the fault was not seen?)"
            } else if b.len() != good.len() {
                "a SHORT body that ended cleanly"
            } else {
                "WRONG bytes that ended cleanly"
            };
            panic!(
                "{what}: expected an error, got 200 with {verdict}: {}",
                self.describe()
            );
        }
    }
}

/// A plain client: no redirects, no pooling surprises, no overall timeout (tests bound each call themselves).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Sends `req` and reads the whole response, recording timings; panics if it takes longer than `limit`.
pub async fn send(req: reqwest::RequestBuilder, limit: Duration) -> Outcome {
    let started = Instant::now();
    let fut = async move {
        let mut r = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let now = Instant::now();
                return Outcome {
                    status: 0,
                    headers: Default::default(),
                    body: Err((vec![], format!("no response: {e:?}"))),
                    started,
                    headers_at: now,
                    first_byte_at: None,
                    ended_at: now,
                };
            }
        };
        let headers_at = Instant::now();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let mut buf = Vec::new();
        let mut first_byte_at = None;
        let body = loop {
            match r.chunk().await {
                Ok(Some(c)) => {
                    if first_byte_at.is_none() && !c.is_empty() {
                        first_byte_at = Some(Instant::now());
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => break Ok(buf),
                Err(e) => break Err((buf, format!("{e:?}"))),
            }
        };
        Outcome {
            status,
            headers,
            body,
            started,
            headers_at,
            first_byte_at,
            ended_at: Instant::now(),
        }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(o) => o,
        Err(_) => panic!("no complete response (or error) within {limit:?}"),
    }
}

/// GET `url` with a 60 s bound.
pub async fn get(url: &str) -> Outcome {
    send(http().get(url), Duration::from_secs(60)).await
}

/// GET `url` with an `Accept` header, 60 s bound.
pub async fn get_accept(url: &str, accept: &str) -> Outcome {
    send(
        http().get(url).header("Accept", accept),
        Duration::from_secs(60),
    )
    .await
}

/// HEAD `url` with a 60 s bound.
pub async fn head(url: &str) -> Outcome {
    send(http().head(url), Duration::from_secs(60)).await
}

/// A response read without keeping the body: its length and digest, or the error that ended it.
#[derive(Debug)]
pub struct Hashed {
    /// 0 when the request failed before a response arrived.
    pub status: u16,
    pub len: usize,
    pub digest: String,
    pub error: Option<String>,
    pub started: Instant,
    pub first_byte_at: Option<Instant>,
    pub ended_at: Instant,
}

/// GETs `url` hashing the body as it arrives (for large blobs); panics if it takes longer than `limit`.
pub async fn get_hashed(client: &reqwest::Client, url: &str, limit: Duration) -> Hashed {
    use sha2::Digest as _;
    let started = Instant::now();
    let fut = async {
        let mut r = match client.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                return Hashed {
                    status: 0,
                    len: 0,
                    digest: String::new(),
                    error: Some(format!("no response: {e:?}")),
                    started,
                    first_byte_at: None,
                    ended_at: Instant::now(),
                };
            }
        };
        let status = r.status().as_u16();
        let mut h = sha2::Sha256::new();
        let mut len = 0;
        let mut first_byte_at = None;
        let error = loop {
            match r.chunk().await {
                Ok(Some(c)) => {
                    if first_byte_at.is_none() && !c.is_empty() {
                        first_byte_at = Some(Instant::now());
                    }
                    len += c.len();
                    h.update(&c);
                }
                Ok(None) => break None,
                Err(e) => break Some(format!("{e:?}")),
            }
        };
        Hashed {
            status,
            len,
            digest: format!("sha256:{}", hex::encode(h.finalize())),
            error,
            started,
            first_byte_at,
            ended_at: Instant::now(),
        }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(h) => h,
        Err(_) => panic!("GET {url}: no complete response (or error) within {limit:?}"),
    }
}
