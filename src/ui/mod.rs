//! The web UI's domain side: what each page shows, computed from the registry, the metadata store, the mirrors'
//! counters and the maintenance history. No HTTP here (the handlers in `http::ui` are thin) and no access decision
//! either: callers pass in what the signed-in principal may pull, and this module never returns anything else.
//!
//! Everything shown may come from a pushed manifest and is therefore attacker-controlled; `pages` renders it
//! through maud, which escapes every interpolated string.

pub mod pages;

use std::sync::Arc;

use crate::maint::retention::{Policy, RetentionSummary};
use crate::maint::{Maintenance, Quiet};
use crate::meta::maint::{RunRecord, StoreStats};
use crate::meta::ui::{RepoRow, TagRow, UiStore};
use crate::metrics::{MirrorLabels, MirrorName, metrics};
use crate::mirror::Mirrors;
use crate::mirror::upstream::Health;
use crate::oci::{Digest, Reference, RepoName, media};
use crate::registry::{Registry, RegistryError};
use crate::worker::{WorkerStatus, Workers};

/// Rows per page of repositories and of tags.
pub const PAGE_SIZE: usize = 100;
/// Config blobs larger than this are not parsed for display (real ones are a few KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Retention preview rows shown at most.
pub const MAX_PREVIEW_ROWS: usize = 1000;

/// The UI's view of the server.
pub struct Ui {
    store: Arc<dyn UiStore>,
    registry: Arc<Registry>,
    maintenance: Arc<Maintenance>,
    policies: Vec<Policy>,
    workers: Arc<Workers>,
}

/// One page of a listing and where the next one starts.
#[derive(Debug, Clone)]
pub struct Listing<T> {
    pub rows: Vec<T>,
    /// The `last` of the next page, when there is one.
    pub next: Option<String>,
}

/// A tag row with its platforms.
#[derive(Debug, Clone)]
pub struct TagView {
    pub row: TagRow,
    /// `os/arch[/variant]` of each child of an index, or of a single image as its config says (what its manifest
    /// page shows); empty when unknown (an artifact, a config not stored or too large).
    pub platforms: Vec<String>,
}

/// A descriptor as shown in a manifest's layer or child list.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub platform: Option<String>,
    pub artifact_type: Option<String>,
    pub annotations: Vec<(String, String)>,
}

/// The fields of an image config worth showing.
#[derive(Debug, Clone, Default)]
pub struct ConfigView {
    pub platform: Option<String>,
    pub created: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
}

/// A manifest page.
#[derive(Debug, Clone)]
pub struct ManifestView {
    pub repo: String,
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    /// Tags of this repository pointing at the manifest.
    pub tags: Vec<String>,
    pub config: Option<Descriptor>,
    /// Parsed config, when the blob is present and small enough.
    pub config_fields: Option<ConfigView>,
    pub layers: Vec<Descriptor>,
    /// Children of an index.
    pub children: Vec<Descriptor>,
    pub annotations: Vec<(String, String)>,
    pub subject: Option<String>,
    /// Manifests whose subject this is: signatures, SBOMs, attestations.
    pub referrers: Vec<Descriptor>,
    /// Private repositories can be changed; mirrored ones are read-only.
    pub mirror: Option<String>,
}

/// A mirror's figures since the process started (counters) and now (cache size).
#[derive(Debug, Clone)]
pub struct MirrorView {
    pub name: String,
    pub upstream: String,
    /// Reads answered from the cache (hits, revalidated tags, stale-if-error answers).
    pub from_cache: u64,
    /// Reads that went to the upstream (misses and requests that joined an in-flight fetch).
    pub from_upstream: u64,
    pub stale: u64,
    pub errors: u64,
    pub served_bytes: u64,
    pub upstream_bytes: u64,
    pub cache_bytes: u64,
    pub budget: Option<u64>,
    /// What the last upstream request found.
    pub health: Health,
}

impl MirrorView {
    /// Share of reads answered from the cache, when there were any.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.from_cache + self.from_upstream + self.errors;
        (total > 0).then(|| self.from_cache as f64 / total as f64)
    }
}

/// The maintenance page.
#[derive(Debug, Clone)]
pub struct MaintenanceView {
    pub runs: Vec<RunRecord>,
    pub stats: StoreStats,
    pub policies: usize,
    /// The server's background workers, by name.
    pub workers: Vec<WorkerStatus>,
}

