//! The integrity scrubber (design §7, invariant 8): walks repositories → manifests → their references → blobs and
//! checks that every reference has its target and every blob row its whole bytes (`deep`: bytes that hash to the
//! digest). Damage in a mirror's cache is repaired by dropping the entry, so the next pull fetches it again; damage
//! to private content is reported, never deleted.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{Maintenance, Progress, check_stop, interrupted};
use crate::metrics::{ProblemKind, metrics};
use crate::oci::{Digest, RepoName};
use crate::registry::RegistryError;
use crate::store::StoreError;

/// Blob rows read per page.
const PAGE: usize = 512;

/// Every kind of problem, so the metric of each is reset to the last run's count.
pub const PROBLEM_KINDS: [&str; 5] = [
    "dangling_reference",
    "missing_bytes",
    "size_mismatch",
    "digest_mismatch",
    "unreadable",
];

#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Re-hash every byte.
    pub deep: bool,
    /// Bytes per second to read at most when hashing.
    pub max_rate: Option<u64>,
    /// Only report: do not drop damaged mirror entries.
    pub report_only: bool,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// One of `PROBLEM_KINDS`.
    pub kind: &'static str,
    pub digest: String,
    /// The repository, for a reference problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub detail: String,
    /// `reported` (private content, never deleted) or `dropped from cache` (a mirror entry, fetched again).
    pub action: &'static str,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScrubSummary {
    pub deep: bool,
    pub repositories: u64,
    pub manifests: u64,
    pub references: u64,
    pub blobs: u64,
    pub bytes_hashed: u64,
    pub repaired: u64,
    pub problems: Vec<Problem>,
}

/// What is wrong with a blob's stored bytes, if anything.
enum BlobState {
    Ok,
    Bad(&'static str, String),
}

impl Maintenance {
    /// One scrub, recorded in the run history and in `berth_scrub_*` metrics.
    pub async fn scrub(
        &self,
        opts: &ScrubOptions,
        progress: &dyn Progress,
    ) -> Result<ScrubSummary, RegistryError> {
        let run = self.begin("scrub", opts.report_only).await?;
        let result = self.walk(opts, progress).await;
        let problems = result.as_ref().is_ok_and(|s| !s.problems.is_empty());
        self.end("scrub", run, &result, problems, progress).await;
        if let Ok(s) = &result {
            let m = metrics();
            for kind in PROBLEM_KINDS {
                let n = s.problems.iter().filter(|p| p.kind == kind).count();
                m.scrub_problems
                    .get_or_create(&ProblemKind { kind })
                    .set(n as i64);
            }
            m.scrub_checked.inc_by(s.manifests + s.references + s.blobs);
            m.scrub_repaired.inc_by(s.repaired);
            for p in &s.problems {
                tracing::error!(kind = p.kind, digest = %p.digest, repository = p.repository.as_deref().unwrap_or("-"),
                    detail = %p.detail, action = p.action, "scrub found a problem");
            }
        }
        result
    }

    async fn walk(
        &self,
        opts: &ScrubOptions,
        progress: &dyn Progress,
    ) -> Result<ScrubSummary, RegistryError> {
        let mut s = ScrubSummary {
            deep: opts.deep,
            ..Default::default()
        };
        let repos = self.store.repositories().await?;
        progress.phase("repositories", repos.len() as u64);
        for r in &repos {
            check_stop(progress)?;
            progress.advance(1);
            let Ok(repo) = r.name.parse::<RepoName>() else {
                continue;
            };
            s.repositories += 1;
            s.manifests += self.store.manifests_of(&repo).await?.len() as u64;
            for c in self.store.reference_checks(&repo).await? {
                s.references += 1;
                if !c.present {
                    s.problems.push(Problem {
                        kind: "dangling_reference",
                        digest: c.target.to_string(),
                        repository: Some(r.name.clone()),
                        detail: format!(
                            "{} {} of manifest {} is missing",
                            c.kind.as_str(),
                            c.target,
                            c.manifest
                        ),
                        action: "reported",
                    });
                }
            }
        }

        let stats = self.store.stats().await?;
        progress.phase(
            if opts.deep {
                "hashing blobs"
            } else {
                "checking blobs"
            },
            if opts.deep {
                stats.blob_bytes
            } else {
                stats.blobs
            },
        );
        let started = Instant::now();
        let mut after = None;
        loop {
            let page = self.store.blobs_page(after.clone(), PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.to_string());
            for (d, size) in page {
                check_stop(progress)?;
                s.blobs += 1;
                let state = self
                    .check_blob(&d, size, opts, started, &mut s.bytes_hashed, progress)
                    .await?;
                if !opts.deep {
                    progress.advance(1);
                }
                if let BlobState::Bad(kind, detail) = state {
                    let action = self.repair(&d, opts).await?;
                    if action != "reported" {
                        s.repaired += 1;
                    }
                    s.problems.push(Problem {
                        kind,
                        digest: d.to_string(),
                        repository: None,
                        detail,
                        action,
                    });
                }
            }
        }
        Ok(s)
    }

    async fn check_blob(
        &self,
        d: &Digest,
        size: u64,
        opts: &ScrubOptions,
        started: Instant,
        hashed: &mut u64,
        progress: &dyn Progress,
    ) -> Result<BlobState, RegistryError> {
        let store = self.registry.blob_store();
        let actual = match store.stat(d).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Ok(BlobState::Bad(
                    "missing_bytes",
                    format!("no bytes for a {size}-byte blob"),
                ));
            }
            Err(e) => return Ok(BlobState::Bad("unreadable", e.to_string())),
        };
        if actual != size {
            return Ok(BlobState::Bad(
                "size_mismatch",
                format!("{actual} bytes stored, {size} recorded"),
            ));
        }
        if !opts.deep {
            return Ok(BlobState::Ok);
        }
        let mut reader = match store.open(d, None).await {
            Ok(r) => r,
            Err(StoreError::NotFound) => {
                return Ok(BlobState::Bad(
                    "missing_bytes",
                    "bytes vanished while scrubbing".into(),
                ));
            }
            Err(e) => return Ok(BlobState::Bad("unreadable", e.to_string())),
        };
        let mut h = d.algorithm().hasher();
        while let Some(chunk) = reader.body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(BlobState::Bad("unreadable", e.to_string())),
            };
            check_stop(progress)?;
            h.update(&chunk);
            *hashed += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
            if let Some(rate) = opts.max_rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(*hashed as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed())
                    && !progress.throttle(wait).await
                {
                    return Err(interrupted());
                }
            }
        }
        let got = h.finish();
        if &got != d {
            return Ok(BlobState::Bad(
                "digest_mismatch",
                format!("bytes hash to {got}"),
            ));
        }
        Ok(BlobState::Ok)
    }

    /// Drops a damaged blob if it is only a mirror's cache (it is fetched again on the next pull); private content
    /// is only reported.
    async fn repair(&self, d: &Digest, opts: &ScrubOptions) -> Result<&'static str, RegistryError> {
        if opts.report_only || self.store.is_private(d).await? {
            return Ok("reported");
        }
        if !self.store.drop_cached(d).await? {
            return Ok("reported");
        }
        // The bytes are damaged, so nobody is served from them: no need to wait before removing them.
        self.delete_bytes_unless_row(d).await?;
        self.store.clear_tombstone(d).await?;
        tracing::warn!(digest = %d, "dropped a damaged mirror cache entry; it will be fetched again");
        Ok("dropped from cache")
    }
}
