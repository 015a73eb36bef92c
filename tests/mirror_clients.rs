//! Real clients pulling through berth's mirrors (issue 3 "Tests"):
//! - skopeo through the path prefix (`docker://BERTH/up/team/app:v1`), the upstream being a second, real berth that
//!   holds a multi-arch image: every digest identical, and still served once the upstream is gone;
//! - containerd through a `hosts.toml` mirror: containerd asks berth with `?ns=<upstream host>`, berth's mirror is
//!   named after that host; the upstream is the counting fake, which must see no request from containerd itself.
//!
//! Skipped (with a message) when a tool is missing and `CI` is unset (a failure under CI), or when the containerd
//! daemon cannot start in the sandbox.

mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;
#[path = "common/upstream.rs"]
mod upstream;

use common::{Berth, sha256_digest};
use image::{Desc, Layout, OCI_INDEX, OCI_MANIFEST, build_multiarch};
use std::path::Path;
use tools::{containerd_or_skip, layout_ref, skopeo_ok};
use upstream::{ACCEPT_MANIFESTS, Upstream, get, get_accept};

// ---------------------------------------------------------------------------------------------------------------
// skopeo (runner: tests/common/tools.rs)
// ---------------------------------------------------------------------------------------------------------------

/// Asserts that every blob of `expected` is in the layout at `dir`, byte for byte.
fn assert_layout_has(dir: &Path, expected: &Layout) {
    for (digest, bytes) in &expected.blobs {
        let p = dir.join("blobs/sha256").join(&digest[7..]);
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(sha256_digest(&got), *digest, "{}", p.display());
        assert!(&got == bytes, "{digest} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_skopeo_copies_through_prefix() {
    if !common::tools_available(&["skopeo"], "skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let src = tmp.path().join("src");
    let (layout, index, children) = build_multiarch(&src, 0x11EE_0000_0000_0001, "v1");

    // The upstream: a real berth holding the image.
    let mut upstream = Berth::start();
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &format!("docker://{}/team/app:v1", upstream.host()),
        ],
        &home,
    );

    let mirror = Berth::start_with(&["--mirror", &format!("up={}", upstream.url())]);
    let through = format!("docker://{}/up/team/app:v1", mirror.host());

    // The raw index through the mirror is the upstream's, byte for byte.
    let raw = skopeo_ok(&["inspect", "--raw", "--tls-verify=false", &through], &home);
    assert_eq!(
        sha256_digest(&raw),
        index.digest,
        "index digest via the mirror"
    );
    assert_eq!(
        raw, layout.blobs[&index.digest],
        "index bytes via the mirror"
    );

    // Copy everything out of the mirror.
    let dst = tmp.path().join("dst");
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &through,
            &format!("oci:{}:v1", dst.display()),
        ],
        &home,
    );
    assert_eq!(layout_ref(&dst, "v1"), index.digest, "copied index digest");
    assert_layout_has(&dst, &layout);
    for child in &children {
        let raw = skopeo_ok(
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{}/up/team/app@{}", mirror.host(), child.digest),
            ],
            &home,
        );
        assert_eq!(sha256_digest(&raw), child.digest, "child manifest digest");
    }
    let o = get_accept(
        &format!("{}/v2/up/team/app/manifests/v1", mirror.url()),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_eq!(o.header("oci-namespace").as_deref(), Some("up"));

    // With the upstream gone, the mirror still serves the whole image from its cache.
    upstream.kill9();
    let again = tmp.path().join("again");
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &through,
            &format!("oci:{}:v1", again.display()),
        ],
        &home,
    );
    assert_eq!(
        layout_ref(&again, "v1"),
        index.digest,
        "index digest from the cache"
    );
    assert_layout_has(&again, &layout);
}

// ---------------------------------------------------------------------------------------------------------------
// containerd (daemon: tests/common/tools.rs)
// ---------------------------------------------------------------------------------------------------------------

