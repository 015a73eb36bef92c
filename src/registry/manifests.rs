//! Manifests: push (validate, check references, record in one transaction), pull by tag or digest, delete, and the
//! referrers API. Bytes are stored verbatim as a blob; the metadata store indexes them.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Registry, RegistryError};
use crate::meta::{ManifestRecord, ManifestRejection, NewManifest, NewRef, RefKind, RemoveOutcome};
use crate::oci::{Algorithm, Digest, Reference, RepoName, manifest, media, name::Tag};

/// A successfully stored manifest.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// Every tag now pointing at the manifest because of this push.
    pub tags: Vec<Tag>,
}

/// A manifest to send to a client.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub record: ManifestRecord,
    pub bytes: Bytes,
}

/// Verified manifest bytes by digest. Content addressing makes entries immutable, so the cache can never serve
/// stale bytes; whether a manifest *exists* in a repository is always asked of the metadata store.
pub struct ManifestCache {
    budget: usize,
    inner: Mutex<(HashMap<Digest, Bytes>, usize)>,
}

impl ManifestCache {
    pub fn new(budget: usize) -> ManifestCache {
        ManifestCache {
            budget,
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    fn get(&self, d: &Digest) -> Option<Bytes> {
        self.inner.lock().0.get(d).cloned()
    }

    fn insert(&self, d: Digest, b: Bytes) {
        let mut g = self.inner.lock();
        if g.1 + b.len() > self.budget {
            // Manifests are small and cheap to reload; a full reset keeps this simple and bounded.
            g.0.clear();
            g.1 = 0;
        }
        g.1 += b.len();
        if let Some(old) = g.0.insert(d, b) {
            g.1 -= old.len();
        }
    }
}

fn rejection_error(r: ManifestRejection) -> RegistryError {
    match r {
        ManifestRejection::Missing(ds) => RegistryError::ManifestBlobUnknown(ds),
        ManifestRejection::SizeMismatch {
            digest,
            declared,
            actual,
        } => RegistryError::ManifestInvalid(format!(
            "descriptor of {digest} declares size {declared} but the stored object has {actual} bytes"
        )),
        ManifestRejection::TagImmutable(t) => RegistryError::Denied(format!(
            "tag {t} is immutable in this repository and already names another manifest"
        )),
    }
}

impl Registry {
    /// Stores a manifest pushed to `reference`, with extra tags (`?tag=`). Every referenced blob and child manifest
    /// must already be in the repository (invariant 1); bytes are published before the metadata commits.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        extra_tags: Vec<Tag>,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PutManifest, RegistryError> {
        let limit = self.limits.max_manifest_size;
        if bytes.len() as u64 > limit {
            return Err(RegistryError::ManifestTooLarge {
                size: bytes.len() as u64,
                limit,
            });
        }
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::of(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest pushed as {expected} hashes to {actual}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &bytes),
        };
        let parsed = manifest::parse(&bytes, content_type)?;
        let mut refs = Vec::new();
        if let Some(c) = &parsed.config {
            refs.push(NewRef {
                digest: c.digest.clone(),
                size: c.size,
                kind: RefKind::Config,
            });
        }
        for l in parsed.layers.iter().filter(|l| !l.is_non_distributable()) {
            refs.push(NewRef {
                digest: l.digest.clone(),
                size: l.size,
                kind: RefKind::Layer,
            });
        }
        for c in &parsed.children {
            refs.push(NewRef {
                digest: c.digest.clone(),
                size: c.size,
                kind: RefKind::Child,
            });
        }
        let mut tags = extra_tags;
        if let Reference::Tag(t) = reference {
            tags.push(t.clone());
        }
        let annotations = match &parsed.annotations {
            Some(a) => {
                Some(serde_json::to_string(a).map_err(|e| RegistryError::Internal(e.to_string()))?)
            }
            None => None,
        };
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let record = ManifestRecord {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            artifact_type: parsed.artifact_type.clone(),
            subject: subject.clone(),
            size: bytes.len() as u64,
            annotations,
        };
        let publishing = self.lock_digest(&digest).await;
        self.blobs.put_bytes(&digest, bytes.clone()).await?;
        self.meta
            .put_manifest(NewManifest {
                repo: repo.clone(),
                record,
                refs,
                tags: tags.clone(),
                immutable_tags: self.immutable_tags(repo),
            })
            .await?
            .map_err(rejection_error)?;
        drop(publishing);
        self.manifests.insert(digest.clone(), bytes);
        Ok(PutManifest {
            digest,
            subject,
            tags,
        })
    }

