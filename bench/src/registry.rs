//! The OCI distribution API calls the workloads are built from.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use hyper::{Method, StatusCode};

use crate::blob::{Blob, KIB, fill_random};
use crate::client::{Conn, ReqBody, expect_status, location, with_query};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What a docker/containerd client sends when resolving a tag.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Size of the single layer of a "small image".
pub const SMALL_LAYER: u64 = 4 * KIB;

/// POST /v2/<repo>/blobs/uploads/ and return the upload session's location.
async fn start_upload(conn: &mut Conn, repo: &str) -> Result<String> {
    let req = conn
        .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .header(CONTENT_LENGTH, 0)
        .body(ReqBody::Empty)?;
    let (parts, _) = conn
        .call(req, StatusCode::ACCEPTED)
        .await
        .context("starting blob upload")?;
    location(&parts)
}

/// Monolithic upload: POST to open a session, then one PUT ?digest= carrying the whole blob.
pub async fn push_blob_monolithic(conn: &mut Conn, repo: &str, blob: &Blob) -> Result<()> {
    let loc = start_upload(conn, repo).await?;
    let req = conn
        .request(Method::PUT, &with_query(&loc, "digest", blob.digest()))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, blob.size())
        .body(blob.body(0..blob.size()))?;
    conn.call(req, StatusCode::CREATED)
        .await
        .context("monolithic blob PUT")?;
    Ok(())
}

/// Chunked upload: POST, one PATCH per `chunk` bytes with Content-Range
/// (following the Location each response hands back), then a closing PUT ?digest=.
pub async fn push_blob_chunked(conn: &mut Conn, repo: &str, blob: &Blob, chunk: u64) -> Result<()> {
    let mut loc = start_upload(conn, repo).await?;
    let mut start = 0;
    while start < blob.size() {
        let end = (start + chunk).min(blob.size());
        let req = conn
            .request(Method::PATCH, &loc)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, end - start)
            .header("Content-Range", format!("{start}-{}", end - 1))
            .body(blob.body(start..end))?;
        let (parts, _) = conn
            .call(req, StatusCode::ACCEPTED)
            .await
            .with_context(|| format!("PATCH of bytes {start}..{end}"))?;
        loc = location(&parts)?;
        start = end;
    }
    let req = conn
        .request(Method::PUT, &with_query(&loc, "digest", blob.digest()))
        .header(CONTENT_LENGTH, 0)
        .body(ReqBody::Empty)?;
    conn.call(req, StatusCode::CREATED)
        .await
        .context("closing PUT of chunked upload")?;
    Ok(())
}

/// GET a blob, counting bytes; optionally verifies the digest (costs client CPU,
/// so only done outside timed sections).
pub async fn fetch_blob_verified(conn: &mut Conn, repo: &str, blob: &Blob) -> Result<()> {
    use sha2::{Digest, Sha256};
    let req = conn
        .request(Method::GET, &format!("/v2/{repo}/blobs/{}", blob.digest()))
        .body(ReqBody::Empty)?;
    let resp = expect_status(conn.send(req).await?, StatusCode::OK).await?;
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.context("reading blob")?.into_data() {
            n += data.len() as u64;
            hasher.update(&data);
        }
    }
    let got = format!("sha256:{}", crate::blob::hex(&hasher.finalize()));
    if n != blob.size() || got != blob.digest() {
        bail!(
            "blob {} read back as {n} bytes with digest {got}",
            blob.digest()
        );
    }
    Ok(())
}

/// PUT a manifest under `reference` (tag or digest).
pub async fn put_manifest(
    conn: &mut Conn,
    repo: &str,
    reference: &str,
    manifest: &Bytes,
) -> Result<()> {
    let req = conn
        .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .header(CONTENT_LENGTH, manifest.len())
        .body(ReqBody::Full(manifest.clone()))?;
    conn.call(req, StatusCode::CREATED)
        .await
        .with_context(|| format!("pushing manifest {repo}:{reference}"))?;
    Ok(())
}

/// A pushed image: its manifest bytes, for re-tagging.
pub struct Image {
    pub manifest: Bytes,
}

/// Builds a unique small image from `seed`: an OCI config blob, one
/// [`SMALL_LAYER`]-byte layer, and the manifest referencing both.
pub fn small_image(seed: u64) -> (Blob, Blob, Bytes) {
    let mut layer = vec![0u8; SMALL_LAYER as usize];
    fill_random(seed, &mut layer);
    let layer = Blob::from_bytes(layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Env": [format!("BENCH_SEED={seed}")], "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest()] },
    });
    let config = Blob::from_bytes(config.to_string());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config.digest(), "size": config.size() },
        "layers": [ { "mediaType": OCI_LAYER, "digest": layer.digest(), "size": layer.size() } ],
    });
    (config, layer, Bytes::from(manifest.to_string()))
}

/// Pushes a unique small image (config, layer, manifest) as `repo:tag`.
pub async fn push_small_image(conn: &mut Conn, repo: &str, seed: u64, tag: &str) -> Result<Image> {
    let (config, layer, manifest) = small_image(seed);
    push_blob_monolithic(conn, repo, &config).await?;
    push_blob_monolithic(conn, repo, &layer).await?;
    put_manifest(conn, repo, tag, &manifest).await?;
    Ok(Image { manifest })
}

/// Counts the tags a tags/list request returns, and whether the registry
/// paginated (sent a Link header) even though no `n` was asked for.
pub async fn count_tags(conn: &mut Conn, repo: &str) -> Result<(usize, bool)> {
    let req = conn
        .request(Method::GET, &format!("/v2/{repo}/tags/list"))
        .body(ReqBody::Empty)?;
    let (parts, body) = conn.call(req, StatusCode::OK).await?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).context("tags/list response is not JSON")?;
    let n = json["tags"]
        .as_array()
        .context("tags/list response has no tags array")?
        .len();
    Ok((n, parts.headers.contains_key(LINK)))
}
