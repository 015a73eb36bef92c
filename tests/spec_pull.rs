//! OCI distribution-spec "Pull" rules: pulling manifests and blobs, and checking existence with HEAD.

mod common;
#[path = "common/spec.rs"]
mod h;

use h::*;
use reqwest::Method;

/// Starts a fresh berth, or targets the registry at `$SPEC_REGISTRY_URL` when set (to check these tests against
/// another implementation; tests that assume an empty registry then fail).
fn start() -> (Option<common::Berth>, Reg) {
    match external_registry() {
        Some(url) => (None, Reg::new(url, common::client())),
        None => {
            let b = common::Berth::start();
            let r = Reg::new(b.url(), common::client());
            (Some(b), r)
        }
    }
}

#[tokio::test]
async fn manifest_get_by_tag_returns_200_with_manifest_and_digest() {
    let (_b, r) = start();
    let img = r.push_image("pull/a", "latest", "a").await;
    let resp = r
        .send(
            r.req(Method::GET, "/v2/pull/a/manifests/latest")
                .header("accept", OCI_MANIFEST),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(must_header(&resp, "docker-content-digest"), img.digest);
    assert_eq!(must_header(&resp, "content-type"), OCI_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), img.body.as_slice());
}

#[tokio::test]
async fn manifest_get_by_digest_returns_200_with_manifest_and_digest() {
    let (_b, r) = start();
    let img = r.push_image("pull/bydigest", "latest", "b").await;
    let resp = r
        .send(
            r.req(
                Method::GET,
                &format!("/v2/pull/bydigest/manifests/{}", img.digest),
            )
            .header("accept", OCI_MANIFEST),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(must_header(&resp, "docker-content-digest"), img.digest);
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        img.digest,
        "content must match the requested digest"
    );
}

#[tokio::test]
async fn manifest_get_unknown_tag_is_404_manifest_unknown() {
    let (_b, r) = start();
    r.push_image("pull/unknown", "latest", "c").await;
    expect_error(
        r.get("/v2/pull/unknown/manifests/nope").await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn manifest_get_unknown_digest_is_404_manifest_unknown() {
    let (_b, r) = start();
    r.push_image("pull/unknownd", "latest", "d").await;
    let missing = sha256(b"no such manifest");
    expect_error(
        r.get(&format!("/v2/pull/unknownd/manifests/{missing}"))
            .await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn manifest_get_in_unknown_repository_is_404() {
    let (_b, r) = start();
    let resp = r.get("/v2/pull/never/pushed/manifests/latest").await;
    expect_error(resp, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn manifest_head_returns_200_with_digest_and_length() {
    let (_b, r) = start();
    let img = r.push_image("pull/head", "latest", "e").await;
    let resp = r
        .send(
            r.req(Method::HEAD, "/v2/pull/head/manifests/latest")
                .header("accept", OCI_MANIFEST),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(must_header(&resp, "docker-content-digest"), img.digest);
    assert_eq!(
        must_header(&resp, "content-length"),
        img.body.len().to_string()
    );
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn manifest_head_unknown_is_404() {
    let (_b, r) = start();
    r.push_image("pull/headmiss", "latest", "f").await;
    assert_eq!(
        r.head("/v2/pull/headmiss/manifests/other")
            .await
            .status()
            .as_u16(),
        404
    );
    let missing = sha256(b"nothing");
    assert_eq!(
        r.head(&format!("/v2/pull/headmiss/manifests/{missing}"))
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn blob_get_returns_200_with_content_and_digest() {
    let (_b, r) = start();
    let img = r.push_image("pull/blob", "latest", "g").await;
    for (digest, data) in [
        (&img.layer_digest, &img.layer),
        (&img.config_digest, &img.config),
    ] {
        let resp = r.get(&format!("/v2/pull/blob/blobs/{digest}")).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(&must_header(&resp, "docker-content-digest"), digest);
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.as_ref(), data.as_slice());
        assert_eq!(&sha256(&body), digest);
    }
}

#[tokio::test]
async fn blob_get_large_blob_roundtrips() {
    let (_b, r) = start();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let digest = r.push_blob("pull/large", &data).await;
    let resp = r.get(&format!("/v2/pull/large/blobs/{digest}")).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(must_header(&resp, "content-length"), data.len().to_string());
    let body = resp.bytes().await.unwrap();
    assert!(
        body.as_ref() == data.as_slice(),
        "3 MB blob did not round-trip"
    );
}

#[tokio::test]
async fn blob_get_unknown_is_404_blob_unknown() {
    let (_b, r) = start();
    r.push_image("pull/blobmiss", "latest", "h").await;
    let missing = sha256(b"no such blob");
    expect_error(
        r.get(&format!("/v2/pull/blobmiss/blobs/{missing}")).await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn blob_head_unknown_is_404() {
    let (_b, r) = start();
    r.push_image("pull/blobheadmiss", "latest", "i").await;
    let missing = sha256(b"no such blob");
    let resp = r
        .head(&format!("/v2/pull/blobheadmiss/blobs/{missing}"))
        .await;
    assert_eq!(resp.status().as_u16(), 404);
    assert!(
        resp.bytes().await.unwrap().is_empty(),
        "HEAD must not carry a body"
    );
}
