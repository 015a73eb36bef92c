//! `berth export`: images from a registry into one tar that is at once an OCI image layout and a `docker load`
//! archive (the shape `docker save` itself writes since Docker 25):
//!
//! ```text
//! oci-layout                   {"imageLayoutVersion":"1.0.0"}
//! blobs/sha256/<hex>           every manifest, index, config and layer, byte for byte (digests preserved)
//! index.json                   one entry per exported reference, named by org.opencontainers.image.ref.name
//!                              (and io.containerd.image.name) = REPO:TAG
//! manifest.json                docker's list: {Config, RepoTags, Layers} pointing into blobs/sha256/
//! ```
//!
//! docker's `manifest.json` can only describe single-platform images: for an index, the OCI side keeps the whole
//! index with every platform, and `manifest.json` lists the one platform chosen with `--platform` (default: this
//! machine's). The archive is written to `FILE.partial` and renamed when complete, so a failed export never leaves
//! a plausible-looking file behind. Every blob is hashed as it is written and must match its digest.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use serde_json::json;

use super::progress::Progress;
use super::target::{SharedSource, TargetError};
use super::{ImageRef, Platform};
use crate::oci::{Algorithm, Descriptor, Digest, DigestHasher, Reference, RepoName, manifest};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What was written, for the summary line.
#[derive(Debug, Default)]
pub struct ExportSummary {
    pub images: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Everything the archive will hold, gathered before a byte is written.
#[derive(Default)]
struct Plan {
    /// Manifest and index bytes, by digest, in first-seen order.
    manifests: Vec<(Digest, Bytes)>,
    /// Configs and layers, each once, with the repository to read it from.
    blobs: Vec<(RepoName, Descriptor)>,
    index: Vec<serde_json::Value>,
    /// docker manifest.json entries, keyed by the image manifest's digest so two tags of one image share one.
    docker: Vec<(Digest, serde_json::Value)>,
    seen: HashSet<Digest>,
}

pub async fn export(
    source: SharedSource,
    images: &[ImageRef],
    out: &Path,
    platform: &Platform,
    progress: &Progress,
) -> Result<ExportSummary, ExportError> {
    let mut plan = Plan::default();
    for image in images {
        progress.set_message(format!("reading {image}"));
        add_image(&*source, image, platform, progress, &mut plan).await?;
    }
    let summary = ExportSummary {
        images: images.len(),
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        bytes: plan.blobs.iter().map(|(_, d)| d.size).sum(),
    };
    progress.add_total(summary.bytes);
    let out = out.to_path_buf();
    let handle = tokio::runtime::Handle::current();
    let progress = progress.clone();
    tokio::task::spawn_blocking(move || write_archive(&plan, &source, &out, &handle, &progress))
        .await
        .map_err(|e| ExportError::Invalid(format!("export task failed: {e}")))??;
    Ok(summary)
}

/// Fetches an image's manifest (and, for an index, every child) and records what to write.
async fn add_image(
    source: &dyn super::target::Source,
    image: &ImageRef,
    platform: &Platform,
    progress: &Progress,
    plan: &mut Plan,
) -> Result<(), ExportError> {
    let repo = &image.repo;
    let (media_type, bytes) = source.manifest(repo, &image.reference).await?;
    let digest = Digest::of(Algorithm::Sha256, &bytes);
    if let Reference::Digest(d) = &image.reference
        && d != &digest
    {
        // A registry may hash with another algorithm; only sha256 is written to archives.
        if Digest::of(d.algorithm(), &bytes) != *d {
            return Err(ExportError::Invalid(format!(
                "{image}: the manifest received does not hash to {d}"
            )));
        }
    }
    let top = manifest::parse(&bytes, Some(&media_type))
        .map_err(|e| ExportError::Invalid(format!("{image}: {e}")))?;
    let mut parsed = HashMap::new();
    let mut queue = vec![(digest.clone(), bytes.clone(), top.clone())];
    while let Some((d, b, m)) = queue.pop() {
        if !plan.seen.insert(d.clone()) {
            continue;
        }
        plan.manifests.push((d.clone(), b));
        for c in m.config.iter().chain(m.layers.iter()) {
            if c.is_non_distributable() {
                progress.println(format!(
                    "warning: {image}: non-distributable layer {} is not in the registry and is left out",
                    c.digest
                ));
                continue;
            }
            if plan.seen.insert(c.digest.clone()) {
                plan.blobs.push((repo.clone(), c.clone()));
            }
        }
        for child in &m.children {
            let (ct, cb) = source
                .manifest(repo, &Reference::Digest(child.digest.clone()))
                .await?;
            if Digest::of(child.digest.algorithm(), &cb) != child.digest {
                return Err(ExportError::Invalid(format!(
                    "{image}: child manifest received does not hash to {}",
                    child.digest
                )));
            }
            let cm = manifest::parse(&cb, Some(&ct))
                .map_err(|e| ExportError::Invalid(format!("{image}: {}: {e}", child.digest)))?;
            parsed.insert(child.digest.clone(), cm.clone());
            queue.push((child.digest.clone(), cb, cm));
        }
    }
    if digest.algorithm() != Algorithm::Sha256 {
        return Err(ExportError::Invalid(format!(
            "{image}: only sha256 content can be exported"
        )));
    }

    let name = match &image.reference {
        Reference::Tag(_) => Some(image.display()),
        Reference::Digest(_) => None,
    };
    let mut entry = json!({
        "mediaType": top.media_type,
        "digest": digest.to_string(),
        "size": bytes.len(),
    });
    if let Some(n) = &name {
        entry["annotations"] = json!({
            "org.opencontainers.image.ref.name": n,
            "io.containerd.image.name": n,
        });
    }
    plan.index.push(entry);

    // docker's manifest.json: the image itself, or the chosen platform's image of an index.
    let chosen = if top.is_index() {
        let child = top
            .children
            .iter()
            .find(|c| c.platform.as_ref().is_some_and(|p| platform.matches(p)));
        match child.and_then(|c| parsed.get(&c.digest).map(|m| (c.digest.clone(), m))) {
            Some((d, m)) if !m.is_index() => Some((d, m.clone())),
            _ => {
                progress.println(format!(
                    "warning: {image} has no {platform} image; it is in the OCI index.json but not in docker's \
                     manifest.json (choose one with --platform)"
                ));
                None
            }
        }
    } else {
        Some((digest.clone(), top.clone()))
    };
    if let Some((d, m)) = chosen {
        let Some(config) = &m.config else {
            return Err(ExportError::Invalid(format!(
                "{image}: image has no config"
            )));
        };
        let existing = plan.docker.iter_mut().find(|(k, _)| k == &d);
        match existing {
            Some((_, e)) => {
                if let (Some(n), Some(tags)) = (&name, e["RepoTags"].as_array_mut()) {
                    tags.push(json!(n));
                }
            }
            None => {
                let layers: Vec<String> = m
                    .layers
                    .iter()
                    .filter(|l| !l.is_non_distributable())
                    .map(|l| blob_path(&l.digest))
                    .collect();
                plan.docker.push((
                    d,
                    json!({
                        "Config": blob_path(&config.digest),
                        "RepoTags": name.iter().collect::<Vec<_>>(),
                        "Layers": layers,
                    }),
                ));
            }
        }
    }
    Ok(())
}

/// `blobs/<algorithm>/<hex>`, the OCI layout path of a blob.
pub fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

fn write_archive(
    plan: &Plan,
    source: &SharedSource,
    out: &Path,
    handle: &tokio::runtime::Handle,
    progress: &Progress,
) -> Result<(), ExportError> {
    let partial = {
        let mut s = out.as_os_str().to_owned();
        s.push(".partial");
        std::path::PathBuf::from(s)
    };
    let werr = |source: std::io::Error| ExportError::Write {
        path: partial.display().to_string(),
        source,
    };
    let file = std::fs::File::create(&partial).map_err(werr)?;
    let result = (|| {
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(0, tar::EntryType::Directory);
            h.set_mode(0o755);
            tar.append_data(&mut h, dir, std::io::empty())
                .map_err(werr)?;
        }
        for (d, bytes) in &plan.manifests {
            append_bytes(&mut tar, &blob_path(d), bytes).map_err(werr)?;
        }
        for (repo, desc) in &plan.blobs {
            progress.set_message(format!("{repo} {}", desc.digest));
            let (size, body) = handle.block_on(source.blob(repo, &desc.digest))?;
            if size != desc.size {
                return Err(ExportError::Invalid(format!(
                    "{repo}: blob {} is {size} bytes, its descriptor says {}",
                    desc.digest, desc.size
                )));
            }
            let reader = tokio_util::io::SyncIoBridge::new_with_handle(
                tokio_util::io::StreamReader::new(body),
                handle.clone(),
            );
            let mut verified = VerifyingReader::new(reader, &desc.digest, desc.size, progress);
            let mut h = header(desc.size, tar::EntryType::Regular);
            tar.append_data(&mut h, blob_path(&desc.digest), &mut verified)
                .map_err(|e| match verified.failure.take() {
                    Some(m) => ExportError::Invalid(format!("{repo}: {m}")),
                    None => werr(e),
                })?;
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::media::OCI_INDEX,
            "manifests": plan.index,
        });
        let index = serde_json::to_vec(&index).map_err(|e| ExportError::Invalid(e.to_string()))?;
        append_bytes(&mut tar, "index.json", &index).map_err(werr)?;
        let docker: Vec<&serde_json::Value> = plan.docker.iter().map(|(_, e)| e).collect();
        let docker =
            serde_json::to_vec(&docker).map_err(|e| ExportError::Invalid(e.to_string()))?;
        append_bytes(&mut tar, "manifest.json", &docker).map_err(werr)?;
        let mut w = tar.into_inner().map_err(werr)?;
        w.flush().map_err(werr)?;
        let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
        file.sync_all().map_err(werr)?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&partial, out).map_err(|source| ExportError::Write {
            path: out.display().to_string(),
            source,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn header(size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    // A fixed time makes the same images export to the same bytes.
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut h = header(data.len() as u64, tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

/// Passes bytes through while hashing and counting them; at the end (or past the expected size) it fails the read
/// unless the bytes were exactly the expected ones, so the archive never gets a short or wrong blob.
struct VerifyingReader<'a, R> {
    inner: R,
    hasher: Option<DigestHasher>,
    expected: &'a Digest,
    size: u64,
    count: u64,
    progress: &'a Progress,
    /// Why the read failed, when it was the source's fault (wrong, short or unreadable bytes).
    failure: Option<String>,
}

impl<'a, R: Read> VerifyingReader<'a, R> {
    fn new(inner: R, expected: &'a Digest, size: u64, progress: &'a Progress) -> Self {
        VerifyingReader {
            inner,
            hasher: Some(expected.algorithm().hasher()),
            expected,
            size,
            count: 0,
            progress,
            failure: None,
        }
    }

    fn fail(&mut self, msg: String) -> std::io::Error {
        self.failure = Some(msg.clone());
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
    }
}

impl<R: Read> Read for VerifyingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                // A failure of the source, not of the archive being written: say so.
                let msg = format!("reading blob {} failed: {e}", self.expected);
                return Err(self.fail(msg));
            }
        };
        self.count += n as u64;
        if self.count > self.size {
            let msg = format!("blob {} is longer than {} bytes", self.expected, self.size);
            return Err(self.fail(msg));
        }
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
            self.progress.advance(n as u64);
            return Ok(n);
        }
        if let Some(h) = self.hasher.take() {
            if self.count != self.size {
                let msg = format!(
                    "blob {} ended after {} of {} bytes",
                    self.expected, self.count, self.size
                );
                return Err(self.fail(msg));
            }
            let actual = h.finish();
            if &actual != self.expected {
                let msg = format!("blob {} received hashes to {actual}", self.expected);
                return Err(self.fail(msg));
            }
        }
        Ok(0)
    }
}
