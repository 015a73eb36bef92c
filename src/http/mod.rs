//! The HTTP adapter: routes `/v2/...` requests to the registry domain and shapes responses per the distribution
//! spec. No registry rule lives here — only parsing of requests and formatting of responses.

mod admin;
mod auth;
mod endpoint;
mod error;
mod ui;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::meta::ManifestRecord;
use crate::meta::Page;
use crate::mirror::{Mirror, MirrorBlob, Mirrors};
use crate::oci::{Algorithm, Digest, NameError, Reference, RepoName, media, name::Tag};
use crate::registry::{BlobDownload, ByteRange, Registry, RegistryError, UploadStatus};
use crate::store::ByteStream;
use endpoint::Endpoint;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Builds the application router.
/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub mirrors: Arc<Mirrors>,
    /// On a mirror listener: the mirror that owns every repository not otherwise routed.
    pub default_mirror: Option<Arc<Mirror>>,
    /// Access control (policies, users, tokens).
    pub auth: Arc<crate::auth::Auth>,
    /// Whether this listener is HTTPS (for the token realm's scheme).
    pub tls: bool,
    /// The web UI at `/ui`; `None` where it is not served (mirror listeners, `[ui] enabled = false`).
    pub ui: Option<Arc<crate::ui::Ui>>,
    /// The server's background workers (`GET /api/v1/workers`).
    pub workers: Arc<crate::worker::Workers>,
}

pub fn router(state: AppState) -> Router {
    // Where the UI is off, `/ui` does not exist at all (not even its static files).
    let ui_routes = if state.ui.is_some() {
        ui::router()
    } else {
        Router::new()
    };
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .route("/token", get(token))
        .merge(admin::router())
        .merge(ui_routes)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::map_response(
            |mut resp: Response| async move {
                resp.headers_mut()
                    .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
                resp
            },
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// The operations endpoints alone, for `server.metrics_listen`: no registry, no UI, no access log.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state
        .registry
        .catalog(&Page {
            n: Some(1),
            last: None,
        })
        .await
    {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "not ready: metadata store");
            return not_ready("metadata store unavailable");
        }
    }
    match state.registry.blob_store().ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: blob store");
            not_ready("blob store unavailable")
        }
    }
}

/// `/readyz` names the store that is down; the driver's text is logged (probes often reach the public port).
fn not_ready(why: &'static str) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    error::retry_after(&mut r);
    r
}

