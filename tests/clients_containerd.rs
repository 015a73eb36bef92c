//! Interoperability with containerd (Debian package `containerd`): the test starts its own unprivileged-config
//! containerd daemon (root, state and sockets in a temporary directory, CRI plugin disabled), pushes a locally
//! generated multi-arch OCI image with plain HTTP requests, and pulls it with `ctr images pull --plain-http`.
//!
//! Skipped (with a message) when the binaries are missing and `CI` is unset (under CI that is a failure), or when
//! the containerd daemon cannot start in the sandbox (its log is printed).
//!
//! Set `BERTH_TEST_REGISTRY=HOST:PORT` to run against another registry instead of a fresh berth.

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;

use common::sha256_digest;
use image::{
    Desc, Layout, OCI_INDEX, OCI_MANIFEST, absolute, build_multiarch, target, with_digest,
};
use serde_json::Value;
use tools::containerd_or_skip;

fn tools_available() -> bool {
    common::tools_available(&["containerd", "ctr"], "containerd")
}

// ---------------------------------------------------------------------------------------------------------------
// Pushing with plain HTTP
// ---------------------------------------------------------------------------------------------------------------

async fn http_push_blob(c: &reqwest::Client, host: &str, repo: &str, data: &[u8]) {
    let digest = sha256_digest(data);
    let r = c
        .post(format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "POST upload for {digest}");
    let loc = absolute(
        &format!("http://{host}"),
        r.headers()["location"].to_str().unwrap(),
    );
    let r = c
        .put(with_digest(&loc, &digest))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "PUT blob {digest}");
}

async fn http_push_manifest(
    c: &reqwest::Client,
    host: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let r = c
        .put(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 201, "PUT manifest {repo}:{reference}: {text}");
}

/// Pushes the index (and everything it references) of a layout built by `build_multiarch`.
async fn push_layout(
    host: &str,
    repo: &str,
    tag: &str,
    layout: &Layout,
    index: &Desc,
    children: &[Desc],
) {
    let c = common::client();
    let manifests: Vec<&String> = children
        .iter()
        .map(|d| &d.digest)
        .chain([&index.digest])
        .collect();
    for (digest, bytes) in &layout.blobs {
        if !manifests.contains(&digest) {
            http_push_blob(&c, host, repo, bytes).await;
        }
    }
    for child in children {
        http_push_manifest(
            &c,
            host,
            repo,
            &child.digest,
            OCI_MANIFEST,
            &layout.blobs[&child.digest],
        )
        .await;
    }
    http_push_manifest(&c, host, repo, tag, OCI_INDEX, &layout.blobs[&index.digest]).await;
}

