//! Single-flight blob fetches. The first miss for a digest starts one download task that writes the upstream body
//! into a temporary upload object while hashing it; every client asking for that digest — the first included —
//! streams from that object as it grows. The task is independent of the clients: a client that disconnects does
//! not abort the cache fill. Only a body whose size and digest match is published (invariant 4); on any failure
//! every streaming client's body ends in an error, and the last byte is held back until verification, so no client
//! can ever complete a wrong or short body.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::Mirror;
use super::upstream::UpstreamError;
use crate::oci::{Digest, RepoName};
use crate::registry::Registry;
use crate::store::ByteStream;

/// Where a download stands, broadcast to every client streaming it.
#[derive(Debug, Clone)]
pub enum FetchState {
    /// Waiting for the upstream's response headers.
    Connecting,
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
            Ok(len) => {
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

    async fn download(&self, tx: &watch::Sender<FetchState>) -> Result<u64, UpstreamError> {
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
        let io = |e: crate::store::StoreError| {
            UpstreamError::BadResponse(format!("cannot write cache: {e}"))
        };
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
                        Err(std::io::Error::other(format!("upstream body cut off: {e}"))),
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
            .map_err(|e| UpstreamError::BadResponse(e.to_string()))?;
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
            .map_err(|e| UpstreamError::BadResponse(format!("cannot record cached blob: {e}")))?;
        Ok(written)
    }
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
                FetchState::Connecting => (0, false),
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
