//! Where images come from and go to: a running berth over HTTP, or a data directory opened directly while the
//! server is stopped. Both go through the registry's normal rules — the server's when over HTTP, the same
//! [`Registry`] methods the HTTP layer calls when local — so a blob becomes visible only through the verified publish
//! path and a manifest only when everything it references is there.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::config::Config;
use crate::oci::{Digest, Reference, RepoName, media};
use crate::registry::{Registry, RegistryError};
use crate::store::ByteStream;
use crate::stores::DataDirLock;

/// Every manifest type berth serves, for `Accept`.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The registry does not have it (manifest or blob unknown).
    #[error("{0}: not found")]
    NotFound(String),
    /// The server answered with an error status.
    #[error("{what}: server answered {status}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("{what}: {message}")]
    Transport { what: String, message: String },
    /// The local registry refused or failed.
    #[error("{what}: {source}")]
    Registry { what: String, source: RegistryError },
}

/// Reads images from a registry (for `export`).
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// A manifest's media type and bytes.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(String, Bytes), TargetError>;

    /// A blob's size and bytes (unverified: the caller hashes them).
    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, ByteStream), TargetError>;
}

/// Writes images into a registry (for `import` and `import-distribution`).
#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    /// Whether `repo` already has the blob, linking it there from another repository of the registry when
    /// possible (cheap re-runs and cross-repository dedup).
    async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, TargetError>;

    /// Uploads a blob of `size` bytes; the registry verifies the digest before publishing it.
    async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<(), TargetError>;

    /// The digest a tag or digest resolves to in `repo`, if any.
    async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, TargetError>;

    /// Stores a manifest under a tag or its digest; refused unless everything it references is in `repo`.
    async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), TargetError>;
}

// ---------------------------------------------------------------------------------------------------------------
// A data directory, opened directly
// ---------------------------------------------------------------------------------------------------------------

/// The registry of a data directory, opened the way `berth serve` opens it, with the data-dir lock held.
pub struct LocalRegistry {
    registry: std::sync::Arc<Registry>,
    _lock: DataDirLock,
}

impl LocalRegistry {
    /// Takes the data-dir lock (refusing when a server holds it), then opens the stores.
    pub fn open(config: &Config) -> anyhow::Result<LocalRegistry> {
        let lock = crate::stores::lock_data_dir(&config.storage.data_dir)?;
        let registry = crate::stores::open(config)?.registry;
        Ok(LocalRegistry {
            registry,
            _lock: lock,
        })
    }
}

fn local(what: String) -> impl FnOnce(RegistryError) -> TargetError {
    move |source| match source {
        RegistryError::ManifestUnknown(_)
        | RegistryError::BlobUnknown(_)
        | RegistryError::NameUnknown(_) => TargetError::NotFound(what),
        source => TargetError::Registry { what, source },
    }
}

#[async_trait::async_trait]
impl Source for LocalRegistry {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(String, Bytes), TargetError> {
        let m = self
            .registry
            .get_manifest(repo, reference, &[])
            .await
            .map_err(local(format!("manifest {repo}:{reference}")))?;
        Ok((m.record.media_type, m.bytes))
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, ByteStream), TargetError> {
        let b = self
            .registry
            .open_blob(repo, digest, None)
            .await
            .map_err(local(format!("blob {repo}@{digest}")))?;
        Ok((b.size, b.reader.body))
    }
}

#[async_trait::async_trait]
impl Destination for LocalRegistry {
    async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, TargetError> {
        let what = || format!("blob {repo}@{digest}");
        match self.registry.blob_size(repo, digest).await {
            Ok(_) => return Ok(true),
            Err(RegistryError::BlobUnknown(_)) => {}
            Err(source) => return Err(local(what())(source)),
        }
        let mounted = self
            .registry
            .mount_blob(repo, None, digest)
            .await
            .map_err(local(what()))?;
        Ok(mounted.is_some())
    }

