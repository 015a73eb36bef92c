//! Retention policies (design §7): per repository glob, which tags to keep — the newest N by push time, names or
//! patterns, anything pulled recently — and how long untagged manifests may stay. Deleting a tag never deletes
//! content by itself: the manifest becomes untagged and garbage collection reclaims it, with all its safeguards.
//!
//! Every deletion is conditional on the state retention decided on: a tag is deleted only if it still points at
//! the same manifest with the same push time (a concurrent push that moved it makes it the newest), and an untagged
//! manifest only if, at commit time, it is still untagged, unreferenced and unused.

use std::time::Duration;

use globset::{Glob, GlobMatcher};
use regex::Regex;

use super::{Maintenance, Progress, check_stop};
use crate::auth::glob::{GlobError, RepoGlob, RepoKind};
use crate::config::RetentionPolicy;
use crate::meta::now;
use crate::metrics::{ObjectKind, metrics};
use crate::oci::{RepoName, name::Tag};
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("retention policy: {0}")]
    RepoGlob(#[from] GlobError),
    #[error("retention policy: bad keep_tags glob {0:?}: {1}")]
    Glob(String, String),
    #[error("retention policy: bad keep_tags regex {0:?}: {1}")]
    Regex(String, String),
    #[error(
        "retention policy for {0:?} has no rule: set keep_newest, keep_tags, keep_pulled_within or delete_untagged_after"
    )]
    KeepsNothing(Vec<String>),
}

/// A tag rule from `keep_tags`.
#[derive(Debug, Clone)]
enum TagRule {
    Glob(GlobMatcher),
    Semver,
    Regex(Regex),
}

impl TagRule {
    fn matches(&self, tag: &str) -> bool {
        match self {
            TagRule::Glob(g) => g.is_match(tag),
            TagRule::Semver => is_semver(tag),
            TagRule::Regex(r) => r.is_match(tag),
        }
    }
}

/// `MAJOR.MINOR.PATCH` with an optional `v` and optional `-pre`/`+build` parts, as image tags use semver.
fn is_semver(tag: &str) -> bool {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let core = t.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a policy says anything about tags; one that does not keeps every tag.
fn has_tag_rules(p: &RetentionPolicy) -> bool {
    p.keep_newest.is_some() || !p.keep_tags.is_empty() || p.keep_pulled_within.is_some()
}

/// A policy with its patterns compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    pub source: RetentionPolicy,
    repos: Vec<RepoGlob>,
    keep_tags: Vec<TagRule>,
}

fn glob(pattern: &str) -> Result<GlobMatcher, PolicyError> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| PolicyError::Glob(pattern.to_owned(), e.to_string()))
}

