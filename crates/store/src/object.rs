//! Object-store blob backend (S3 and S3-compatible servers, Google Cloud Storage, Azure Blob Storage) over the
//! `object_store` crate, for the scale-out shape where several replicas share one bucket.
//!
//! Keys under the configured prefix:
//! - `blobs/<alg>/<hex>`: published blobs. A single staged chunk is copied server-side with a conditional create
//!   (put-if-absent); several chunks, or one too big for a single server-side copy, are streamed into the key with
//!   a multipart upload, which is invisible until complete, after checking the key is absent. Either way a reader
//!   never sees a partial object, and publishing runs under the digest lock that excludes the other replicas
//!   (`registry::digest_locks`), so two replicas never write one digest at once.
//! - `uploads/<id>/<offset>`: one staged object per appended chunk (a PATCH), 20-digit zero-padded start offset.
//!   Each appears atomically once its chunk was received whole (a single PUT, or a multipart upload completed at
//!   the end of the chunk), so the shared state of a session is in the bucket and any replica can continue it.
//!
//! Nothing is buffered whole: a chunk is streamed into a multipart upload whose parts are [`PART_SIZE`] bytes (at
//! most one part being filled and one in flight per chunk), and reads stream from the object store.
//!
//! Mirrors stream a download to waiting clients while it is written (`tail_upload`). Staged objects only appear
//! whole, so a download is also written to a local spool file under the data directory that the tailing readers
//! follow; the spool is only a view for in-process readers, never the source of a published blob.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetRange, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use tokio::io::AsyncWriteExt;

use super::{BlobReader, BlobStore, ByteStream, Capacity, StoreError, WriteProgress};
use crate::config::{BlobBackend, ObjectSettings};
use berth_oci::Digest;

/// Size of a multipart part. S3 requires at least 5 MiB for every part but the last; larger parts mean fewer
/// requests (S3 allows 10 000 parts, so 8 MiB parts reach 78 GiB per chunk).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Staged upload objects younger than this are not reported by `list_uploads`: with replicas sharing a bucket, a
/// replica starting up must not take another replica's in-flight monolithic push or mirror download (which have
/// no session row) for an orphan of a crash.
const ORPHAN_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest object S3 copies in one request (CopyObject, and UploadPartCopy per part): 5 GiB.
const MAX_COPY_SIZE: u64 = 5 * 1024 * 1024 * 1024;

pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// Local directory for the spool files `tail_upload` readers follow.
    spool: PathBuf,
    /// A staged chunk larger than this is streamed into place rather than copied server-side.
    max_copy_size: u64,
    /// Blob GETs answered with a pre-signed URL (`storage.redirect_ttl`).
    redirect: Option<Redirect>,
}

/// What pre-signs blob URLs: the backend itself (a prefix store cannot sign), with the key prefix applied here.
struct Redirect {
    signer: Arc<dyn Signer>,
    prefix: String,
    ttl: std::time::Duration,
}

fn backend_error(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        e if unreachable(&e) => StoreError::Unavailable(e.to_string()),
        e => StoreError::Io(std::io::Error::other(e)),
    }
}

/// Whether a request failed because the object store could not be reached (connection refused, reset or timed
/// out), after `object_store`'s own retries: a store outage, which the client hears about as a 503 to retry,
/// unlike a refusal (credentials, missing bucket) or a malformed answer. `object_store` keeps its retry error
/// private, so the transport error is found by walking the error's sources.
fn unreachable(e: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return matches!(
                h.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Request
                    | HttpErrorKind::Interrupted
            );
        }
        source = s.source();
    }
    false
}

/// How long one object-store request may keep retrying a store that does not answer. `object_store`'s default
/// (10 retries, up to 3 minutes) would hold every client request that long during an outage; a few quick retries
/// ride out a dropped connection, and an outage becomes a prompt 503 with `Retry-After` instead.
fn retry_policy() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(10),
    }
}

