//! What the blob store is configured with: the `[storage]` keys that choose and reach an object store. The
//! binary's configuration (`berth::config::Storage`) holds these types and hands them over as [`ObjectSettings`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The backend, its three possible configurations, and where the server keeps spooled downloads.
#[derive(Debug, Clone, Copy)]
pub struct ObjectSettings<'a> {
    pub blobs: BlobBackend,
    pub s3: &'a S3Storage,
    pub gcs: &'a GcsStorage,
    pub azure: &'a AzureStorage,
    /// Blob GETs answered with a pre-signed URL valid this long (`storage.redirect_ttl`).
    pub redirect_ttl: Option<Duration>,
    pub data_dir: &'a Path,
}

/// The blob backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    #[default]
    Filesystem,
    S3,
    Gcs,
    Azure,
}

/// Amazon S3 or an S3-compatible server (MinIO, Ceph RGW, Garage…). Keys not set here come from the usual
/// `AWS_*` environment variables, then instance metadata (EC2/ECS/EKS roles).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Storage {
    /// Bucket name (must exist; berth does not create it).
    pub bucket: String,
    /// Key prefix inside the bucket, so one bucket can hold several registries.
    pub prefix: String,
    /// Endpoint URL of an S3-compatible server, e.g. `http://minio:9000`; absent: Amazon S3 for `region`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region; absent: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Access key id; absent: from the environment or instance metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Name of an environment variable holding the secret access key (never written in the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_env: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted (`bucket.endpoint/key`); most
    /// self-hosted servers want this.
    pub path_style: bool,
    /// Allow a plain `http://` endpoint.
    pub allow_http: bool,
}

/// Google Cloud Storage. Credentials not set here come from `GOOGLE_APPLICATION_CREDENTIALS` /
/// `GOOGLE_SERVICE_ACCOUNT`, then the instance's service account.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsStorage {
    pub bucket: String,
    pub prefix: String,
    /// A service-account JSON key file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_path: Option<PathBuf>,
}

/// Azure Blob Storage. Credentials not set here come from the `AZURE_*` environment variables, then managed
/// identity.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureStorage {
    /// Storage account name.
    pub account: String,
    /// Container name (must exist).
    pub container: String,
    pub prefix: String,
    /// Name of an environment variable holding the account's access key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_env: Option<String>,
    /// Endpoint URL, e.g. an Azurite emulator; absent: the account's public endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint.
    pub allow_http: bool,
}
