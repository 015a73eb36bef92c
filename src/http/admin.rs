//! The admin API (`/api/v1/…`): users and personal access tokens for automation, the same operations as the
//! `berth user` and `berth token` commands, and the state of the background workers. Admins only; a personal
//! access token may use it only if it was created with the full scope `**:*`, so a narrow CI token of an admin
//! cannot create users.

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use serde::Deserialize;

use super::AppState;
use crate::auth::store::{TokenRecord, UserRecord};
use crate::auth::{AccountError, Actions, Caller, RepoGlob};
use crate::registry::RegistryError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(add_user))
        .route("/api/v1/users/{name}", delete(remove_user))
        .route("/api/v1/users/{name}/password", put(set_password))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/workers", get(list_workers))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    (status, axum::Json(body)).into_response()
}

/// Refusals name what was wrong with the request; store outages (503) and internal failures (500, the request
/// id only) follow the error policy of `http::error`, through the registry's error type.
fn account_error(e: AccountError) -> Response {
    let status = match &e {
        AccountError::NoSuchUser(_) | AccountError::NoSuchToken(_) => StatusCode::NOT_FOUND,
        AccountError::UserExists(_) => StatusCode::CONFLICT,
        AccountError::InvalidName(_) | AccountError::EmptyPassword | AccountError::Invalid(_) => {
            StatusCode::BAD_REQUEST
        }
        AccountError::Meta(_) | AccountError::Internal(_) => {
            return match e {
                AccountError::Meta(m) => RegistryError::from(m).into_response(),
                e => RegistryError::Internal(e.to_string()).into_response(),
            };
        }
    };
    error(status, "INVALID", &e.to_string())
}

/// `admin` for a handler: request bodies are not `Sync`, so only the headers are held across the await.
fn admin_of<'a>(
    state: &'a AppState,
    req: &Request,
) -> impl std::future::Future<Output = Result<Caller, Response>> + Send + 'a {
    let (headers, ip) = (req.headers().clone(), super::peer_ip(req));
    async move { admin(state, headers, ip).await }
}

/// The caller, if it is an admin allowed to use this API; otherwise the refusal.
async fn admin(
    state: &AppState,
    headers: axum::http::HeaderMap,
    ip: Option<std::net::IpAddr>,
) -> Result<Caller, Response> {
    let caller = match super::auth::authenticate(state, &headers, ip).await {
        Ok(c) if c.jwt.is_none() && c.user.is_some() => c,
        Ok(_)
        | Err(crate::auth::AuthError::BadCredentials)
        | Err(crate::auth::AuthError::InvalidToken(_)) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "admin credentials required",
            );
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"berth admin\""),
            );
            return Err(r);
        }
        Err(crate::auth::AuthError::RateLimited(_)) => {
            return Err(error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "too many failed logins",
            ));
        }
        Err(e) => return Err(RegistryError::from(e).into_response()),
    };
    let full_token = match &caller.pat {
        None => true,
        Some((_, scopes)) => scopes
            .iter()
            .any(|s| s.glob == RepoGlob::Pattern("**".into()) && s.actions == Actions::ALL),
    };
    if !caller.is_admin() || !full_token {
        return Err(error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "the admin API is for admins",
        ));
    }
    Ok(caller)
}

/// Largest JSON body the admin API reads; its requests are a few hundred bytes.
const MAX_JSON_BODY: usize = 64 * 1024;

/// Reads and parses a JSON body, reading no further than [`MAX_JSON_BODY`] whatever the body declares (chunked
/// or not): a longer one is refused as soon as it crosses the limit, and hyper closes the connection instead of
/// reading the rest.
async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY)
        .await
        .map_err(|e| {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over_limit {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "SIZE_INVALID",
                    &format!("the request body is over the {MAX_JSON_BODY}-byte limit"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    "INVALID",
                    "the request body was not received whole",
                )
            }
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "INVALID",
            &format!("invalid JSON: {e}"),
        )
    })
}

fn user_json(u: &UserRecord) -> serde_json::Value {
    serde_json::json!({"name": u.name, "admin": u.admin, "created_at": u.created_at})
}

fn token_json(t: &TokenRecord) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "user": t.user, "name": t.name,
        "scopes": t.scopes.lines().collect::<Vec<_>>(),
        "created_at": t.created_at, "expires_at": t.expires_at, "last_used": t.last_used,
    })
}

async fn list_users(State(state): State<AppState>, req: Request) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    match state.auth.accounts.users().await {
        Ok(us) => axum::Json(us.iter().map(user_json).collect::<Vec<_>>()).into_response(),
        Err(e) => account_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn add_user(State(state): State<AppState>, req: Request) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    let u: NewUser = match json_body(req).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match state
        .auth
        .accounts
        .add_user(&u.name, &u.password, u.admin)
        .await
    {
        Ok(rec) => (StatusCode::CREATED, axum::Json(user_json(&rec))).into_response(),
        Err(e) => account_error(e),
    }
}

async fn remove_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    match state.auth.accounts.remove_user(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => account_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    let p: NewPassword = match json_body(req).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match state.auth.accounts.set_password(&name, &p.password).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => account_error(e),
    }
}

#[derive(Deserialize)]
struct TokenFilter {
    user: Option<String>,
}

async fn list_tokens(
    State(state): State<AppState>,
    Query(f): Query<TokenFilter>,
    req: Request,
) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    match state.auth.accounts.tokens(f.user.as_deref()).await {
        Ok(ts) => axum::Json(ts.iter().map(token_json).collect::<Vec<_>>()).into_response(),
        Err(e) => account_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    user: String,
    #[serde(default)]
    name: String,
    scopes: Vec<String>,
    /// e.g. "90d"; absent: no expiry.
    expires_in: Option<String>,
}

async fn create_token(State(state): State<AppState>, req: Request) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    let t: NewToken = match json_body(req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let scopes = match t
        .scopes
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<crate::auth::Scope>, String>>()
    {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "INVALID", &e),
    };
    let expires = match t
        .expires_in
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
    {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID",
                &format!("expires_in: {e}"),
            );
        }
    };
    match state
        .auth
        .accounts
        .create_token(&t.user, &t.name, &scopes, expires)
        .await
    {
        Ok(c) => {
            let mut body = token_json(&c.record);
            body["token"] = c.secret.into();
            let mut r = (StatusCode::CREATED, axum::Json(body)).into_response();
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => account_error(e),
    }
}

async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    match state.auth.accounts.revoke_token(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => account_error(e),
    }
}

/// Every background worker with its state, last error, progress and run times (`worker::WorkerStatus`).
async fn list_workers(State(state): State<AppState>, req: Request) -> Response {
    if let Err(r) = admin_of(&state, &req).await {
        return r;
    }
    axum::Json(state.workers.statuses()).into_response()
}
