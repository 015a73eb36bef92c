//! The web UI's HTTP side (`/ui`): sessions, CSRF checks, access decisions and response headers. What a page
//! shows is decided in `crate::ui`; the markup is in `crate::ui::pages`.
//!
//! Access is the registry's: a repository is shown only if the signed-in (or anonymous) caller may pull it, and a
//! repository the caller may not pull answers exactly like one that does not exist. Deleting re-checks the delete
//! right on the POST itself. Every POST needs the session's CSRF token (on top of the `SameSite=Strict` cookie).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::auth::session::{SESSION_TTL_SECS, csrf_token};
use crate::auth::{Action, AuthError, Caller, RepoKind};
use crate::oci::{Reference, RepoName};
use crate::registry::RegistryError;
use crate::ui::Ui;
use crate::ui::pages::{self, Ctx};

const COOKIE: &str = "berth_session";
/// The sign-in form's double-submit nonce.
const LOGIN_COOKIE: &str = "berth_login";
/// Login and delete forms are tiny; anything bigger is not ours.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Scripts, styles and images only from berth itself, no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(repositories))
        .route("/ui/", get(|| async { redirect("/ui") }))
        .route(
            "/ui/static/berth.css",
            get(|| async { asset("text/css", pages::CSS) }),
        )
        .route(
            "/ui/static/berth.js",
            get(|| async { asset("text/javascript", pages::JS) }),
        )
        // SVG at the conventional path too: every current browser renders an SVG icon whatever its name, and
        // tools that fetch /favicon.ico on their own get an image rather than a 404 in the access log.
        .route(
            "/ui/static/favicon.svg",
            get(|| async { asset("image/svg+xml", pages::FAVICON) }),
        )
        .route(
            "/favicon.ico",
            get(|| async { asset("image/svg+xml", pages::FAVICON) }),
        )
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/tags", get(tags))
        .route("/ui/tags/delete", post(delete_tag))
        .route("/ui/manifest", get(manifest))
        .route("/ui/mirrors", get(mirrors))
        .route("/ui/maintenance", get(maintenance))
        .route("/ui/maintenance/retention-preview", post(retention_preview))
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                let h = r.headers_mut();
                h.insert("content-security-policy", HeaderValue::from_static(CSP));
                h.insert(
                    "x-content-type-options",
                    HeaderValue::from_static("nosniff"),
                );
                h.insert("x-frame-options", HeaderValue::from_static("DENY"));
                h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
                h.entry(header::CACHE_CONTROL)
                    .or_insert(HeaderValue::from_static("no-store"));
                r
            },
        ))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn redirect(to: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(header::LOCATION, super::hv(to));
    r
}

/// The visitor of one request: who they are and, when signed in, their session token.
struct Visitor {
    caller: Caller,
    token: Option<String>,
}

impl Visitor {
    fn ctx(&self) -> Ctx {
        Ctx {
            user: self.caller.user.as_ref().map(|u| u.name.clone()),
            admin: self.caller.is_admin(),
            csrf: self.token.as_deref().map(csrf_token),
        }
    }

