//! Pull-through mirrors of upstream registries (design §3, invariants 4-5). Mirrored content lives in the same
//! stores as private content, in repositories named `<mirror>/<upstream name>` of kind `mirror`; this module
//! decides when to ask the upstream and what may be cached. It knows nothing of HTTP.

mod eviction;
mod fetch;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::config;
use crate::meta::{FetchLease, ManifestRecord, now};
use crate::oci::{Digest, Reference, RepoName, manifest, name::Tag};
use crate::registry::{BlobDownload, ByteRange, Registry, RegistryError, StoredManifest};
use crate::store::ByteStream;
pub use eviction::EvictionPass;
use fetch::{Fetch, FetchState};
use upstream::{Upstream, UpstreamError};

/// How often a replica waiting for another replica's manifest fetch looks again.
const MANIFEST_FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// A resolved mirror manifest: its record when the lookup already produced it, else its digest.
enum Found {
    Record(ManifestRecord),
    Digest(Digest),
}

/// One configured upstream.
pub struct Mirror {
    pub name: String,
    pub upstream_url: String,
    upstream: Upstream,
    tag_ttl: std::time::Duration,
    /// Docker Hub: one-component names mean `library/<name>`.
    docker_hub: bool,
    inflight: parking_lot::Mutex<HashMap<Digest, Arc<Fetch>>>,
    /// Cache budget in bytes, if any.
    budget: Option<u64>,
    /// Blobs served from cache since the last eviction pass (their last-access time is written then, not per hit).
    touched: parking_lot::Mutex<std::collections::HashSet<Digest>>,
    /// Wakes the eviction task when a download completes.
    evict_wake: Arc<tokio::sync::Notify>,
}

/// Every configured mirror, by name and alias.
pub struct Mirrors {
    by_name: HashMap<String, Arc<Mirror>>,
    registry: Arc<Registry>,
}

/// A blob for a mirror client: from the cache, or streaming from an upstream download.
pub enum MirrorBlob {
    Cached(BlobDownload),
    /// A miss: the whole blob (Range is not honoured while it is being fetched), length when the upstream gave it.
    Streaming {
        len: Option<u64>,
        body: ByteStream,
    },
    /// HEAD on a miss: what the upstream says.
    Head {
        len: u64,
    },
}

impl Mirrors {
    pub fn new(configs: &[config::Mirror], registry: Arc<Registry>) -> Result<Mirrors, String> {
        let mut by_name = HashMap::new();
        for c in configs {
            crate::metrics::metrics().init_mirror(&c.name);
            let host = c
                .upstream
                .split("://")
                .nth(1)
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("");
            let m = Arc::new(Mirror {
                name: c.name.clone(),
                upstream_url: c.upstream.clone(),
                upstream: Upstream::new(c)?,
                tag_ttl: c.tag_ttl,
                docker_hub: c.name == "docker.io"
                    || matches!(
                        host,
                        "registry-1.docker.io" | "index.docker.io" | "docker.io"
                    ),
                inflight: Default::default(),
                budget: c.cache_budget.map(|b| b.as_u64()),
                touched: Default::default(),
                evict_wake: Arc::new(tokio::sync::Notify::new()),
            });
            for n in std::iter::once(&c.name).chain(&c.aliases) {
                by_name.insert(n.clone(), m.clone());
            }
        }
        Ok(Mirrors { by_name, registry })
    }

    /// Every configured mirror once (aliases not repeated).
    pub fn all(&self) -> Vec<Arc<Mirror>> {
        let mut v: Vec<Arc<Mirror>> = Vec::new();
        for m in self.by_name.values() {
            if !v.iter().any(|x| Arc::ptr_eq(x, m)) {
                v.push(m.clone());
            }
        }
        v
    }

    /// A mirror by name or alias.
    pub fn get(&self, name: &str) -> Option<Arc<Mirror>> {
        self.by_name.get(name).cloned()
    }

