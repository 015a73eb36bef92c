//! The blob store: content-addressed bytes plus the temporary objects that uploads write into.
//!
//! Contract every backend keeps (design invariant 2): a blob is only reachable under its digest once its bytes were
//! written whole and durably (`publish_upload` / `put_bytes` are atomic); readers never see a partial object.
//! The store never decides whether a blob *should* exist — that is the metadata store's job.

pub mod config;
pub mod fs;
pub mod object;

use std::pin::Pin;

use bytes::Bytes;
use futures_core::Stream;

use berth_oci::Digest;

/// A stream of bytes read from or written to the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Told the total number of bytes durably handed to the object so far (not yet fsync'd), after each write.
pub type WriteProgress = Box<dyn Fn(u64) + Send + Sync>;

/// Why a blob store operation failed. Callers decide on the variant, never on the text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object not found")]
    NotFound,
    #[error("requested range is outside the object")]
    RangeOutsideObject,
    /// The store cannot be reached or cannot take the write right now (an object store that refuses connections
    /// or times out, a full disk). Retrying later can succeed; the client is told so (503), not sent a 500.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for StoreError {
    /// A full disk or quota is a store that cannot take writes for now (invariant 11: it fails cleanly and service
    /// resumes when space comes back); every other I/O error stays an I/O error.
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            StorageFull | QuotaExceeded => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Io(e),
        }
    }
}

/// An open blob ready to stream: its real length (from the stored object, not from metadata) and its bytes.
pub struct BlobReader {
    pub len: u64,
    pub body: ByteStream,
}

/// Size and free space of a store, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total: u64,
    pub free: u64,
}

#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Creates an empty temporary object for upload session `id`.
    async fn create_upload(&self, id: &str) -> Result<(), StoreError>;

    /// Appends `data` to the upload at `offset` (which must be its current length). On error the object is cut back
    /// to `offset`, so a failed chunk leaves the session as it was. Returns the number of bytes appended.
    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
    ) -> Result<u64, StoreError> {
        self.append_upload_observed(id, offset, data, Box::new(|_| {}))
            .await
    }

    /// `append_upload`, reporting after each write how many bytes readers of the object (`tail_upload`) can now
    /// see, so they never read ahead of the writer.
    async fn append_upload_observed(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        progress: WriteProgress,
    ) -> Result<u64, StoreError>;

    /// Current length of an upload's temporary object.
    async fn upload_len(&self, id: &str) -> Result<u64, StoreError>;

    /// The bytes written so far, to rebuild a hash state after a restart.
    async fn read_upload(&self, id: &str) -> Result<ByteStream, StoreError>;

    /// Reads an upload's bytes while they are being written: reads return 0 at the current end and more once more
    /// is written. The reader stays valid after `publish_upload` (mirrors stream a download to every waiting
    /// client this way).
    async fn tail_upload(
        &self,
        id: &str,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, StoreError>;

    /// Makes the upload durable and atomically publishes it under `digest` (put-if-absent: an existing object with
    /// the same digest already holds the same bytes). The temporary object is gone afterwards.
    async fn publish_upload(&self, id: &str, digest: &Digest) -> Result<(), StoreError>;

    /// Discards an upload's temporary object (missing is fine).
    async fn delete_upload(&self, id: &str) -> Result<(), StoreError>;

    /// Ids of all temporary upload objects, for reclaiming ones that no session owns.
    async fn list_uploads(&self) -> Result<Vec<String>, StoreError>;

    /// Writes small content (manifests) durably and atomically under its digest.
    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError>;

    /// Reads a whole small object.
    async fn get_bytes(&self, digest: &Digest) -> Result<Bytes, StoreError>;

    /// Opens a blob, optionally a byte range `start..=end` of it.
    async fn open(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobReader, StoreError>;

    /// Whether [`BlobStore::presigned_get`] hands out URLs (checked before any work is done for one).
    fn presigns(&self) -> bool {
        false
    }

    /// A URL a client can GET the blob from directly, valid for the configured time (`storage.redirect_ttl`), or
    /// `None` when this store does not hand out URLs.
    async fn presigned_get(&self, _digest: &Digest) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Length of a stored blob, or `None` when absent.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;

    /// Removes a blob's bytes (missing is fine). Callers delete the metadata row first.
    async fn delete(&self, digest: &Digest) -> Result<(), StoreError>;

    /// Every stored blob with its last modification time (unix seconds), for finding files no row holds.
    async fn list_blobs(&self) -> Result<Vec<(Digest, i64)>, StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Size and free space of the storage, where the backend has such a thing (a filesystem does, an object store
    /// does not).
    async fn capacity(&self) -> Result<Option<Capacity>, StoreError>;

    /// Removes leftovers of interrupted writes (temporary files that were never published).
    async fn reclaim_temporaries(&self) -> Result<u64, StoreError>;
}