fn platform(v: &serde_json::Value) -> Option<String> {
    let os = v.get("os")?.as_str()?;
    let arch = v.get("architecture")?.as_str()?;
    Some(match v.get("variant").and_then(|x| x.as_str()) {
        Some(var) => format!("{os}/{arch}/{var}"),
        None => format!("{os}/{arch}"),
    })
}

fn string_pairs(v: Option<&serde_json::Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn descriptor(v: &serde_json::Value) -> Descriptor {
    Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: v["digest"].as_str().unwrap_or_default().to_owned(),
        size: v["size"].as_u64().unwrap_or(0),
        platform: v.get("platform").and_then(platform),
        artifact_type: v["artifactType"].as_str().map(str::to_owned),
        annotations: string_pairs(v.get("annotations")),
    }
}

/// Image config fields (OCI image spec "config" / Docker's `config` object).
pub fn parse_config(bytes: &[u8]) -> Option<ConfigView> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let c = v.get("config").or_else(|| v.get("container_config"));
    let get = |k: &str| c.and_then(|c| c.get(k));
    let mut ports: Vec<String> = get("ExposedPorts")
        .and_then(|p| p.as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    ports.sort();
    Some(ConfigView {
        platform: platform(&v),
        created: v["created"].as_str().map(str::to_owned),
        entrypoint: strings(get("Entrypoint")),
        cmd: strings(get("Cmd")),
        env: strings(get("Env")),
        labels: string_pairs(get("Labels")),
        working_dir: get("WorkingDir")
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .map(str::to_owned),
        user: get("User")
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .map(str::to_owned),
        exposed_ports: ports,
    })
}

fn is_index(media_type: &str) -> bool {
    media_type == media::OCI_INDEX || media_type == media::DOCKER_MANIFEST_LIST
}

impl Ui {
    pub fn new(
        store: Arc<dyn UiStore>,
        registry: Arc<Registry>,
        maintenance: Arc<Maintenance>,
        policies: Vec<Policy>,
        workers: Arc<Workers>,
    ) -> Ui {
        Ui {
            store,
            registry,
            maintenance,
            policies,
            workers,
        }
    }

    /// Repositories whose name contains `search` and that `may_pull` allows, a page after `after`. Filtering comes
    /// before pagination, so a page is full whatever the caller may see, and forbidden names never leave here.
    pub async fn repositories(
        &self,
        may_pull: &(dyn Fn(&str) -> bool + Sync),
        search: Option<&str>,
        after: Option<&str>,
    ) -> Result<Listing<RepoRow>, RegistryError> {
        const BATCH: usize = 1000;
        let search = search.map(str::trim).filter(|s| !s.is_empty());
        let mut rows = Vec::new();
        let mut last = after.map(str::to_owned);
        loop {
            let batch = self
                .store
                .repository_page(last.clone(), search.map(str::to_owned), BATCH)
                .await?;
            let done = batch.len() < BATCH;
            last = batch.last().map(|r| r.name.clone());
            rows.extend(batch.into_iter().filter(|r| may_pull(&r.name)));
            if done || rows.len() > PAGE_SIZE {
                break;
            }
        }
        Ok(page(rows, |r| r.name.clone()))
    }

    /// A page of a repository's tags; `None` when the repository does not exist.
    pub async fn tags(
        &self,
        repo: &RepoName,
        search: Option<&str>,
        after: Option<&str>,
    ) -> Result<Option<(Listing<TagView>, u64)>, RegistryError> {
        let search = search.map(str::trim).filter(|s| !s.is_empty());
        let Some(rows) = self
            .store
            .tag_page(
                repo,
                after.map(str::to_owned),
                search.map(str::to_owned),
                PAGE_SIZE + 1,
            )
            .await?
        else {
            return Ok(None);
        };
        let total = self.store.tag_count(repo).await?;
        let listing = page(rows, |r| r.name.clone());
        let mut views = Vec::with_capacity(listing.rows.len());
        for row in listing.rows {
            let platforms = if is_index(&row.media_type) {
                self.index_platforms(&row.digest).await
            } else {
                self.image_platform(repo, &row.digest)
                    .await?
                    .into_iter()
                    .collect()
            };
            views.push(TagView { row, platforms });
        }
        Ok(Some((
            Listing {
                rows: views,
                next: listing.next,
            },
            total,
        )))
    }