    fn signed_in(&self) -> bool {
        self.caller.user.is_some()
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session of a request; an invalid or expired cookie counts as no session.
async fn visitor(state: &AppState, headers: &HeaderMap) -> Result<Visitor, Response> {
    let Some(token) = cookie(headers, COOKIE).filter(|t| !t.is_empty() && t.len() < 8192) else {
        return Ok(Visitor {
            caller: Caller::anonymous(),
            token: None,
        });
    };
    match state.auth.session(token).await {
        Ok(caller) => Ok(Visitor {
            caller,
            token: Some(token.to_owned()),
        }),
        Err(AuthError::Unavailable(e)) => Err(unavailable(&e)),
        Err(AuthError::Internal(e)) => Err(internal(&e)),
        Err(_) => Ok(Visitor {
            caller: Caller::anonymous(),
            token: None,
        }),
    }
}

/// The visitor of a page view, or the redirect to sign in when anonymous visitors may not browse.
async fn viewer(state: &AppState, headers: &HeaderMap) -> Result<(Arc<Ui>, Visitor), Response> {
    let Some(ui) = state.ui.clone() else {
        return Err(not_found_plain());
    };
    let v = visitor(state, headers).await?;
    if !v.signed_in() && !state.auth.anonymous_browse() {
        return Err(redirect("/ui/login"));
    }
    Ok((ui, v))
}

fn not_found_plain() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// A 500 page naming only the request id; the cause goes to the log under it (`http::error`'s policy).
fn internal(e: &str) -> Response {
    let id = super::error::log_internal(e);
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::message(
            &Ctx::default(),
            "Error",
            &format!("The server could not answer; its log has the cause under request id {id}."),
        ),
    )
}

/// A 503 page with `Retry-After` while a store cannot be reached.
fn unavailable(detail: &str) -> Response {
    super::error::log_unavailable(detail);
    let mut r = html(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(
            &Ctx::default(),
            "Temporarily unavailable",
            "The registry cannot reach its storage right now. Try again in a few seconds.",
        ),
    );
    super::error::retry_after(&mut r);
    r
}

fn registry_error(v: &Visitor, e: RegistryError) -> Response {
    match e {
        RegistryError::ManifestUnknown(_) | RegistryError::NameUnknown(_) => not_found(v),
        RegistryError::Denied(m) => html(
            StatusCode::FORBIDDEN,
            pages::message(&v.ctx(), "Not permitted", &m),
        ),
        RegistryError::QueryInvalid(m) => bad_query(v, &m),
        RegistryError::Unavailable { detail, .. } => unavailable(&detail),
        e => internal(&e.to_string()),
    }
}

fn bad_query(v: &Visitor, why: &str) -> Response {
    html(
        StatusCode::BAD_REQUEST,
        pages::message(&v.ctx(), "Invalid search", why),
    )
}

/// Search text and page positions with a NUL byte are refused here, the same on every metadata backend (no
/// name or tag contains one, and PostgreSQL text cannot hold it).
/// The refusal, if any.
fn refused_query(v: &Visitor, q: &ListQuery) -> Option<Response> {
    [("q", &q.q), ("last", &q.last)]
        .into_iter()
        .find(|(_, value)| value.as_deref().is_some_and(|s| s.contains('\0')))
        .map(|(key, _)| bad_query(v, &format!("{key} must not contain a NUL byte")))
}

/// The one answer for "no such repository, tag or manifest" and "not yours to see".
fn not_found(v: &Visitor) -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::message(
            &v.ctx(),
            "Not found",
            "There is no such repository, tag or manifest.",
        ),
    )
}

fn forbidden(v: &Visitor, why: &str) -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message(&v.ctx(), "Not permitted", why),
    )
}

/// What the caller may do on a repository named as stored (private name, or `<mirror>/<path>`).
fn rights(state: &AppState, c: &Caller, name: &str) -> (crate::auth::Actions, RepoKind) {
    let t = super::auth::target(state, name, None);
    (state.auth.rights(c, &t.canonical, t.kind, &t.raw), t.kind)
}

/// The repository of a request, if it exists for this caller: a valid name the caller may pull.
fn readable(state: &AppState, v: &Visitor, name: &str) -> Option<(RepoName, RepoKind, bool)> {
    let repo: RepoName = name.parse().ok()?;
    let (r, kind) = rights(state, &v.caller, name);
    if !r.has(Action::Pull) {
        return None;
    }
    // Mirrors are read-only for everyone; a delete button there would only ever fail.
    let may_delete = kind == RepoKind::Private && r.has(Action::Delete) && v.signed_in();
    Some((repo, kind, may_delete))
}