async fn metrics_text() -> Response {
    let mut r = Response::new(Body::from(crate::metrics::metrics().encode()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// The endpoint template of a path, for metric labels (raw paths would explode cardinality).
fn route_label(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v2") else {
        return match path {
            "/healthz" => "healthz",
            "/readyz" => "readyz",
            "/metrics" => "metrics",
            p if p == "/ui" || p.starts_with("/ui/") => "ui",
            _ => "other",
        };
    };
    match endpoint::parse(rest.strip_prefix('/').unwrap_or(rest)) {
        Some(Endpoint::Base) => "base",
        Some(Endpoint::Catalog) => "catalog",
        Some(Endpoint::Tags { .. }) => "tags",
        Some(Endpoint::Manifest { .. }) => "manifest",
        Some(Endpoint::Blob { .. }) => "blob",
        Some(Endpoint::UploadStart { .. }) => "upload_start",
        Some(Endpoint::Upload { .. }) => "upload",
        Some(Endpoint::Referrers { .. }) => "referrers",
        None => "other",
    }
}

/// One log line and one metric observation per request: method, path, status, duration.
/// A request id: the client's `X-Request-Id` when it is short and plain (so a proxy's id carries through), else a
/// fresh one. Echoed in the response.
fn request_id(h: &HeaderMap) -> String {
    h.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_owned())
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Metrics and one access log line per request: id, method, path, repository, principal, status, bytes, duration.
async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let id = request_id(req.headers());
    let bytes_in = content_length(req.headers());
    let start = std::time::Instant::now();
    // Errors built while serving the request name this id, and their log lines carry it (`http::error`).
    let mut resp = error::with_request_id(id.clone(), next.run(req)).await;
    let elapsed = start.elapsed();
    let route = route_label(&path);
    let labels = crate::metrics::HttpLabels {
        route,
        method: method.as_str().to_owned(),
        status: resp.status().as_u16(),
    };
    let bytes_out = content_length(resp.headers());
    let m = crate::metrics::metrics();
    m.http_requests.get_or_create(&labels).inc();
    m.http_duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    let route_only = crate::metrics::RouteLabel { route };
    if let Some(n) = bytes_in {
        m.http_request_bytes.get_or_create(&route_only).inc_by(n);
    }
    if let Some(n) = bytes_out.filter(|_| method != Method::HEAD) {
        m.http_response_bytes.get_or_create(&route_only).inc_by(n);
    }
    let ctx = resp
        .extensions_mut()
        .remove::<AccessContext>()
        .unwrap_or_default();
    tracing::info!(
        target: "berth::access",
        id,
        %method,
        path,
        repository = ctx.repository.as_deref().unwrap_or(""),
        principal = ctx.principal,
        status = resp.status().as_u16(),
        bytes_in = bytes_in.unwrap_or(0),
        bytes_out = bytes_out.unwrap_or(0),
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Query parameters in order (repeated keys such as `tag` are kept).
fn query(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn hv(s: &str) -> HeaderValue {
    // Every value we put in a header is ASCII we produced (digests, numbers, validated names).
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

fn repo(name: &str) -> Result<RepoName> {
    name.parse()
        .map_err(|e: crate::oci::NameError| RegistryError::NameInvalid(e.to_string()))
}

fn digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|e: crate::oci::DigestError| RegistryError::DigestInvalid(e.to_string()))
}

fn unsupported(method: &Method) -> RegistryError {
    RegistryError::Unsupported(format!("method {method} is not supported on this endpoint"))
}

/// The source address of a request, when the listener recorded it.
fn peer_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

async fn token(State(state): State<AppState>, req: Request) -> Response {
    let ip = peer_ip(&req);
    auth::token_endpoint(&state, req, ip).await
}

/// Access control first (`auth::authorize`), then the registry; afterwards binds a new upload session to its
/// caller and writes the audit line of a push or delete.
/// What the access log line of a registry request adds to method, path and status.
#[derive(Clone, Debug, Default)]
struct AccessContext {
    principal: String,
    repository: Option<String>,
}

/// The repository a registry path names, for the access log.
fn path_repository(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    endpoint::parse(rest)
        .and_then(|ep| ep.name())
        .map(str::to_owned)
}

async fn dispatch(State(state): State<AppState>, mut req: Request) -> Response {
    let ip = peer_ip(&req);
    if let Err(mut refused) = auth::authorize(&state, &mut req, ip).await {
        refused.extensions_mut().insert(AccessContext {
            principal: String::new(),
            repository: path_repository(req.uri().path()),
        });
        return refused;
    }
    let caller = req
        .extensions()
        .get::<crate::auth::Caller>()
        .cloned()
        .unwrap_or_default();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = match route(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if method == Method::POST
        && resp.status() == StatusCode::ACCEPTED
        && let Some(id) = header_str(resp.headers(), &DOCKER_UPLOAD_UUID)
        && let Err(e) = state.auth.bind_upload(id, &caller).await
    {
        return RegistryError::from(e).into_response();
    }
    if resp.status().is_success() {
        let event = match (&method, route_label(&path)) {
            (&Method::PUT, "manifest") => Some("push"),
            (&Method::DELETE, "manifest" | "blob") => Some("delete"),
            _ => None,
        };
        if let Some(event) = event {
            tracing::info!(target: "audit", event, user = caller.principal(), path, "registry write");
        }
    }
    let mut resp = resp;
    resp.extensions_mut().insert(AccessContext {
        principal: caller.principal().to_owned(),
        repository: path_repository(&path),
    });
    resp
}

async fn route(state: &AppState, req: Request) -> Result<Response> {
    let reg = &*state.registry;
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v2").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let Some(ep) = endpoint::parse(rest) else {
        return Ok(not_found_endpoint());
    };
    if let Some(name) = ep.name() {
        let q = query(&req);
        let routed = state
            .mirrors
            .route(name, param(&q, "ns"))
            .or_else(|| state.default_mirror.clone().map(|m| (m, name)));
        if let Some((m, upstream_name)) = routed {
            // Errors too say which namespace answered (distribution spec, "Registry Proxying").
            let mut resp = route_mirror(state, &m, upstream_name, &ep, req)
                .await
                .unwrap_or_else(IntoResponse::into_response);
            resp.headers_mut().insert(OCI_NAMESPACE, hv(&m.name));
            return Ok(resp);
        }
    }
    let method = req.method().clone();
    match (ep, &method) {
        (Endpoint::Base, &Method::GET | &Method::HEAD) => {
            Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}")))
        }
        (Endpoint::Catalog, &Method::GET) => {
            let caller = req
                .extensions()
                .get::<crate::auth::Caller>()
                .cloned()
                .unwrap_or_default();
            catalog(state, &caller, &query(&req)).await
        }
        (Endpoint::Tags { name }, &Method::GET) => tags(reg, &repo(name)?, &query(&req)).await,
        (Endpoint::Manifest { name, reference }, m) => {
            let repo = repo(name)?;
            let reference: Reference = match reference.parse() {
                Ok(r) => r,
                // A tag that cannot exist names no manifest: 404 on reads, as clients probing for tags expect.
                Err(NameError::Tag(t)) if *m != Method::PUT => {
                    return Err(RegistryError::ManifestUnknown(format!(
                        "{repo}:{t} (not a valid tag)"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            match *m {
                Method::GET | Method::HEAD => get_manifest(reg, &repo, &reference, req).await,
                Method::PUT => put_manifest(reg, &repo, &reference, req).await,
                Method::DELETE => {
                    reg.delete_manifest(&repo, &reference).await?;
                    Ok(empty(StatusCode::ACCEPTED))
                }
                _ => Err(unsupported(m)),
            }
        }
        (Endpoint::Blob { name, digest: d }, m) => {
            let repo = repo(name)?;
            let d = digest(d)?;
            match *m {
                Method::GET | Method::HEAD => get_blob(reg, &repo, &d, req).await,
                Method::DELETE => {
                    reg.delete_blob(&repo, &d).await?;
                    Ok(empty(StatusCode::ACCEPTED))
                }
                _ => Err(unsupported(m)),
            }
        }
        (Endpoint::UploadStart { name }, &Method::POST) => {
            start_upload(reg, &repo(name)?, req).await
        }
        (Endpoint::Upload { name, id }, m) => {
            let repo = repo(name)?;
            let id = id.to_owned();
            match *m {
                Method::GET => Ok(upload_response(
                    StatusCode::NO_CONTENT,
                    &repo,
                    &reg.upload_status(&repo, &id).await?,
                )),
                Method::PATCH => {
                    let range = content_range(req.headers())?;
                    let st = reg
                        .append_upload(&repo, &id, range, body_stream(req.into_body()))
                        .await?;
                    Ok(upload_response(StatusCode::ACCEPTED, &repo, &st))
                }
                Method::PUT => {
                    let q = query(&req);
                    let d = digest(param(&q, "digest").ok_or_else(|| {
                        RegistryError::DigestInvalid(
                            "the digest query parameter is required to complete an upload".into(),
                        )
                    })?)?;
                    let range = content_range(req.headers())?;
                    reg.finish_upload(&repo, &id, &d, range, body_stream(req.into_body()))
                        .await?;
                    Ok(blob_created(&repo, &d))
                }
                Method::DELETE => {
                    reg.cancel_upload(&repo, &id).await?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(unsupported(m)),
            }
        }
        (Endpoint::Referrers { name, digest: d }, &Method::GET) => {
            let repo = repo(name)?;
            let d = digest(d)?;
            let q = query(&req);
            let filter = param(&q, "artifactType").filter(|s| !s.is_empty());
            let body = reg.referrers(&repo, &d, filter).await?;
            let mut resp = Response::new(Body::from(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(media::OCI_INDEX),
            );
            if filter.is_some() {
                resp.headers_mut().insert(
                    OCI_FILTERS_APPLIED,
                    HeaderValue::from_static("artifactType"),
                );
            }
            Ok(resp)
        }
        (_, m) => Err(unsupported(m)),
    }
}

fn not_found_endpoint() -> Response {
    let body = serde_json::json!({"errors": [{"code": "NOT_FOUND", "message": "no such endpoint", "detail": null}]});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `Content-Range` of a chunk: `start-end`, also tolerating the `bytes ` prefix and `/total` suffix some clients send.
fn content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(v) = h.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        RegistryError::ContentRangeInvalid(format!(
            "{:?} is not start-end",
            String::from_utf8_lossy(v.as_bytes())
        ))
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes")
        .map(|s| s.trim_start_matches([' ', '=']))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        a.trim().parse::<u64>().map_err(|_| bad())?,
        b.trim().parse::<u64>().map_err(|_| bad())?,
    );
    if b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

/// `Range: bytes=…` on blob GET. Anything we cannot parse (or multiple ranges) is ignored, as HTTP allows.
fn byte_range(h: &HeaderMap) -> Option<ByteRange> {
    let s = header_str(h, &header::RANGE)?
        .trim()
        .strip_prefix("bytes=")?;
    if s.contains(',') {
        return None;
    }
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return b.parse().ok().map(ByteRange::Suffix);
    }
    let start = a.parse().ok()?;
    let end = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    if end.is_some_and(|e| e < start) {
        return None;
    }
    Some(ByteRange::From { start, end })
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn upload_response(status: StatusCode, repo: &RepoName, st: &UploadStatus) -> Response {
    let mut r = empty(status);
    let h = r.headers_mut();
    h.insert(header::LOCATION, hv(&upload_location(repo, &st.id)));
    h.insert(
        header::RANGE,
        hv(&format!("0-{}", st.offset.saturating_sub(1))),
    );
    h.insert(DOCKER_UPLOAD_UUID, hv(&st.id));
    r
}

fn blob_created(repo: &RepoName, d: &Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    r.headers_mut()
        .insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/{d}")));
    r.headers_mut()
        .insert(DOCKER_CONTENT_DIGEST, hv(&d.to_string()));
    r
}

async fn start_upload(reg: &Registry, repo: &RepoName, req: Request) -> Result<Response> {
    let q = query(&req);
    if let Some(m) = param(&q, "mount") {
        let d = digest(m)?;
        let from = param(&q, "from")
            .filter(|f| !f.is_empty())
            .map(|f| f.parse::<RepoName>())
            .transpose();
        // An invalid `from` cannot name a repository holding the blob: fall through to a fresh upload.
        if let Ok(from) = from
            && reg.mount_blob(repo, from.as_ref(), &d).await?.is_some()
        {
            return Ok(blob_created(repo, &d));
        }
    } else if let Some(d) = param(&q, "digest") {
        let d = digest(d)?;
        reg.push_blob(repo, &d, body_stream(req.into_body()))
            .await?;
        return Ok(blob_created(repo, &d));
    }
    let algorithm = match param(&q, "digest-algorithm") {
        Some(a) => a
            .parse::<Algorithm>()
            .map_err(|e| RegistryError::DigestInvalid(e.to_string()))?,
        None => Algorithm::Sha256,
    };
    // Sessions count against the caller that opens them; `bind_upload` (in `dispatch`) records the same principal.
    let principal = req
        .extensions()
        .get::<crate::auth::Caller>()
        .map(|c| c.principal().to_owned())
        .unwrap_or_default();
    let st = reg.start_upload(repo, algorithm, &principal).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &st))
}

async fn get_blob(reg: &Registry, repo: &RepoName, d: &Digest, req: Request) -> Result<Response> {
    if req.method() == Method::HEAD {
        let size = reg.head_blob(repo, d).await?;
        return Ok(blob_response(d, Some(size), Body::empty(), StatusCode::OK));
    }
    if let Some(url) = reg.blob_redirect(repo, d).await? {
        // The client repeats any Range header to the object store, which answers it.
        let mut r = blob_response(d, Some(0), Body::empty(), StatusCode::TEMPORARY_REDIRECT);
        r.headers_mut().insert(header::LOCATION, hv(&url));
        r.headers_mut().remove(header::ACCEPT_RANGES);
        return Ok(r);
    }
    let range = byte_range(req.headers());
    let dl = reg.open_blob(repo, d, range).await?;
    Ok(download_response(d, dl, range))
}

/// A blob (or a range of it) read from the store.
fn download_response(d: &Digest, dl: BlobDownload, range: Option<ByteRange>) -> Response {
    let (size, len) = (dl.size, dl.reader.len);
    let mut r = blob_response(
        d,
        Some(len),
        Body::from_stream(dl.reader.body),
        StatusCode::OK,
    );
    if let Some(range) = range
        && let Some((s, e)) = range.resolve(size)
    {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut()
            .insert(header::CONTENT_RANGE, hv(&format!("bytes {s}-{e}/{size}")));
    }
    r
}

/// Headers every blob response carries.
fn blob_response(d: &Digest, len: Option<u64>, body: Body, status: StatusCode) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(DOCKER_CONTENT_DIGEST, hv(&d.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv(&format!("\"{d}\"")));
    r
}

fn accept_values(h: &HeaderMap) -> Vec<&str> {
    h.get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

async fn get_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &Reference,
    req: Request,
) -> Result<Response> {
    let accept = accept_values(req.headers());
    let (record, body) = if req.method() == Method::HEAD {
        (reg.head_manifest(repo, reference, &accept).await?, None)
    } else {
        let m = reg.get_manifest(repo, reference, &accept).await?;
        (m.record, Some(m.bytes))
    };
    Ok(manifest_response(&record, body))
}

fn manifest_response(record: &ManifestRecord, body: Option<Bytes>) -> Response {
    let mut r = Response::new(body.map_or_else(Body::empty, Body::from));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&record.media_type));
    h.insert(header::CONTENT_LENGTH, hv(&record.size.to_string()));
    h.insert(DOCKER_CONTENT_DIGEST, hv(&record.digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{}\"", record.digest)));
    r
}

/// A request for a mirrored repository: reads go through the mirror cache, writes are refused.
async fn route_mirror(
    state: &AppState,
    m: &Arc<Mirror>,
    upstream_name: &str,
    ep: &Endpoint<'_>,
    req: Request,
) -> Result<Response> {
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let local = || -> Result<RepoName> {
        Ok(RepoName::in_mirror(
            &m.name,
            &m.upstream_name(upstream_name)?,
        ))
    };
    match (ep, &method) {
        (Endpoint::Manifest { reference, .. }, &Method::GET | &Method::HEAD) => {
            let reference: Reference = reference.parse().map_err(|e: NameError| match e {
                NameError::Tag(t) => {
                    RegistryError::ManifestUnknown(format!("{t} (not a valid tag)"))
                }
                e => e.into(),
            })?;
            let accept = accept_values(req.headers());
            let found = state
                .mirrors
                .manifest(m, upstream_name, &reference, &accept)
                .await?;
            Ok(manifest_response(
                &found.record,
                (!head).then_some(found.bytes),
            ))
        }
        (Endpoint::Blob { digest: d, .. }, &Method::GET | &Method::HEAD) => {
            let d = digest(d)?;
            let range = if head {
                None
            } else {
                byte_range(req.headers())
            };
            Ok(
                match state
                    .mirrors
                    .blob(m, upstream_name, &d, range, head)
                    .await?
                {
                    MirrorBlob::Cached(dl) => download_response(&d, dl, range),
                    MirrorBlob::Head { len } => {
                        blob_response(&d, Some(len), Body::empty(), StatusCode::OK)
                    }
                    MirrorBlob::Streaming { len, body } => {
                        blob_response(&d, len, Body::from_stream(body), StatusCode::OK)
                    }
                },
            )
        }
        (Endpoint::Tags { .. }, &Method::GET) => {
            tags(&state.registry, &local()?, &query(&req)).await
        }
        (Endpoint::Referrers { digest: d, .. }, &Method::GET) => {
            let body = state
                .registry
                .referrers(&local()?, &digest(d)?, None)
                .await?;
            let mut resp = Response::new(Body::from(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(media::OCI_INDEX),
            );
            Ok(resp)
        }
        _ => Err(m.read_only_error()),
    }
}

async fn put_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &Reference,
    req: Request,
) -> Result<Response> {
    let q = query(&req);
    let tags = q
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| {
            v.parse::<Tag>()
                .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let content_type = header_str(req.headers(), &header::CONTENT_TYPE).map(str::to_owned);
    let limit = reg.max_manifest_size();
    let declared =
        header_str(req.headers(), &header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&d| d > limit) {
        return Err(RegistryError::ManifestTooLarge { size, limit });
    }
    // Read no further than the limit, declared length or not: a chunked body of any size costs at most the limit
    // plus one read buffer. hyper then closes the connection instead of reading the rest, so a client that only
    // reads the response once its body is sent may see the connection reset rather than the 413.
    let mut body = req.into_body().into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::ManifestInvalid(format!("manifest body was not received whole: {e}"))
        })?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > limit {
            return Err(RegistryError::ManifestTooLarge {
                size: bytes.len() as u64,
                limit,
            });
        }
    }
    let bytes = bytes.freeze();
    let put = reg
        .put_manifest(repo, reference, tags, content_type.as_deref(), bytes)
        .await?;
    let mut r = empty(StatusCode::CREATED);
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{repo}/manifests/{}", put.digest)),
    );
    h.insert(DOCKER_CONTENT_DIGEST, hv(&put.digest.to_string()));
    if let Some(s) = put.subject {
        h.insert(OCI_SUBJECT, hv(&s.to_string()));
    }
    if matches!(reference, Reference::Digest(_)) {
        for t in &put.tags {
            h.append(OCI_TAG, hv(t.as_str()));
        }
    }
    Ok(r)
}

/// Pagination from `n`/`last`, asking the store for one extra entry to learn whether a next page exists.
///
/// `n` is capped at `max` (`limits.max_page_size`): a larger page is cut there and gets a `Link` to the next one,
/// as the spec allows a registry to return fewer than `n`. Without the cap, `n` near `usize::MAX` wrapped into a
/// negative SQL `LIMIT` (all rows on SQLite, an error on PostgreSQL). A number too large for any integer type is
/// a large number, not an invalid one; anything but digits is `PAGINATION_NUMBER_INVALID`.
fn page(q: &[(String, String)], max: usize) -> Result<(Page, Option<usize>)> {
    let n = match param(q, "n") {
        Some(n) => Some(match n.parse::<usize>() {
            Ok(n) => n.min(max),
            Err(_) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => max,
            Err(_) => {
                return Err(RegistryError::PaginationInvalid(format!(
                    "n={n:?} is not a non-negative integer"
                )));
            }
        }),
        None => None,
    };
    let last = param(q, "last").filter(|l| !l.is_empty());
    if let Some(l) = last {
        no_nul("last", l)?;
    }
    Ok((
        Page {
            n: n.map(|n| n + 1),
            last: last.map(str::to_owned),
        },
        n,
    ))
}

/// Refuses a query value with a NUL byte. No repository name or tag contains one, SQLite and PostgreSQL would
/// answer such a query differently (PostgreSQL text cannot hold NUL at all), so every backend gets the same 400.
fn no_nul(key: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(RegistryError::QueryInvalid(format!(
            "{key} must not contain a NUL byte"
        )));
    }
    Ok(())
}

