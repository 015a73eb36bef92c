//! Importing a `docker save` archive: `manifest.json` lists each image as `{Config, RepoTags, Layers}` with paths
//! into the archive (`<hex>.json` + `<id>/layer.tar` from Docker before 25, `<diffid>.tar` from skopeo,
//! `blobs/sha256/<hex>` from Docker 25+). There is no registry manifest in it, so one is built: a Docker schema2
//! manifest whose config is the config file and whose layers are the layer files as they are (uncompressed tar or
//! gzip), with digests and sizes computed here.
//!
//! What is verified before anything is uploaded: the config hashes to the digest its name carries (when it carries
//! one), every layer hashes to the digest its name carries (when it does), and — the check that ties the image
//! together — each layer's uncompressed content hashes to the config's `rootfs.diff_ids` entry at its position.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::import::{
    ArchiveName, ImportError, ImportSummary, Placement, TagOverride, place, push_blob,
    push_manifest,
};
use super::progress::Progress;
use super::tar_index::TarIndex;
use super::target::Destination;
use super::{ArchiveError, MAX_JSON_SIZE};
use crate::oci::name::Tag;
use crate::oci::{Algorithm, Digest, RepoName, media};

pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<Digest>,
}

/// A layer file's digest, size and media type, and the digest of its uncompressed content.
#[derive(Debug, Clone)]
pub struct LayerFacts {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub media_type: &'static str,
}

/// An image of the archive, checked, with the manifest built for it.
struct Image {
    config_entry: String,
    config_digest: Digest,
    config_size: u64,
    layers: Vec<(String, LayerFacts)>,
    manifest: Bytes,
}

pub async fn import(
    dest: &dyn Destination,
    index: &Arc<TarIndex>,
    tag: Option<&TagOverride>,
    progress: &Progress,
    summary: &mut ImportSummary,
) -> Result<(), ImportError> {
    let bytes = index.read("manifest.json", MAX_JSON_SIZE).await?;
    let entries: Vec<Entry> = serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Json {
        name: "manifest.json".into(),
        message: e.to_string(),
    })?;
    if entries.is_empty() {
        return Err(ArchiveError::Invalid("manifest.json lists no images".into()).into());
    }
    let placements: Vec<Vec<Placement>> = match tag {
        Some(TagOverride::Image(_, _)) => {
            if entries.len() != 1 {
                return Err(ArchiveError::Invalid(format!(
                    "--tag REPO:TAG needs an archive with one image; this one has {} (give --tag REPO to keep their tags)",
                    entries.len()
                ))
                .into());
            }
            vec![place(&[ArchiveName::None], tag)?]
        }
        _ => entries
            .iter()
            .map(|e| {
                let names = match e.repo_tags.as_deref() {
                    Some(tags) if !tags.is_empty() => tags
                        .iter()
                        .map(|t| ArchiveName::parse(t))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => vec![ArchiveName::None],
                };
                place(&names, tag)
            })
            .collect::<Result<_, _>>()?,
    };

    let mut facts: HashMap<String, LayerFacts> = HashMap::new();
    for (entry, placements) in entries.iter().zip(placements) {
        progress.set_message(format!("checking {}", entry.config));
        let image = check_image(index, entry, &mut facts).await?;
        let mut by_repo: BTreeMap<RepoName, Vec<Tag>> = BTreeMap::new();
        for p in placements {
            let tags = by_repo.entry(p.repo).or_default();
            tags.extend(p.tag);
        }
        let manifest_digest = Digest::of(Algorithm::Sha256, &image.manifest);
        for (repo, tags) in by_repo {
            push_blob(
                dest,
                index,
                &image.config_entry,
                &repo,
                &image.config_digest,
                image.config_size,
                progress,
                summary,
            )
            .await?;
            for (name, l) in &image.layers {
                push_blob(
                    dest, index, name, &repo, &l.digest, l.size, progress, summary,
                )
                .await?;
            }
            push_manifest(
                dest,
                &repo,
                &manifest_digest,
                media::DOCKER_MANIFEST,
                &image.manifest,
                &tags,
                summary,
            )
            .await?;
        }
        summary.images += 1;
    }
    Ok(())
}

/// The digest a file name carries: `blobs/sha256/<hex>`, `<hex>.json`, `<hex>.tar` (64 hex digits).
fn digest_in_name(name: &str) -> Option<Digest> {
    if let Some(rest) = name.strip_prefix("blobs/")
        && let Some((alg, hex)) = rest.split_once('/')
    {
        return format!("{alg}:{hex}").parse().ok();
    }
    let stem = name
        .strip_suffix(".json")
        .or_else(|| name.strip_suffix(".tar"))?;
    if stem.contains('/') {
        return None;
    }
    format!("sha256:{stem}").parse().ok()
}

