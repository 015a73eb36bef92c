//! The registry's one error type. Variants are the OCI error codes (plus the few statuses the spec adds without a
//! code); `http::error` is the single place that turns them into a status and a JSON body.

use crate::meta::MetaError;
use crate::oci::{Digest, ManifestError, NameError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(Digest),
    /// A mirror's upstream could not provide the blob; the message says why (missing, refused access, …).
    #[error("blob unknown: {0}")]
    BlobUnknownUpstream(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    /// A chunk that does not start at the session's current offset (spec: 416).
    #[error("chunk does not start at the upload's current offset {offset}")]
    UploadOutOfOrder { offset: u64 },
    /// A `Content-Range` header that cannot be parsed (spec: 416).
    #[error("invalid Content-Range: {0}")]
    ContentRangeInvalid(String),
    #[error("invalid pagination parameter: {0}")]
    PaginationInvalid(String),
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references unknown blobs or manifests: {}", list(.0))]
    ManifestBlobUnknown(Vec<Digest>),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("manifest is {size} bytes, over the {limit}-byte limit")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("requested range not satisfiable (blob is {size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Denied(String),
    /// Refused because the object is still referenced (removing it would break invariant 1).
    #[error("{0}")]
    Referenced(String),
    /// The upstream of a mirror asks us to slow down (spec: 429 TOOMANYREQUESTS).
    #[error("{message}")]
    TooManyRequests {
        retry_after: Option<u64>,
        message: String,
    },
    /// A mirror's upstream failed and nothing cached can answer instead.
    #[error("{0}")]
    Upstream(String),
    /// A mirror's upstream did not answer in time and nothing cached can answer instead.
    #[error("{0}")]
    UpstreamTimeout(String),
    /// A store berth depends on cannot be reached or cannot take work right now; retrying later can succeed
    /// (`503` with `Retry-After`). `message` is for the client; `detail` (driver text, addresses) only for the log
    /// and the command line.
    #[error("{message}: {detail}")]
    Unavailable {
        message: &'static str,
        detail: String,
    },
    /// A query parameter no stored entry can match and no store can be asked about (a NUL byte in `last`).
    #[error("invalid query parameter: {0}")]
    QueryInvalid(String),
    /// The metadata records a blob whose bytes are missing, or not of the recorded size, in the blob store
    /// (changed behind berth's back). A `500` like [`RegistryError::Internal`]; a mirror fetches such a blob
    /// again instead.
    #[error("stored data for {0} is damaged")]
    Damaged(Digest),
    /// A failure of berth or its stores that the client cannot act on. The text is for the log only: the client
    /// is told the request id under which it was logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub fn metadata_unavailable(detail: impl Into<String>) -> RegistryError {
        RegistryError::Unavailable {
            message: "the metadata store is unavailable; retry later",
            detail: detail.into(),
        }
    }

    pub fn blobs_unavailable(detail: impl Into<String>) -> RegistryError {
        RegistryError::Unavailable {
            message: "the blob store is unavailable; retry later",
            detail: detail.into(),
        }
    }
}

fn list(ds: &[Digest]) -> String {
    let mut s: Vec<String> = ds.iter().take(10).map(|d| d.to_string()).collect();
    if ds.len() > 10 {
        s.push(format!("and {} more", ds.len() - 10));
    }
    s.join(", ")
}

impl From<MetaError> for RegistryError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Unavailable(d) => RegistryError::metadata_unavailable(d),
            MetaError::Conflict(d) => RegistryError::Unavailable {
                message: "too many concurrent writes to the same content; retry later",
                detail: d,
            },
            // The HTTP layer refuses such values before they reach a store; this is the backstop, worded for the
            // client without the driver's text.
            MetaError::Invalid(d) => {
                tracing::debug!(detail = d, "metadata store refused a value");
                RegistryError::QueryInvalid(
                    "a value in the request cannot be stored or searched for (NUL byte)".into(),
                )
            }
            e @ (MetaError::Corrupt(_) | MetaError::Other(_)) => {
                RegistryError::Internal(e.to_string())
            }
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => RegistryError::blobs_unavailable(d),
            e => RegistryError::Internal(e.to_string()),
        }
    }
}

impl From<ManifestError> for RegistryError {
    fn from(e: ManifestError) -> Self {
        RegistryError::ManifestInvalid(e.to_string())
    }
}

impl From<NameError> for RegistryError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Digest(d) => RegistryError::DigestInvalid(d.to_string()),
            NameError::Tag(_) => RegistryError::ManifestInvalid(e.to_string()),
            other => RegistryError::NameInvalid(other.to_string()),
        }
    }
}
