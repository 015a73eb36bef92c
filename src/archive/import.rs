//! `berth import`: OCI image layout tars (what `berth export`, `skopeo copy … oci-archive:`, `docker save` since
//! Docker 25 and `ctr export` write) and `docker save` tars (`manifest.json` with `Config`/`RepoTags`/`Layers`, as
//! older Docker and `skopeo copy … docker-archive:` write) into a registry.
//!
//! An archive with an `index.json` is read as an OCI layout (digests preserved byte for byte); otherwise its
//! `manifest.json` is read as a docker archive and a Docker schema2 manifest is built for each image. Every blob is
//! hashed while it is streamed to the registry (which verifies it again before publishing); manifests are pushed
//! children first, so a failure at any point leaves nothing half visible: at most some verified blobs that no
//! manifest references yet, which a re-run reuses.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::progress::Progress;
use super::tar_index::TarIndex;
use super::target::{SharedDestination, TargetError};
use super::{ArchiveError, ImageRef};
use crate::oci::name::Tag;
use crate::oci::{Digest, DigestHasher, NameError, Reference, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// What `--tag` asks for: the repository for every image, or the repository and tag of the archive's one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOverride {
    Repo(RepoName),
    Image(RepoName, Tag),
}

impl TagOverride {
    /// `REPO` or `REPO:TAG`.
    pub fn parse(s: &str) -> Result<TagOverride, NameError> {
        match s.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => {
                Ok(TagOverride::Image(repo.parse()?, tag.parse()?))
            }
            _ => Ok(TagOverride::Repo(s.parse()?)),
        }
    }
}

/// The name an archive gives an image: a full `REPO:TAG`, only a tag (an OCI `ref.name` such as `v1`), or none.
#[derive(Debug, Clone)]
pub enum ArchiveName {
    Image(ImageRef),
    TagOnly(Tag),
    None,
}

impl ArchiveName {
    /// Reads an OCI `ref.name` or docker `RepoTags` entry: with a `/` or `:` it is a reference, else a bare tag.
    pub fn parse(s: &str) -> Result<ArchiveName, ArchiveError> {
        if s.contains('/') || s.contains(':') || s.contains('@') {
            ImageRef::parse_foreign(s)
                .map(ArchiveName::Image)
                .map_err(|e| ArchiveError::Invalid(format!("image name {s:?}: {e}")))
        } else {
            s.parse::<Tag>()
                .map(ArchiveName::TagOnly)
                .map_err(|e| ArchiveError::Invalid(format!("image name {s:?}: {e}")))
        }
    }

    fn describe(&self) -> String {
        match self {
            ArchiveName::Image(r) => r.display(),
            ArchiveName::TagOnly(t) => format!("tag {t}"),
            ArchiveName::None => "an unnamed image".into(),
        }
    }
}

/// Where one image of the archive goes.
#[derive(Debug, Clone)]
pub struct Placement {
    pub repo: RepoName,
    /// `None`: pushed by digest only.
    pub tag: Option<Tag>,
}

/// Applies `--tag` to the names found in the archive.
pub fn place(
    names: &[ArchiveName],
    tag: Option<&TagOverride>,
) -> Result<Vec<Placement>, ArchiveError> {
    if let Some(TagOverride::Image(repo, t)) = tag {
        if names.len() != 1 {
            return Err(ArchiveError::Invalid(format!(
                "--tag REPO:TAG needs an archive with one image; this one has {} (give --tag REPO to keep their tags)",
                names.len()
            )));
        }
        return Ok(vec![Placement {
            repo: repo.clone(),
            tag: Some(t.clone()),
        }]);
    }
    let repo_override = match tag {
        Some(TagOverride::Repo(r)) => Some(r),
        _ => None,
    };
    names
        .iter()
        .map(|n| {
            let (repo, t) = match n {
                ArchiveName::Image(r) => (
                    Some(r.repo.clone()),
                    match &r.reference {
                        Reference::Tag(t) => Some(t.clone()),
                        Reference::Digest(_) => None,
                    },
                ),
                ArchiveName::TagOnly(t) => (None, Some(t.clone())),
                ArchiveName::None => (None, None),
            };
            match (repo_override.cloned().or(repo), t) {
                (Some(repo), tag) => Ok(Placement { repo, tag }),
                (None, _) => Err(ArchiveError::Invalid(format!(
                    "the archive names {} without a repository; give one with --tag REPO[:TAG]",
                    n.describe()
                ))),
            }
        })
        .collect()
}