    /// Verified manifest bytes from the blob store. Reading them here, rather than through the pull path, keeps UI
    /// views from counting as pulls (which retention's "pulled within" rule reads).
    async fn verified_bytes(&self, d: &Digest) -> Option<bytes::Bytes> {
        let b = self.registry.blob_store().get_bytes(d).await.ok()?;
        (Digest::of(d.algorithm(), &b) == *d).then_some(b)
    }

    async fn index_platforms(&self, d: &Digest) -> Vec<String> {
        let Some(b) = self.verified_bytes(d).await else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        v["manifests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.get("platform").and_then(platform))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The platform of a single image, from its config blob as the manifest page reads it.
    async fn image_platform(
        &self,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Option<String>, RegistryError> {
        let Some(b) = self.verified_bytes(d).await else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        let Some(config) = v.get("config").map(descriptor) else {
            return Ok(None);
        };
        Ok(self
            .config_view(repo, &config)
            .await?
            .and_then(|c| c.platform))
    }

    /// A manifest by tag or digest; `None` when there is no such manifest.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        mirror: Option<String>,
    ) -> Result<Option<ManifestView>, RegistryError> {
        let meta = self.registry.metadata_store();
        let rec = match reference {
            Reference::Tag(t) => meta.tagged_manifest(repo, t).await?,
            Reference::Digest(d) => meta.manifest(repo, d).await?,
        };
        let Some(rec) = rec else {
            return Ok(None);
        };
        let v: serde_json::Value = match self.verified_bytes(&rec.digest).await {
            Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
            None => serde_json::Value::Null,
        };
        let config = v.get("config").map(descriptor);
        let config_fields = match &config {
            Some(c) => self.config_view(repo, c).await?,
            None => None,
        };
        let list = |k: &str| -> Vec<Descriptor> {
            v[k].as_array()
                .map(|a| a.iter().map(descriptor).collect())
                .unwrap_or_default()
        };
        let referrers = meta
            .referrers(repo, &rec.digest, None)
            .await?
            .into_iter()
            .map(|r| Descriptor {
                media_type: r.media_type,
                digest: r.digest.to_string(),
                size: r.size,
                platform: None,
                artifact_type: r.artifact_type,
                annotations: string_pairs(
                    r.annotations
                        .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
                        .as_ref(),
                ),
            })
            .collect();
        Ok(Some(ManifestView {
            repo: repo.to_string(),
            tags: self.store.tags_of(repo, &rec.digest).await?,
            media_type: rec.media_type,
            artifact_type: rec.artifact_type,
            size: rec.size,
            config,
            config_fields,
            layers: list("layers"),
            children: list("manifests"),
            annotations: string_pairs(v.get("annotations")),
            subject: v
                .get("subject")
                .and_then(|s| s["digest"].as_str())
                .map(str::to_owned),
            referrers,
            mirror,
            digest: rec.digest,
        }))
    }

    /// The fields of the config a manifest names, unless it is too large to parse for display.
    async fn config_view(
        &self,
        repo: &RepoName,
        config: &Descriptor,
    ) -> Result<Option<ConfigView>, RegistryError> {
        if config.size > MAX_CONFIG_BYTES {
            return Ok(None);
        }
        self.config_fields(repo, &config.digest).await
    }

    /// The config's fields, if the blob is present in the repository and hashes right.
    async fn config_fields(
        &self,
        repo: &RepoName,
        digest: &str,
    ) -> Result<Option<ConfigView>, RegistryError> {
        let Ok(d) = digest.parse::<Digest>() else {
            return Ok(None);
        };
        if self
            .registry
            .metadata_store()
            .repo_blob(repo, &d)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        Ok(self.verified_bytes(&d).await.and_then(|b| parse_config(&b)))
    }

    /// Removes a tag (the manifest stays until garbage collection); the caller has checked the delete right.
    pub async fn delete_tag(&self, repo: &RepoName, tag: &str) -> Result<(), RegistryError> {
        let reference: Reference = tag
            .parse()
            .map_err(|_| RegistryError::ManifestUnknown(format!("{repo}:{tag}")))?;
        if matches!(reference, Reference::Digest(_)) {
            return Err(RegistryError::ManifestUnknown(format!("{repo}:{tag}")));
        }
        self.registry.delete_manifest(repo, &reference).await
    }

    /// Every mirror with its counters and cache size.
    pub async fn mirrors(&self, mirrors: &Mirrors) -> Result<Vec<MirrorView>, RegistryError> {
        let mut out = Vec::new();
        let m = metrics();
        for mirror in mirrors.all() {
            let count = |result: &'static str| -> u64 {
                ["manifest", "blob"]
                    .iter()
                    .map(|kind| {
                        m.mirror_requests
                            .get_or_create(&MirrorLabels {
                                mirror: mirror.name.clone(),
                                kind,
                                result,
                            })
                            .get()
                    })
                    .sum()
            };
            let name = MirrorName {
                mirror: mirror.name.clone(),
            };
            // Counter guards are not `Send`: read them all before the next await.
            let served_bytes = m.mirror_cache_served_bytes.get_or_create(&name).get();
            let upstream_bytes = m.mirror_upstream_bytes.get_or_create(&name).get();
            let (hit, revalidated, stale) = (count("hit"), count("revalidated"), count("stale"));
            let (miss, joined, errors) = (count("miss"), count("joined"), count("error"));
            let cache_bytes = self
                .registry
                .metadata_store()
                .mirror_cache_size(&mirror.name)
                .await?;
            out.push(MirrorView {
                name: mirror.name.clone(),
                upstream: mirror.upstream_url.clone(),
                from_cache: hit + revalidated + stale,
                from_upstream: miss + joined,
                stale,
                errors,
                served_bytes,
                upstream_bytes,
                cache_bytes,
                budget: mirror.cache_budget(),
                health: mirror.health(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Last runs of each job, the store's totals and the background workers.
    pub async fn maintenance(&self) -> Result<MaintenanceView, RegistryError> {
        let store = self.maintenance.store();
        Ok(MaintenanceView {
            runs: store.recent_runs(3).await?,
            stats: store.stats().await?,
            policies: self.policies.len(),
            workers: self.workers.statuses(),
        })
    }

    /// What retention would delete now (a dry run; it is recorded in the run history like `berth retention
    /// --dry-run`). `None` when no policy is configured.
    pub async fn retention_preview(&self) -> Result<Option<RetentionSummary>, RegistryError> {
        if self.policies.is_empty() {
            return Ok(None);
        }
        let mut s = self
            .maintenance
            .retention(&self.policies, true, &Quiet)
            .await?;
        s.decisions.truncate(MAX_PREVIEW_ROWS);
        Ok(Some(s))
    }
}

/// Trims a listing fetched with one extra row to a page, noting where the next page starts.
fn page<T>(mut rows: Vec<T>, key: impl Fn(&T) -> String) -> Listing<T> {
    let next = if rows.len() > PAGE_SIZE {
        rows.truncate(PAGE_SIZE);
        rows.last().map(&key)
    } else {
        None
    };
    Listing { rows, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_read_from_oci_and_docker_configs() {
        let c = parse_config(
            br#"{"architecture":"arm64","os":"linux","variant":"v8","created":"2024-01-01T00:00:00Z",
                "config":{"Entrypoint":["/bin/app","--serve"],"Cmd":"x","Env":["A=1"],
                "Labels":{"b":"2","a":"<script>"},"ExposedPorts":{"80/tcp":{}},"User":"app"}}"#,
        )
        .unwrap();
        assert_eq!(c.platform.as_deref(), Some("linux/arm64/v8"));
        assert_eq!(c.entrypoint, ["/bin/app", "--serve"]);
        assert_eq!(c.cmd, ["x"]);
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.labels[0], ("a".into(), "<script>".into()));
        assert_eq!(c.exposed_ports, ["80/tcp"]);
        assert_eq!(c.user.as_deref(), Some("app"));
        assert!(parse_config(b"not json").is_none());
    }

    #[test]
    fn a_page_notes_where_the_next_starts_only_when_there_is_one() {
        let rows: Vec<String> = (0..=PAGE_SIZE).map(|i| format!("{i:04}")).collect();
        let p = page(rows, |r| r.clone());
        assert_eq!(p.rows.len(), PAGE_SIZE);
        assert_eq!(p.next.as_deref(), Some("0099"));
        let p = page(vec!["a".to_string()], |r| r.clone());
        assert!(p.next.is_none());
    }
}