fn config_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("{what}: {e}")))
}

/// Reads a secret from the environment variable a config key names.
fn secret_from_env(key: &str, var: &str) -> Result<String, StoreError> {
    std::env::var(var).map_err(|_| {
        config_error(
            key,
            format!("environment variable {var} is not set or not UTF-8"),
        )
    })
}

impl ObjectBlobStore {
    /// Connects to the backend `storage.blobs` names. Credentials not given in the config come from the
    /// provider's usual environment variables and, failing those, instance metadata (EC2/ECS roles, GCE service
    /// accounts, Azure managed identity), as `object_store`'s builders look them up.
    pub fn open(storage: &ObjectSettings<'_>) -> Result<ObjectBlobStore, StoreError> {
        let (store, signer, prefix): (Arc<dyn ObjectStore>, Arc<dyn Signer>, &str) = match storage
            .blobs
        {
            BlobBackend::Filesystem => {
                return Err(config_error(
                    "storage.blobs",
                    "the filesystem backend is not an object store",
                ));
            }
            BlobBackend::S3 => {
                let c = storage.s3;
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&c.bucket)
                    .with_virtual_hosted_style_request(!c.path_style)
                    .with_allow_http(c.allow_http)
                    // Amazon S3 completes a one-part copy only if the key is still absent (If-None-Match on
                    // CompleteMultipartUpload): the conditional create publishing relies on.
                    .with_copy_if_not_exists(object_store::aws::S3CopyIfNotExists::Multipart)
                    .with_retry(retry_policy());
                if let Some(r) = &c.region {
                    b = b.with_region(r);
                }
                if let Some(e) = &c.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(id) = &c.access_key_id {
                    b = b.with_access_key_id(id);
                }
                if let Some(var) = &c.secret_access_key_env {
                    b = b.with_secret_access_key(secret_from_env(
                        "storage.s3.secret_access_key_env",
                        var,
                    )?);
                }
                let s = Arc::new(b.build().map_err(|e| config_error("storage.s3", e))?);
                (s.clone(), s, c.prefix.as_str())
            }
            BlobBackend::Gcs => {
                let c = storage.gcs;
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&c.bucket)
                    .with_retry(retry_policy());
                if let Some(p) = &c.service_account_path {
                    b = b.with_service_account_path(p.to_string_lossy());
                }
                let s = Arc::new(b.build().map_err(|e| config_error("storage.gcs", e))?);
                (s.clone(), s, c.prefix.as_str())
            }
            BlobBackend::Azure => {
                let c = storage.azure;
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_account(&c.account)
                    .with_container_name(&c.container)
                    .with_allow_http(c.allow_http)
                    .with_retry(retry_policy());
                if let Some(var) = &c.access_key_env {
                    b = b.with_access_key(secret_from_env("storage.azure.access_key_env", var)?);
                }
                if let Some(e) = &c.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                let s = Arc::new(b.build().map_err(|e| config_error("storage.azure", e))?);
                (s.clone(), s, c.prefix.as_str())
            }
        };
        let prefix = prefix.trim_matches('/');
        let redirect = storage.redirect_ttl.map(|ttl| Redirect {
            signer,
            prefix: prefix.to_string(),
            ttl,
        });
        let store: Arc<dyn ObjectStore> = match prefix {
            "" => store,
            p => Arc::new(object_store::prefix::PrefixStore::new(store, p)),
        };
        let mut s = Self::with_store(store, &storage.data_dir.join("spool"))?;
        s.redirect = redirect;
        Ok(s)
    }

    /// A store over any `ObjectStore` (tests use the in-memory one), spooling mirror downloads under `spool`.
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        spool: &FsPath,
    ) -> Result<ObjectBlobStore, StoreError> {
        std::fs::create_dir_all(spool)?;
        Ok(ObjectBlobStore {
            store,
            spool: spool.to_path_buf(),
            max_copy_size: MAX_COPY_SIZE,
            redirect: None,
        })
    }

    fn blob_key(d: &Digest) -> Path {
        Path::from(format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn check_id(id: &str) -> Result<(), StoreError> {
        // Ids are generated by the registry, but a key or a file name is no place to trust that.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn upload_dir(id: &str) -> Result<Path, StoreError> {
        Self::check_id(id)?;
        Ok(Path::from(format!("uploads/{id}")))
    }

    fn chunk_key(id: &str, offset: u64) -> Result<Path, StoreError> {
        Ok(Self::upload_dir(id)?.join(format!("{offset:020}")))
    }

    fn spool_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        Self::check_id(id)?;
        Ok(self.spool.join(id))
    }

    /// The staged chunks of an upload, in offset order, checked to be contiguous from 0.
    async fn chunks(&self, id: &str) -> Result<Vec<(u64, ObjectMeta)>, StoreError> {
        let dir = Self::upload_dir(id)?;
        let mut chunks: Vec<(u64, ObjectMeta)> = self
            .store
            .list(Some(&dir))
            .map_err(backend_error)
            .try_filter_map(|m| async move {
                let offset = m.location.filename().and_then(|n| n.parse::<u64>().ok());
                Ok(offset.map(|o| (o, m)))
            })
            .try_collect()
            .await?;
        chunks.sort_by_key(|(o, _)| *o);
        let mut end = 0;
        for (offset, m) in &chunks {
            if *offset != end {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "upload {id}: staged chunk at {offset} does not follow the previous one ending at {end}"
                ))));
            }
            end += m.size;
        }
        Ok(chunks)
    }

    /// Streams `data` into the object `key`: one PUT when it fits in a part, else a multipart upload with at most
    /// one part being filled and one being sent. The object appears whole or not at all. `on_chunk` sees every
    /// piece before it is buffered (the mirror spool). Returns the byte count.
    async fn write_object(
        &self,
        key: &Path,
        mut data: ByteStream,
        mut on_chunk: impl FnMut(
            &Bytes,
        )
            -> futures_util::future::BoxFuture<'static, std::io::Result<()>>,
    ) -> Result<u64, StoreError> {
        let mut buf = BytesMut::new();
        let mut written = 0u64;
        let mut upload: Option<Box<dyn MultipartUpload>> = None;
        let mut in_flight: Option<object_store::UploadPart> = None;
        let result: Result<(), StoreError> = async {
            while let Some(item) = data.next().await {
                let chunk = item?;
                on_chunk(&chunk).await?;
                written += chunk.len() as u64;
                buf.extend_from_slice(&chunk);
                while buf.len() >= PART_SIZE {
                    let part = buf.split_to(PART_SIZE).freeze();
                    if upload.is_none() {
                        upload = Some(self.store.put_multipart(key).await.map_err(backend_error)?);
                    }
                    if let Some(previous) = in_flight.take() {
                        previous.await.map_err(backend_error)?;
                    }
                    if let Some(u) = upload.as_mut() {
                        in_flight = Some(u.put_part(PutPayload::from(part)));
                    }
                }
            }
            Ok(())
        }
        .await;
        let result = match (result, upload.as_mut()) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => {
                if written > 0 {
                    self.store
                        .put(key, PutPayload::from(buf.freeze()))
                        .await
                        .map(|_| ())
                        .map_err(backend_error)
                } else {
                    Ok(())
                }
            }
            (Ok(()), Some(u)) => async {
                if let Some(previous) = in_flight.take() {
                    previous.await?;
                }
                if !buf.is_empty() {
                    u.put_part(PutPayload::from(buf.split().freeze())).await?;
                }
                u.complete().await
            }
            .await
            .map(|_| ())
            .map_err(backend_error),
        };
        if result.is_err()
            && let Some(mut u) = upload
        {
            // Best effort: a multipart upload never completed is invisible, but holds storage until aborted
            // (or until the bucket's lifecycle rule for incomplete uploads removes it).
            drop(in_flight);
            let _ = u.abort().await;
        }
        result.map(|()| written)
    }

    /// Appends a chunk as a new staged object, first dropping staged objects at or past `offset` (left by a chunk
    /// the registry refused after storing it). With `spool`, every byte also goes to the local spool file first
    /// and `progress` reports what tail readers can see.
    async fn append(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        spool: Option<WriteProgress>,
    ) -> Result<u64, StoreError> {
        for (start, m) in self.chunks_unchecked(id).await? {
            if start >= offset {
                self.store
                    .delete(&m.location)
                    .await
                    .or_else(ignore_not_found)?;
            }
        }
        let key = Self::chunk_key(id, offset)?;
        match spool {
            None => {
                self.write_object(&key, data, |_| Box::pin(async { Ok(()) }))
                    .await
            }
            Some(progress) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.spool_path(id)?)
                    .await?;
                let file = Arc::new(tokio::sync::Mutex::new(file));
                let progress = Arc::new(progress);
                let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
                self.write_object(&key, data, move |chunk| {
                    let (file, progress, seen, chunk) =
                        (file.clone(), progress.clone(), seen.clone(), chunk.clone());
                    Box::pin(async move {
                        file.lock().await.write_all(&chunk).await?;
                        let n = seen
                            .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst)
                            + chunk.len() as u64;
                        progress(n);
                        Ok(())
                    })
                })
                .await
            }
        }
    }

    /// Staged chunks without the contiguity check (for cleaning up after a refused chunk).
    async fn chunks_unchecked(&self, id: &str) -> Result<Vec<(u64, ObjectMeta)>, StoreError> {
        let dir = Self::upload_dir(id)?;
        self.store
            .list(Some(&dir))
            .map_err(backend_error)
            .try_filter_map(|m| async move {
                let offset = m.location.filename().and_then(|n| n.parse::<u64>().ok());
                Ok(offset.map(|o| (o, m)))
            })
            .try_collect()
            .await
    }

    /// One stream over the staged chunks, fetched one after the other.
    fn concat(&self, chunks: Vec<(u64, ObjectMeta)>) -> ByteStream {
        let store = self.store.clone();
        Box::pin(
            futures_util::stream::iter(chunks)
                .then(move |(_, m)| {
                    let store = store.clone();
                    async move {
                        store
                            .get(&m.location)
                            .await
                            .map(|r| r.into_stream().map_err(std::io::Error::other))
                            .map_err(std::io::Error::other)
                    }
                })
                .try_flatten(),
        )
    }
}