/// What an import did, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct ImportSummary {
    pub images: usize,
    pub manifests: usize,
    pub blobs_uploaded: usize,
    pub blobs_present: usize,
    pub bytes_uploaded: u64,
}

/// Imports every image of the archive at `path`.
pub async fn import(
    dest: SharedDestination,
    path: &std::path::Path,
    tag: Option<&TagOverride>,
    progress: &Progress,
) -> Result<ImportSummary, ImportError> {
    progress.set_message(format!("reading {}", path.display()));
    let p = path.to_path_buf();
    let index = tokio::task::spawn_blocking(move || TarIndex::scan(&p))
        .await
        .map_err(|e| ArchiveError::Invalid(format!("scan task failed: {e}")))??;
    let index = Arc::new(index);
    let mut summary = ImportSummary::default();
    if index.contains("index.json") {
        super::layout::import(&*dest, &index, tag, progress, &mut summary).await?;
    } else if index.contains("manifest.json") {
        super::docker::import(&*dest, &index, tag, progress, &mut summary).await?;
    } else if index.contains("repositories") {
        return Err(ArchiveError::Unsupported(
            "this is a `docker save` archive from Docker before 1.10 (no manifest.json): it has no image config \
             to build a manifest from; load it into a newer Docker and save it again"
                .into(),
        )
        .into());
    } else {
        return Err(ArchiveError::Invalid(
            "neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)".into(),
        )
        .into());
    }
    Ok(summary)
}

/// Uploads one blob from the archive unless the repository already has it (or can link it from another
/// repository). The bytes are hashed on the way; a mismatch fails the upload before the registry publishes
/// anything, and is reported against the archive entry.
#[allow(clippy::too_many_arguments)]
pub async fn push_blob(
    dest: &dyn super::target::Destination,
    index: &TarIndex,
    entry: &str,
    repo: &RepoName,
    digest: &Digest,
    size: u64,
    progress: &Progress,
    summary: &mut ImportSummary,
) -> Result<(), ImportError> {
    progress.add_total(size);
    if dest.has_blob(repo, digest).await? {
        summary.blobs_present += 1;
        progress.advance(size);
        return Ok(());
    }
    progress.set_message(format!("{repo} {digest}"));
    let (actual_size, body) = index.open(entry).await?;
    if actual_size != size {
        return Err(ArchiveError::SizeMismatch {
            name: entry.to_owned(),
            expected: size,
            actual: actual_size,
        }
        .into());
    }
    let (body, check) = verified(body, digest.clone(), size, progress.clone());
    let result = dest.put_blob(repo, digest, size, body).await;
    if let Some(e) = check.mismatch() {
        return Err(e.named(entry).into());
    }
    result?;
    summary.blobs_uploaded += 1;
    summary.bytes_uploaded += size;
    Ok(())
}

/// A digest or size mismatch found while streaming, before the archive entry's name is attached.
pub enum StreamMismatch {
    Digest { expected: Digest, actual: Digest },
    Size { expected: u64, actual: u64 },
}

impl StreamMismatch {
    pub fn named(self, name: &str) -> ArchiveError {
        match self {
            StreamMismatch::Digest { expected, actual } => ArchiveError::DigestMismatch {
                name: name.to_owned(),
                expected,
                actual,
            },
            StreamMismatch::Size { expected, actual } => ArchiveError::SizeMismatch {
                name: name.to_owned(),
                expected,
                actual,
            },
        }
    }
}

/// Shared state of a [`verified`] stream: what was hashed so far.
type HashState = Arc<Mutex<(DigestHasher, u64)>>;

/// The verdict on a [`verified`] stream, asked after the upload.
pub struct StreamCheck {
    state: HashState,
    digest: Digest,
    size: u64,
    slot: Arc<Mutex<Option<StreamMismatch>>>,
}