fn mirror_of(kind: RepoKind, name: &str) -> Option<String> {
    (kind == RepoKind::Mirror).then(|| name.split('/').next().unwrap_or_default().to_owned())
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    q: Option<String>,
    last: Option<String>,
    repo: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

async fn repositories(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let (ui, v) = match viewer(&state, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = refused_query(&v, &q) {
        return r;
    }
    let caller = v.caller.clone();
    let may_pull = |name: &str| super::auth::may_list(&state, &caller, name);
    match ui
        .repositories(&may_pull, q.q.as_deref(), q.last.as_deref())
        .await
    {
        Ok(listing) => html(
            StatusCode::OK,
            pages::repositories(&v.ctx(), &listing, q.q.as_deref().unwrap_or_default()),
        ),
        Err(e) => registry_error(&v, e),
    }
}

async fn tags(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let (ui, v) = match viewer(&state, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = refused_query(&v, &q) {
        return r;
    }
    let name = q.repo.clone().unwrap_or_default();
    let Some((repo, kind, may_delete)) = readable(&state, &v, &name) else {
        return not_found(&v);
    };
    match ui.tags(&repo, q.q.as_deref(), q.last.as_deref()).await {
        Ok(Some((listing, total))) => {
            let mirror = mirror_of(kind, &name);
            let page = pages::TagsPage {
                repo: repo.as_str(),
                mirror: mirror.as_deref(),
                listing: &listing,
                total,
                search: q.q.as_deref().unwrap_or_default(),
                may_delete,
            };
            html(StatusCode::OK, pages::tags(&v.ctx(), &page))
        }
        Ok(None) => not_found(&v),
        Err(e) => registry_error(&v, e),
    }
}

/// `host[:port]` for the pull command, from the request (only characters a host may contain).
fn pull_host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() < 256
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost")
        .to_owned()
}

async fn manifest(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let (ui, v) = match viewer(&state, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = refused_query(&v, &q) {
        return r;
    }
    let name = q.repo.clone().unwrap_or_default();
    let Some((repo, kind, may_delete)) = readable(&state, &v, &name) else {
        return not_found(&v);
    };
    let Ok(reference) = q.reference.unwrap_or_default().parse::<Reference>() else {
        return not_found(&v);
    };
    match ui.manifest(&repo, &reference, mirror_of(kind, &name)).await {
        Ok(Some(view)) => {
            let host = pull_host(&headers);
            let page = pages::ManifestPage {
                view: &view,
                host: &host,
                may_delete,
            };
            html(StatusCode::OK, pages::manifest(&v.ctx(), &page))
        }
        Ok(None) => not_found(&v),
        Err(e) => registry_error(&v, e),
    }
}

/// A POSTed form: the visitor (who must be signed in and send the session's CSRF token) and the fields.
async fn checked_form(
    state: &AppState,
    req: Request,
) -> Result<(Arc<Ui>, Visitor, Vec<(String, String)>), Response> {
    let Some(ui) = state.ui.clone() else {
        return Err(not_found_plain());
    };
    let headers = req.headers().clone();
    let v = visitor(state, &headers).await?;
    let fields = read_form(req).await?;
    let sent = field(&fields, "csrf").unwrap_or_default();
    let ok = match &v.token {
        Some(t) => bool::from(csrf_token(t).as_bytes().ct_eq(sent.as_bytes())),
        None => false,
    };
    if !ok {
        return Err(forbidden(
            &v,
            "This form is stale or did not come from this site; reload the page and try again.",
        ));
    }
    Ok((ui, v, fields))
}

async fn read_form(req: Request) -> Result<Vec<(String, String)>, Response> {
    let body = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response())?;
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn delete_tag(State(state): State<AppState>, req: Request) -> Response {
    let (ui, v, fields) = match checked_form(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let name = field(&fields, "repo").unwrap_or_default();
    let tag = field(&fields, "tag").unwrap_or_default();
    let Some((repo, _, may_delete)) = readable(&state, &v, name) else {
        return not_found(&v);
    };
    if !may_delete {
        return forbidden(&v, "You may not delete tags in this repository.");
    }
    match ui.delete_tag(&repo, tag).await {
        Ok(()) => {
            tracing::info!(target: "audit", event = "delete", user = v.caller.principal(), repository = %repo, tag, "tag deleted in the web UI");
            redirect(&format!("/ui/tags?repo={}", pages::enc(repo.as_str())))
        }
        Err(e) => registry_error(&v, e),
    }
}

/// Mirrors and maintenance show the whole server: admins only, and not through a narrowly scoped token.
async fn admin_viewer(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<Ui>, Visitor), Response> {
    let (ui, v) = viewer(state, headers).await?;
    if !v.caller.is_admin() || !state.auth.may_pull_everything(&v.caller) {
        return Err(not_found(&v));
    }
    Ok((ui, v))
}

async fn mirrors(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (ui, v) = match admin_viewer(&state, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match ui.mirrors(&state.mirrors).await {
        Ok(rows) => html(StatusCode::OK, pages::mirrors(&v.ctx(), &rows)),
        Err(e) => registry_error(&v, e),
    }
}

async fn maintenance(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (ui, v) = match admin_viewer(&state, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match ui.maintenance().await {
        Ok(view) => html(StatusCode::OK, pages::maintenance(&v.ctx(), &view, None)),
        Err(e) => registry_error(&v, e),
    }
}

/// A POST because the dry run is recorded in the run history.
async fn retention_preview(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    if let Err(r) = admin_viewer(&state, &headers).await {
        return r;
    }
    let (ui, v, _) = match checked_form(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let preview = match ui.retention_preview().await {
        Ok(p) => p,
        Err(e) => return registry_error(&v, e),
    };
    match ui.maintenance().await {
        Ok(view) => html(
            StatusCode::OK,
            pages::maintenance(&v.ctx(), &view, preview.as_ref()),
        ),
        Err(e) => registry_error(&v, e),
    }
}

async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.ui.is_none() {
        return not_found_plain();
    }
    let v = match visitor(&state, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if v.signed_in() {
        return redirect("/ui");
    }
    login_page(&state, StatusCode::OK, None, "")
}

/// The sign-in form with a fresh double-submit nonce in a field and in a `SameSite=Strict` cookie: a form posted
/// from another site lacks the cookie, so nobody can sign a visitor in to an account of theirs (login CSRF).
fn login_page(state: &AppState, status: StatusCode, error: Option<&str>, user: &str) -> Response {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let mut r = html(status, pages::login(&Ctx::default(), error, user, &nonce));
    let secure = if state.tls { "; Secure" } else { "" };
    r.headers_mut().insert(
        header::SET_COOKIE,
        super::hv(&format!(
            "{LOGIN_COOKIE}={nonce}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
        )),
    );
    r
}

fn session_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.tls { "; Secure" } else { "" };
    super::hv(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
}

/// Verifies user and password (or personal access token) exactly as Basic auth does, failed-login limit included.
async fn login(State(state): State<AppState>, req: Request) -> Response {
    if state.ui.is_none() {
        return not_found_plain();
    }
    let ip: Option<IpAddr> = super::peer_ip(&req);
    let nonce = cookie(req.headers(), LOGIN_COOKIE)
        .unwrap_or_default()
        .to_owned();
    let fields = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let user = field(&fields, "user").unwrap_or_default().trim().to_owned();
    let sent = field(&fields, "login_csrf").unwrap_or_default();
    if nonce.is_empty() || !bool::from(nonce.as_bytes().ct_eq(sent.as_bytes())) {
        let msg = "The sign-in form expired or came from another site; try again.";
        return login_page(&state, StatusCode::FORBIDDEN, Some(msg), &user);
    }
    let password = field(&fields, "password").unwrap_or_default();
    let caller = match state.auth.login(&user, password, ip).await {
        Ok(c) => c,
        Err(AuthError::RateLimited(retry)) => {
            let msg = format!("Too many failed sign-ins; try again in {retry} s.");
            return login_page(&state, StatusCode::TOO_MANY_REQUESTS, Some(&msg), &user);
        }
        Err(AuthError::Unavailable(e)) => return unavailable(&e),
        Err(AuthError::Internal(e)) => return internal(&e),
        Err(_) => {
            let msg = "Wrong user name or password.";
            return login_page(&state, StatusCode::UNAUTHORIZED, Some(msg), &user);
        }
    };
    let token = match state.auth.sign_session(&caller) {
        Ok(t) => t,
        Err(e) => return internal(&e.to_string()),
    };
    tracing::info!(target: "audit", event = "ui_login", user = caller.principal(), ip = %ip.map_or_else(|| "unknown".to_owned(), |i| i.to_string()), "signed in to the web UI");
    let mut r = redirect("/ui");
    r.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&state, &token, SESSION_TTL_SECS),
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("berth_login=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn logout(State(state): State<AppState>, req: Request) -> Response {
    let (_, v, _) = match checked_form(&state, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    tracing::info!(target: "audit", event = "ui_logout", user = v.caller.principal(), "signed out of the web UI");
    let mut r = redirect("/ui/login");
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    r
}