    /// Resolves a request's repository to a mirror and the upstream-relative name (design §3): containerd's
    /// `?ns=<host>` first, then the first path component as a mirror name or alias.
    pub fn route<'a>(&self, name: &'a str, ns: Option<&str>) -> Option<(Arc<Mirror>, &'a str)> {
        if let Some(m) = ns.and_then(|ns| self.by_name.get(ns)) {
            return Some((m.clone(), name));
        }
        let (first, rest) = name.split_once('/')?;
        self.by_name.get(first).map(|m| (m.clone(), rest))
    }
}

impl Mirror {
    /// Validates an upstream-relative name, applying Docker Hub's `library/` rule.
    pub fn upstream_name(&self, raw: &str) -> Result<RepoName, RegistryError> {
        let full = if self.docker_hub && !raw.contains('/') {
            format!("library/{raw}")
        } else {
            raw.to_owned()
        };
        full.parse()
            .map_err(|e: crate::oci::NameError| RegistryError::NameInvalid(e.to_string()))
    }

    fn local_repo(&self, upstream: &RepoName) -> RepoName {
        RepoName::in_mirror(&self.name, upstream)
    }

    /// What the last request to the upstream found since the server started.
    pub fn health(&self) -> upstream::Health {
        self.upstream.health()
    }

    /// Cached blob bytes allowed for this mirror, if limited.
    pub fn cache_budget(&self) -> Option<u64> {
        self.budget
    }

    /// The error a write to this mirror gets.
    pub fn read_only_error(&self) -> RegistryError {
        RegistryError::Unsupported(format!(
            "{} is a read-only mirror of {}; push to a private repository instead",
            self.name, self.upstream_url
        ))
    }
}

/// Maps an upstream failure to what the client sees; `missing` builds the "not found" error for the object kind.
fn map_upstream(
    e: UpstreamError,
    what: String,
    missing: impl FnOnce(String) -> RegistryError,
) -> RegistryError {
    match e {
        UpstreamError::NotFound(_) | UpstreamError::Denied(_) => missing(format!("{what}: {e}")),
        UpstreamError::TooManyRequests { retry_after } => RegistryError::TooManyRequests {
            retry_after,
            message: format!("{what}: {e}"),
        },
        UpstreamError::Timeout(_) => RegistryError::UpstreamTimeout(format!("{what}: {e}")),
        UpstreamError::Cache {
            unavailable: Some(message),
            detail,
        } => RegistryError::Unavailable { message, detail },
        UpstreamError::Cache { detail, .. } => RegistryError::Internal(format!("{what}: {detail}")),
        other => RegistryError::Upstream(format!("{what}: {other}")),
    }
}

