//! Blob uploads: sessions (POST → PATCH… → PUT), monolithic pushes, and publication of verified bytes.
//!
//! Bytes are hashed as they arrive and appended to the session's temporary object; the hash state stays in memory
//! and is rebuilt from the stored bytes after a restart. A chunk is all-or-nothing: if the body breaks off or does
//! not match its `Content-Range`, the session's offset and hash state are rolled back.
//!
//! With replicas (PostgreSQL), any replica may receive the next request of a session: the session row records the
//! committed length, and a chunk is written under a claim on the row (`MetadataStore::claim_upload`) that keeps
//! other replicas from writing the same session meanwhile. A replica whose in-memory state is not at the committed
//! length (another replica took chunks since) rebuilds it from the stored bytes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{Registry, RegistryError};
use crate::meta::{UploadRecord, now};
use crate::oci::{Algorithm, Digest, DigestHasher, RepoName};
use crate::store::{ByteStream, StoreError};

/// Where a session stands, for `Location`/`Range` headers.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: String,
    /// Bytes received so far.
    pub offset: u64,
}

/// In-memory state of a session: committed length and the hash of exactly those bytes.
struct UploadState {
    offset: u64,
    hasher: DigestHasher,
}

/// Per-session state, each behind its own lock so chunks of one session are serialised and sessions never contend.
#[derive(Default)]
pub(super) struct UploadStates(
    parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<UploadState>>>>>,
);

impl UploadStates {
    fn slot(&self, id: &str) -> Arc<tokio::sync::Mutex<Option<UploadState>>> {
        self.0.lock().entry(id.to_owned()).or_default().clone()
    }

    pub(super) fn forget(&self, id: &str) {
        self.0.lock().remove(id);
    }
}

/// Open upload sessions per principal, so one caller cannot open sessions without end
/// (`limits.max_upload_sessions_per_principal`). Counted in memory, where sessions are opened and closed, so
/// checking costs no store query. Sessions from before a restart are not counted (they expire); a session
/// finished or expired by another replica is noticed when its principal reaches the limit, by asking the
/// metadata store which of the counted sessions still exist (at most every [`RECOUNT_INTERVAL`]).
pub(super) struct SessionCounts {
    limit: usize,
    inner: parking_lot::Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Session ids by principal (`""`: anonymous callers, who count as one).
    by_principal: HashMap<String, (HashSet<String>, Option<Instant>)>,
    /// The principal of each counted session.
    owner: HashMap<String, String>,
}

/// How often a principal at its limit may have its sessions recounted against the metadata store.
const RECOUNT_INTERVAL: Duration = Duration::from_secs(5);

impl SessionCounts {
    pub(super) fn new(limit: usize) -> SessionCounts {
        SessionCounts {
            limit,
            inner: Default::default(),
        }
    }

    /// Counts session `id` for `principal` if it is under its limit. `Err(recount)`: at the limit; `recount`
    /// lists the principal's sessions when it is time to check them against the store.
    fn try_add(&self, principal: &str, id: &str) -> Result<(), Option<Vec<String>>> {
        let mut guard = self.inner.lock();
        let c = &mut *guard;
        let (ids, last_recount) = c.by_principal.entry(principal.to_owned()).or_default();
        if ids.len() >= self.limit {
            let due = last_recount.is_none_or(|t| t.elapsed() >= RECOUNT_INTERVAL);
            if !due {
                return Err(None);
            }
            *last_recount = Some(Instant::now());
            return Err(Some(ids.iter().cloned().collect()));
        }
        ids.insert(id.to_owned());
        c.owner.insert(id.to_owned(), principal.to_owned());
        Ok(())
    }

    /// Stops counting session `id` (finished, cancelled, expired, or never opened).
    pub(super) fn remove(&self, id: &str) {
        let mut guard = self.inner.lock();
        let c = &mut *guard;
        let Some(principal) = c.owner.remove(id) else {
            return;
        };
        if let Some((ids, _)) = c.by_principal.get_mut(&principal) {
            ids.remove(id);
            if ids.is_empty() {
                c.by_principal.remove(&principal);
            }
        }
    }
}

