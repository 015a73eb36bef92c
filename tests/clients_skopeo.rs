//! Interoperability with skopeo (Debian package `skopeo`): multi-arch OCI index round trip with preserved digests,
//! docker schema2 conversion round trip, and `skopeo list-tags`.
//!
//! Every image is generated locally by the test as an OCI image layout. Skipped (with a message) only when skopeo is
//! missing and `CI` is unset; under CI a missing skopeo is a failure.
//!
//! Set `BERTH_TEST_REGISTRY=HOST:PORT` to run the same checks against another registry (e.g. a reference registry)
//! instead of a freshly started berth.

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;

use common::sha256_digest;
use image::{
    DOCKER_MANIFEST, Layout, OCI_INDEX, OCI_MANIFEST, XorShift, build_multiarch, http_blob,
    http_manifest, target,
};
use serde_json::{Value, json};
use std::path::Path;
use tools::{layout_ref, skopeo, skopeo_ok};

// ---------------------------------------------------------------------------------------------------------------
// Running skopeo (runner: tests/common/tools.rs)
// ---------------------------------------------------------------------------------------------------------------

/// True when skopeo can be used; false (skip) when it is missing outside CI; panics when missing under CI.
fn skopeo_available() -> bool {
    common::tools_available(&["skopeo"], "skopeo")
}

// ---------------------------------------------------------------------------------------------------------------
// Reading an OCI layout back
// ---------------------------------------------------------------------------------------------------------------

