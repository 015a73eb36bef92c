//! `berth import-distribution`: migrates the filesystem storage of a stopped CNCF distribution (`registry:2`,
//! Debian's `docker-registry`) into berth. The layout read (distribution's storage driver paths, under
//! `<root>/docker/registry/v2`):
//!
//! ```text
//! blobs/sha256/<first two hex>/<hex>/data                      every blob and manifest, by digest
//! repositories/<name>/_manifests/revisions/sha256/<hex>/link    the manifests of a repository
//! repositories/<name>/_manifests/tags/<tag>/current/link        what a tag points at ("sha256:<hex>")
//! repositories/<name>/_layers/…, _uploads/…                     not needed: manifests say which blobs count
//! ```
//!
//! Every manifest revision is read, its digest checked, and its config and layers streamed into berth through the
//! verified publish path (hashed again on the way). Whatever is broken — a missing or truncated blob, one whose
//! bytes do not hash to its digest, an index whose child is not a revision of the repository, a tag pointing
//! nowhere — is reported with repository, tag and digest, and that manifest, any index containing it and any tag
//! on them are skipped; everything else is imported. Re-running is cheap: manifests and blobs berth already has in
//! the repository are recognised by one lookup each and not read again. Blobs no manifest references (distribution
//! keeps them until its own garbage collection) are not imported.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::import::verified;
use super::progress::Progress;
use super::target::{SharedDestination, TargetError};
use crate::oci::name::Tag;
use crate::oci::{Descriptor, Digest, Reference, RepoName, manifest};
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    #[error(
        "{0} is not a distribution storage root (no docker/registry/v2 with blobs/ and repositories/ in it)"
    )]
    NotARoot(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The destination failed in a way that is not about one piece of content (server down, disk full…).
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// One thing that could not be imported, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Default, Clone)]
pub struct DistributionSummary {
    pub repositories: usize,
    pub tags: usize,
    pub manifests: usize,
    pub manifests_present: usize,
    pub blobs: usize,
    pub blobs_present: usize,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub summary: DistributionSummary,
    pub problems: Vec<Problem>,
}

/// Whether a destination error is about this piece of content (report it and go on) or about the destination
/// itself (stop: going on would report everything as broken).
fn content_problem(e: &TargetError) -> Option<String> {
    match e {
        TargetError::NotFound(_) => Some(e.to_string()),
        TargetError::Refused { status, .. }
            if *status < 500 && *status != 401 && *status != 403 =>
        {
            Some(e.to_string())
        }
        TargetError::Registry { source, .. } => match source {
            RegistryError::Internal(_) | RegistryError::Unavailable { .. } => None,
            _ => Some(e.to_string()),
        },
        _ => None,
    }
}

/// Finds the `v2` directory under `root` (or `root` itself).
fn v2_dir(root: &Path) -> Result<PathBuf, DistributionError> {
    for candidate in [root.join("docker/registry/v2"), root.to_path_buf()] {
        if candidate.join("blobs").is_dir() && candidate.join("repositories").is_dir() {
            return Ok(candidate);
        }
    }
    Err(DistributionError::NotARoot(root.to_path_buf()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DistributionError + '_ {
    move |source| DistributionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Repository directories (those with `_manifests`), as (name, path), sorted by name.
fn repositories(dir: &Path) -> Result<Vec<(String, PathBuf)>, DistributionError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((name, path)) = stack.pop() {
        if !name.is_empty() && path.join("_manifests").is_dir() {
            out.push((name.clone(), path.clone()));
        }
        for e in std::fs::read_dir(&path).map_err(io(&path))? {
            let e = e.map_err(io(&path))?;
            let file_name = e.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('_') || !e.file_type().map_err(io(&path))?.is_dir() {
                continue;
            }
            let child = if name.is_empty() {
                file_name
            } else {
                format!("{name}/{file_name}")
            };
            stack.push((child, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a `link` file: the digest it names.
fn read_link(path: &Path) -> Result<Digest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.trim()
        .parse::<Digest>()
        .map_err(|e| format!("{} does not hold a digest: {e}", path.display()))
}

/// Sorted subdirectory names of `dir` (empty when it does not exist).
fn subdirs(dir: &Path) -> Result<Vec<String>, DistributionError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io(dir))?;
        if e.file_type().map_err(io(dir))?.is_dir() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

struct Importer<'a> {
    v2: PathBuf,
    dest: SharedDestination,
    progress: &'a Progress,
    report: Report,
    /// Blobs found broken in this run (missing, truncated, corrupt), with why; not read again.
    bad_blobs: HashMap<Digest, String>,
}

pub async fn import(
    dest: SharedDestination,
    root: &Path,
    progress: &Progress,
) -> Result<Report, DistributionError> {
    let v2 = v2_dir(root)?;
    let repos = repositories(&v2.join("repositories"))?;
    let mut imp = Importer {
        v2,
        dest,
        progress,
        report: Report::default(),
        bad_blobs: HashMap::new(),
    };
    for (name, path) in repos {
        let repo = match name.parse::<RepoName>() {
            Ok(r) => r,
            Err(e) => {
                imp.problem(
                    &name,
                    None,
                    None,
                    format!("not a valid repository name: {e}"),
                );
                continue;
            }
        };
        progress.set_message(format!("{repo}"));
        imp.import_repo(&repo, &path).await?;
        imp.report.summary.repositories += 1;
    }
    Ok(imp.report)
}

/// A revision of a repository, loaded.
struct Revision {
    bytes: Bytes,
    parsed: manifest::ParsedManifest,
}

impl Importer<'_> {
    fn problem(&mut self, repo: &str, tag: Option<&str>, digest: Option<&Digest>, message: String) {
        let p = Problem {
            repo: repo.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(|d| d.to_string()),
            message,
        };
        self.progress.note(format!("problem: {p}"));
        self.report.problems.push(p);
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.v2
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    async fn import_repo(&mut self, repo: &RepoName, dir: &Path) -> Result<(), DistributionError> {
        let r = repo.as_str();
        // Revisions: the manifests of the repository.
        let mut revisions: BTreeMap<Digest, Option<Revision>> = BTreeMap::new();
        for alg in subdirs(&dir.join("_manifests/revisions"))? {
            let alg_dir = dir.join("_manifests/revisions").join(&alg);
            for hex in subdirs(&alg_dir)? {
                let link = alg_dir.join(&hex).join("link");
                let digest = match read_link(&link) {
                    Ok(d) if d.to_string() == format!("{alg}:{hex}") => d,
                    Ok(d) => {
                        self.problem(
                            r,
                            None,
                            Some(&d),
                            format!("revision link {} names another digest", link.display()),
                        );
                        continue;
                    }
                    // A revision directory without its link is a manifest distribution does not serve.
                    Err(_) if !link.exists() => continue,
                    Err(m) => {
                        self.problem(r, None, None, m);
                        continue;
                    }
                };
                let loaded = self.load_manifest(repo, &digest).await?;
                revisions.insert(digest, loaded);
            }
        }

        // Decide every revision: images first, then indexes once their children are decided.
        let mut ok: HashMap<Digest, bool> = HashMap::new();
        for (d, rev) in &revisions {
            if rev.is_none() {
                ok.insert(d.clone(), false);
            }
        }
        let images: Vec<Digest> = revisions
            .iter()
            .filter_map(|(d, r)| {
                r.as_ref()
                    .filter(|r| !r.parsed.is_index())
                    .map(|_| d.clone())
            })
            .collect();
        for d in images {
            let good = self.import_image(repo, &d, &revisions).await?;
            ok.insert(d, good);
        }
        loop {
            let mut progressed = false;
            let pending: Vec<Digest> = revisions
                .keys()
                .filter(|d| !ok.contains_key(*d))
                .cloned()
                .collect();
            for d in &pending {
                let Some(Some(rev)) = revisions.get(d) else {
                    continue;
                };
                let children: Vec<Descriptor> = rev.parsed.children.clone();
                if children
                    .iter()
                    .any(|c| revisions.contains_key(&c.digest) && !ok.contains_key(&c.digest))
                {
                    continue;
                }
                progressed = true;
                let missing: Vec<&Descriptor> = children
                    .iter()
                    .filter(|c| !revisions.contains_key(&c.digest))
                    .collect();
                let broken: Vec<&Descriptor> = children
                    .iter()
                    .filter(|c| ok.get(&c.digest) == Some(&false))
                    .collect();
                for c in &missing {
                    self.problem(
                        r,
                        None,
                        Some(d),
                        format!(
                            "index child {} is not a manifest of the repository; index skipped",
                            c.digest
                        ),
                    );
                }
                for c in &broken {
                    self.problem(
                        r,
                        None,
                        Some(d),
                        format!(
                            "index child {} could not be imported; index skipped",
                            c.digest
                        ),
                    );
                }
                let good = if missing.is_empty() && broken.is_empty() {
                    let bytes = rev.bytes.clone();
                    let media_type = rev.parsed.media_type.clone();
                    self.store_manifest(repo, d, &media_type, bytes).await?
                } else {
                    false
                };
                ok.insert(d.clone(), good);
            }
            if !progressed {
                break;
            }
        }
        for d in revisions.keys() {
            if !ok.contains_key(d) {
                self.problem(
                    r,
                    None,
                    Some(d),
                    "index children form a cycle; skipped".into(),
                );
            }
        }

        // Tags.
        for tag in subdirs(&dir.join("_manifests/tags"))? {
            let link = dir.join("_manifests/tags").join(&tag).join("current/link");
            let digest = match read_link(&link) {
                Ok(d) => d,
                Err(m) => {
                    self.problem(r, Some(&tag), None, m);
                    continue;
                }
            };
            let t = match tag.parse::<Tag>() {
                Ok(t) => t,
                Err(e) => {
                    self.problem(
                        r,
                        Some(&tag),
                        Some(&digest),
                        format!("not a valid tag: {e}"),
                    );
                    continue;
                }
            };
            match ok.get(&digest) {
                None => self.problem(
                    r,
                    Some(&tag),
                    Some(&digest),
                    "tag points at a manifest that is not a revision of the repository; tag skipped".into(),
                ),
                Some(false) => self.problem(
                    r,
                    Some(&tag),
                    Some(&digest),
                    "tag skipped: its manifest could not be imported".into(),
                ),
                Some(true) => {
                    let Some(Some(rev)) = revisions.get(&digest) else {
                        continue;
                    };
                    let by_tag = Reference::Tag(t);
                    if self.dest.manifest_digest(repo, &by_tag).await?.as_ref() != Some(&digest) {
                        let media_type = rev.parsed.media_type.clone();
                        if let Err(e) = self
                            .dest
                            .put_manifest(repo, &by_tag, &media_type, rev.bytes.clone())
                            .await
                        {
                            match content_problem(&e) {
                                Some(m) => {
                                    self.problem(r, Some(&tag), Some(&digest), m);
                                    continue;
                                }
                                None => return Err(e.into()),
                            }
                        }
                    }
                    self.report.summary.tags += 1;
                }
            }
        }
        Ok(())
    }

    /// Reads and checks a revision's manifest bytes; `None` (with a problem reported) when unusable.
    async fn load_manifest(
        &mut self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Revision>, DistributionError> {
        let r = repo.as_str();
        let path = self.blob_path(digest);
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.problem(r, None, Some(digest), "manifest blob is missing".into());
                return Ok(None);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if size > super::MAX_JSON_SIZE {
            self.problem(
                r,
                None,
                Some(digest),
                format!("manifest is {size} bytes, over the 16 MiB limit"),
            );
            return Ok(None);
        }
        let bytes = Bytes::from(tokio::fs::read(&path).await.map_err(io(&path))?);
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            self.problem(
                r,
                None,
                Some(digest),
                format!("manifest blob is corrupt: it hashes to {actual}"),
            );
            return Ok(None);
        }
        match manifest::parse(&bytes, None) {
            Ok(parsed) => Ok(Some(Revision { bytes, parsed })),
            Err(e) => {
                self.problem(r, None, Some(digest), format!("manifest not imported: {e}"));
                Ok(None)
            }
        }
    }

    /// Imports an image manifest's blobs, then the manifest; false (problems reported) when anything is broken.
    async fn import_image(
        &mut self,
        repo: &RepoName,
        digest: &Digest,
        revisions: &BTreeMap<Digest, Option<Revision>>,
    ) -> Result<bool, DistributionError> {
        let Some(Some(rev)) = revisions.get(digest) else {
            return Ok(false);
        };
        if self
            .dest
            .manifest_digest(repo, &Reference::Digest(digest.clone()))
            .await?
            .as_ref()
            == Some(digest)
        {
            // Already imported (a re-run): the registry holds a manifest only with all it references.
            self.report.summary.manifests_present += 1;
            return Ok(true);
        }
        let mut good = true;
        let blobs: Vec<Descriptor> = rev
            .parsed
            .config
            .iter()
            .chain(
                rev.parsed
                    .layers
                    .iter()
                    .filter(|l| !l.is_non_distributable()),
            )
            .cloned()
            .collect();
        for b in &blobs {
            if let Err(m) = self.import_blob(repo, b).await? {
                self.problem(
                    repo.as_str(),
                    None,
                    Some(digest),
                    format!("blob {}: {m}; manifest skipped", b.digest),
                );
                good = false;
            }
        }
        if !good {
            return Ok(false);
        }
        let media_type = rev.parsed.media_type.clone();
        self.store_manifest(repo, digest, &media_type, rev.bytes.clone())
            .await
    }

    async fn store_manifest(
        &mut self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<bool, DistributionError> {
        let by_digest = Reference::Digest(digest.clone());
        if self.dest.manifest_digest(repo, &by_digest).await?.as_ref() == Some(digest) {
            self.report.summary.manifests_present += 1;
            return Ok(true);
        }
        match self
            .dest
            .put_manifest(repo, &by_digest, media_type, bytes)
            .await
        {
            Ok(()) => {
                self.report.summary.manifests += 1;
                Ok(true)
            }
            Err(e) => match content_problem(&e) {
                Some(m) => {
                    self.problem(repo.as_str(), None, Some(digest), m);
                    Ok(false)
                }
                None => Err(e.into()),
            },
        }
    }

    /// Makes one blob present in `repo`. `Ok(Err(why))` when the source copy is broken.
    async fn import_blob(
        &mut self,
        repo: &RepoName,
        desc: &Descriptor,
    ) -> Result<Result<(), String>, DistributionError> {
        let digest = &desc.digest;
        if let Some(why) = self.bad_blobs.get(digest) {
            return Ok(Err(why.clone()));
        }
        if self.dest.has_blob(repo, digest).await? {
            self.report.summary.blobs_present += 1;
            return Ok(Ok(()));
        }
        let path = self.blob_path(digest);
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(self.bad(digest, "data file is missing".into())));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if size != desc.size {
            let why = format!(
                "data file is {size} bytes, the manifest says {} (truncated?)",
                desc.size
            );
            return Ok(Err(self.bad(digest, why)));
        }
        self.progress.add_total(size);
        self.progress.set_message(format!("{repo} {digest}"));
        let file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        let body = Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10));
        let (body, check) = verified(body, digest.clone(), size, self.progress.clone());
        let result = self.dest.put_blob(repo, digest, size, body).await;
        if let Some(m) = check.mismatch() {
            let why = match m {
                super::import::StreamMismatch::Digest { actual, .. } => {
                    format!("data file is corrupt: it hashes to {actual}")
                }
                super::import::StreamMismatch::Size { actual, .. } => {
                    format!("data file changed while read ({actual} bytes)")
                }
            };
            return Ok(Err(self.bad(digest, why)));
        }
        match result {
            Ok(()) => {
                self.report.summary.blobs += 1;
                self.report.summary.bytes += size;
                Ok(Ok(()))
            }
            Err(e) => match content_problem(&e) {
                Some(m) => Ok(Err(m)),
                None => Err(e.into()),
            },
        }
    }

    fn bad(&mut self, digest: &Digest, why: String) -> String {
        self.bad_blobs.insert(digest.clone(), why.clone());
        why
    }
}