/// Trims the extra entry and builds the `Link` header for the next page.
fn paginate(
    mut items: Vec<String>,
    n: Option<usize>,
    path: &str,
) -> (Vec<String>, Option<HeaderValue>) {
    match n {
        Some(n) if items.len() > n => {
            items.truncate(n);
            let link = items.last().map(|last| {
                let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
                hv(&format!("<{path}?n={n}&last={last}>; rel=\"next\""))
            });
            (items, link)
        }
        _ => (items, None),
    }
}

async fn tags(reg: &Registry, repo: &RepoName, q: &[(String, String)]) -> Result<Response> {
    let (p, n) = page(q, reg.max_page_size())?;
    let tags = reg.list_tags(repo, &p).await?;
    let (tags, link) = paginate(tags, n, &format!("/v2/{repo}/tags/list"));
    #[derive(serde::Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: &'a [String],
    }
    let body = serde_json::to_vec(&TagList {
        name: repo.as_str(),
        tags: &tags,
    })
    .map_err(|e| RegistryError::Internal(e.to_string()))?;
    let mut r = json_response(StatusCode::OK, body.into());
    if let Some(l) = link {
        r.headers_mut().insert(header::LINK, l);
    }
    Ok(r)
}

/// The catalog lists only repositories the caller may pull; filtering happens before pagination, so pages stay
/// full and `Link` stays right.
async fn catalog(
    state: &AppState,
    caller: &crate::auth::Caller,
    q: &[(String, String)],
) -> Result<Response> {
    const BATCH: usize = 1000;
    let (p, n) = page(q, state.registry.max_page_size())?;
    let mut repos = Vec::new();
    let mut last = p.last.clone();
    loop {
        let batch_n = BATCH.max(p.n.unwrap_or(0));
        let batch = state
            .registry
            .catalog(&Page {
                n: Some(batch_n),
                last: last.clone(),
            })
            .await?;
        let done = batch.len() < batch_n;
        last = batch.last().cloned();
        repos.extend(
            batch
                .into_iter()
                .filter(|r| auth::may_list(state, caller, r)),
        );
        if done || p.n.is_some_and(|want| repos.len() >= want) {
            break;
        }
    }
    if let Some(want) = p.n {
        repos.truncate(want);
    }
    let (repos, link) = paginate(repos, n, "/v2/_catalog");
    let body = serde_json::to_vec(&serde_json::json!({ "repositories": repos }))
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
    let mut r = json_response(StatusCode::OK, body.into());
    if let Some(l) = link {
        r.headers_mut().insert(header::LINK, l);
    }
    Ok(r)
}
