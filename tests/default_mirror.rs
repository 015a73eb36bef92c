//! A mirror listener: one port where a mirror answers at the registry root, as Docker's `registry-mirrors` needs.

mod common;

use common::{Berth, client, free_port, sha256_digest};

#[tokio::test]
async fn mirror_listener_serves_upstream_at_the_root_and_refuses_pushes() {
    let upstream = Berth::start();
    let base = upstream.url();
    let layer = b"layer served through the mirror listener".to_vec();
    let ld = sha256_digest(&layer);
    let r = client()
        .post(format!("{base}/v2/library/tool/blobs/uploads/?digest={ld}"))
        .body(layer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": ld, "size": layer.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    }))
    .unwrap();
    let r = client()
        .put(format!("{base}/v2/library/tool/manifests/1.0"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let mirror_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\n[[server.mirror_listener]]\nlisten = \"127.0.0.1:{mirror_port}\"\nmirror = \"hub\"\n\
             [[mirror]]\nname = \"hub\"\nupstream = \"{base}\"\n"
        ),
    )
    .unwrap();
    let b = Berth::start_with(&["--config", config.to_str().unwrap()]);
    let root = format!("http://127.0.0.1:{mirror_port}");
    for _ in 0..100 {
        if client().get(format!("{root}/v2/")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // At the root of the mirror listener, unprefixed names are the mirror's.
    let r = client()
        .get(format!("{root}/v2/library/tool/manifests/1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["oci-namespace"], "hub");
    assert_eq!(r.bytes().await.unwrap().to_vec(), manifest);
    let r = client()
        .get(format!("{root}/v2/library/tool/blobs/{ld}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), layer);

    // Pushing there would write into a cache: refused.
    let r = client()
        .post(format!("{root}/v2/library/tool/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");

    // The main listener still hosts private repositories under the same names.
    let r = client()
        .post(format!("{}/v2/library/tool/blobs/uploads/", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // And reaches the mirror through its prefix.
    let r = client()
        .get(format!("{}/v2/hub/library/tool/manifests/1.0", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