impl StreamCheck {
    /// The mismatch found, if any. An HTTP client stops reading the body once it has sent `Content-Length` bytes,
    /// so the stream's own end check may never run: the bytes hashed so far are judged here too.
    pub fn mismatch(&self) -> Option<StreamMismatch> {
        if let Some(m) = self.slot.lock().take() {
            return Some(m);
        }
        let (hasher, count) = {
            let s = self.state.lock();
            (s.0.clone(), s.1)
        };
        if count > self.size {
            return Some(StreamMismatch::Size {
                expected: self.size,
                actual: count,
            });
        }
        if count < self.size {
            // Not everything was sent (the upload failed first): nothing to judge.
            return None;
        }
        let actual = hasher.finish();
        (actual != self.digest).then(|| StreamMismatch::Digest {
            expected: self.digest.clone(),
            actual,
        })
    }
}

/// Wraps a body so it is hashed and counted as the registry reads it; after the last chunk, a mismatch turns into
/// a stream error (so a reader that reads to the end fails the upload instead of completing it). Ask the returned
/// [`StreamCheck`] after the upload, whatever its outcome.
pub fn verified(
    body: crate::store::ByteStream,
    digest: Digest,
    size: u64,
    progress: Progress,
) -> (crate::store::ByteStream, StreamCheck) {
    let state: HashState = Arc::new(Mutex::new((digest.algorithm().hasher(), 0u64)));
    let slot = Arc::new(Mutex::new(None));
    let check = StreamCheck {
        state: state.clone(),
        digest: digest.clone(),
        size,
        slot: slot.clone(),
    };
    let counting = {
        let state = state.clone();
        body.map(move |chunk| {
            let chunk: Bytes = chunk?;
            let mut s = state.lock();
            s.0.update(&chunk);
            s.1 += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
            Ok(chunk)
        })
    };
    let end = futures_util::stream::once(async move {
        let (hasher, count): (DigestHasher, u64) = {
            let s = state.lock();
            (s.0.clone(), s.1)
        };
        let mismatch = if count != size {
            Some(StreamMismatch::Size {
                expected: size,
                actual: count,
            })
        } else {
            let actual = hasher.finish();
            (actual != digest).then_some(StreamMismatch::Digest {
                expected: digest,
                actual,
            })
        };
        match mismatch {
            Some(m) => {
                *slot.lock() = Some(m);
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "content does not match its digest",
                ))
            }
            None => Ok(Bytes::new()),
        }
    });
    (Box::pin(counting.chain(end)), check)
}

/// Pushes a manifest under its digest and then each tag, skipping what the registry already has the same way.
pub async fn push_manifest(
    dest: &dyn super::target::Destination,
    repo: &RepoName,
    digest: &Digest,
    media_type: &str,
    bytes: &Bytes,
    tags: &[Tag],
    summary: &mut ImportSummary,
) -> Result<(), TargetError> {
    let by_digest = Reference::Digest(digest.clone());
    if dest.manifest_digest(repo, &by_digest).await?.as_ref() != Some(digest) {
        dest.put_manifest(repo, &by_digest, media_type, bytes.clone())
            .await?;
        summary.manifests += 1;
    }
    for t in tags {
        let by_tag = Reference::Tag(t.clone());
        if dest.manifest_digest(repo, &by_tag).await?.as_ref() != Some(digest) {
            dest.put_manifest(repo, &by_tag, media_type, bytes.clone())
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_override_and_names() {
        assert!(matches!(
            TagOverride::parse("team/app:v2").unwrap(),
            TagOverride::Image(_, _)
        ));
        assert!(matches!(
            TagOverride::parse("team/app").unwrap(),
            TagOverride::Repo(_)
        ));
        let names = vec![
            ArchiveName::parse("team/app:v1").unwrap(),
            ArchiveName::parse("v2").unwrap(),
        ];
        assert!(
            place(&names, None).is_err(),
            "a bare tag needs a repository"
        );
        let p = place(&names, Some(&TagOverride::parse("other").unwrap())).unwrap();
        assert_eq!(p[0].repo.as_str(), "other");
        assert_eq!(p[1].tag.as_ref().unwrap().as_str(), "v2");
        assert!(place(&names, Some(&TagOverride::parse("x:y").unwrap())).is_err());
        let p = place(&names[..1], Some(&TagOverride::parse("x:y").unwrap())).unwrap();
        assert_eq!(
            (p[0].repo.as_str(), p[0].tag.as_ref().unwrap().as_str()),
            ("x", "y")
        );
    }
}