/// Loads a layout built by `build_multiarch` into the fake upstream as `name:tag`.
fn load_layout(
    up: &Upstream,
    name: &str,
    tag: &str,
    layout: &Layout,
    index: &Desc,
    children: &[Desc],
) {
    for (digest, bytes) in &layout.blobs {
        assert_eq!(up.put_blob(bytes.clone()), *digest);
    }
    for c in children {
        up.put_manifest(
            name,
            &c.digest,
            OCI_MANIFEST,
            layout.blobs[&c.digest].clone(),
        );
    }
    up.put_manifest(name, tag, OCI_INDEX, layout.blobs[&index.digest].clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_containerd_pulls_via_hosts_toml_ns() {
    if !common::tools_available(&["containerd", "ctr"], "containerd") {
        return;
    }
    let Some(ctrd) = containerd_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, index, children) =
        build_multiarch(&tmp.path().join("src"), 0x11EE_0000_0000_0002, "v1");
    let up = Upstream::start();
    load_layout(&up, "team/app", "v1", &layout, &index, &children);

    // berth's mirror is named after the upstream host, which is what containerd sends as ns=.
    let mirror = Berth::start_with(&["--mirror", &format!("{}={}", up.host(), up.url())]);

    let hosts = ctrd.dir.path().join("hosts");
    let host_dir = hosts.join(up.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            up.url(),
            mirror.url()
        ),
    )
    .unwrap();
    let hosts_dir = hosts.to_str().unwrap();
    let image_ref = format!("{}/team/app:v1", up.host());
    ctrd.ctr_ok(&[
        "-n",
        "mirror",
        "images",
        "pull",
        "--hosts-dir",
        hosts_dir,
        "--all-platforms",
        &image_ref,
    ]);

    // containerd never went to the upstream itself: everything came through berth.
    let direct: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| {
            s.user_agent
                .as_deref()
                .is_some_and(|ua| ua.contains("containerd"))
        })
        .collect();
    assert!(
        direct.is_empty(),
        "containerd fell back to the upstream (berth's mirror failed?): {direct:?}\ncontainerd log:\n{}",
        ctrd.log_tail()
    );

    // The image is complete and byte-identical.
    let ls = ctrd.ctr_ok(&["-n", "mirror", "images", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&image_ref) && l.contains(&index.digest)),
        "{image_ref} with {} not in `ctr images ls`:\n{ls}",
        index.digest
    );
    for (digest, bytes) in &layout.blobs {
        let out = ctrd.ctr(&["-n", "mirror", "content", "get", digest]);
        assert!(out.status.success(), "ctr content get {digest}");
        assert!(&out.stdout == bytes, "content of {digest} differs");
    }
    // Each blob was fetched upstream once, by berth.
    for digest in layout.blobs.keys() {
        let gets = up.blob_gets("team/app", digest);
        assert!(gets <= 1, "{digest} fetched {gets} times from the upstream");
    }

    // berth cached it under the ns= route: served with the upstream stopped, to containerd too.
    up.down();
    let o = get_accept(
        &format!("{}/v2/team/app/manifests/v1?ns={}", mirror.url(), up.host()),
        ACCEPT_MANIFESTS,
    )
    .await;
    assert_eq!(o.status, 200, "cached index via ns=: {}", o.describe());
    assert_eq!(o.bytes(), &layout.blobs[&index.digest][..]);
    assert_eq!(
        o.header("oci-namespace").as_deref(),
        Some(up.host().as_str())
    );
    let (layer, layer_bytes) = layout
        .blobs
        .iter()
        .find(|(d, _)| **d != index.digest && children.iter().all(|c| c.digest != **d))
        .unwrap();
    let o = get(&format!(
        "{}/v2/team/app/blobs/{layer}?ns={}",
        mirror.url(),
        up.host()
    ))
    .await;
    assert_eq!(o.status, 200, "cached blob via ns=: {}", o.describe());
    assert!(o.bytes() == &layer_bytes[..], "cached blob bytes via ns=");
    ctrd.ctr_ok(&[
        "-n",
        "again",
        "images",
        "pull",
        "--hosts-dir",
        hosts_dir,
        "--all-platforms",
        &image_ref,
    ]);
}
