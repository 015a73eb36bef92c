//! `berth mirror prefetch`: warms mirror caches ahead of time by pulling images through a running berth, so the
//! server's own verified, single-flight mirror path fills the cache (nothing here writes to storage).

use std::io::Write;

use anyhow::{Context, bail};
use futures_util::StreamExt;

use crate::mirror::upstream::MANIFEST_ACCEPT;
use crate::oci::{Digest, manifest};

/// An image reference as given on the command line: `REPO[:TAG]` or `REPO@DIGEST`, with the mirror prefix in
/// `REPO` (e.g. `docker.io/library/alpine:3.20`).
fn split_image(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_owned(), digest.to_owned());
    }
    match image.rsplit_once(':') {
        // A colon after the last slash separates the tag; one before it belongs to a host:port.
        Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
        _ => (image.to_owned(), "latest".to_owned()),
    }
}

/// What was fetched, for the summary line.
#[derive(Default)]
pub struct Summary {
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// Pulls each image (every platform, or only those in `platforms` such as `linux/amd64`) through `server`.
pub async fn prefetch(
    server: &str,
    images: &[String],
    platforms: &[String],
    quiet: bool,
) -> anyhow::Result<Summary> {
    let client = reqwest::Client::new();
    let server = server.trim_end_matches('/');
    let mut summary = Summary::default();
    for image in images {
        let (repo, reference) = split_image(image);
        let mut queue = vec![reference];
        while let Some(reference) = queue.pop() {
            let url = format!("{server}/v2/{repo}/manifests/{reference}");
            let resp = client
                .get(&url)
                .header("accept", MANIFEST_ACCEPT)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            if !resp.status().is_success() {
                bail!(
                    "{image}: {url} answered {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = resp
                .bytes()
                .await
                .with_context(|| format!("reading {url}"))?;
            let parsed = manifest::parse(&bytes, content_type.as_deref())
                .with_context(|| format!("{image}: manifest"))?;
            summary.manifests += 1;
            for child in &parsed.children {
                let platform = child.platform.as_ref().map(|p| {
                    let os = p.get("os").and_then(|v| v.as_str()).unwrap_or("");
                    let arch = p.get("architecture").and_then(|v| v.as_str()).unwrap_or("");
                    match p.get("variant").and_then(|v| v.as_str()) {
                        Some(v) => format!("{os}/{arch}/{v}"),
                        None => format!("{os}/{arch}"),
                    }
                });
                let wanted = platforms.is_empty()
                    || platform.as_ref().is_some_and(|p| {
                        platforms
                            .iter()
                            .any(|w| p == w || p.starts_with(&format!("{w}/")))
                    });
                if wanted {
                    queue.push(child.digest.to_string());
                }
            }
            for d in parsed
                .config
                .iter()
                .chain(parsed.layers.iter().filter(|l| !l.is_non_distributable()))
            {
                let n = fetch_blob(&client, server, &repo, &d.digest)
                    .await
                    .with_context(|| format!("{image}: blob {}", d.digest))?;
                summary.blobs += 1;
                summary.bytes += n;
                if !quiet {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{image}: {} {}",
                        d.digest,
                        crate::human::size(n)
                    );
                }
            }
        }
    }
    Ok(summary)
}

/// GETs a blob through the server and checks what arrived hashes to its digest.
async fn fetch_blob(
    client: &reqwest::Client,
    server: &str,
    repo: &str,
    digest: &Digest,
) -> anyhow::Result<u64> {
    let url = format!("{server}/v2/{repo}/blobs/{digest}");
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    let mut hasher = digest.algorithm().hasher();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading {url}"))?;
        hasher.update(&chunk);
        n += chunk.len() as u64;
    }
    let actual = hasher.finish();
    if &actual != digest {
        bail!("{url}: received bytes hash to {actual}");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn splits_image_references() {
        assert_eq!(
            split_image("docker.io/library/alpine:3.20"),
            ("docker.io/library/alpine".into(), "3.20".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5001/team/app"),
            ("127.0.0.1:5001/team/app".into(), "latest".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5001/team/app:v1"),
            ("127.0.0.1:5001/team/app".into(), "v1".into())
        );
        assert_eq!(
            split_image("up/app@sha256:00"),
            ("up/app".into(), "sha256:00".into())
        );
    }
}
