//! The one place where registry errors become HTTP: status code, OCI error JSON body and any headers the spec
//! requires with them.
//!
//! # Error policy
//!
//! Every error a client sees is written for that client; everything else goes to the log.
//!
//! - **Client errors (4xx)** carry the OCI error code of the distribution spec (`MANIFEST_UNKNOWN`, `DENIED`, …)
//!   and a message that says what was wrong with *the request* (which digest, which parameter, which limit). They
//!   are the client's to fix, so they are not logged above `debug`, apart from the access log line.
//! - **Store outages (503)**: a metadata store or blob store that cannot be reached, is out of connections, busy or
//!   out of space (`MetaError::Unavailable`, `StoreError::Unavailable`) is `503 Service Unavailable` with
//!   `Retry-After` and the code `UNAVAILABLE` (the OCI spec defines no code for this status; `UNAVAILABLE` is the
//!   one the reference implementation, CNCF distribution, registers for 503, and Docker retries on it). The message
//!   names the store and says to retry; the driver's text goes to the log. Nothing is cached about a failed
//!   request, so service resumes by itself when the store is back.
//! - **Internal errors (500)**: SQL text, file paths, driver and I/O messages never reach a client. The body is
//!   `UNKNOWN` and names only the request id; the full error is logged at `error` with the same id, which is the
//!   `id` of the access log line and the `X-Request-Id` response header. An operator given that id finds the cause.
//! - **Upstream failures (502/504)** of a mirror say which upstream failed and how (refused, timed out), since the
//!   client may act on that; they are logged too.
//!
//! Handlers never build error bodies of their own: they return a [`RegistryError`], and the web UI, the token
//! endpoint and the admin API map store outages and internal errors through the same variants.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::registry::RegistryError;

/// What a client is told to wait before retrying after a store outage: long enough for a restarting database or
/// a failover to answer again, short enough that a pull resumes promptly.
pub const RETRY_AFTER_SECS: u64 = 5;

tokio::task_local! {
    /// The id of the request being served (`log_request` sets it around every handler).
    static REQUEST_ID: String;
}

/// Runs `f` with `id` as the current request id.
pub async fn with_request_id<F: std::future::Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The id of the request being served; `-` outside a request (the operations listener has no access log).
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".into())
}

/// The message of a 500: only the request id, which finds the logged cause.
pub fn internal_message(id: &str) -> String {
    format!("internal server error; the server's log has the cause under request id {id}")
}

/// Logs an internal error with the request id, for responses that are not a [`RegistryError`] (UI pages).
pub fn log_internal(detail: &str) -> String {
    let id = request_id();
    tracing::error!(id, error = detail, "request failed");
    id
}

/// Logs a store outage with the request id.
pub fn log_unavailable(detail: &str) {
    tracing::warn!(id = request_id(), error = detail, "store unavailable");
}

/// Adds `Retry-After` to a 503.
pub fn retry_after(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
}

