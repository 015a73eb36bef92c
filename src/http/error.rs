//! The one place where registry errors become HTTP: status code, OCI error JSON body and any headers the spec
//! requires with them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::registry::RegistryError;

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
            Internal(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn detail(&self) -> serde_json::Value {
        use RegistryError::*;
        match self {
            BlobUnknown(d) => serde_json::json!({ "digest": d.to_string() }),
            ManifestBlobUnknown(ds) => {
                serde_json::json!({ "missing": ds.iter().take(100).map(|d| d.to_string()).collect::<Vec<_>>() })
            }
            ManifestTooLarge { size, limit } => serde_json::json!({ "size": size, "limit": limit }),
            UploadOutOfOrder { offset } => serde_json::json!({ "offset": offset }),
            _ => serde_json::Value::Null,
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.to_string(), "detail": self.detail() }]
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
        if let RegistryError::RangeNotSatisfiable { size } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}