impl Mirrors {
    /// A manifest through the mirror: by digest, immutable once cached; by tag, fresh within `tag_ttl`, then
    /// revalidated with a HEAD, re-fetched only when the digest moved, served stale if the upstream fails.
    pub async fn manifest(
        &self,
        m: &Arc<Mirror>,
        raw_name: &str,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<StoredManifest, RegistryError> {
        let up = m.upstream_name(raw_name)?;
        let repo = m.local_repo(&up);
        let metrics = crate::metrics::metrics();
        let (found, result) = match self.resolve_manifest(m, &up, &repo, reference).await {
            Ok(ok) => ok,
            Err(e) => {
                metrics.mirror(&m.name, "manifest", "error");
                return Err(e);
            }
        };
        metrics.mirror(&m.name, "manifest", result);
        match found {
            Found::Record(record) => self.registry.serve_record(record, accept).await,
            Found::Digest(d) => {
                self.registry
                    .get_manifest(&repo, &Reference::Digest(d), accept)
                    .await
            }
        }
    }

    /// Makes sure the manifest `reference` names is cached and current; returns it and how it was found
    /// (`hit`, `revalidated`, `miss`, `stale`).
    async fn resolve_manifest(
        &self,
        m: &Mirror,
        up: &RepoName,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Found, &'static str), RegistryError> {
        let what = format!("{}/{up}:{reference}", m.name);
        let meta = self.registry.metadata_store();
        let tag = match reference {
            Reference::Digest(d) => {
                if let Some(rec) = meta.manifest(repo, d).await? {
                    return Ok((Found::Record(rec), "hit"));
                }
                self.fetch_manifest_once(m, up, repo, &d.to_string(), Some(d), None)
                    .await
                    .map_err(|e| map_upstream(e, what, RegistryError::ManifestUnknown))?;
                return Ok((Found::Digest(d.clone()), "miss"));
            }
            Reference::Tag(tag) => tag,
        };
        if let Some((rec, fetched_at)) = meta.cached_tag(repo, tag).await? {
            if now() - fetched_at < m.tag_ttl.as_secs() as i64 {
                return Ok((Found::Record(rec), "hit"));
            }
            return match self.revalidate(m, up, repo, tag, &rec).await {
                Ok(d) if d == rec.digest => Ok((Found::Record(rec), "revalidated")),
                Ok(d) => Ok((Found::Digest(d), "miss")),
                Err(UpstreamError::NotFound(_)) => {
                    // The upstream says the tag is gone: that is an answer, not an outage.
                    meta.delete_tag(repo, tag).await?;
                    Err(RegistryError::ManifestUnknown(what))
                }
                Err(e) => {
                    tracing::warn!(mirror = %m.name, %repo, %tag, error = %e, "upstream failed; serving cached tag (stale-if-error)");
                    Ok((Found::Record(rec), "stale"))
                }
            };
        }
        let d = self
            .fetch_manifest_once(m, up, repo, tag.as_str(), None, Some(tag))
            .await
            .map_err(|e| map_upstream(e, what, RegistryError::ManifestUnknown))?;
        Ok((Found::Digest(d), "miss"))
    }

    /// HEAD upstream for the tag's digest; unchanged → mark fresh; changed → fetch the new manifest (which moves
    /// the tag only once verified). Returns the digest now cached for the tag.
    async fn revalidate(
        &self,
        m: &Mirror,
        up: &RepoName,
        repo: &RepoName,
        tag: &Tag,
        cached: &ManifestRecord,
    ) -> Result<Digest, UpstreamError> {
        let resp = m
            .upstream
            .manifest(reqwest::Method::HEAD, up, tag.as_str())
            .await?;
        let upstream_digest = Upstream::content_digest(&resp);
        if upstream_digest.as_ref() == Some(&cached.digest) {
            self.registry
                .metadata_store()
                .touch_tag(repo, tag)
                .await
                .map_err(|e| UpstreamError::cache("cannot record the tag's freshness", e))?;
            return Ok(cached.digest.clone());
        }
        self.fetch_manifest_once(
            m,
            up,
            repo,
            tag.as_str(),
            // The tag may move again between the HEAD and the GET: verify against what the GET says.
            None,
            Some(tag),
        )
        .await
    }

    /// [`Self::fetch_manifest`], once across replicas: under a lease on (mirror, name, reference), so that a replica
    /// missing the same manifest meanwhile waits for the holder and reads what it cached instead of asking the
    /// upstream too. Waits at most for the upstream's response timeout twice, then fetches on its own.
    async fn fetch_manifest_once(
        &self,
        m: &Mirror,
        up: &RepoName,
        repo: &RepoName,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<Digest, UpstreamError> {
        let meta = self.registry.metadata_store();
        let key = format!("{}\nmanifest\n{up}:{reference}", m.name);
        let started = now();
        let deadline = tokio::time::Instant::now() + 2 * m.upstream.response_timeout;
        // What another replica cached since this request began waiting.
        let cached = || async {
            let found = match (expected, tag) {
                (Some(d), _) => meta.manifest(repo, d).await.map(|r| r.map(|r| r.digest)),
                (None, Some(t)) => meta.cached_tag(repo, t).await.map(|r| {
                    r.filter(|(_, fetched_at)| *fetched_at >= started)
                        .map(|(r, _)| r.digest)
                }),
                (None, None) => Ok(None),
            };
            found.map_err(|e| UpstreamError::cache("cannot read cache", e))
        };
        loop {
            let lease = meta.try_lease_fetch(&key).await.unwrap_or_else(|e| {
                tracing::warn!(mirror = %m.name, error = %e, "no manifest lease; fetching without coordinating");
                FetchLease::NotShared
            });
            match lease {
                FetchLease::NotShared => {
                    return self
                        .fetch_manifest(m, up, repo, reference, expected, tag)
                        .await;
                }
                FetchLease::Granted(_lease) => {
                    if let Some(d) = cached().await? {
                        return Ok(d);
                    }
                    return self
                        .fetch_manifest(m, up, repo, reference, expected, tag)
                        .await;
                }
                FetchLease::HeldElsewhere => {
                    if let Some(d) = cached().await? {
                        return Ok(d);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return self
                            .fetch_manifest(m, up, repo, reference, expected, tag)
                            .await;
                    }
                    tokio::time::sleep(MANIFEST_FOLLOW_POLL).await;
                }
            }
        }
    }

    /// GETs a manifest, verifies its bytes against the expected digest (or the upstream's `Docker-Content-Digest`),
    /// stores them verbatim and records them, moving `tag` if given. Returns the digest.
    async fn fetch_manifest(
        &self,
        m: &Mirror,
        up: &RepoName,
        repo: &RepoName,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<Digest, UpstreamError> {
        let resp = m
            .upstream
            .manifest(reqwest::Method::GET, up, reference)
            .await?;
        let header_digest = Upstream::content_digest(&resp);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes: Bytes = m
            .upstream
            .read_small(resp, self.registry.max_manifest_size())
            .await?;
        let digest = match expected.or(header_digest.as_ref()) {
            Some(d) => d.clone(),
            None => Digest::of(crate::oci::Algorithm::Sha256, &bytes),
        };
        let actual = Digest::of(digest.algorithm(), &bytes);
        if actual != digest {
            return Err(UpstreamError::BadResponse(format!(
                "manifest hashes to {actual}, not {digest}"
            )));
        }
        let parsed = manifest::parse(&bytes, content_type.as_deref())
            .map_err(|e| UpstreamError::BadResponse(format!("manifest: {e}")))?;
        let record = ManifestRecord {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            artifact_type: parsed.artifact_type.clone(),
            subject: parsed.subject.as_ref().map(|s| s.digest.clone()),
            size: bytes.len() as u64,
            annotations: parsed
                .annotations
                .as_ref()
                .and_then(|a| serde_json::to_string(a).ok()),
        };
        let io = |e: RegistryError| UpstreamError::cache("cannot write cache", e);
        let _publishing = self.registry.lock_digest(&digest).await;
        self.registry
            .blob_store()
            .put_bytes(&digest, bytes)
            .await
            .map_err(|e| io(e.into()))?;
        self.registry
            .metadata_store()
            .cache_manifest(repo, &m.name, &record, tag)
            .await
            .map_err(|e| io(e.into()))?;
        Ok(digest)
    }

    /// A blob through the mirror: cached → served (with Range); miss → joins or starts the one upstream download
    /// for this digest and streams it. HEAD on a miss asks the upstream without downloading.
    pub async fn blob(
        &self,
        m: &Arc<Mirror>,
        raw_name: &str,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<MirrorBlob, RegistryError> {
        let result = self.blob_inner(m, raw_name, digest, range, head).await;
        let label = match &result {
            Ok((_, label)) => label,
            Err(_) => "error",
        };
        crate::metrics::metrics().mirror(&m.name, "blob", label);
        result.map(|(b, _)| b)
    }

    async fn blob_inner(
        &self,
        m: &Arc<Mirror>,
        raw_name: &str,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<(MirrorBlob, &'static str), RegistryError> {
        let up = m.upstream_name(raw_name)?;
        let repo = m.local_repo(&up);
        let meta = self.registry.metadata_store();
        let mut cached = meta.repo_blob(&repo, digest).await?;
        if cached.is_none() {
            // Perhaps cached for another repository of this mirror: link it here too.
            cached = meta.link_mirror_blob(&repo, &m.name, digest).await?;
        }
        if let Some(len) = cached {
            m.touched.lock().insert(digest.clone());
            if head {
                match self.registry.check_stored(digest, len).await {
                    Ok(()) => return Ok((MirrorBlob::Head { len }, "hit")),
                    Err(e @ RegistryError::Damaged(_)) => {
                        if !self.drop_damaged(m, &repo, digest).await? {
                            return Err(e);
                        }
                        return Box::pin(self.blob_inner(m, raw_name, digest, range, head)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            let dl = match self.registry.open_blob(&repo, digest, range).await {
                Ok(dl) => dl,
                // Evicted between the look-up and the open (another task, or another replica): a miss after all.
                Err(RegistryError::BlobUnknown(_)) => {
                    return Box::pin(self.blob_inner(m, raw_name, digest, range, head)).await;
                }
                // Truncated or removed behind berth's back: dropped from the cache, so a miss again.
                Err(e @ RegistryError::Damaged(_)) => {
                    if !self.drop_damaged(m, &repo, digest).await? {
                        return Err(e);
                    }
                    return Box::pin(self.blob_inner(m, raw_name, digest, range, head)).await;
                }
                Err(e) => return Err(e),
            };
            crate::metrics::metrics()
                .mirror_cache_served_bytes
                .get_or_create(&crate::metrics::MirrorName {
                    mirror: m.name.clone(),
                })
                .inc_by(dl.reader.len);
            return Ok((MirrorBlob::Cached(dl), "hit"));
        }
        let what = format!("{}/{up}@{digest}", m.name);
        let missing = RegistryError::BlobUnknownUpstream;
        if head {
            let resp = m
                .upstream
                .request(
                    reqwest::Method::HEAD,
                    up.as_str(),
                    &format!("blobs/{digest}"),
                    None,
                    "blob",
                )
                .await
                .map_err(|e| map_upstream(e, what.clone(), missing))?;
            let len = Upstream::announced_length(&resp).ok_or_else(|| {
                RegistryError::Upstream(format!("{what}: upstream HEAD without Content-Length"))
            })?;
            return Ok((MirrorBlob::Head { len }, "miss"));
        }
        let (fetch, started) = self.join_or_start(m, &up, &repo, digest);
        let label = if started { "miss" } else { "joined" };
        let mut state = fetch.state.clone();
        let headers_by = tokio::time::Instant::now() + fetch::FOLLOW_HEADERS_AFTER;
        loop {
            let st = state.borrow_and_update().clone();
            match st {
                FetchState::Connecting => {
                    if state.changed().await.is_err()
                        && matches!(*state.borrow(), FetchState::Connecting)
                    {
                        return Err(RegistryError::Upstream(format!("{what}: fetch abandoned")));
                    }
                }
                FetchState::Following => {
                    match tokio::time::timeout_at(headers_by, state.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) if matches!(*state.borrow(), FetchState::Following) => {
                            return Err(RegistryError::Upstream(format!(
                                "{what}: fetch abandoned"
                            )));
                        }
                        Ok(Err(_)) => {}
                        // Another replica is still downloading: answer now, send the bytes once they are here.
                        Err(_) => {
                            let body = fetch::follow(
                                self.registry.clone(),
                                repo.clone(),
                                m.name.clone(),
                                digest.clone(),
                                fetch.upload_id.clone(),
                                fetch.state.clone(),
                            );
                            return Ok((MirrorBlob::Streaming { len: None, body }, label));
                        }
                    }
                }
                FetchState::Failed(e) => return Err(map_upstream(e, what, missing)),
                FetchState::Done { .. } => {
                    // The download linked the repository that started it; this one may be another. If the blob
                    // was evicted in the meantime, this is a miss again.
                    if meta
                        .link_mirror_blob(&repo, &m.name, digest)
                        .await?
                        .is_none()
                    {
                        return Box::pin(self.blob_inner(m, raw_name, digest, range, head)).await;
                    }
                    return match self.registry.open_blob(&repo, digest, range).await {
                        Ok(dl) => Ok((MirrorBlob::Cached(dl), label)),
                        // Evicted between the link and the open: a miss after all, as on the cached path.
                        Err(RegistryError::BlobUnknown(_)) => {
                            Box::pin(self.blob_inner(m, raw_name, digest, range, head)).await
                        }
                        Err(e) => Err(e),
                    };
                }
                FetchState::Streaming { len, .. } => {
                    match self
                        .registry
                        .blob_store()
                        .tail_upload(&fetch.upload_id)
                        .await
                    {
                        Ok(reader) => {
                            let body = fetch::tail(reader, fetch.state.clone());
                            return Ok((MirrorBlob::Streaming { len, body }, label));
                        }
                        // Published between our look at the state and the open: the state turns Done next.
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                    }
                }
            }
        }
    }

    /// Drops a cached blob whose bytes are damaged (missing, or not of the recorded size) from the mirror's cache,
    /// so that this request fetches it again, as after an eviction: the same repair the scrubber makes. Its links
    /// go in one transaction (with a tombstone), then its bytes, under the digest lock and only if no row points
    /// at them any more. `false` when a private repository links the blob, which is then only reported
    /// (published content is never removed by a repair, invariant 8).
    async fn drop_damaged(
        &self,
        m: &Mirror,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let meta = self.registry.metadata_store();
        let blobs = self.registry.blob_store();
        // Another request may have dropped and fetched it again meanwhile: then it is whole now.
        if let Some(size) = meta.repo_blob(repo, digest).await?
            && blobs.stat(digest).await? == Some(size)
        {
            return Ok(true);
        }
        if meta.evict_mirror_blob(&m.name, digest).await? == crate::meta::Eviction::Kept {
            // Linked by private content, or gone already (dropped by another request): a miss only then.
            return Ok(meta.repo_blob(repo, digest).await?.is_none());
        }
        {
            // As the tombstones worker does: a re-fetch that committed its row meanwhile keeps its bytes.
            let _held = self.registry.lock_digest(digest).await;
            if !meta.blob_exists(digest).await? {
                blobs.delete(digest).await?;
            }
        }
        tracing::warn!(mirror = %m.name, %digest, "dropped a damaged cached blob; fetching it again");
        Ok(true)
    }

    /// The download in flight for `digest`, or a new one; `true` when this call started it.
    fn join_or_start(
        &self,
        m: &Arc<Mirror>,
        up: &RepoName,
        repo: &RepoName,
        digest: &Digest,
    ) -> (Arc<Fetch>, bool) {
        let mut inflight = m.inflight.lock();
        if let Some(f) = inflight.get(digest) {
            return (f.clone(), false);
        }
        let (tx, rx) = tokio::sync::watch::channel(FetchState::Connecting);
        let f = Arc::new(Fetch {
            upload_id: uuid::Uuid::new_v4().simple().to_string(),
            state: rx,
        });
        inflight.insert(digest.clone(), f.clone());
        drop(inflight);
        let download = fetch::Download {
            mirror: m.clone(),
            registry: self.registry.clone(),
            repo: repo.clone(),
            upstream_name: up.clone(),
            digest: digest.clone(),
            upload_id: f.upload_id.clone(),
        };
        tokio::spawn(download.run(tx));
        (f, true)
    }
}
