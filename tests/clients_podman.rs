//! Interoperability with podman (Debian package `podman`): a multi-platform image list pushed with
//! `podman manifest push --all` and pulled back per platform, and a single-image `podman push` / `podman pull` round
//! trip.
//!
//! podman runs with storage, run state, events, network config, registries.conf, policy and HOME all in a temporary
//! directory (vfs driver, cgroupfs, CNI backend), so it leaves the machine's own containers alone. The only shared
//! state is c/image's blob-info cache (for root under /var/lib/containers/cache), which skopeo uses too.
//!
//! Skipped (with a message) when podman is missing and `CI` is unset, or when it cannot run in this environment (for
//! example unprivileged without user namespaces); under CI both are failures.
//!
//! Set `BERTH_TEST_REGISTRY=HOST:PORT` to run against another registry instead of a fresh berth.

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;

use common::sha256_digest;
use image::{
    Layout, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, XorShift, build_multiarch, http_blob,
    http_manifest, target,
};
use serde_json::{Value, json};
use std::path::Path;
use tools::Podman;

// ---------------------------------------------------------------------------------------------------------------
// An isolated podman
// ---------------------------------------------------------------------------------------------------------------

/// True when podman is installed; false (skip) when it is missing outside CI; panics when missing under CI.
fn podman_available() -> bool {
    common::tools_available(&["podman"], "podman")
}

/// An isolated podman ([`tools::Podman`]) with `host` configured as a plain-HTTP registry, or None (the caller
/// skips) when it cannot run here outside CI; panics under CI.
fn podman_or_skip(host: &str) -> Option<Podman> {
    tools::podman_or_skip(&tools::insecure_registries_conf(host))
}

// ---------------------------------------------------------------------------------------------------------------
// Source images
// ---------------------------------------------------------------------------------------------------------------

fn read_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn digests(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The config digest, layer digests and diff_ids of a manifest in `layout`.
fn source_image(layout: &Layout, manifest: &str) -> (String, Vec<String>, Value) {
    let m = read_json(&layout.blobs[manifest]);
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let diff_ids = read_json(&layout.blobs[&config])["rootfs"]["diff_ids"].clone();
    (config, digests(&m["layers"]), diff_ids)
}

/// The contents of a `--digestfile`.
fn digest_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

/// What is compared, and why not everything against the source bytes: podman 4.3 has no `--preserve-digests`. On
/// `manifest push` it compresses the shared layer, which the source holds as a plain `tar`, so that layer gets a
/// new (gzip) digest; the child manifests are re-serialised with it (new digests) and so is the index. Hence:
/// - against the source, byte for byte: each platform's config blob and its gzip layer (podman copies those as
///   they are), and the diff_ids podman records after pulling (the sha256 of every uncompressed layer, checked by
///   podman against the unchanged config);
/// - against what podman reported: the index digest from `--digestfile` is berth's Docker-Content-Digest for the tag
///   and the sha256 of the bytes it serves; the child digests the index names are what berth serves by digest and
///   what `podman pull` / `podman manifest inspect` report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_manifest_push_all_and_pull_per_platform() {
    if !podman_available() {
        return;
    }
    let t = target();
    let Some(pm) = podman_or_skip(&t.host) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (layout, _index, children) = build_multiarch(&src, 0x9D3A_0000_0000_0001, "v1");
    let sources: Vec<_> = children
        .iter()
        .map(|c| source_image(&layout, &c.digest))
        .collect();
    let repo = format!("team/podman{}", t.suffix);

    // A local list naming both platforms of the source layout, by their source digests.
    pm.ok(&["manifest", "create", "localhost/berth-list"]);
    let src_ref = format!("oci:{}:v1", src.display());
    pm.ok(&["manifest", "add", "--all", "localhost/berth-list", &src_ref]);
    let local = read_json(
        pm.ok(&["manifest", "inspect", "localhost/berth-list"])
            .as_bytes(),
    );
    let want: Vec<String> = children.iter().map(|c| c.digest.clone()).collect();
    assert_eq!(digests(&local["manifests"]), want, "local list: {local}");

    // Push the list and both images.
    let digestfile = pm.path("index.digest");
    let dst = format!("docker://{}/{repo}:v1", t.host);
    pm.ok(&[
        "manifest",
        "push",
        "--all",
        "--format",
        "oci",
        "--tls-verify=false",
        "--digestfile",
        digestfile.to_str().unwrap(),
        "localhost/berth-list",
        &dst,
    ]);
    let pushed = digest_file(&digestfile);
    let (ct, dcd, raw) = http_manifest(&t.host, &repo, "v1").await;
    assert_eq!(ct, OCI_INDEX, "Content-Type of the index");
    assert_eq!(
        dcd, pushed,
        "Docker-Content-Digest vs podman's --digestfile"
    );
    assert_eq!(sha256_digest(&raw), pushed, "served index bytes");
    let index = read_json(&raw);
    let platforms: Vec<Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"].clone())
        .collect();
    assert_eq!(
        platforms,
        [
            json!({"architecture": "amd64", "os": "linux"}),
            json!({"architecture": "arm64", "os": "linux"})
        ],
        "index: {index}"
    );
    let pushed_children = digests(&index["manifests"]);

    // Each child as served: its own digest, the source config and gzip layer unchanged, the shared layer gzipped.
    let mut shared_layers = vec![];
    for (child, (config, layers, _)) in pushed_children.iter().zip(&sources) {
        let (ct, dcd, raw) = http_manifest(&t.host, &repo, child).await;
        assert_eq!(ct, OCI_MANIFEST);
        assert_eq!(dcd, *child);
        assert_eq!(sha256_digest(&raw), *child);
        let m = read_json(&raw);
        assert_eq!(m["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(
            m["config"]["digest"],
            config.as_str(),
            "config of {child}: {m}"
        );
        assert_eq!(
            http_blob(&t.host, &repo, config).await,
            layout.blobs[config]
        );
        let got = digests(&m["layers"]);
        assert_eq!(got.len(), 2, "{m}");
        assert_eq!(got[1], layers[1], "gzip layer of {child} changed: {m}");
        assert_eq!(
            http_blob(&t.host, &repo, &got[1]).await,
            layout.blobs[&layers[1]]
        );
        assert_eq!(
            m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{m}"
        );
        let shared = http_blob(&t.host, &repo, &got[0]).await;
        assert_eq!(sha256_digest(&shared), got[0]);
        assert_eq!(&shared[..2], [0x1f, 0x8b], "shared layer is not gzip");
        shared_layers.push(got[0].clone());
    }
    assert_eq!(
        shared_layers[0], shared_layers[1],
        "the shared layer was pushed twice differently"
    );

    // `podman manifest inspect` of the remote list (4.3 takes no `docker://` nor `--tls-verify` here: it reads
    // registries.conf) names both platforms with the digests berth serves.
    let image = format!("{}/{repo}:v1", t.host);
    let remote = read_json(pm.ok(&["manifest", "inspect", &image]).as_bytes());
    let listed: Vec<(Value, String)> = remote["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].clone(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (json!("amd64"), pushed_children[0].clone()),
            (json!("arm64"), pushed_children[1].clone())
        ],
        "podman manifest inspect: {remote}"
    );

    // Pull each platform through the index: the image ID is the source config digest, the layers' diff_ids are the
    // source's, and podman records the digests berth served.
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let id = pm.ok(&["pull", "-q", "--tls-verify=false", "--arch", arch, &image]);
        let (config, _, diff_ids) = &sources[i];
        assert_eq!(
            format!("sha256:{}", id.trim()),
            *config,
            "image ID pulled for {arch}"
        );
        let img = pm.inspect(&image);
        assert_eq!(img["Architecture"], arch);
        assert_eq!(img["Os"], "linux");
        assert_eq!(format!("sha256:{}", img["Id"].as_str().unwrap()), *config);
        assert_eq!(
            img["Digest"],
            pushed.as_str(),
            "Digest of the {arch} image: {img}"
        );
        assert_eq!(
            img["RootFS"]["Layers"], *diff_ids,
            "diff_ids of the {arch} image"
        );
        let repo_digests: Vec<&str> = img["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let child_ref = format!("{}/{repo}@{}", t.host, pushed_children[i]);
        assert!(
            repo_digests.contains(&child_ref.as_str()),
            "RepoDigests of the {arch} image: {repo_digests:?}"
        );
    }
}