    /// Resolves a reference to a manifest record.
    pub async fn resolve_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestRecord, RegistryError> {
        let rec = match reference {
            Reference::Tag(t) => self.meta.tagged_manifest(repo, t).await?,
            Reference::Digest(d) => self.meta.manifest(repo, d).await?,
        };
        let rec =
            rec.ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}:{reference}")))?;
        self.record_pull(repo, &rec.digest);
        Ok(rec)
    }

    /// A manifest with its bytes, if its media type is acceptable to the client.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<StoredManifest, RegistryError> {
        let record = self.resolve_manifest(repo, reference).await?;
        self.serve_record(record, accept).await
    }

    /// A manifest whose record the caller already looked up, with the same `Accept` rule as GET.
    pub async fn serve_record(
        &self,
        record: ManifestRecord,
        accept: &[&str],
    ) -> Result<StoredManifest, RegistryError> {
        check_accept(&record, accept)?;
        let bytes = self.manifest_bytes(&record).await?;
        Ok(StoredManifest { record, bytes })
    }

    /// A manifest's record for HEAD, with the same `Accept` rule as GET.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestRecord, RegistryError> {
        let record = self.resolve_manifest(repo, reference).await?;
        check_accept(&record, accept)?;
        Ok(record)
    }

    async fn manifest_bytes(&self, record: &ManifestRecord) -> Result<Bytes, RegistryError> {
        if let Some(b) = self.manifests.get(&record.digest) {
            return Ok(b);
        }
        let bytes = self.blobs.get_bytes(&record.digest).await.map_err(|e| {
            tracing::error!(digest = %record.digest, error = %e, "manifest bytes unreadable");
            RegistryError::Internal(format!("stored data for {} is damaged", record.digest))
        })?;
        if Digest::of(record.digest.algorithm(), &bytes) != record.digest {
            tracing::error!(digest = %record.digest, "manifest bytes do not match their digest");
            return Err(RegistryError::Internal(format!(
                "stored data for {} is damaged",
                record.digest
            )));
        }
        self.manifests.insert(record.digest.clone(), bytes.clone());
        Ok(bytes)
    }

    /// DELETE by digest removes the manifest and its tags; by tag removes only the tag.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), RegistryError> {
        match reference {
            Reference::Tag(t) => {
                if self.immutable_tags(repo) {
                    return Err(RegistryError::Denied(format!(
                        "tag {t} is immutable in this repository; it cannot be deleted by tag"
                    )));
                }
                if self.meta.delete_tag(repo, t).await? {
                    Ok(())
                } else {
                    Err(RegistryError::ManifestUnknown(format!("{repo}:{t}")))
                }
            }
            Reference::Digest(d) => match self.meta.delete_manifest(repo, d).await? {
                RemoveOutcome::Removed => Ok(()),
                RemoveOutcome::NotFound => {
                    Err(RegistryError::ManifestUnknown(format!("{repo}@{d}")))
                }
                RemoveOutcome::ReferencedBy(parent) => Err(RegistryError::Referenced(format!(
                    "manifest {d} is referenced by index {parent} in {repo}; delete the index first"
                ))),
            },
        }
    }

    /// The referrers API: an image index listing manifests whose subject is `subject`.
    /// Returns the JSON body and whether an artifactType filter was applied.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Bytes, RegistryError> {
        let rows = self.meta.referrers(repo, subject, artifact_type).await?;
        let manifests: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|r| {
                let mut d = serde_json::json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.to_string(),
                    "size": r.size,
                });
                if let Some(at) = r.artifact_type {
                    d["artifactType"] = at.into();
                }
                if let Some(a) = r
                    .annotations
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
                {
                    d["annotations"] = a;
                }
                d
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": manifests,
        });
        serde_json::to_vec(&index)
            .map(Bytes::from)
            .map_err(|e| RegistryError::Internal(e.to_string()))
    }
}

fn check_accept(record: &ManifestRecord, accept: &[&str]) -> Result<(), RegistryError> {
    if media::accepts(accept, &record.media_type) {
        Ok(())
    } else {
        Err(RegistryError::ManifestUnknown(format!(
            "manifest {} is {} which the request's Accept header does not list",
            record.digest, record.media_type
        )))
    }
}
