//! Interoperability with the `oci-client` crate over plain HTTP: push/pull of an image (config + layers, one of them
//! large enough to be pushed in several chunks), an image index, tag listing with pagination, blob existence,
//! cross-repository mount and the referrers API.
//!
//! Set `BERTH_TEST_REGISTRY=HOST:PORT` to run the same checks against another registry instead of a fresh berth.

mod common;
#[path = "common/image.rs"]
mod image;

use common::sha256_digest;
use image::{pseudo_random, target};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, ImageIndexEntry,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageIndex,
    OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;

fn oci() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap_or_else(|e| panic!("reference {s}: {e:?}"))
}

fn config_for(arch: &str) -> Config {
    let cfg = json!({
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {}
    });
    Config::oci_v1(serde_json::to_vec(&cfg).unwrap(), None)
}

/// GETs a manifest with plain HTTP: (Content-Type, Docker-Content-Digest, bytes).
async fn raw_manifest(host: &str, repo: &str, reference: &str) -> (String, String, Vec<u8>) {
    let accept = format!("{OCI_IMAGE_INDEX_MEDIA_TYPE}, {OCI_IMAGE_MEDIA_TYPE}");
    image::http_manifest_accept(host, repo, reference, &accept).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_client_push_pull_image() {
    let t = target();
    let client = oci();
    let auth = RegistryAuth::Anonymous;
    let repo = format!("team/ociclient{}", t.suffix);
    let image = reference(&format!("{}/{repo}:v1", t.host));

    // Small plain layer, empty layer, and a 9 MiB gzip-typed layer that oci-client pushes in 4 MiB chunks.
    let layers = vec![
        ImageLayer::oci_v1(b"hello berth\n".to_vec(), None),
        ImageLayer::oci_v1(Vec::new(), None),
        ImageLayer::oci_v1_gzip(pseudo_random(7, 9 * 1024 * 1024 + 123), None),
    ];
    let config = config_for("amd64");
    let config_bytes = config.data.clone();
    let resp = client
        .push(&image, &layers, config.clone(), &auth, None)
        .await
        .expect("oci-client push");
    assert!(
        resp.manifest_url.contains(&repo),
        "manifest url {}",
        resp.manifest_url
    );

    // Every blob exists, under the digest oci-client computed.
    for l in &layers {
        assert!(
            client
                .blob_exists(&image, &l.sha256_digest())
                .await
                .unwrap(),
            "layer {} missing after push",
            l.sha256_digest()
        );
    }
    assert!(
        client
            .blob_exists(&image, &config.sha256_digest())
            .await
            .unwrap()
    );
    assert!(
        !client
            .blob_exists(&image, &sha256_digest(b"never pushed"))
            .await
            .unwrap()
    );

    // Pull it back: same layers in the same order, same config, digest = sha256 of the served manifest bytes.
    let pulled = client
        .pull(
            &image,
            &auth,
            vec![IMAGE_LAYER_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE],
        )
        .await
        .expect("oci-client pull");
    assert_eq!(pulled.layers.len(), layers.len());
    // oci-client downloads layers concurrently, so match them up by digest.
    for want in &layers {
        let got = pulled
            .layers
            .iter()
            .find(|l| l.sha256_digest() == want.sha256_digest())
            .unwrap_or_else(|| panic!("layer {} not pulled back intact", want.sha256_digest()));
        assert_eq!(got.media_type, want.media_type);
        assert_eq!(got.data.len(), want.data.len());
    }
    assert_eq!(pulled.config.data, config_bytes);
    assert_eq!(pulled.config.media_type, IMAGE_CONFIG_MEDIA_TYPE);
    let (ct, dcd, raw) = raw_manifest(&t.host, &repo, "v1").await;
    assert_eq!(ct, OCI_IMAGE_MEDIA_TYPE);
    assert_eq!(dcd, sha256_digest(&raw));
    assert_eq!(pulled.digest.as_deref(), Some(dcd.as_str()));
    let manifest = pulled.manifest.expect("manifest");
    assert_eq!(manifest.layers.len(), 3);
    assert_eq!(manifest.layers[2].size, (9 * 1024 * 1024 + 123) as i64);

    // Digest-only lookups agree.
    let fetched = client
        .fetch_manifest_digest(&image, &auth)
        .await
        .expect("fetch_manifest_digest");
    assert_eq!(fetched, dcd);
    let by_digest = reference(&format!("{}/{repo}@{dcd}", t.host));
    let (m, d) = client
        .pull_image_manifest(&by_digest, &auth)
        .await
        .expect("pull by digest");
    assert_eq!(d, dcd);
    assert_eq!(m.config.digest, config.sha256_digest());

    // Streaming a single blob, and a byte range of it.
    let mut out = Vec::new();
    client
        .pull_blob(&image, &manifest.layers[2], &mut out)
        .await
        .expect("pull_blob");
    assert!(out == layers[2].data, "pull_blob bytes differ");
    let partial = client
        .pull_blob_stream_partial(&image, &manifest.layers[2], 1000, Some(5000))
        .await
        .expect("pull_blob_stream_partial");
    let partial = match partial {
        oci_client::client::BlobResponse::Partial(s) => s,
        oci_client::client::BlobResponse::Full(_) => {
            panic!("registry ignored the Range header of a blob GET (expected 206)")
        }
    };
    use futures_util::StreamExt;
    let mut bytes = Vec::new();
    let mut stream = partial.stream;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        bytes,
        layers[2].data[1000..6000].to_vec(),
        "ranged blob GET"
    );

    // Tags.
    let tags = client
        .list_tags(&image, &auth, None, None)
        .await
        .expect("list_tags");
    assert_eq!(tags.name, repo);
    assert_eq!(tags.tags, vec!["v1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_client_push_pull_image_index_and_tags() {
    let t = target();
    let client = oci();
    let auth = RegistryAuth::Anonymous;
    let repo = format!("team/multi{}", t.suffix);

    // Two single-platform images, each under its own tag.
    let mut entries = Vec::new();
    let mut per_arch = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let r = reference(&format!("{}/{repo}:{arch}", t.host));
        let layers = vec![ImageLayer::oci_v1(
            pseudo_random(100 + i as u64, 300_000 + i),
            None,
        )];
        let config = config_for(arch);
        client
            .push(&r, &layers, config, &auth, None)
            .await
            .unwrap_or_else(|e| panic!("push {arch}: {e:?}"));
        let (_, digest, raw) = raw_manifest(&t.host, &repo, arch).await;
        assert_eq!(digest, sha256_digest(&raw));
        entries.push(ImageIndexEntry {
            media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
            digest: digest.clone(),
            size: raw.len() as i64,
            platform: Some(
                serde_json::from_value(json!({"architecture": arch, "os": "linux"})).unwrap(),
            ),
            annotations: None,
            artifact_type: None,
        });
        per_arch.push((arch, digest, layers));
    }

    // The index, pushed under a tag.
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
        manifests: entries.clone(),
        artifact_type: None,
        annotations: None,
    };
    let index_ref = reference(&format!("{}/{repo}:v1", t.host));
    let url = client
        .push_manifest_list(&index_ref, &auth, index)
        .await
        .expect("push_manifest_list");
    let (ct, index_digest, raw) = raw_manifest(&t.host, &repo, "v1").await;
    assert_eq!(ct, OCI_IMAGE_INDEX_MEDIA_TYPE);
    assert_eq!(index_digest, sha256_digest(&raw));
    assert!(url.contains(&repo), "push_manifest_list url {url}");

    // Pull the raw index back through oci-client.
    let (m, d) = client
        .pull_manifest(&index_ref, &auth)
        .await
        .expect("pull_manifest of the index");
    assert_eq!(d, index_digest);
    match m {
        OciManifest::ImageIndex(idx) => {
            assert_eq!(idx.manifests.len(), 2);
            for (got, want) in idx.manifests.iter().zip(&entries) {
                assert_eq!(got.digest, want.digest);
                assert_eq!(got.size, want.size);
                assert_eq!(got.platform, want.platform);
            }
        }
        other => panic!("expected an image index, got {other:?}"),
    }

    // Platform resolution through the index picks linux/amd64 with the linux_amd64 resolver.
    let amd_client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..Default::default()
    });
    let (img, img_digest, list_digest) = amd_client
        .pull_image_manifest_and_list_digest(&index_ref, &auth)
        .await
        .expect("pull_image_manifest_and_list_digest");
    assert_eq!(img_digest, per_arch[0].1);
    assert_eq!(list_digest.as_deref(), Some(index_digest.as_str()));
    assert_eq!(img.layers[0].digest, per_arch[0].2[0].sha256_digest());
    let pulled = amd_client
        .pull(&index_ref, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
        .await
        .expect("pull through index");
    assert!(pulled.layers[0].data == per_arch[0].2[0].data);

    // Tags: all of them, sorted; then paginated with n/last.
    for tag in ["zeta", "alpha", "m1"] {
        let r = reference(&format!("{}/{repo}:{tag}", t.host));
        client
            .push_manifest_raw(&r, raw.clone(), OCI_IMAGE_INDEX_MEDIA_TYPE.parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("tag {tag}: {e:?}"));
    }
    let all = client
        .list_tags(&index_ref, &auth, None, None)
        .await
        .unwrap();
    let expected = ["alpha", "amd64", "arm64", "m1", "v1", "zeta"];
    assert_eq!(all.tags, expected, "tags/list");
    let page1 = client
        .list_tags(&index_ref, &auth, Some(2), None)
        .await
        .unwrap();
    assert_eq!(page1.tags, ["alpha", "amd64"], "tags/list?n=2");
    let page2 = client
        .list_tags(&index_ref, &auth, Some(3), Some("amd64"))
        .await
        .unwrap();
    assert_eq!(
        page2.tags,
        ["arm64", "m1", "v1"],
        "tags/list?n=3&last=amd64"
    );
    let page3 = client
        .list_tags(&index_ref, &auth, Some(3), Some("v1"))
        .await
        .unwrap();
    assert_eq!(page3.tags, ["zeta"], "tags/list?n=3&last=v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_client_mount_and_referrers() {
    let t = target();
    let client = oci();
    let auth = RegistryAuth::Anonymous;
    let src_repo = format!("team/source{}", t.suffix);
    let dst_repo = format!("team/dest{}", t.suffix);
    let src = reference(&format!("{}/{src_repo}:v1", t.host));
    let dst = reference(&format!("{}/{dst_repo}:v1", t.host));
    let layers = vec![ImageLayer::oci_v1(pseudo_random(55, 200_000), None)];
    let config = config_for("amd64");
    client
        .push(&src, &layers, config.clone(), &auth, None)
        .await
        .expect("push source");

    // Cross-repository mount: the blob appears in the destination without re-upload.
    let digest = layers[0].sha256_digest();
    assert!(!client.blob_exists(&dst, &digest).await.unwrap());
    client
        .mount_blob(&dst, &src, &digest)
        .await
        .expect("mount_blob (expects 201 Created)");
    assert!(client.blob_exists(&dst, &digest).await.unwrap());
    client
        .mount_blob(&dst, &src, &config.sha256_digest())
        .await
        .expect("mount config");
    let (_, subject_digest, subject_raw) = raw_manifest(&t.host, &src_repo, "v1").await;
    client
        .push_manifest_raw(
            &dst,
            subject_raw.clone(),
            OCI_IMAGE_MEDIA_TYPE.parse().unwrap(),
        )
        .await
        .expect("push manifest after mounts");

    // An artifact whose subject is the image: listed by the referrers API, filterable by artifactType.
    let empty = b"{}".to_vec();
    let sig = b"signature bytes".to_vec();
    let sig_ref = reference(&format!("{}/{dst_repo}@{}", t.host, sha256_digest(&empty)));
    client
        .push_blob(&sig_ref, empty.clone(), &sha256_digest(&empty))
        .await
        .expect("push empty config");
    client
        .push_blob(&sig_ref, sig.clone(), &sha256_digest(&sig))
        .await
        .expect("push signature blob");
    let artifact = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: "application/vnd.oci.empty.v1+json".into(),
            digest: sha256_digest(&empty),
            size: 2,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: "application/vnd.example.signature".into(),
            digest: sha256_digest(&sig),
            size: sig.len() as i64,
            ..Default::default()
        }],
        subject: Some(OciDescriptor {
            media_type: OCI_IMAGE_MEDIA_TYPE.into(),
            digest: subject_digest.clone(),
            size: subject_raw.len() as i64,
            ..Default::default()
        }),
        artifact_type: Some("application/vnd.example.sig".into()),
        annotations: None,
    };
    let mut body = Vec::new();
    serde_json::to_writer(&mut body, &artifact).unwrap();
    let artifact_digest = sha256_digest(&body);
    let artifact_ref = reference(&format!("{}/{dst_repo}@{artifact_digest}", t.host));
    client
        .push_manifest_raw(
            &artifact_ref,
            body.clone(),
            OCI_IMAGE_MEDIA_TYPE.parse().unwrap(),
        )
        .await
        .expect("push artifact by digest");

    let subject = reference(&format!("{}/{dst_repo}@{subject_digest}", t.host));
    let referrers = client
        .pull_referrers(&subject, None)
        .await
        .expect("pull_referrers");
    assert_eq!(
        referrers.manifests.len(),
        1,
        "referrers of {subject_digest}: {:?}",
        referrers.manifests
    );
    assert_eq!(referrers.manifests[0].digest, artifact_digest);
    assert_eq!(referrers.manifests[0].size, body.len() as i64);
    assert_eq!(
        referrers.manifests[0].artifact_type.as_deref(),
        Some("application/vnd.example.sig")
    );
    let filtered = client
        .pull_referrers(&subject, Some("application/vnd.example.other"))
        .await
        .expect("pull_referrers filtered");
    assert!(
        filtered.manifests.is_empty(),
        "filter by artifactType: {:?}",
        filtered.manifests
    );
}