/// Wraps a body so every chunk is hashed and counted as the store consumes it. With `limit`, a body longer than
/// the declared chunk fails instead of being written.
fn hashing(
    body: ByteStream,
    state: Arc<parking_lot::Mutex<(DigestHasher, u64)>>,
    limit: Option<u64>,
) -> ByteStream {
    Box::pin(body.map(move |item| {
        let chunk = item?;
        let mut s = state.lock();
        s.1 += chunk.len() as u64;
        if limit.is_some_and(|l| s.1 > l) {
            return Err(std::io::Error::other(
                "body is longer than its Content-Range",
            ));
        }
        s.0.update(&chunk);
        Ok(chunk)
    }))
}

/// How long a replica's claim on a session lasts without renewal. A replica that dies mid-chunk blocks the session
/// for at most this long; a live one renews every [`CLAIM_RENEW`], and abandons the chunk as soon as a renewal fails,
/// long before its claim could expire and another replica write the same bytes.
const CLAIM_TTL: Duration = Duration::from_secs(30);
const CLAIM_RENEW: Duration = Duration::from_secs(5);

/// This request's right to write a session shared between replicas. Dropped without `release` (the request was
/// abandoned mid-chunk), it gives the claim back with the session unchanged, so other replicas need not wait for
/// it to expire.
struct ChunkClaim {
    writer: String,
    id: String,
    start: u64,
    meta: Option<Arc<dyn crate::meta::MetadataStore>>,
}

impl Drop for ChunkClaim {
    fn drop(&mut self) {
        let Some(meta) = self.meta.take() else { return };
        let (id, writer, start) = (self.id.clone(), self.writer.clone(), self.start);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = meta.release_upload(&id, &writer, start).await;
            });
        }
    }
}

fn new_upload_id() -> String {
    // 122 random bits: unguessable, and safe as a file name.
    uuid::Uuid::new_v4().simple().to_string()
}

impl Registry {
    /// Opens an upload session in `repo` for `principal` (the user name; `""` for anonymous callers), unless it
    /// already has `limits.max_upload_sessions_per_principal` open.
    pub async fn start_upload(
        &self,
        repo: &RepoName,
        algorithm: Algorithm,
        principal: &str,
    ) -> Result<UploadStatus, RegistryError> {
        let id = new_upload_id();
        self.count_session(principal, &id).await?;
        let opened = self.open_session(repo, algorithm, &id).await;
        if opened.is_err() {
            self.session_counts.remove(&id);
        }
        opened
    }

    /// Counts a new session against its principal's limit, or refuses it with `429 TOOMANYREQUESTS`.
    async fn count_session(&self, principal: &str, id: &str) -> Result<(), RegistryError> {
        let recount = match self.session_counts.try_add(principal, id) {
            Ok(()) => return Ok(()),
            Err(recount) => recount,
        };
        // Sessions this process counted may have been finished or expired by another replica. (One being opened
        // right now has no row yet and is dropped from the count too: a recount can let that many more through.)
        let mut freed = false;
        for counted in recount.unwrap_or_default() {
            if self.meta.upload(&counted).await?.is_none() {
                self.session_counts.remove(&counted);
                freed = true;
            }
        }
        if freed && self.session_counts.try_add(principal, id).is_ok() {
            return Ok(());
        }
        let who = match principal {
            "" => "anonymous callers have".to_owned(),
            p => format!("user {p:?} has"),
        };
        Err(RegistryError::TooManyRequests {
            retry_after: None,
            message: format!(
                "{who} {} upload sessions open, the most allowed \
                 (limits.max_upload_sessions_per_principal); finish or cancel one first",
                self.limits.max_upload_sessions_per_principal
            ),
        })
    }

