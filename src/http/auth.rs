//! The HTTP side of access control: credentials from the `Authorization` header, the decision per endpoint, the
//! `WWW-Authenticate` challenge, and the token endpoint of the Docker token flow. The rules themselves live in
//! `crate::auth`.
//!
//! Refusals never depend on whether a repository exists: rights come from the policy and the credentials only,
//! and are checked before the registry is asked anything.

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::AppState;
use super::endpoint::{self, Endpoint};
use crate::auth::{Action, AuthError, Caller, RepoKind, Requested};
use crate::registry::RegistryError;

/// Credentials longer than this are refused unread (no one's password or token is this long).
const MAX_CREDENTIALS_LEN: usize = 16 * 1024;

/// A repository as the policy sees it.
pub struct Target {
    /// The name in the request (`alpine` on a mirror listener, `library/alpine` with `?ns=docker.io`).
    pub raw: String,
    /// The canonical name globs match: private name, or `<mirror>/<upstream path>`.
    pub canonical: String,
    pub kind: RepoKind,
}

/// Resolves a repository name exactly as `route` does (design §3).
pub fn target(state: &AppState, name: &str, ns: Option<&str>) -> Target {
    let routed = state
        .mirrors
        .route(name, ns)
        .or_else(|| state.default_mirror.clone().map(|m| (m, name)));
    match routed {
        Some((m, upstream)) => {
            let path = m
                .upstream_name(upstream)
                .map(|n| n.to_string())
                .unwrap_or_else(|_| upstream.to_owned());
            Target {
                raw: name.to_owned(),
                canonical: format!("{}/{path}", m.name),
                kind: RepoKind::Mirror,
            }
        }
        None => Target {
            raw: name.to_owned(),
            canonical: name.to_owned(),
            kind: RepoKind::Private,
        },
    }
}

fn needed(ep: &Endpoint<'_>, method: &Method) -> &'static [Action] {
    let read = method == Method::GET || method == Method::HEAD;
    match ep {
        Endpoint::Tags { .. } | Endpoint::Referrers { .. } => &[Action::Pull],
        Endpoint::Manifest { .. } | Endpoint::Blob { .. } if read => &[Action::Pull],
        Endpoint::Manifest { .. } | Endpoint::Blob { .. } if method == Method::DELETE => {
            &[Action::Delete]
        }
        // Pushing needs pull as well: clients check what exists before uploading.
        _ => &[Action::Pull, Action::Push],
    }
}

fn scope_actions(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn quoted(s: &str) -> String {
    s.replace(['"', '\\'], "")
}

/// `https://host` for the realm: the configured one, or this request's Host and the listener's scheme.
fn realm_base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(r) = &state.auth.settings.realm {
        return r.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("{}://{host}", if state.tls { "https" } else { "http" })
}

/// `Bearer realm="…/token",service="…"[,scope="…"][,error="…"]`
fn challenge(
    state: &AppState,
    headers: &HeaderMap,
    scope: Option<&str>,
    error: Option<&str>,
) -> HeaderValue {
    let mut v = format!(
        "Bearer realm=\"{}/token\",service=\"{}\"",
        quoted(&realm_base(state, headers)),
        quoted(&state.auth.settings.service)
    );
    if let Some(s) = scope {
        v.push_str(&format!(",scope=\"{}\"", quoted(s)));
    }
    if let Some(e) = error {
        v.push_str(&format!(",error=\"{e}\""));
    }
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    (status, axum::Json(body)).into_response()
}

/// 401 UNAUTHORIZED with a challenge.
pub fn unauthorized(
    state: &AppState,
    headers: &HeaderMap,
    scope: Option<&str>,
    error: Option<&str>,
) -> Response {
    let mut r = error_body(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        challenge(state, headers, scope, error),
    );
    r
}

fn denied(what: &str) -> Response {
    RegistryError::Denied(format!("requested access to {what} is denied")).into_response()
}

fn auth_error(state: &AppState, headers: &HeaderMap, e: AuthError) -> Response {
    match e {
        AuthError::BadCredentials => unauthorized(state, headers, None, None),
        AuthError::InvalidToken(why) => {
            tracing::debug!(reason = %why, "refused access token");
            unauthorized(state, headers, None, Some("invalid_token"))
        }
        e @ (AuthError::RateLimited(_) | AuthError::Unavailable(_) | AuthError::Internal(_)) => {
            RegistryError::from(e).into_response()
        }
    }
}

/// Basic credentials from a header, if that is what it holds. Malformed ones are refused, never panicked on.
fn basic(h: &HeaderValue) -> Option<Result<(String, String), AuthError>> {
    let s = h.to_str().ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let parse = || {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_owned(), p.to_owned()))
    };
    Some(parse().ok_or(AuthError::BadCredentials))
}