/// Parses `ctr images ls` output into rows of (ref, type, digest, platforms).
fn parse_images_ls(out: &str) -> Vec<(String, String, String, String)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // REF TYPE DIGEST SIZE(2 fields: "1.2 MiB") PLATFORMS LABELS
            if f.len() < 6 {
                return None;
            }
            Some((
                f[0].to_string(),
                f[1].to_string(),
                f[2].to_string(),
                f[5].to_string(),
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_multiarch_index_with_identical_digests() {
    if !tools_available() {
        return;
    }
    let Some(ctrd) = containerd_or_skip() else {
        return;
    };
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, index, children) =
        build_multiarch(&tmp.path().join("src"), 0xC0DE_0000_0000_0001, "v1");
    let repo = format!("team/app{}", t.suffix);
    push_layout(&t.host, &repo, "v1", &layout, &index, &children).await;

    // Pull every platform (content only, no unpack).
    let image = format!("{}/{repo}:v1", t.host);
    ctrd.ctr_ok(&[
        "-n",
        "berth",
        "images",
        "pull",
        "--plain-http",
        "--all-platforms",
        &image,
    ]);

    // The image record names the index by its original digest.
    let ls = ctrd.ctr_ok(&["-n", "berth", "images", "ls"]);
    let rows = parse_images_ls(&ls);
    let row = rows
        .iter()
        .find(|r| r.0 == image)
        .unwrap_or_else(|| panic!("{image} not in `ctr images ls`:\n{ls}"));
    assert_eq!(row.1, OCI_INDEX, "image type in `ctr images ls`:\n{ls}");
    assert_eq!(
        row.2, index.digest,
        "index digest in `ctr images ls`:\n{ls}"
    );
    assert!(
        row.3.contains("linux/amd64") && row.3.contains("linux/arm64"),
        "platforms in `ctr images ls`:\n{ls}"
    );

    // Every blob of every platform arrived byte for byte.
    let content = ctrd.ctr_ok(&["-n", "berth", "content", "ls", "-q"]);
    for (digest, bytes) in &layout.blobs {
        assert!(
            content.lines().any(|l| l.trim() == digest),
            "{digest} not in `ctr content ls`:\n{content}"
        );
        let out = ctrd.ctr(&["-n", "berth", "content", "get", digest]);
        assert!(out.status.success(), "ctr content get {digest}");
        assert_eq!(sha256_digest(&out.stdout), *digest, "content of {digest}");
        assert_eq!(&out.stdout, bytes);
    }

    // `ctr images check` agrees the image is complete for all platforms.
    let check = ctrd.ctr_ok(&["-n", "berth", "images", "check"]);
    assert!(check.contains("complete"), "ctr images check:\n{check}");

    // Pull by digest (index) in another namespace.
    let by_digest = format!("{}/{repo}@{}", t.host, index.digest);
    ctrd.ctr_ok(&[
        "-n",
        "bydigest",
        "images",
        "pull",
        "--plain-http",
        "--all-platforms",
        &by_digest,
    ]);
    let ls = ctrd.ctr_ok(&["-n", "bydigest", "images", "ls"]);
    let rows = parse_images_ls(&ls);
    assert!(
        rows.iter().any(|r| r.0 == by_digest && r.2 == index.digest),
        "{by_digest} not in `ctr images ls`:\n{ls}"
    );

    // A tag that does not exist fails cleanly.
    let missing = format!("{}/{repo}:nope", t.host);
    let out = ctrd.ctr(&[
        "-n",
        "berth",
        "images",
        "pull",
        "--plain-http",
        "--all-platforms",
        &missing,
    ]);
    assert!(!out.status.success(), "pulling a missing tag succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found"),
        "ctr error for a missing tag: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_and_unpacks_one_platform() {
    if !tools_available() {
        return;
    }
    let Some(ctrd) = containerd_or_skip() else {
        return;
    };
    let t = target();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, index, children) =
        build_multiarch(&tmp.path().join("src"), 0xC0DE_0000_0000_0002, "v1");
    let repo = format!("team/unpack{}", t.suffix);
    push_layout(&t.host, &repo, "v1", &layout, &index, &children).await;

    // Default pull: resolves linux/amd64 from the index, fetches it, unpacks the layers (checks diff_ids).
    let image = format!("{}/{repo}:v1", t.host);
    ctrd.ctr_ok(&[
        "-n",
        "unpack",
        "images",
        "pull",
        "--plain-http",
        "--platform",
        "linux/amd64",
        "--snapshotter",
        "native",
        &image,
    ]);
    let ls = ctrd.ctr_ok(&["-n", "unpack", "images", "ls"]);
    let rows = parse_images_ls(&ls);
    assert!(
        rows.iter().any(|r| r.0 == image && r.2 == index.digest),
        "{image} with digest {} not in `ctr images ls`:\n{ls}",
        index.digest
    );
    // The amd64 manifest and its blobs are present; the arm64-only layer is not.
    let content = ctrd.ctr_ok(&["-n", "unpack", "content", "ls", "-q"]);
    assert!(
        content.contains(&children[0].digest),
        "amd64 manifest missing:\n{content}"
    );
    let amd: Value = serde_json::from_slice(&layout.blobs[&children[0].digest]).unwrap();
    for l in amd["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert!(content.contains(d), "amd64 layer {d} missing:\n{content}");
    }
    let snaps = ctrd.ctr_ok(&["-n", "unpack", "snapshots", "--snapshotter", "native", "ls"]);
    assert!(
        snaps.lines().count() >= 3,
        "expected one committed snapshot per amd64 layer:\n{snaps}"
    );
}
