//! `berth mirror prefetch` warms a mirror's cache through the running server, all platforms or selected ones.

mod common;
#[path = "common/upstream.rs"]
mod upstream;

use std::process::Command;

use upstream::{TestImage, Upstream, berth_mirroring};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An index over two single-platform images, stored upstream as `team/app:v1`.
fn multiarch(up: &Upstream) -> (TestImage, TestImage) {
    let amd = TestImage::new(1, &[200_000, 3_000]);
    let arm = TestImage::new(2, &[150_000]);
    up.put_image("team/app", "amd64", &amd);
    up.put_image("team/app", "arm64", &arm);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.digest, "size": amd.manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.digest, "size": arm.manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }))
    .unwrap();
    up.put_manifest("team/app", "v1", OCI_INDEX, index);
    (amd, arm)
}

fn prefetch(server: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["mirror", "prefetch", "--server", server])
        .args(args)
        .output()
        .expect("run berth mirror prefetch")
}

#[tokio::test]
async fn prefetch_caches_every_platform_then_serves_without_upstream() {
    let up = Upstream::start();
    let (amd, arm) = multiarch(&up);
    let b = berth_mirroring(&up, "up", &[]);
    let out = prefetch(&b.url(), &["up/team/app:v1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefetched 3 manifests and 5 blobs"));
    for (d, _) in amd.blobs().iter().chain(arm.blobs().iter()) {
        assert_eq!(up.blob_gets("team/app", d), 1, "{d} fetched once");
    }

    up.down();
    for (d, bytes) in amd.blobs().iter().chain(arm.blobs().iter()) {
        let r = common::client()
            .get(format!("{}/v2/up/team/app/blobs/{d}", b.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..]);
    }
}

#[tokio::test]
async fn prefetch_of_one_platform_leaves_the_others_alone() {
    let up = Upstream::start();
    let (amd, arm) = multiarch(&up);
    let b = berth_mirroring(&up, "up", &[]);
    let out = prefetch(
        &b.url(),
        &["--platform", "linux/arm64", "-q", "up/team/app:v1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (d, _) in arm.blobs() {
        assert_eq!(up.blob_gets("team/app", &d), 1);
    }
    for (d, _) in amd.blobs() {
        assert_eq!(
            up.blob_gets("team/app", &d),
            0,
            "amd64 blob {d} must not be fetched"
        );
    }
}

#[test]
fn prefetch_of_a_missing_image_fails_with_the_reason() {
    let up = Upstream::start();
    let b = berth_mirroring(&up, "up", &[]);
    let out = prefetch(&b.url(), &["up/team/nothing:v1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("team/nothing"), "{err}");
}