fn bearer(h: &HeaderValue) -> Option<&str> {
    let s = h.to_str().ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

/// Who is calling, from the `Authorization` header (none: anonymous).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
) -> Result<Caller, AuthError> {
    let Some(h) = headers.get(header::AUTHORIZATION) else {
        return Ok(Caller::anonymous());
    };
    if h.len() > MAX_CREDENTIALS_LEN {
        return Err(AuthError::BadCredentials);
    }
    if let Some(creds) = basic(h) {
        let (user, secret) = creds?;
        return state.auth.login(&user, &secret, ip).await;
    }
    if let Some(token) = bearer(h) {
        return state.auth.bearer(token).await;
    }
    Err(AuthError::BadCredentials)
}

/// The refusal for a caller lacking `actions` on `t`: anonymous callers and bearer tokens that merely lack the
/// scope get a challenge (the client then fetches a fitting token); signed-in users lacking the right get DENIED.
fn refuse(
    state: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
    t: &Target,
    actions: &[Action],
) -> Response {
    let scope = format!("repository:{}:{}", t.raw, scope_actions(actions));
    if caller.user.is_none() {
        return unauthorized(state, headers, Some(&scope), None);
    }
    if caller.jwt.is_some() {
        let may = state
            .auth
            .rights_without_token(caller, &t.canonical, t.kind);
        if actions.iter().all(|a| may.has(*a)) {
            return unauthorized(state, headers, Some(&scope), Some("insufficient_scope"));
        }
    }
    denied(&t.raw)
}

fn allowed(state: &AppState, caller: &Caller, t: &Target, actions: &[Action]) -> bool {
    let r = state.auth.rights(caller, &t.canonical, t.kind, &t.raw);
    actions.iter().all(|a| r.has(*a))
}

/// Decides a `/v2/` request before it is routed. On success the caller is stored in the request's extensions
/// (for catalog filtering and upload binding), and a cross-repository mount from a repository the caller cannot
/// pull is turned into a plain upload.
pub async fn authorize(
    state: &AppState,
    req: &mut Request,
    ip: Option<IpAddr>,
) -> Result<(), Response> {
    // HTTP/2 carries the host in the URI (`:authority`), not a Host header; the realm is built from the latter.
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, a);
    }
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v2").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let caller = authenticate(state, req.headers(), ip)
        .await
        .map_err(|e| auth_error(state, req.headers(), e))?;
    let q = super::query(req);
    let ns = super::param(&q, "ns");
    match endpoint::parse(rest) {
        None => {}
        Some(Endpoint::Base)
            if caller.user.is_none() && caller.jwt.is_none() && !state.auth.anonymous_browse() =>
        {
            return Err(unauthorized(state, req.headers(), None, None));
        }
        Some(Endpoint::Base) => {}
        Some(Endpoint::Catalog) if !state.auth.may_browse(&caller) => {
            return Err(if caller.user.is_none() || caller.jwt.is_some() {
                unauthorized(
                    state,
                    req.headers(),
                    Some("registry:catalog:*"),
                    caller.jwt.as_ref().map(|_| "insufficient_scope"),
                )
            } else {
                denied("the catalog")
            });
        }
        Some(Endpoint::Catalog) => {}
        Some(ep) => {
            let name = ep.name().unwrap_or_default();
            let t = target(state, name, ns);
            let actions = needed(&ep, req.method());
            // Writes to a mirror are refused by the mirror itself (UNSUPPORTED, read-only) for everyone alike.
            let mirror_write = t.kind == RepoKind::Mirror && actions != [Action::Pull];
            if !mirror_write && !allowed(state, &caller, &t, actions) {
                return Err(refuse(state, req.headers(), &caller, &t, actions));
            }
            if let Endpoint::Upload { id, .. } = ep {
                let owns = state
                    .auth
                    .owns_upload(id, &caller)
                    .await
                    .map_err(|e| auth_error(state, req.headers(), e))?;
                if !owns {
                    // Someone else's session is indistinguishable from none at all.
                    return Err(RegistryError::BlobUploadUnknown.into_response());
                }
            }
            if matches!(ep, Endpoint::UploadStart { .. }) && super::param(&q, "mount").is_some() {
                let from_ok = match super::param(&q, "from").filter(|f| !f.is_empty()) {
                    Some(from) => {
                        let ft = target(state, from, None);
                        allowed(state, &caller, &ft, &[Action::Pull])
                    }
                    // Mounting "from anywhere" would reveal blobs of repositories the caller cannot read.
                    None => state.auth.may_pull_everything(&caller),
                };
                if !from_ok {
                    strip_mount(req);
                }
            }
        }
    }
    req.extensions_mut().insert(caller);
    Ok(())
}