/// `podman push` of one image from local storage, then `podman pull` of it back into an empty storage. podman
/// re-compresses layers on push, so the manifest is compared with what podman reported (`--digestfile`) and the
/// config (hence the image ID) and diff_ids with the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_push_and_pull_single_image() {
    if !podman_available() {
        return;
    }
    let t = target();
    let Some(pm) = podman_or_skip(&t.host) else {
        return;
    };
    // In podman's working directory, named relatively: podman names an image pulled from `oci:PATH` after PATH,
    // and a temporary directory's name may hold capitals, which a repository name may not.
    let src = pm.path("src");
    let mut rng = XorShift(0x9D3A_0000_0000_0002);
    let mut layout = Layout::new(&src);
    let manifest = layout.image("amd64", &mut rng, 1024 * 1024 + 7, None);
    layout.finish(&manifest, "single");
    let (config, _, diff_ids) = source_image(&layout, &manifest.digest);
    let repo = format!("team/single{}", t.suffix);

    let id = pm.ok(&["pull", "-q", "oci:src:single"]);
    let id = id.trim().to_string();
    assert_eq!(format!("sha256:{id}"), config, "image ID of the source");

    let digestfile = pm.path("single.digest");
    let dst = format!("docker://{}/{repo}:1", t.host);
    pm.ok(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        digestfile.to_str().unwrap(),
        &id,
        &dst,
    ]);
    let pushed = digest_file(&digestfile);
    let (ct, dcd, raw) = http_manifest(&t.host, &repo, "1").await;
    assert_eq!(
        dcd, pushed,
        "Docker-Content-Digest vs podman's --digestfile"
    );
    assert_eq!(sha256_digest(&raw), pushed);
    assert_eq!(ct, OCI_MANIFEST, "Content-Type");
    let m = read_json(&raw);
    assert_eq!(m["config"]["digest"], config.as_str(), "{m}");
    assert_eq!(
        http_blob(&t.host, &repo, &config).await,
        layout.blobs[&config]
    );
    let layers = digests(&m["layers"]);
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(
        sha256_digest(&http_blob(&t.host, &repo, &layers[0]).await),
        layers[0]
    );

    // Into an empty storage, and back.
    pm.ok(&["rmi", "-f", &id]);
    assert_eq!(
        pm.ok(&["images", "-q"]).trim(),
        "",
        "storage not empty after rmi"
    );
    let image = format!("{}/{repo}:1", t.host);
    let pulled = pm.ok(&["pull", "-q", "--tls-verify=false", &image]);
    assert_eq!(pulled.trim(), id, "image ID after the round trip");
    let img = pm.inspect(&image);
    assert_eq!(img["Digest"], pushed.as_str(), "{img}");
    assert_eq!(img["RootFS"]["Layers"], diff_ids);
    assert_eq!(img["Architecture"], "amd64");
}