impl Policy {
    pub fn compile(p: &RetentionPolicy) -> Result<Policy, PolicyError> {
        if !has_tag_rules(p) && p.delete_untagged_after.is_none() {
            // A policy with no rule at all is almost certainly a typo; refuse rather than guess.
            return Err(PolicyError::KeepsNothing(p.repositories.clone()));
        }
        let repos = p
            .repositories
            .iter()
            .map(|r| r.parse())
            .collect::<Result<_, _>>()?;
        let keep_tags = p
            .keep_tags
            .iter()
            .map(|k| {
                if k == "semver" {
                    Ok(TagRule::Semver)
                } else if let Some(expr) = k.strip_prefix("regex:") {
                    Regex::new(expr)
                        .map(TagRule::Regex)
                        .map_err(|e| PolicyError::Regex(expr.to_owned(), e.to_string()))
                } else {
                    glob(k).map(TagRule::Glob)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            source: p.clone(),
            repos,
            keep_tags,
        })
    }

    /// Retention applies to private repositories only; globs read as in access policies.
    fn applies_to(&self, repo: &str) -> bool {
        self.repos
            .iter()
            .any(|g| g.matches(repo, RepoKind::Private))
    }
}

/// Compiles every policy, failing on the first bad one (checked at start-up and by `berth config check`).
pub fn compile_all(policies: &[RetentionPolicy]) -> Result<Vec<Policy>, PolicyError> {
    policies.iter().map(Policy::compile).collect()
}

/// What retention does with one tag or untagged manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub repository: String,
    /// The tag, or `None` for an untagged manifest.
    pub tag: Option<String>,
    pub digest: String,
    pub pushed_at: i64,
    pub last_pulled: Option<i64>,
    /// `keep` or `delete` (or `would delete` in a dry run).
    pub action: &'static str,
    /// Which rule decided.
    pub reason: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetentionSummary {
    pub dry_run: bool,
    pub repositories: u64,
    pub tags_kept: u64,
    pub tags_deleted: u64,
    pub manifests_deleted: u64,
    /// Deletions skipped because a concurrent push changed the tag or an index now needs the manifest.
    pub skipped: u64,
    pub decisions: Vec<Decision>,
}

fn within(t: Option<i64>, window: Option<Duration>, now: i64) -> bool {
    match (t, window) {
        (Some(t), Some(w)) => t >= now - w.as_secs() as i64,
        _ => false,
    }
}

impl Maintenance {
    /// Applies the policies to every private repository one matches. `force_dry_run` reports without deleting
    /// whatever the policies say.
    pub async fn retention(
        &self,
        policies: &[Policy],
        force_dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<RetentionSummary, RegistryError> {
        let run = self.begin("retention", force_dry_run).await?;
        let result = self.apply(policies, force_dry_run, progress).await;
        // The history keeps the counts; the per-tag decisions went to the caller and the audit log.
        let counts = result.as_ref().map(|s| RetentionSummary {
            decisions: Vec::new(),
            ..s.clone()
        });
        let counts = counts.map_err(|e| RegistryError::Internal(e.to_string()));
        self.end("retention", run, &counts, false, progress).await;
        result
    }

    async fn apply(
        &self,
        policies: &[Policy],
        force_dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<RetentionSummary, RegistryError> {
        self.registry.flush_pulls().await?;
        let repos = self.store.repositories().await?;
        let mut s = RetentionSummary {
            dry_run: force_dry_run,
            ..Default::default()
        };
        progress.phase("repositories", repos.len() as u64);
        let t = now();
        for r in repos {
            check_stop(progress)?;
            progress.advance(1);
            if r.mirror.is_some() {
                continue;
            }
            let Some(p) = policies.iter().find(|p| p.applies_to(&r.name)) else {
                continue;
            };
            let Ok(repo) = r.name.parse::<RepoName>() else {
                continue;
            };
            s.repositories += 1;
            let dry = force_dry_run || p.source.dry_run;
            let delete_word = if dry { "would delete" } else { "delete" };
            for (i, tag) in self.store.tag_details(&repo).await?.into_iter().enumerate() {
                let reason = if !has_tag_rules(&p.source) {
                    Some("the policy has no tag rules".to_owned())
                } else if p.source.keep_newest.is_some_and(|n| i < n) {
                    Some(format!("newest {}", p.source.keep_newest.unwrap_or(0)))
                } else if let Some(k) = p
                    .keep_tags
                    .iter()
                    .zip(&p.source.keep_tags)
                    .find(|(rule, _)| rule.matches(&tag.name))
                {
                    Some(format!("matches {:?}", k.1))
                } else if within(tag.last_pulled, p.source.keep_pulled_within, t) {
                    Some("pulled recently".to_owned())
                } else {
                    None
                };
                let mut d = Decision {
                    repository: r.name.clone(),
                    tag: Some(tag.name.clone()),
                    digest: tag.digest.to_string(),
                    pushed_at: tag.updated_at,
                    last_pulled: tag.last_pulled,
                    action: "keep",
                    reason: reason.clone().unwrap_or_default(),
                };
                if reason.is_some() {
                    s.tags_kept += 1;
                } else {
                    d.action = delete_word;
                    d.reason = "no keep rule matched".to_owned();
                    if dry {
                        s.tags_deleted += 1;
                    } else {
                        let Ok(name) = tag.name.parse::<Tag>() else {
                            continue;
                        };
                        if self
                            .store
                            .delete_tag_if(&repo, &name, &tag.digest, tag.updated_at)
                            .await?
                        {
                            s.tags_deleted += 1;
                            metrics()
                                .retention_deleted
                                .get_or_create(&ObjectKind { object: "tag" })
                                .inc();
                            tracing::info!(target: "audit", repository = %repo, tag = %tag.name,
                                digest = %tag.digest, "retention deleted tag");
                        } else {
                            s.skipped += 1;
                            d.action = "keep";
                            d.reason = "pushed again meanwhile".to_owned();
                        }
                    }
                }
                s.decisions.push(d);
            }
            if let Some(after) = p.source.delete_untagged_after {
                let cut = t - after.as_secs() as i64;
                for m in self.store.untagged_manifests(&repo).await? {
                    if m.created_at.max(m.last_pulled.unwrap_or(0)) >= cut {
                        continue;
                    }
                    let mut d = Decision {
                        repository: r.name.clone(),
                        tag: None,
                        digest: m.digest.to_string(),
                        pushed_at: m.created_at,
                        last_pulled: m.last_pulled,
                        action: delete_word,
                        reason: format!(
                            "untagged for more than {}",
                            humantime::format_duration(after)
                        ),
                    };
                    if dry {
                        s.manifests_deleted += 1;
                    } else {
                        // The same re-checked deletion garbage collection uses: still untagged, unneeded and
                        // unused at commit time, or it stays.
                        let gone = self
                            .store
                            .gc_delete_manifests(vec![(r.id, m.digest.to_string())], cut)
                            .await?;
                        if gone.is_empty() {
                            s.skipped += 1;
                            d.action = "keep";
                            d.reason = "tagged, referenced or used meanwhile".to_owned();
                        } else {
                            s.manifests_deleted += 1;
                            metrics()
                                .retention_deleted
                                .get_or_create(&ObjectKind { object: "manifest" })
                                .inc();
                            tracing::info!(target: "audit", repository = %repo, digest = %m.digest,
                                "retention deleted untagged manifest");
                        }
                    }
                    s.decisions.push(d);
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keep_tags: &[&str]) -> Policy {
        Policy::compile(&RetentionPolicy {
            repositories: vec!["team/*".into()],
            keep_newest: None,
            keep_tags: keep_tags.iter().map(|s| s.to_string()).collect(),
            keep_pulled_within: None,
            delete_untagged_after: None,
            dry_run: false,
        })
        .unwrap()
    }

    #[test]
    fn tag_rules() {
        let p = policy(&["latest", "release-*", "semver", "regex:^nightly-\\d+$"]);
        let keeps = |t: &str| p.keep_tags.iter().any(|r| r.matches(t));
        for t in [
            "latest",
            "release-1",
            "1.2.3",
            "v1.2.3-rc.1",
            "nightly-20260101",
        ] {
            assert!(keeps(t), "{t} should be kept");
        }
        for t in ["latest2", "1.2", "v1.x.3", "nightly-x", "dev"] {
            assert!(!keeps(t), "{t} should not be kept");
        }
    }

    /// The same glob grammar as access policies: `*` within a path component, `**` across.
    #[test]
    fn repository_globs_read_as_in_access_policies() {
        let p = policy(&["latest"]);
        assert!(p.applies_to("team/app"));
        assert!(!p.applies_to("team/a/b"));
        assert!(!p.applies_to("other/app"));
        let mut deep = p.source.clone();
        deep.repositories = vec!["team/**".into()];
        assert!(Policy::compile(&deep).unwrap().applies_to("team/a/b"));
        let mut bad = p.source.clone();
        bad.repositories = vec!["Team/*".into()];
        assert!(matches!(
            Policy::compile(&bad),
            Err(PolicyError::RepoGlob(_))
        ));
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        let r = Policy::compile(&RetentionPolicy {
            repositories: vec!["*".into()],
            keep_newest: None,
            keep_tags: vec![],
            keep_pulled_within: None,
            delete_untagged_after: None,
            dry_run: false,
        });
        assert!(matches!(r, Err(PolicyError::KeepsNothing(_))));
    }
}
