//! Importing an OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`) from a tar. Each entry of
//! `index.json` is one image, named by its `io.containerd.image.name` or `org.opencontainers.image.ref.name`
//! annotation; its manifest, config, layers and (for an index) children are pushed byte for byte, children before
//! parents, every digest checked.

use std::collections::HashSet;

use bytes::Bytes;
use serde::Deserialize;

use super::ArchiveError;
use super::export::blob_path;
use super::import::{
    ArchiveName, ImportError, ImportSummary, TagOverride, place, push_blob, push_manifest,
};
use super::progress::Progress;
use super::tar_index::TarIndex;
use super::target::Destination;
use crate::oci::name::Tag;
use crate::oci::{Descriptor, Digest, Reference, RepoName, manifest};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: String,
}

pub async fn import(
    dest: &dyn Destination,
    index: &TarIndex,
    tag: Option<&TagOverride>,
    progress: &Progress,
    summary: &mut ImportSummary,
) -> Result<(), ImportError> {
    if index.contains("oci-layout") {
        let bytes = index.read("oci-layout", 4096).await?;
        let l: OciLayout = serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Json {
            name: "oci-layout".into(),
            message: e.to_string(),
        })?;
        if !l.image_layout_version.starts_with("1.") {
            return Err(ArchiveError::Unsupported(format!(
                "OCI image layout version {:?} (only 1.x is known)",
                l.image_layout_version
            ))
            .into());
        }
    }
    let bytes = index.read("index.json", super::MAX_JSON_SIZE).await?;
    let idx: IndexJson = serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Json {
        name: "index.json".into(),
        message: e.to_string(),
    })?;
    if idx.manifests.is_empty() {
        return Err(ArchiveError::Invalid("index.json lists no images".into()).into());
    }
    let names = idx
        .manifests
        .iter()
        .map(|d| {
            let ann = d.annotations.as_ref();
            match ann.and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME))) {
                Some(n) => ArchiveName::parse(n),
                None => Ok(ArchiveName::None),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let placements = place(&names, tag)?;
    for (desc, p) in idx.manifests.iter().zip(placements) {
        let tags: Vec<Tag> = p.tag.into_iter().collect();
        import_image(dest, index, &p.repo, desc, &tags, progress, summary).await?;
        summary.images += 1;
    }
    Ok(())
}

/// One manifest of the archive, loaded and checked against its descriptor.
struct Loaded {
    media_type: String,
    bytes: Bytes,
    parsed: manifest::ParsedManifest,
}

async fn load(index: &TarIndex, desc: &Descriptor) -> Result<Loaded, ArchiveError> {
    let name = blob_path(&desc.digest);
    let bytes = index.read(&name, super::MAX_JSON_SIZE).await?;
    let actual = Digest::of(desc.digest.algorithm(), &bytes);
    if actual != desc.digest {
        return Err(ArchiveError::DigestMismatch {
            name,
            expected: desc.digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != desc.size {
        return Err(ArchiveError::SizeMismatch {
            name,
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    let parsed =
        manifest::parse(&bytes, Some(&desc.media_type)).map_err(|e| ArchiveError::Json {
            name: name.clone(),
            message: e.to_string(),
        })?;
    Ok(Loaded {
        media_type: parsed.media_type.clone(),
        bytes,
        parsed,
    })
}

/// Pushes an image (or index with its children) into `repo`, children and blobs first, then tags the top.
#[allow(clippy::too_many_arguments)]
async fn import_image(
    dest: &dyn Destination,
    index: &TarIndex,
    repo: &RepoName,
    top: &Descriptor,
    tags: &[Tag],
    progress: &Progress,
    summary: &mut ImportSummary,
) -> Result<(), ImportError> {
    // Depth-first, parents after their children: (descriptor, loaded when its children are already queued).
    let mut stack: Vec<(Descriptor, Option<Loaded>)> = vec![(top.clone(), None)];
    let mut done: HashSet<Digest> = HashSet::new();
    while let Some((desc, loaded)) = stack.pop() {
        if done.contains(&desc.digest) {
            continue;
        }
        let is_top = desc.digest == top.digest;
        let Some(m) = loaded else {
            if dest
                .manifest_digest(repo, &Reference::Digest(desc.digest.clone()))
                .await?
                .as_ref()
                == Some(&desc.digest)
            {
                // Already imported: the registry holds a manifest only with everything it references.
                done.insert(desc.digest.clone());
                if is_top {
                    let m = load(index, &desc).await?;
                    push_manifest(
                        dest,
                        repo,
                        &desc.digest,
                        &m.media_type,
                        &m.bytes,
                        tags,
                        summary,
                    )
                    .await?;
                }
                continue;
            }
            let m = load(index, &desc).await?;
            for c in &m.parsed.children {
                if !index.contains(&blob_path(&c.digest)) {
                    return Err(ArchiveError::Invalid(format!(
                        "index {} lists {} which is not in the archive (was it exported for one platform only?)",
                        desc.digest, c.digest
                    ))
                    .into());
                }
            }
            for b in m
                .parsed
                .config
                .iter()
                .chain(m.parsed.layers.iter().filter(|l| !l.is_non_distributable()))
            {
                push_blob(
                    dest,
                    index,
                    &blob_path(&b.digest),
                    repo,
                    &b.digest,
                    b.size,
                    progress,
                    summary,
                )
                .await?;
            }
            let children = m.parsed.children.clone();
            stack.push((desc, Some(m)));
            for c in children {
                stack.push((c, None));
            }
            continue;
        };
        let tags = if desc.digest == top.digest { tags } else { &[] };
        push_manifest(
            dest,
            repo,
            &desc.digest,
            &m.media_type,
            &m.bytes,
            tags,
            summary,
        )
        .await?;
        done.insert(desc.digest);
    }
    Ok(())
}