fn ignore_not_found(e: object_store::Error) -> Result<(), StoreError> {
    match e {
        object_store::Error::NotFound { .. } => Ok(()),
        e => Err(backend_error(e)),
    }
}

fn already_exists_is_ok<T>(r: object_store::Result<T>) -> Result<(), StoreError> {
    match r {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(backend_error(e)),
    }
}

#[async_trait::async_trait]
impl BlobStore for ObjectBlobStore {
    /// Nothing to create: a session's state is its staged chunks (none yet) and its metadata row.
    async fn create_upload(&self, id: &str) -> Result<(), StoreError> {
        Self::check_id(id)
    }

    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
    ) -> Result<u64, StoreError> {
        self.append(id, offset, data, None).await
    }

    async fn append_upload_observed(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        progress: WriteProgress,
    ) -> Result<u64, StoreError> {
        self.append(id, offset, data, Some(progress)).await
    }

    async fn upload_len(&self, id: &str) -> Result<u64, StoreError> {
        Ok(self.chunks(id).await?.iter().map(|(_, m)| m.size).sum())
    }

    async fn read_upload(&self, id: &str) -> Result<ByteStream, StoreError> {
        let chunks = self.chunks(id).await?;
        Ok(self.concat(chunks))
    }

    async fn tail_upload(
        &self,
        id: &str,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, StoreError> {
        // Never created here: before the writer starts, and after publishing removed the spool, the answer is
        // NotFound (the mirror then looks at the download's state again), never an empty file that would read as
        // a blob cut short.
        match tokio::fs::File::open(self.spool_path(id)?).await {
            Ok(file) => Ok(Box::new(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    async fn publish_upload(&self, id: &str, digest: &Digest) -> Result<(), StoreError> {
        let dst = Self::blob_key(digest);
        let mut chunks = self.chunks(id).await?;
        let size: u64 = chunks.iter().map(|(_, m)| m.size).sum();
        if size == 0 {
            let opts = PutOptions::from(PutMode::Create);
            already_exists_is_ok(self.store.put_opts(&dst, PutPayload::new(), opts).await)?;
        } else if chunks.len() == 1 && size <= self.max_copy_size {
            // Put-if-absent: an object already under this digest holds the same (verified) bytes.
            let src = chunks.swap_remove(0).1.location;
            let opts = CopyOptions::default().with_mode(CopyMode::Create);
            already_exists_is_ok(self.store.copy_opts(&src, &dst, opts).await)?;
        } else {
            // Several chunks (a chunked push), or one beyond a server-side copy: stream them into place. The
            // multipart upload is invisible until complete; the digest lock held by the caller keeps any other
            // publisher of this digest out meanwhile, so an object found here is whole and holds these bytes.
            match self.store.head(&dst).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    let body = self.concat(chunks);
                    self.write_object(&dst, body, |_| Box::pin(async { Ok(()) }))
                        .await?;
                }
                Err(e) => return Err(backend_error(e)),
            }
        }
        // The blob is published; leftovers of the session are only garbage, reclaimed later if this fails.
        if let Err(e) = self.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "cannot remove staged upload objects");
        }
        Ok(())
    }

    async fn delete_upload(&self, id: &str) -> Result<(), StoreError> {
        let dir = Self::upload_dir(id)?;
        match tokio::fs::remove_file(self.spool_path(id)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let keys = self.store.list(Some(&dir)).map_ok(|m| m.location).boxed();
        let mut deleted = self.store.delete_stream(keys);
        while let Some(r) = deleted.next().await {
            r.map(|_| ()).or_else(ignore_not_found)?;
        }
        Ok(())
    }

    async fn list_uploads(&self) -> Result<Vec<String>, StoreError> {
        let cutoff = std::time::SystemTime::now() - ORPHAN_MIN_AGE;
        let mut newest: std::collections::HashMap<String, std::time::SystemTime> =
            Default::default();
        let mut objects = self.store.list(Some(&Path::from("uploads")));
        while let Some(m) = objects.next().await {
            let m = m.map_err(backend_error)?;
            if let Some(id) = m.location.parts().nth(1) {
                let t = newest
                    .entry(id.as_ref().to_owned())
                    .or_insert(std::time::UNIX_EPOCH);
                *t = (*t).max(m.last_modified.into());
            }
        }
        Ok(newest
            .into_iter()
            .filter(|(_, t)| *t < cutoff)
            .map(|(id, _)| id)
            .collect())
    }

    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        let opts = PutOptions::from(PutMode::Create);
        already_exists_is_ok(
            self.store
                .put_opts(&Self::blob_key(digest), PutPayload::from(data), opts)
                .await,
        )
    }

    async fn get_bytes(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        let r = self
            .store
            .get(&Self::blob_key(digest))
            .await
            .map_err(backend_error)?;
        r.bytes().await.map_err(backend_error)
    }

    async fn open(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobReader, StoreError> {
        let key = Self::blob_key(digest);
        let mut opts = GetOptions::default();
        if let Some((start, end)) = range {
            // Checked against the real size first: object stores clip a range running past the end, and this
            // contract refuses it instead.
            let size = self.store.head(&key).await.map_err(backend_error)?.size;
            if start > end || end >= size {
                return Err(StoreError::RangeOutsideObject);
            }
            opts.range = Some(GetRange::Bounded(start..end + 1));
        }
        let r = self
            .store
            .get_opts(&key, opts)
            .await
            .map_err(backend_error)?;
        let len = r.range.end - r.range.start;
        Ok(BlobReader {
            len,
            body: Box::pin(r.into_stream().map_err(std::io::Error::other)),
        })
    }

    fn presigns(&self) -> bool {
        self.redirect.is_some()
    }

    async fn presigned_get(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        let Some(r) = &self.redirect else {
            return Ok(None);
        };
        let key = Self::blob_key(digest);
        let key = match r.prefix.as_str() {
            "" => key,
            p => Path::from(format!("{p}/{key}")),
        };
        let url = r
            .signer
            .signed_url(object_store::signer::Method::GET, &key, r.ttl)
            .await
            .map_err(backend_error)?;
        Ok(Some(url.to_string()))
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match self.store.head(&Self::blob_key(digest)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend_error(e)),
        }
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        self.store
            .delete(&Self::blob_key(digest))
            .await
            .or_else(ignore_not_found)
    }

    async fn list_blobs(&self) -> Result<Vec<(Digest, i64)>, StoreError> {
        let mut out = Vec::new();
        let mut objects = self.store.list(Some(&Path::from("blobs")));
        while let Some(m) = objects.next().await {
            let m = m.map_err(backend_error)?;
            let parts: Vec<_> = m.location.parts().collect();
            // Anything that is not `blobs/<alg>/<hex>` is not ours to judge.
            if let [_, alg, hex] = parts.as_slice()
                && let Ok(d) = format!("{}:{}", alg.as_ref(), hex.as_ref()).parse::<Digest>()
            {
                out.push((d, m.last_modified.timestamp()));
            }
        }
        Ok(out)
    }

    /// One listing request: proves the endpoint answers, the credentials work and the bucket exists.
    async fn ready(&self) -> Result<(), StoreError> {
        self.store
            .list_with_delimiter(Some(&Path::from("blobs")))
            .await
            .map(|_| ())
            .map_err(backend_error)
    }

    async fn capacity(&self) -> Result<Option<Capacity>, StoreError> {
        Ok(None)
    }

    /// Clears the local spool (in-flight mirror downloads of a previous run). Staged upload objects are reclaimed
    /// through `list_uploads`.
    async fn reclaim_temporaries(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut dir = tokio::fs::read_dir(&self.spool).await?;
        while let Some(entry) = dir.next_entry().await? {
            tokio::fs::remove_file(entry.path()).await?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &FsPath) -> ObjectBlobStore {
        ObjectBlobStore::with_store(Arc::new(object_store::memory::InMemory::new()), dir)
            .expect("store")
    }

    fn body(parts: Vec<Vec<u8>>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            parts.into_iter().map(|p| Ok(Bytes::from(p))),
        ))
    }

    async fn collect(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.expect("chunk"));
        }
        out
    }

    fn digest(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
            .parse()
            .expect("digest")
    }

    #[tokio::test]
    async fn chunks_spanning_parts_publish_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path());
        let a = vec![1u8; PART_SIZE + 123];
        let b = vec![2u8; 1000];
        s.create_upload("u1").await.expect("create");
        assert_eq!(
            s.append_upload("u1", 0, body(vec![a.clone()]))
                .await
                .expect("a"),
            a.len() as u64
        );
        let off = a.len() as u64;
        assert_eq!(
            s.append_upload("u1", off, body(vec![b.clone()]))
                .await
                .expect("b"),
            1000
        );
        assert_eq!(s.upload_len("u1").await.expect("len"), off + 1000);
        let all = [a, b].concat();
        assert_eq!(collect(s.read_upload("u1").await.expect("read")).await, all);
        let d = digest(&all);
        s.publish_upload("u1", &d).await.expect("publish");
        assert_eq!(s.stat(&d).await.expect("stat"), Some(all.len() as u64));
        assert!(s.list_uploads().await.expect("list").is_empty());
        let r = s.open(&d, Some((off - 1, off))).await.expect("range");
        assert_eq!(r.len, 2);
        assert_eq!(collect(r.body).await, vec![1, 2]);
        assert!(matches!(
            s.open(&d, Some((0, all.len() as u64))).await,
            Err(StoreError::RangeOutsideObject)
        ));
    }

    #[tokio::test]
    async fn publishing_an_existing_digest_succeeds_and_keeps_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path());
        let data = b"same bytes".to_vec();
        let d = digest(&data);
        for id in ["x1", "x2"] {
            s.create_upload(id).await.expect("create");
            s.append_upload(id, 0, body(vec![data.clone()]))
                .await
                .expect("append");
            s.publish_upload(id, &d).await.expect("publish");
        }
        assert_eq!(
            s.get_bytes(&d).await.expect("get").as_ref(),
            data.as_slice()
        );
        s.put_bytes(&d, Bytes::from(data.clone()))
            .await
            .expect("put again");
    }

    #[tokio::test]
    async fn a_chunk_beyond_a_server_side_copy_is_streamed_into_place() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = store(tmp.path());
        s.max_copy_size = 1000;
        let data: Vec<u8> = (0..PART_SIZE as u32 + 4321)
            .map(|i| (i % 251) as u8)
            .collect();
        let d = digest(&data);
        for id in ["big1", "big2"] {
            s.create_upload(id).await.expect("create");
            s.append_upload(id, 0, body(vec![data.clone()]))
                .await
                .expect("append");
            // The second publish finds the blob in place and leaves it.
            s.publish_upload(id, &d).await.expect("publish");
        }
        assert_eq!(
            collect(s.open(&d, None).await.expect("open").body).await,
            data
        );
        let staged: Vec<_> = s
            .store
            .list(Some(&Path::from("uploads")))
            .try_collect()
            .await
            .expect("list staged objects");
        assert!(staged.is_empty(), "staged objects left: {staged:?}");
    }

    #[tokio::test]
    async fn a_broken_chunk_leaves_the_session_as_it_was() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path());
        s.create_upload("u2").await.expect("create");
        s.append_upload("u2", 0, body(vec![vec![7; 10]]))
            .await
            .expect("first");
        let broken: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from(vec![8u8; PART_SIZE * 2])),
            Err(std::io::Error::other("cut off")),
        ]));
        assert!(s.append_upload("u2", 10, broken).await.is_err());
        assert_eq!(s.upload_len("u2").await.expect("len"), 10);
        s.delete_upload("u2").await.expect("delete");
        assert_eq!(s.upload_len("u2").await.expect("len"), 0);
    }

    #[tokio::test]
    async fn tail_follows_a_spooled_download_after_publish() {
        use tokio::io::AsyncReadExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path());
        s.create_upload("m1").await.expect("create");
        // Before the writer starts and after publishing: NotFound, so the mirror looks at the state again.
        assert!(matches!(
            s.tail_upload("m1").await,
            Err(StoreError::NotFound)
        ));
        let data = vec![5u8; 3000];
        s.append_upload_observed("m1", 0, body(vec![data.clone()]), Box::new(|_| {}))
            .await
            .expect("append");
        let mut tail = s.tail_upload("m1").await.expect("tail");
        s.publish_upload("m1", &digest(&data))
            .await
            .expect("publish");
        assert!(matches!(
            s.tail_upload("m1").await,
            Err(StoreError::NotFound)
        ));
        let mut got = Vec::new();
        tail.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, data);
        assert_eq!(s.reclaim_temporaries().await.expect("reclaim"), 0);
    }
}