impl RegistryError {
    /// The OCI error code and HTTP status for this error.
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        use RegistryError::*;
        match self {
            BlobUnknown(_) => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUnknownUpstream(_) => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
            BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            UploadOutOfOrder { .. } => ("BLOB_UPLOAD_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            ContentRangeInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            PaginationInvalid(_) => ("PAGINATION_NUMBER_INVALID", StatusCode::BAD_REQUEST),
            // The spec's UNSUPPORTED covers "an invalid set of parameters".
            QueryInvalid(_) => ("UNSUPPORTED", StatusCode::BAD_REQUEST),
            DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestBlobUnknown(_) => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
            ManifestInvalid(_) => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestUnknown(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            ManifestTooLarge { .. } => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
            NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            NameUnknown(_) => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            SizeInvalid(_) => ("SIZE_INVALID", StatusCode::BAD_REQUEST),
            RangeNotSatisfiable { .. } => ("BLOB_UNKNOWN", StatusCode::RANGE_NOT_SATISFIABLE),
            Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            Denied(_) => ("DENIED", StatusCode::FORBIDDEN),
            Referenced(_) => ("DENIED", StatusCode::CONFLICT),
            TooManyRequests { .. } => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            Upstream(_) => ("UNKNOWN", StatusCode::BAD_GATEWAY),
            UpstreamTimeout(_) => ("UNKNOWN", StatusCode::GATEWAY_TIMEOUT),
            Unavailable { .. } => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
            Internal(_) | Damaged(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn detail(&self, request_id: &str) -> serde_json::Value {
        use RegistryError::*;
        match self {
            BlobUnknown(d) => serde_json::json!({ "digest": d.to_string() }),
            ManifestBlobUnknown(ds) => {
                serde_json::json!({ "missing": ds.iter().take(100).map(|d| d.to_string()).collect::<Vec<_>>() })
            }
            ManifestTooLarge { size, limit } => serde_json::json!({ "size": size, "limit": limit }),
            UploadOutOfOrder { offset } => serde_json::json!({ "offset": offset }),
            Internal(_) | Damaged(_) => serde_json::json!({ "request_id": request_id }),
            _ => serde_json::Value::Null,
        }
    }

    /// The message the client sees; for internal errors and outages the cause is logged instead, with the id.
    fn client_message(&self, request_id: &str) -> String {
        match self {
            RegistryError::Internal(detail) => {
                tracing::error!(id = request_id, error = detail, "request failed");
                internal_message(request_id)
            }
            e @ RegistryError::Damaged(_) => {
                tracing::error!(id = request_id, error = %e, "request failed");
                internal_message(request_id)
            }
            RegistryError::Unavailable { message, detail } => {
                tracing::warn!(id = request_id, error = detail, "store unavailable");
                (*message).to_owned()
            }
            e if e.code_and_status().1.is_server_error() => {
                tracing::error!(id = request_id, error = %e, "request failed");
                e.to_string()
            }
            e => e.to_string(),
        }
    }
}

/// Failures of access control that are not a refusal: the store of users and tokens is down, or berth failed.
impl From<crate::auth::AuthError> for RegistryError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Unavailable(d) => RegistryError::metadata_unavailable(d),
            AuthError::RateLimited(retry) => RegistryError::TooManyRequests {
                retry_after: Some(retry),
                message: "too many failed logins; try again later".into(),
            },
            e @ (AuthError::BadCredentials | AuthError::InvalidToken(_)) => {
                RegistryError::Denied(e.to_string())
            }
            AuthError::Internal(d) => RegistryError::Internal(d),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        let id = request_id();
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.client_message(&id), "detail": self.detail(&id) }]
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if let RegistryError::TooManyRequests {
            retry_after: Some(s),
            ..
        } = &self
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            retry_after(&mut resp);
        }
        if let RegistryError::RangeNotSatisfiable { size } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_text(r: Response) -> String {
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn internal_error_body_names_only_the_request_id() {
        let e =
            RegistryError::Internal("SELECT * FROM blob: /var/lib/berth/berth.db is locked".into());
        let r = with_request_id("req-42".into(), async { e.into_response() }).await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_text(r).await;
        assert!(body.contains("req-42"), "{body}");
        assert!(
            !body.contains("SELECT") && !body.contains("/var/lib"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn damaged_blob_body_names_only_the_request_id() {
        let d: crate::oci::Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let r = with_request_id("req-7".into(), async {
            RegistryError::Damaged(d).into_response()
        })
        .await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_text(r).await;
        assert!(body.contains("UNKNOWN") && body.contains("req-7"), "{body}");
        assert!(
            !body.contains("aaaa") && !body.contains("damaged"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn store_outage_is_503_with_retry_after_and_no_driver_text() {
        let e = RegistryError::from(crate::meta::MetaError::Unavailable(
            "error connecting to server: Connection refused (os error 111)".into(),
        ));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers()[header::RETRY_AFTER],
            RETRY_AFTER_SECS.to_string().as_str()
        );
        let body = body_text(r).await;
        assert!(
            body.contains("UNAVAILABLE") && body.contains("metadata store"),
            "{body}"
        );
        assert!(!body.contains("Connection refused"), "{body}");
    }
}
