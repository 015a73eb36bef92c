//! Single-flight blob fetches. The first miss for a digest starts one download task that writes the upstream body
//! into a temporary upload object while hashing it; every client asking for that digest — the first included —
//! streams from that object as it grows. The task is independent of the clients: a client that disconnects does
//! not abort the cache fill. Only a body whose size and digest match is published (invariant 4); on any failure
//! every streaming client's body ends in an error, and the last byte is held back until verification, so no client
//! can ever complete a wrong or short body.
//!
//! Across replicas (PostgreSQL), the download task first takes a lease on (mirror, digest) in the metadata store.
//! Without it, another replica is downloading the blob: this one waits for that replica's commit and then serves
//! from the store, polling the lease and the cache. If the holder dies or fails, its lease is released with its
//! database session and nothing was cached: a waiting replica then takes the lease and downloads itself. Clients
//! of a waiting replica get their response headers after [`FOLLOW_HEADERS_AFTER`] at the latest, with a body that
//! starts once the blob is there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::Mirror;
use super::upstream::UpstreamError;
use crate::meta::{FetchLease, StoreLock};
use crate::oci::{Digest, RepoName};
use crate::registry::Registry;
use crate::store::ByteStream;

/// Where a download stands, broadcast to every client streaming it.
#[derive(Debug, Clone)]
pub enum FetchState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Another replica is downloading the blob; waiting for its commit (or for its lease, if it fails).
    Following,
    /// Body arriving; the first `received` bytes are in the temporary object.
    Streaming {
        len: Option<u64>,
        received: u64,
    },
    /// Verified, published and recorded.
    Done {
        len: u64,
    },
    Failed(UpstreamError),
}

/// A download in progress.
pub struct Fetch {
    pub upload_id: String,
    pub state: watch::Receiver<FetchState>,
}

/// Upstream bytes per read when tailing the temporary object.
const TAIL_CHUNK: usize = 256 * 1024;
/// How often a tailing client looks again when it caught up with the writer between notifications.
const TAIL_POLL: Duration = Duration::from_millis(5);
/// How often a replica waiting for another replica's download looks at the lease and the cache.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Longest wait for another replica's download. The holder's own timeouts end a stalled download long before,
/// and a dead holder's lease goes with its database session; this only bounds a holder that is alive but stuck.
const FOLLOW_LIMIT: Duration = Duration::from_secs(600);
/// Clients of a replica waiting for another replica's download get response headers after this long at the
/// latest (containerd gives a registry 30 s to send them); until then a commit is served like a cache hit.
pub const FOLLOW_HEADERS_AFTER: Duration = Duration::from_secs(5);

/// What a download task ended with.
enum Fetched {
    /// Downloaded from the upstream, verified and cached here: this many bytes.
    Upstream(u64),
    /// Cached by another replica while this one waited: this many bytes.
    ByAnotherReplica(u64),
}

/// Whether this replica downloads, and under which lease.
enum Turn {
    /// Download; the lease (if any) is held until the download ends.
    Fetch(Option<StoreLock>),
    /// Another replica cached the blob (this many bytes) and it is now linked here.
    Cached(u64),
}

/// Everything one download needs; it runs as its own task.
pub(super) struct Download {
    pub mirror: Arc<Mirror>,
    pub registry: Arc<Registry>,
    /// The local repository to link the blob into once cached.
    pub repo: RepoName,
    pub upstream_name: RepoName,
    pub digest: Digest,
    pub upload_id: String,
}

impl Download {
    /// Runs the download: fetch → temporary object (hashed) → verify → publish → record. Reports through `tx`.
    pub(super) async fn run(self, tx: watch::Sender<FetchState>) {
        let (mirror, digest) = (&self.mirror, &self.digest);
        match self.download(&tx).await {
            Ok(Fetched::ByAnotherReplica(len)) => {
                tracing::debug!(mirror = %mirror.name, %digest, len, "blob cached by another replica");
                let _ = tx.send(FetchState::Done { len });
            }
            Ok(Fetched::Upstream(len)) => {
                tracing::info!(mirror = %mirror.name, %digest, len, "cached blob from upstream");
                crate::metrics::metrics()
                    .mirror_upstream_bytes
                    .get_or_create(&crate::metrics::MirrorName {
                        mirror: mirror.name.clone(),
                    })
                    .inc_by(len);
                let _ = tx.send(FetchState::Done { len });
                mirror.evict_wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(mirror = %mirror.name, %digest, error = %e, "upstream blob fetch failed; nothing cached");
                let _ = self
                    .registry
                    .blob_store()
                    .delete_upload(&self.upload_id)
                    .await;
                let _ = tx.send(FetchState::Failed(e));
            }
        }
        mirror.inflight.lock().remove(digest);
    }