fn layout_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let p = dir
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_multiarch_index_round_trip_preserves_digests() {
    if !skopeo_available() {
        return;
    }
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let src = tmp.path().join("src");
    let back = tmp.path().join("back");
    let (layout, index, children) = build_multiarch(&src, 0x5EED_1234_ABCD_0001, "v1");
    let repo = format!("team/app{}", t.suffix);
    let dst = format!("docker://{}/{repo}:v1", t.host);

    // Push the whole index with every platform, byte for byte.
    let src_ref = format!("oci:{}:v1", src.display());
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src_ref,
            &dst,
        ],
        &home,
    );

    // The registry serves the exact index bytes under the tag.
    let raw = skopeo_ok(&["inspect", "--raw", "--tls-verify=false", &dst], &home);
    assert_eq!(
        sha256_digest(&raw),
        index.digest,
        "index digest changed by the round trip"
    );
    assert_eq!(raw, layout.blobs[&index.digest], "index bytes changed");
    let (ct, dcd, body) = http_manifest(&t.host, &repo, "v1").await;
    assert_eq!(ct, OCI_INDEX, "Content-Type of the index");
    assert_eq!(dcd, index.digest, "Docker-Content-Digest of the index");
    assert_eq!(body, raw);

    // Every child manifest and every blob is served unchanged.
    for child in &children {
        let by_digest = format!("docker://{}/{repo}@{}", t.host, child.digest);
        let raw = skopeo_ok(
            &["inspect", "--raw", "--tls-verify=false", &by_digest],
            &home,
        );
        assert_eq!(
            sha256_digest(&raw),
            child.digest,
            "child manifest digest changed"
        );
        let (ct, dcd, _) = http_manifest(&t.host, &repo, &child.digest).await;
        assert_eq!(ct, OCI_MANIFEST);
        assert_eq!(dcd, child.digest);
        let m: Value = serde_json::from_slice(&raw).unwrap();
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        for l in m["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in blobs {
            let got = http_blob(&t.host, &repo, &d).await;
            assert_eq!(sha256_digest(&got), d);
            assert_eq!(got, layout.blobs[&d]);
        }
    }

    // skopeo inspect (parsed) sees the host platform's image of the index.
    let inspected: Value = serde_json::from_slice(&skopeo_ok(
        &[
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "arm64",
            &dst,
        ],
        &home,
    ))
    .unwrap();
    // `Digest` is that of what the tag names (the index); `Layers` are those of the arm64 image.
    assert_eq!(
        inspected["Digest"], index.digest,
        "skopeo inspect --override-arch arm64: {inspected}"
    );
    assert_eq!(inspected["Architecture"], "arm64");
    let arm: Value = serde_json::from_slice(&layout.blobs[&children[1].digest]).unwrap();
    let arm_layers: Vec<Value> = arm["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].clone())
        .collect();
    assert_eq!(inspected["Layers"], json!(arm_layers), "{inspected}");

    // Copy everything back into a fresh layout: same index digest, same children, same blobs.
    let back_ref = format!("oci:{}:v1", back.display());
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &dst,
            &back_ref,
        ],
        &home,
    );
    assert_eq!(
        layout_ref(&back, "v1"),
        index.digest,
        "index digest after pulling back"
    );
    for (digest, bytes) in &layout.blobs {
        let got = layout_blob(&back, digest);
        assert_eq!(
            sha256_digest(&got),
            *digest,
            "blob {digest} pulled back with other bytes"
        );
        assert_eq!(&got, bytes);
    }

    // A second copy (everything already present) is a no-op and still succeeds; also by digest.
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src_ref,
            &dst,
        ],
        &home,
    );
    let dst_latest = format!("docker://{}/{repo}:latest", t.host);
    let by_digest = format!("docker://{}/{repo}@{}", t.host, index.digest);
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &by_digest,
            &dst_latest,
        ],
        &home,
    );
    let raw = skopeo_ok(
        &["inspect", "--raw", "--tls-verify=false", &dst_latest],
        &home,
    );
    assert_eq!(sha256_digest(&raw), index.digest);

    // list-tags: exactly the two tags, in lexical order.
    let repo_ref = format!("docker://{}/{repo}", t.host);
    let tags: Value = serde_json::from_slice(&skopeo_ok(
        &["list-tags", "--tls-verify=false", &repo_ref],
        &home,
    ))
    .unwrap();
    assert_eq!(
        tags["Tags"],
        json!(["latest", "v1"]),
        "skopeo list-tags: {tags}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_docker_schema2_round_trip() {
    if !skopeo_available() {
        return;
    }
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let src = tmp.path().join("src");
    let mut rng = XorShift(0x5EED_0000_0000_0002);
    let mut layout = Layout::new(&src);
    let image = layout.image("amd64", &mut rng, 1024 * 1024 + 5, None);
    layout.finish(&image, "single");
    let src_manifest: Value = serde_json::from_slice(&layout.blobs[&image.digest]).unwrap();
    let src_layer = src_manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let src_config = src_manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let repo = format!("team/legacy{}", t.suffix);
    let dst = format!("docker://{}/{repo}:v2s2", t.host);
    let src_ref = format!("oci:{}:single", src.display());
    skopeo_ok(
        &[
            "copy",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            &src_ref,
            &dst,
        ],
        &home,
    );

    // The registry holds a docker schema2 manifest whose digest is the sha256 of the bytes it serves.
    let raw = skopeo_ok(&["inspect", "--raw", "--tls-verify=false", &dst], &home);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], DOCKER_MANIFEST, "converted manifest: {m}");
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    // Already-gzipped layers and the config travel unchanged.
    assert_eq!(m["layers"][0]["digest"], src_layer.as_str());
    assert_eq!(m["config"]["digest"], src_config.as_str());
    let (ct, dcd, body) = http_manifest(&t.host, &repo, "v2s2").await;
    assert_eq!(ct, DOCKER_MANIFEST, "Content-Type of a schema2 manifest");
    assert_eq!(dcd, sha256_digest(&raw));
    assert_eq!(body, raw);
    let digest = sha256_digest(&raw);

    // By digest too.
    let by_digest = format!("docker://{}/{repo}@{digest}", t.host);
    let raw2 = skopeo_ok(
        &["inspect", "--raw", "--tls-verify=false", &by_digest],
        &home,
    );
    assert_eq!(raw2, raw);
    let inspected: Value =
        serde_json::from_slice(&skopeo_ok(&["inspect", "--tls-verify=false", &dst], &home))
            .unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");

    // Pull back into a `dir:` copy, keeping the schema2 manifest byte for byte.
    let back = tmp.path().join("back");
    let back_ref = format!("dir:{}", back.display());
    skopeo_ok(
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &dst,
            &back_ref,
        ],
        &home,
    );
    let back_manifest = std::fs::read(back.join("manifest.json")).unwrap();
    assert_eq!(
        sha256_digest(&back_manifest),
        digest,
        "schema2 manifest changed when pulled back"
    );
    for d in [&src_layer, &src_config] {
        let got = std::fs::read(back.join(d.strip_prefix("sha256:").unwrap())).unwrap();
        assert_eq!(
            &got, &layout.blobs[d],
            "blob {d} pulled back with other bytes"
        );
    }

    // And back into an OCI layout (converted again); layers are still the original bytes.
    let back_oci = tmp.path().join("back-oci");
    let back_oci_ref = format!("oci:{}:again", back_oci.display());
    skopeo_ok(
        &[
            "copy",
            "--format",
            "oci",
            "--src-tls-verify=false",
            &dst,
            &back_oci_ref,
        ],
        &home,
    );
    let top = layout_ref(&back_oci, "again");
    let m: Value = serde_json::from_slice(&layout_blob(&back_oci, &top)).unwrap();
    assert_eq!(m["layers"][0]["digest"], src_layer.as_str());
    assert_eq!(layout_blob(&back_oci, &src_layer), layout.blobs[&src_layer]);

    let repo_ref = format!("docker://{}/{repo}", t.host);
    let tags: Value = serde_json::from_slice(&skopeo_ok(
        &["list-tags", "--tls-verify=false", &repo_ref],
        &home,
    ))
    .unwrap();
    assert_eq!(tags["Tags"], json!(["v2s2"]), "skopeo list-tags: {tags}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_list_tags_many_and_missing_repo() {
    if !skopeo_available() {
        return;
    }
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let src = tmp.path().join("src");
    let mut rng = XorShift(0x5EED_0000_0000_0003);
    let mut layout = Layout::new(&src);
    let image = layout.image("amd64", &mut rng, 4096, None);
    layout.finish(&image, "base");
    let repo = format!("team/tags{}", t.suffix);
    let src_ref = format!("oci:{}:base", src.display());

    // One upload, then many tags via registry-to-registry copies (blobs already present).
    let first = format!("docker://{}/{repo}:t00", t.host);
    skopeo_ok(
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src_ref,
            &first,
        ],
        &home,
    );
    let mut expected = vec!["t00".to_string()];
    for i in 1..12 {
        let tag = format!("t{i:02}");
        let dst = format!("docker://{}/{repo}:{tag}", t.host);
        skopeo_ok(
            &[
                "copy",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &first,
                &dst,
            ],
            &home,
        );
        expected.push(tag);
    }
    let repo_ref = format!("docker://{}/{repo}", t.host);
    let tags: Value = serde_json::from_slice(&skopeo_ok(
        &["list-tags", "--tls-verify=false", &repo_ref],
        &home,
    ))
    .unwrap();
    assert_eq!(tags["Tags"], json!(expected), "skopeo list-tags: {tags}");
    for tag in &expected {
        let (_, dcd, _) = http_manifest(&t.host, &repo, tag).await;
        assert_eq!(dcd, image.digest, "tag {tag}");
    }

    // A repository that does not exist: skopeo reports an error (registry answers 404 NAME_UNKNOWN).
    let missing = format!("docker://{}/team/does-not-exist{}", t.host, t.suffix);
    let out = skopeo(&["list-tags", "--tls-verify=false", &missing], &home);
    assert!(
        !out.status.success(),
        "list-tags of a missing repository succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = common::client()
        .get(format!(
            "http://{}/v2/team/does-not-exist{}/tags/list",
            t.host, t.suffix
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN", "{body}");
}