async fn check_image(
    index: &Arc<TarIndex>,
    entry: &Entry,
    facts: &mut HashMap<String, LayerFacts>,
) -> Result<Image, ArchiveError> {
    let config_bytes = index.read(&entry.config, MAX_JSON_SIZE).await?;
    let config_digest = Digest::of(Algorithm::Sha256, &config_bytes);
    if let Some(named) = digest_in_name(&entry.config)
        && Digest::of(named.algorithm(), &config_bytes) != named
    {
        return Err(ArchiveError::DigestMismatch {
            name: entry.config.clone(),
            expected: named.clone(),
            actual: Digest::of(named.algorithm(), &config_bytes),
        });
    }
    let config: Config = serde_json::from_slice(&config_bytes).map_err(|e| ArchiveError::Json {
        name: entry.config.clone(),
        message: format!("not an image config: {e}"),
    })?;
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(ArchiveError::Invalid(format!(
            "{}: the config lists {} layers (rootfs.diff_ids) but manifest.json gives {}",
            entry.config,
            config.rootfs.diff_ids.len(),
            entry.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for (name, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
        let f = match facts.get(name) {
            Some(f) => f.clone(),
            None => {
                let index = index.clone();
                let n = name.clone();
                let f = tokio::task::spawn_blocking(move || inspect_layer(&index, &n))
                    .await
                    .map_err(|e| ArchiveError::Invalid(format!("layer check failed: {e}")))??;
                facts.insert(name.clone(), f.clone());
                f
            }
        };
        if let Some(named) = digest_in_name(name)
            && named != f.digest
        {
            return Err(ArchiveError::DigestMismatch {
                name: name.clone(),
                expected: named,
                actual: f.digest,
            });
        }
        if &f.diff_id != diff_id {
            return Err(ArchiveError::DigestMismatch {
                name: format!("{name} (uncompressed, rootfs.diff_ids of {})", entry.config),
                expected: diff_id.clone(),
                actual: f.diff_id,
            });
        }
        layers.push((name.clone(), f));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "size": config_bytes.len(),
            "digest": config_digest.to_string(),
        },
        "layers": layers.iter().map(|(_, l)| json!({
            "mediaType": l.media_type,
            "size": l.size,
            "digest": l.digest.to_string(),
        })).collect::<Vec<_>>(),
    });
    let manifest =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
    Ok(Image {
        config_entry: entry.config.clone(),
        config_digest,
        config_size: config_bytes.len() as u64,
        layers,
        manifest: manifest.into(),
    })
}

/// Hashes the bytes it passes on.
struct Tee<R> {
    inner: R,
    hasher: crate::oci::DigestHasher,
    count: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Reads a layer file once: its digest and size as stored, and the digest of its uncompressed tar.
fn inspect_layer(index: &TarIndex, name: &str) -> Result<LayerFacts, ArchiveError> {
    let (size, mut reader) = index.open_blocking(name)?;
    let head = reader.fill_buf()?.to_vec();
    let mut tee = Tee {
        inner: reader,
        hasher: Algorithm::Sha256.hasher(),
        count: 0,
    };
    let (media_type, diff_id) = if head.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::read::MultiGzDecoder::new(&mut tee);
        let mut h = Tee {
            inner: &mut gz,
            hasher: Algorithm::Sha256.hasher(),
            count: 0,
        };
        std::io::copy(&mut h, &mut std::io::sink()).map_err(|e| {
            ArchiveError::Invalid(format!("{name}: not a readable gzip stream: {e}"))
        })?;
        let diff_id = h.hasher.finish();
        // Whatever follows the gzip stream still belongs to the blob.
        std::io::copy(&mut tee, &mut std::io::sink())?;
        (DOCKER_LAYER_GZIP, Some(diff_id))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ArchiveError::Unsupported(format!(
            "{name}: zstd-compressed layers in a docker archive cannot be checked against the config's diff_ids"
        )));
    } else {
        std::io::copy(&mut tee, &mut std::io::sink())?;
        (DOCKER_LAYER_TAR, None)
    };
    if tee.count != size {
        return Err(ArchiveError::Truncated(name.to_owned()));
    }
    let digest = tee.hasher.finish();
    Ok(LayerFacts {
        diff_id: diff_id.unwrap_or_else(|| digest.clone()),
        digest,
        size,
        media_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_in_file_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex
        );
        assert!(digest_in_name(&format!("{hex}.json")).is_some());
        assert!(digest_in_name(&format!("{hex}.tar")).is_some());
        assert!(digest_in_name(&format!("{hex}/layer.tar")).is_none());
        assert!(digest_in_name("abc.json").is_none());
    }
}