/// Drops `mount`/`from` from the query so the request starts an ordinary upload session.
fn strip_mount(req: &mut Request) {
    let q: Vec<(String, String)> = super::query(req)
        .into_iter()
        .filter(|(k, _)| k != "mount" && k != "from")
        .collect();
    let mut uri = req.uri().path().to_owned();
    if !q.is_empty() {
        uri.push('?');
        uri.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(q)
                .finish(),
        );
    }
    if let Ok(u) = uri.parse() {
        *req.uri_mut() = u;
    }
}

/// Whether the caller may see a repository in the catalog.
pub fn may_list(state: &AppState, caller: &Caller, name: &str) -> bool {
    let t = target(state, name, None);
    allowed(state, caller, &t, &[Action::Pull])
}

/// `/token`: anonymous or Basic (password or personal access token); returns a signed access token granting the
/// intersection of the requested scopes and the caller's rights (possibly empty, as the spec wants).
pub async fn token_endpoint(state: &AppState, req: Request, ip: Option<IpAddr>) -> Response {
    let headers = req.headers().clone();
    let caller = match headers.get(header::AUTHORIZATION) {
        None => Caller::anonymous(),
        Some(h) if h.len() > MAX_CREDENTIALS_LEN => return token_unauthorized(),
        Some(h) => match basic(h) {
            Some(Ok((u, p))) => match state.auth.login(&u, &p, ip).await {
                Ok(c) => c,
                Err(
                    e @ (AuthError::RateLimited(_)
                    | AuthError::Unavailable(_)
                    | AuthError::Internal(_)),
                ) => return RegistryError::from(e).into_response(),
                Err(_) => return token_unauthorized(),
            },
            _ => return token_unauthorized(),
        },
    };
    let q = super::query(&req);
    let mut requested = Vec::new();
    for (k, v) in &q {
        if k != "scope" {
            continue;
        }
        for s in v.split(' ').filter(|s| !s.is_empty()) {
            if let Some(r) = parse_scope(state, s) {
                requested.push(r);
            }
        }
    }
    match state.auth.issue(&caller, &requested) {
        Ok(t) => {
            let body = serde_json::json!({
                "token": t.token,
                "access_token": t.token,
                "expires_in": t.expires_in,
                "issued_at": humantime::format_rfc3339_seconds(t.issued_at).to_string(),
            });
            let mut r = (StatusCode::OK, axum::Json(body)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => RegistryError::from(e).into_response(),
    }
}

fn token_unauthorized() -> Response {
    let mut r = error_body(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "invalid credentials",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\""),
    );
    r
}

/// `repository:NAME:ACTIONS` (also `repository(plugin):…`) or `registry:catalog:*`; anything else is ignored.
fn parse_scope(state: &AppState, s: &str) -> Option<Requested> {
    let (kind, rest) = s.split_once(':')?;
    let kind = kind.split('(').next().unwrap_or(kind);
    let (name, actions) = rest.rsplit_once(':')?;
    match kind {
        "registry" if name == "catalog" => Some(Requested::Catalog),
        "repository" => {
            let primary = target(state, name, None);
            let mut meanings = vec![(primary.canonical, primary.kind)];
            // containerd names mirrored repositories upstream-relative (`library/alpine`, with `?ns=` on the
            // requests only); the request itself is checked against its real repository again.
            if primary.kind == RepoKind::Private {
                for m in state.mirrors.all() {
                    if let Ok(n) = m.upstream_name(name) {
                        meanings.push((format!("{}/{n}", m.name), RepoKind::Mirror));
                    }
                }
            }
            Some(Requested::Repository {
                name: name.to_owned(),
                actions: actions.split(',').map(str::to_owned).collect(),
                meanings,
            })
        }
        _ => None,
    }
}