    /// Replicas: waits until this replica may download the blob, or another one has cached it.
    async fn take_turn(&self, tx: &watch::Sender<FetchState>) -> Result<Turn, UpstreamError> {
        let meta = self.registry.metadata_store();
        let key = format!("{}\n{}", self.mirror.name, self.digest);
        let cached = || async {
            meta.link_mirror_blob(&self.repo, &self.mirror.name, &self.digest)
                .await
                .map_err(|e| UpstreamError::cache("cannot read cache", e))
        };
        let deadline = Instant::now() + FOLLOW_LIMIT;
        loop {
            let lease = meta.try_lease_fetch(&key).await.unwrap_or_else(|e| {
                tracing::warn!(mirror = %self.mirror.name, digest = %self.digest, error = %e,
                    "no download lease; fetching without coordinating with other replicas");
                FetchLease::NotShared
            });
            match lease {
                // One process: the in-process single-flight is all there is.
                FetchLease::NotShared => return Ok(Turn::Fetch(None)),
                FetchLease::Granted(lease) => {
                    // The previous holder may have committed just before letting go.
                    return Ok(match cached().await? {
                        Some(len) => Turn::Cached(len),
                        None => Turn::Fetch(Some(lease)),
                    });
                }
                FetchLease::HeldElsewhere => {
                    if let Some(len) = cached().await? {
                        return Ok(Turn::Cached(len));
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(mirror = %self.mirror.name, digest = %self.digest,
                            "another replica's download is taking too long; fetching here too");
                        return Ok(Turn::Fetch(None));
                    }
                    tx.send_if_modified(|st| {
                        let waiting = matches!(st, FetchState::Connecting);
                        if waiting {
                            *st = FetchState::Following;
                        }
                        waiting
                    });
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
            }
        }
    }

    async fn download(&self, tx: &watch::Sender<FetchState>) -> Result<Fetched, UpstreamError> {
        // Held until the blob is committed (or the download failed), whatever happens below.
        let _lease = match self.take_turn(tx).await? {
            Turn::Fetch(lease) => lease,
            Turn::Cached(len) => return Ok(Fetched::ByAnotherReplica(len)),
        };
        crate::metrics::metrics()
            .mirror_upstream_fetches
            .get_or_create(&crate::metrics::MirrorName {
                mirror: self.mirror.name.clone(),
            })
            .inc();
        let Download {
            mirror,
            registry,
            repo,
            upstream_name,
            digest,
            upload_id,
        } = self;
        let (blobs, meta) = (registry.blob_store(), registry.metadata_store());
        let resp = mirror
            .upstream
            .request(
                reqwest::Method::GET,
                upstream_name.as_str(),
                &format!("blobs/{digest}"),
                None,
                "blob",
            )
            .await?;
        let len = super::upstream::Upstream::announced_length(&resp);
        let io = |e: crate::store::StoreError| UpstreamError::cache("cannot write cache", e);
        blobs.create_upload(upload_id).await.map_err(io)?;
        let _ = tx.send(FetchState::Streaming { len, received: 0 });

        let hasher = Arc::new(parking_lot::Mutex::new((digest.algorithm().hasher(), 0u64)));
        let idle = mirror.upstream.idle_timeout;
        let h = hasher.clone();
        let body = resp.bytes_stream();
        let stream: ByteStream = Box::pin(
            futures_util::stream::unfold(body, move |mut body| async move {
                match tokio::time::timeout(idle, body.next()).await {
                    Err(_) => Some((Err(std::io::Error::other("upstream body stalled")), body)),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => Some((
                        Err(std::io::Error::other(format!(
                            "upstream body cut off: {}",
                            crate::human::error_chain(&e)
                        ))),
                        body,
                    )),
                    Ok(Some(Ok(c))) => Some((Ok(c), body)),
                }
            })
            .map(move |item: std::io::Result<Bytes>| {
                let c = item?;
                let mut s = h.lock();
                s.0.update(&c);
                s.1 += c.len() as u64;
                let received = s.1;
                drop(s);
                if len.is_some_and(|l| received > l) {
                    return Err(std::io::Error::other(
                        "upstream sent more bytes than its Content-Length",
                    ));
                }
                Ok(c)
            }),
        );
        // Clients see bytes once they are in the object, never ahead of the writer.
        let tx2 = tx.clone();
        let on_written: crate::store::WriteProgress = Box::new(move |written| {
            tx2.send_modify(|st| {
                *st = FetchState::Streaming {
                    len,
                    received: written,
                }
            });
        });
        let written = blobs
            .append_upload_observed(upload_id, 0, stream, on_written)
            .await
            .map_err(|e| match e {
                // The local store, not the upstream's body.
                e @ crate::store::StoreError::Unavailable(_) => {
                    UpstreamError::cache("cannot write cache", e)
                }
                e => UpstreamError::BadResponse(crate::human::error_chain(&e)),
            })?;
        let (hasher, received) = {
            let s = hasher.lock();
            (s.0.clone(), s.1)
        };
        if written != received || len.is_some_and(|l| l != written) {
            return Err(UpstreamError::BadResponse(format!(
                "body has {written} bytes, upstream announced {}",
                len.map_or("?".into(), |l| l.to_string())
            )));
        }
        let actual = hasher.finish();
        if &actual != digest {
            return Err(UpstreamError::BadResponse(format!(
                "body hashes to {actual}, not {digest}"
            )));
        }
        let _publishing = registry.lock_digest(digest).await;
        blobs.publish_upload(upload_id, digest).await.map_err(io)?;
        meta.cache_blob(repo, &mirror.name, digest, written)
            .await
            .map_err(|e| UpstreamError::cache("cannot record cached blob", e))?;
        Ok(Fetched::Upstream(written))
    }
}

/// A client's view of a download this replica waits for: nothing until the blob is there, then its bytes, from
/// the store once cached (by any replica) or from this replica's own download if it had to take over.
pub fn follow(
    registry: Arc<Registry>,
    repo: RepoName,
    mirror: String,
    digest: Digest,
    upload_id: String,
    mut state: watch::Receiver<FetchState>,
) -> ByteStream {
    fn failed(why: String) -> ByteStream {
        Box::pin(futures_util::stream::once(async move {
            Err(std::io::Error::other(why))
        }))
    }
    Box::pin(
        futures_util::stream::once(async move {
            loop {
                let st = state.borrow_and_update().clone();
                match st {
                    FetchState::Done { .. } => {
                        // Linked into the repository of the client that started the download; this may be another.
                        match registry
                            .metadata_store()
                            .link_mirror_blob(&repo, &mirror, &digest)
                            .await
                        {
                            Ok(Some(_)) => {}
                            Ok(None) => return failed("cached blob was evicted meanwhile".into()),
                            Err(e) => return failed(e.to_string()),
                        }
                        return match registry.open_blob(&repo, &digest, None).await {
                            Ok(dl) => dl.reader.body,
                            Err(e) => failed(e.to_string()),
                        };
                    }
                    FetchState::Streaming { .. } => {
                        match registry.blob_store().tail_upload(&upload_id).await {
                            Ok(reader) => return tail(reader, state.clone()),
                            // Published between the look at the state and the open: Done comes next.
                            Err(_) => tokio::time::sleep(TAIL_POLL).await,
                        }
                    }
                    FetchState::Failed(e) => return failed(format!("upstream fetch failed: {e}")),
                    FetchState::Connecting | FetchState::Following => {
                        if state.changed().await.is_err()
                            && matches!(
                                *state.borrow(),
                                FetchState::Connecting | FetchState::Following
                            )
                        {
                            return failed("upstream fetch abandoned".into());
                        }
                    }
                }
            }
        })
        .flatten(),
    )
}

/// A client's view of a download: the bytes of the temporary object as they are written, ending cleanly only once
/// the download is verified. With a known length the last byte is held back until then.
pub fn tail(
    reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    state: watch::Receiver<FetchState>,
) -> ByteStream {
    struct Tail {
        reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        state: watch::Receiver<FetchState>,
        pos: u64,
        buf: Vec<u8>,
    }
    let t = Tail {
        reader,
        state,
        pos: 0,
        buf: vec![0u8; TAIL_CHUNK],
    };
    Box::pin(futures_util::stream::unfold(Some(t), |t| async move {
        let mut t = t?;
        loop {
            let st = t.state.borrow().clone();
            let (limit, done) = match st {
                FetchState::Failed(e) => {
                    return Some((
                        Err(std::io::Error::other(format!("upstream fetch failed: {e}"))),
                        None,
                    ));
                }
                FetchState::Done { len } => (len, true),
                // Hold back the last byte until verified, so a bad body can never complete.
                FetchState::Streaming {
                    len: Some(len),
                    received,
                } => (received.min(len.saturating_sub(1)), false),
                FetchState::Streaming {
                    len: None,
                    received,
                } => (received, false),
                FetchState::Connecting | FetchState::Following => (0, false),
            };
            if t.pos < limit {
                let want = ((limit - t.pos) as usize).min(TAIL_CHUNK);
                t.buf.resize(want, 0);
                match t.reader.read(&mut t.buf[..want]).await {
                    Ok(0) if done => {
                        return Some((
                            Err(std::io::Error::other(
                                "cached object is shorter than verified",
                            )),
                            None,
                        ));
                    }
                    Ok(0) => {} // the writer has not written what was received yet
                    Ok(n) => {
                        t.pos += n as u64;
                        let mut chunk = std::mem::take(&mut t.buf);
                        chunk.truncate(n);
                        return Some((Ok(Bytes::from(chunk)), Some(t)));
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            } else if done {
                return None;
            }
            tokio::select! {
                r = t.state.changed() => {
                    if r.is_err() && !matches!(*t.state.borrow(), FetchState::Done { .. }) {
                        return Some((Err(std::io::Error::other("upstream fetch abandoned")), None));
                    }
                }
                _ = tokio::time::sleep(TAIL_POLL) => {}
            }
        }
    }))
}