    async fn open_session(
        &self,
        repo: &RepoName,
        algorithm: Algorithm,
        id: &str,
    ) -> Result<UploadStatus, RegistryError> {
        let id = id.to_owned();
        self.blobs.create_upload(&id).await?;
        let rec = UploadRecord {
            id: id.clone(),
            repo: repo.clone(),
            algorithm,
            started_at: now(),
            committed: Some(0),
        };
        if let Err(e) = self.meta.create_upload(&rec).await {
            let _ = self.blobs.delete_upload(&id).await;
            return Err(e.into());
        }
        *self.uploads.slot(&id).lock().await = Some(UploadState {
            offset: 0,
            hasher: algorithm.hasher(),
        });
        Ok(UploadStatus { id, offset: 0 })
    }

    /// The session record, if it exists and belongs to `repo` (a session id is only valid under its repository).
    async fn session(&self, repo: &RepoName, id: &str) -> Result<UploadRecord, RegistryError> {
        match self.meta.upload(id).await? {
            Some(rec) if &rec.repo == repo => Ok(rec),
            _ => Err(RegistryError::BlobUploadUnknown),
        }
    }

    /// Loads the session's state, rebuilding the hash from stored bytes when this process has not seen it
    /// (after a restart) or is behind the session's committed length (another replica received chunks since).
    async fn load_state(
        &self,
        rec: &UploadRecord,
        slot: &mut Option<UploadState>,
    ) -> Result<(), RegistryError> {
        if let Some(s) = slot.as_ref()
            && rec.committed.is_none_or(|c| c == s.offset)
        {
            return Ok(());
        }
        let mut hasher = rec.algorithm.hasher();
        let mut offset = 0u64;
        let mut stream = match self.blobs.read_upload(&rec.id).await {
            Ok(s) => s,
            Err(StoreError::NotFound) => return Err(RegistryError::BlobUploadUnknown),
            Err(e) => return Err(e.into()),
        };
        // Bytes past the committed length belong to a chunk that was never acknowledged: the next append cuts
        // them off.
        let limit = rec.committed.unwrap_or(u64::MAX);
        while offset < limit
            && let Some(chunk) = stream.next().await
        {
            let chunk = chunk.map_err(StoreError::from)?;
            let keep = chunk
                .len()
                .min(usize::try_from(limit - offset).unwrap_or(usize::MAX));
            hasher.update(&chunk[..keep]);
            offset += keep as u64;
        }
        if rec.committed.is_some_and(|c| c != offset) {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "upload {}: {offset} bytes stored, {limit} committed",
                rec.id
            )))
            .into());
        }
        *slot = Some(UploadState { offset, hasher });
        Ok(())
    }

    /// Claims a shared session for one request (`None` for a session only this process writes). Refused while
    /// another replica writes it, or when it moved past `offset`: the client is told where it stands.
    async fn claim(
        &self,
        rec: &UploadRecord,
        offset: u64,
    ) -> Result<Option<ChunkClaim>, RegistryError> {
        if rec.committed.is_none() {
            return Ok(None);
        }
        // This replica's earlier claims are dead: requests of this process for one session are serialised by its
        // slot lock, held across claim and release, and the process of the replica before a restart is gone.
        let prefix = format!("{}/", self.replica_id);
        let writer = format!("{prefix}{}", new_upload_id());
        if self
            .meta
            .claim_upload(&rec.id, offset, &writer, &prefix, CLAIM_TTL)
            .await?
        {
            return Ok(Some(ChunkClaim {
                writer,
                id: rec.id.clone(),
                start: offset,
                meta: Some(self.meta.clone()),
            }));
        }
        match self.meta.upload(&rec.id).await? {
            Some(now) => Err(RegistryError::UploadOutOfOrder {
                offset: now.committed.unwrap_or(offset),
            }),
            None => Err(RegistryError::BlobUploadUnknown),
        }
    }

    /// Runs `work` while keeping `claim` alive; abandons it (dropping `work`) as soon as the claim cannot be
    /// renewed, so this replica never writes a session that another one may have claimed since.
    async fn while_claimed<T>(
        &self,
        id: &str,
        claim: Option<&ChunkClaim>,
        work: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let Some(claim) = claim else {
            return work.await;
        };
        let renew = async {
            loop {
                tokio::time::sleep(CLAIM_RENEW).await;
                match self
                    .meta
                    .renew_upload_claim(id, &claim.writer, CLAIM_TTL)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return "the session was taken over".to_owned(),
                    Err(e) => return e.to_string(),
                }
            }
        };
        tokio::select! {
            out = work => out,
            why = renew => Err(RegistryError::BlobUploadInvalid(format!(
                "chunk abandoned, its claim on the upload could not be renewed: {why}"
            ))),
        }
    }

    /// Ends a claim, recording the session's committed length. A lost claim means the chunk does not count.
    async fn release(
        &self,
        id: &str,
        claim: Option<ChunkClaim>,
        offset: u64,
    ) -> Result<(), RegistryError> {
        let Some(mut claim) = claim else {
            return Ok(());
        };
        claim.meta = None;
        if self.meta.release_upload(id, &claim.writer, offset).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUploadInvalid(
                "the upload was taken over by another request while this chunk arrived".into(),
            ))
        }
    }

    /// Current status of a session (GET on the upload URL).
    pub async fn upload_status(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<UploadStatus, RegistryError> {
        let rec = self.session(repo, id).await?;
        if let Some(offset) = rec.committed {
            // Shared sessions: the row is the authority; no need to rebuild a hash to answer.
            return Ok(UploadStatus {
                id: id.to_owned(),
                offset,
            });
        }
        let slot = self.uploads.slot(id);
        let mut guard = slot.lock().await;
        self.load_state(&rec, &mut guard).await?;
        let offset = guard.as_ref().map_or(0, |s| s.offset);
        Ok(UploadStatus {
            id: id.to_owned(),
            offset,
        })
    }

    /// Appends a chunk. `range` is the request's `Content-Range` (inclusive); it must start at the current offset.
    pub async fn append_upload(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<UploadStatus, RegistryError> {
        let rec = self.session(repo, id).await?;
        let slot = self.uploads.slot(id);
        let mut guard = slot.lock().await;
        self.load_state(&rec, &mut guard).await?;
        let state = guard.as_mut().ok_or(RegistryError::BlobUploadUnknown)?;
        let start = state.offset;
        let claim = self.claim(&rec, start).await?;
        let result = self
            .while_claimed(
                id,
                claim.as_ref(),
                self.append_locked(id, state, range, body),
            )
            .await;
        let offset = state.offset;
        let released = self.release(id, claim, offset).await;
        if result.is_err() || released.is_err() {
            // Whatever this process believes, the row says where the session stands: start from it next time.
            if rec.committed.is_some() {
                *guard = None;
            }
        }
        result?;
        released?;
        Ok(UploadStatus {
            id: id.to_owned(),
            offset,
        })
    }

    async fn append_locked(
        &self,
        id: &str,
        state: &mut UploadState,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<(), RegistryError> {
        let expected_len = match range {
            Some((start, end)) => {
                if start != state.offset {
                    return Err(RegistryError::UploadOutOfOrder {
                        offset: state.offset,
                    });
                }
                if end < start {
                    return Err(RegistryError::BlobUploadInvalid(format!(
                        "Content-Range {start}-{end} is empty"
                    )));
                }
                Some(end - start + 1)
            }
            None => None,
        };
        let shared = Arc::new(parking_lot::Mutex::new((state.hasher.clone(), 0u64)));
        let result = self
            .blobs
            .append_upload(
                id,
                state.offset,
                hashing(body, shared.clone(), expected_len),
            )
            .await;
        let (hasher, counted) = {
            let s = shared.lock();
            (s.0.clone(), s.1)
        };
        match result {
            Ok(written) => {
                if let Some(len) = expected_len
                    && written != len
                {
                    // The store will cut these bytes off on the next append; the state was never advanced.
                    return Err(RegistryError::BlobUploadInvalid(format!(
                        "Content-Range announced {len} bytes but the body had {written}"
                    )));
                }
                debug_assert_eq!(written, counted);
                crate::metrics::metrics().upload_bytes.inc_by(written);
                state.offset += written;
                state.hasher = hasher;
                Ok(())
            }
            Err(StoreError::NotFound) => Err(RegistryError::BlobUploadUnknown),
            // A full disk or an unreachable object store: the session keeps its offset and the client retries.
            Err(e @ StoreError::Unavailable(_)) => Err(e.into()),
            Err(StoreError::Io(e)) if expected_len.is_some_and(|l| counted > l) => {
                Err(RegistryError::BlobUploadInvalid(e.to_string()))
            }
            Err(e) => Err(RegistryError::BlobUploadInvalid(format!(
                "upload body was not received whole: {e}"
            ))),
        }
    }

    /// Completes a session: appends the optional final chunk, verifies the digest, publishes the blob and records
    /// it, then closes the session. A wrong digest leaves the session open so the client may fix it.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<u64, RegistryError> {
        let rec = self.session(repo, id).await?;
        let slot = self.uploads.slot(id);
        let mut guard = slot.lock().await;
        self.load_state(&rec, &mut guard).await?;
        let state = guard.as_mut().ok_or(RegistryError::BlobUploadUnknown)?;
        if digest.algorithm() != state.hasher.algorithm() {
            return Err(RegistryError::DigestInvalid(format!(
                "upload was started for {} but the digest is {}",
                state.hasher.algorithm().as_str(),
                digest.algorithm().as_str()
            )));
        }
        let claim = self.claim(&rec, state.offset).await?;
        let result = self
            .while_claimed(id, claim.as_ref(), async {
                // Always append (possibly nothing): it also cuts off bytes a failed chunk may have left behind.
                self.append_locked(id, state, range, body).await?;
                self.publish_verified(repo, id, digest, state).await
            })
            .await;
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                // The session stays open (a wrong digest can be corrected), with whatever chunk was received.
                let offset = state.offset;
                if self.release(id, claim, offset).await.is_err() && rec.committed.is_some() {
                    *guard = None;
                }
                return Err(e);
            }
        };
        // Deleting the row ends the claim.
        self.meta.delete_upload(id).await?;
        if let Some(mut claim) = claim {
            claim.meta = None;
        }
        *guard = None;
        drop(guard);
        self.uploads.forget(id);
        self.session_counts.remove(id);
        Ok(size)
    }

    /// Cancels a session and discards its bytes.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), RegistryError> {
        self.session(repo, id).await?;
        let slot = self.uploads.slot(id);
        let _guard = slot.lock().await;
        self.meta.delete_upload(id).await?;
        self.blobs.delete_upload(id).await?;
        self.uploads.forget(id);
        self.session_counts.remove(id);
        Ok(())
    }

    /// A whole blob in one request (POST with `digest`). No session row is written: if the process dies midway the
    /// temporary object has no owner and is reclaimed at the next start.
    pub async fn push_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64, RegistryError> {
        let id = new_upload_id();
        self.blobs.create_upload(&id).await?;
        let result = self.push_blob_into(repo, &id, digest, body).await;
        if result.is_err() {
            let _ = self.blobs.delete_upload(&id).await;
        }
        result
    }

    async fn push_blob_into(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64, RegistryError> {
        let mut state = UploadState {
            offset: 0,
            hasher: digest.algorithm().hasher(),
        };
        self.append_locked(id, &mut state, None, body).await?;
        self.publish_verified(repo, id, digest, &state).await
    }

    /// Checks the received bytes against `digest`, then publishes them and records the blob — bytes strictly
    /// before the row (invariant 2). Returns the blob's size.
    async fn publish_verified(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        state: &UploadState,
    ) -> Result<u64, RegistryError> {
        let actual = state.hasher.clone().finish();
        if &actual != digest {
            return Err(RegistryError::DigestInvalid(format!(
                "expected {digest}, content hashes to {actual}"
            )));
        }
        let _publishing = self.lock_digest(digest).await;
        self.blobs.publish_upload(id, digest).await?;
        self.meta.commit_blob(repo, digest, state.offset).await?;
        Ok(state.offset)
    }
}