    async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        _size: u64,
        body: ByteStream,
    ) -> Result<(), TargetError> {
        self.registry
            .push_blob(repo, digest, body)
            .await
            .map_err(local(format!("blob {repo}@{digest}")))?;
        Ok(())
    }

    async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, TargetError> {
        match self.registry.resolve_manifest(repo, reference).await {
            Ok(r) => Ok(Some(r.digest)),
            Err(RegistryError::ManifestUnknown(_)) | Err(RegistryError::NameUnknown(_)) => Ok(None),
            Err(source) => Err(TargetError::Registry {
                what: format!("manifest {repo}:{reference}"),
                source,
            }),
        }
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), TargetError> {
        self.registry
            .put_manifest(repo, reference, Vec::new(), Some(media_type), bytes)
            .await
            .map_err(|source| TargetError::Registry {
                what: format!("manifest {repo}:{reference}"),
                source,
            })?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A running server, over HTTP
// ---------------------------------------------------------------------------------------------------------------

/// A berth (or any OCI registry) reached over HTTP, with optional Basic credentials. The auth feature's tokens are
/// accepted as Basic passwords, so a token works as `--password-env`.
pub struct HttpRegistry {
    client: reqwest::Client,
    base: String,
    credentials: Option<(String, String)>,
}

impl HttpRegistry {
    pub fn new(
        base: &str,
        credentials: Option<(String, String)>,
    ) -> Result<HttpRegistry, TargetError> {
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| TargetError::Transport {
                what: "HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(HttpRegistry {
            client,
            base: base.trim_end_matches('/').to_owned(),
            credentials,
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url);
        match &self.credentials {
            Some((user, password)) => r.basic_auth(user, Some(password)),
            None => r,
        }
    }

    async fn send(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, TargetError> {
        req.send().await.map_err(|e| TargetError::Transport {
            what: what.to_owned(),
            message: error_chain(&e),
        })
    }

    /// The upload URL of a new session in `repo`.
    async fn start_upload(&self, repo: &RepoName, what: &str) -> Result<String, TargetError> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self
            .send(what, self.request(reqwest::Method::POST, &url))
            .await?;
        if resp.status() != reqwest::StatusCode::ACCEPTED {
            return Err(refused(what, resp).await);
        }
        let location = header(&resp, "location").ok_or_else(|| TargetError::Refused {
            what: what.to_owned(),
            status: 202,
            message: "upload session without a Location header".into(),
        })?;
        Ok(self.absolute(&location))
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        }
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn refused(what: &str, resp: reqwest::Response) -> TargetError {
    let status = resp.status().as_u16();
    if status == 404 {
        return TargetError::NotFound(what.to_owned());
    }
    let body = resp.text().await.unwrap_or_default();
    let message: String = body.chars().take(500).collect();
    TargetError::Refused {
        what: what.to_owned(),
        status,
        message: message.trim().to_owned(),
    }
}

#[async_trait::async_trait]
impl Source for HttpRegistry {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(String, Bytes), TargetError> {
        let what = format!("manifest {repo}:{reference}");
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::GET, &url)
                    .header("accept", MANIFEST_ACCEPT),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(refused(&what, resp).await);
        }
        let media_type = header(&resp, "content-type")
            .map(|c| media::essence(&c))
            .unwrap_or_default();
        // Bounded whether or not the server announces a length: a manifest is read into memory.
        let too_large = || TargetError::Refused {
            what: what.clone(),
            status: 200,
            message: format!("manifest is over {} bytes", super::MAX_JSON_SIZE),
        };
        if resp
            .content_length()
            .is_some_and(|n| n > super::MAX_JSON_SIZE)
        {
            return Err(too_large());
        }
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| TargetError::Transport {
                what: what.clone(),
                message: error_chain(&e),
            })?;
            if (buf.len() + chunk.len()) as u64 > super::MAX_JSON_SIZE {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        let bytes = Bytes::from(buf);
        Ok((media_type, bytes))
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, ByteStream), TargetError> {
        let what = format!("blob {repo}@{digest}");
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .send(&what, self.request(reqwest::Method::GET, &url))
            .await?;
        if !resp.status().is_success() {
            return Err(refused(&what, resp).await);
        }
        let size = resp.content_length().ok_or_else(|| TargetError::Refused {
            what: what.clone(),
            status: resp.status().as_u16(),
            message: "blob response without Content-Length".into(),
        })?;
        let body = resp.bytes_stream().map_err(std::io::Error::other);
        Ok((size, Box::pin(body)))
    }
}

#[async_trait::async_trait]
impl Destination for HttpRegistry {
    async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, TargetError> {
        let what = format!("blob {repo}@{digest}");
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .send(&what, self.request(reqwest::Method::HEAD, &url))
            .await?;
        if resp.status().is_success() {
            return Ok(true);
        }
        if resp.status() != reqwest::StatusCode::NOT_FOUND {
            return Err(refused(&what, resp).await);
        }
        // A mount without `from` links the blob if the registry has it in any repository (berth does; other
        // registries answer 202 with a fresh session, which is cancelled).
        let url = format!("{}/v2/{repo}/blobs/uploads/?mount={digest}", self.base);
        let resp = self
            .send(&what, self.request(reqwest::Method::POST, &url))
            .await?;
        match resp.status() {
            reqwest::StatusCode::CREATED => Ok(true),
            reqwest::StatusCode::ACCEPTED => {
                if let Some(loc) = header(&resp, "location") {
                    let url = self.absolute(&loc);
                    let _ = self
                        .send(&what, self.request(reqwest::Method::DELETE, &url))
                        .await;
                }
                Ok(false)
            }
            _ => Err(refused(&what, resp).await),
        }
    }

    async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<(), TargetError> {
        let what = format!("blob {repo}@{digest}");
        let location = self.start_upload(repo, &what).await?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::PUT, &url)
                    .header("content-type", "application/octet-stream")
                    .header("content-length", size)
                    .body(reqwest::Body::wrap_stream(body)),
            )
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            return Err(refused(&what, resp).await);
        }
        Ok(())
    }

    async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, TargetError> {
        let what = format!("manifest {repo}:{reference}");
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::HEAD, &url)
                    .header("accept", MANIFEST_ACCEPT),
            )
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(refused(&what, resp).await);
        }
        Ok(header(&resp, "docker-content-digest").and_then(|d| d.parse().ok()))
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), TargetError> {
        let what = format!("manifest {repo}:{reference}");
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::PUT, &url)
                    .header("content-type", media_type)
                    .body(bytes),
            )
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            return Err(refused(&what, resp).await);
        }
        Ok(())
    }
}

/// A source or destination chosen on the command line.
pub type SharedSource = Arc<dyn Source>;
pub type SharedDestination = Arc<dyn Destination>;
