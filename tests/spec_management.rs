//! OCI distribution-spec "Content Management" rules (deleting tags, manifests and blobs) plus berth's
//! repository-scoping and reference-integrity invariants.

mod common;
#[path = "common/spec.rs"]
mod h;

use h::*;
use reqwest::Method;
use serde_json::{Value, json};

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

async fn tags(r: &Reg, repo: &str) -> Vec<String> {
    let (_, body) = expect_status(r.get(&format!("/v2/{repo}/tags/list")).await, 200).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Pushes an OCI index over `children` under `tag`; returns (digest, body).
async fn push_index(r: &Reg, repo: &str, tag: &str, children: &[&Image]) -> (String, Vec<u8>) {
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|c| c.desc()).collect::<Vec<_>>(),
    }))
    .unwrap();
    let digest = r.push_manifest(repo, tag, OCI_INDEX, &body).await;
    (digest, body)
}

#[tokio::test]
async fn manifest_delete_by_digest_is_202_then_404_manifest_unknown() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/del", "latest", "a").await;
    let resp = r
        .delete(&format!("/v2/mgmt/del/manifests/{}", img.digest))
        .await;
    assert_eq!(resp.status().as_u16(), 202, "DELETE manifest by digest");
    expect_error(
        r.get(&format!("/v2/mgmt/del/manifests/{}", img.digest))
            .await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
    assert_eq!(
        r.head(&format!("/v2/mgmt/del/manifests/{}", img.digest))
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn manifest_delete_by_digest_removes_its_tags() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/deltags", "one", "a").await;
    r.push_manifest("mgmt/deltags", "two", OCI_MANIFEST, &img.body)
        .await;
    let keep = r.push_image("mgmt/deltags", "keep", "b").await;
    let resp = r
        .delete(&format!("/v2/mgmt/deltags/manifests/{}", img.digest))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    for tag in ["one", "two"] {
        expect_error(
            r.get(&format!("/v2/mgmt/deltags/manifests/{tag}")).await,
            404,
            &["MANIFEST_UNKNOWN"],
        )
        .await;
    }
    assert_eq!(tags(&r, "mgmt/deltags").await, ["keep"]);
    expect_status(
        r.get(&format!("/v2/mgmt/deltags/manifests/{}", keep.digest))
            .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn manifest_delete_by_tag_is_202_and_only_untags() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/untag", "v1", "a").await;
    r.push_manifest("mgmt/untag", "v2", OCI_MANIFEST, &img.body)
        .await;
    let resp = r.delete("/v2/mgmt/untag/manifests/v1").await;
    assert_eq!(resp.status().as_u16(), 202, "DELETE by tag");
    expect_error(
        r.get("/v2/mgmt/untag/manifests/v1").await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
    let (_, body) = expect_status(
        r.get(&format!("/v2/mgmt/untag/manifests/{}", img.digest))
            .await,
        200,
    )
    .await;
    assert_eq!(body, img.body, "the manifest stays pullable by digest");
    expect_status(r.get("/v2/mgmt/untag/manifests/v2").await, 200).await;
    assert_eq!(tags(&r, "mgmt/untag").await, ["v2"]);
}

#[tokio::test]
async fn manifest_delete_unknown_is_404_manifest_unknown() {
    let (_b, r) = start();
    r.push_image("mgmt/delmiss", "latest", "a").await;
    let missing = sha256(b"no such manifest");
    expect_error(
        r.delete(&format!("/v2/mgmt/delmiss/manifests/{missing}"))
            .await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
    expect_error(
        r.delete("/v2/mgmt/delmiss/manifests/nosuchtag").await,
        404,
        &["MANIFEST_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn manifest_delete_in_unknown_repository_is_404() {
    let (_b, r) = start();
    let missing = sha256(b"no such manifest");
    let resp = r
        .delete(&format!("/v2/mgmt/norepo/manifests/{missing}"))
        .await;
    expect_error(resp, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn blob_delete_is_202_then_404_blob_unknown() {
    let (_b, r) = start();
    let digest = r.push_blob("mgmt/blobdel", b"unreferenced blob").await;
    let resp = r.delete(&format!("/v2/mgmt/blobdel/blobs/{digest}")).await;
    assert_eq!(resp.status().as_u16(), 202, "DELETE blob");
    expect_error(
        r.get(&format!("/v2/mgmt/blobdel/blobs/{digest}")).await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
    assert_eq!(
        r.head(&format!("/v2/mgmt/blobdel/blobs/{digest}"))
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn blob_delete_unknown_is_404_blob_unknown() {
    let (_b, r) = start();
    r.push_blob("mgmt/blobmiss", b"something").await;
    let missing = sha256(b"no such blob");
    expect_error(
        r.delete(&format!("/v2/mgmt/blobmiss/blobs/{missing}"))
            .await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn blob_delete_referenced_by_manifest_is_409_denied() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/inuse", "latest", "a").await;
    for digest in [&img.layer_digest, &img.config_digest] {
        expect_error(
            r.delete(&format!("/v2/mgmt/inuse/blobs/{digest}")).await,
            409,
            &["DENIED"],
        )
        .await;
        expect_status(r.get(&format!("/v2/mgmt/inuse/blobs/{digest}")).await, 200).await;
    }
}

#[tokio::test]
async fn blob_delete_still_denied_after_only_untagging() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/untagged", "latest", "a").await;
    assert_eq!(
        r.delete("/v2/mgmt/untagged/manifests/latest")
            .await
            .status()
            .as_u16(),
        202
    );
    // The manifest still exists by digest, so it still references the layer.
    let resp = r
        .delete(&format!("/v2/mgmt/untagged/blobs/{}", img.layer_digest))
        .await;
    expect_error(resp, 409, &["DENIED"]).await;
}

#[tokio::test]
async fn blob_delete_allowed_after_referencing_manifest_deleted() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/freed", "latest", "a").await;
    assert_eq!(
        r.delete(&format!("/v2/mgmt/freed/manifests/{}", img.digest))
            .await
            .status()
            .as_u16(),
        202
    );
    for digest in [&img.layer_digest, &img.config_digest] {
        let resp = r.delete(&format!("/v2/mgmt/freed/blobs/{digest}")).await;
        assert_eq!(
            resp.status().as_u16(),
            202,
            "blob {digest} is no longer referenced"
        );
    }
}

#[tokio::test]
async fn blob_delete_not_blocked_by_manifest_in_other_repository() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/user", "latest", "shared").await;
    // The same layer pushed, unreferenced, to another repository.
    r.push_blob("mgmt/loose", &img.layer).await;
    let resp = r
        .delete(&format!("/v2/mgmt/loose/blobs/{}", img.layer_digest))
        .await;
    assert_eq!(
        resp.status().as_u16(),
        202,
        "only manifests of the same repository hold a blob"
    );
    // The other repository keeps its copy.
    let (_, body) = expect_status(
        r.get(&format!("/v2/mgmt/user/blobs/{}", img.layer_digest))
            .await,
        200,
    )
    .await;
    assert_eq!(body, img.layer);
}

#[tokio::test]
async fn manifest_delete_child_of_index_is_409_denied() {
    let (_b, r) = start();
    let child = r.push_image("mgmt/child", "", "amd64").await;
    push_index(&r, "mgmt/child", "multi", &[&child]).await;
    let resp = r
        .delete(&format!("/v2/mgmt/child/manifests/{}", child.digest))
        .await;
    expect_error(resp, 409, &["DENIED"]).await;
    expect_status(
        r.get(&format!("/v2/mgmt/child/manifests/{}", child.digest))
            .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn manifest_delete_child_allowed_after_index_deleted() {
    let (_b, r) = start();
    let child = r.push_image("mgmt/orphan", "", "amd64").await;
    let (idx, _) = push_index(&r, "mgmt/orphan", "multi", &[&child]).await;
    assert_eq!(
        r.delete(&format!("/v2/mgmt/orphan/manifests/{idx}"))
            .await
            .status()
            .as_u16(),
        202
    );
    let resp = r
        .delete(&format!("/v2/mgmt/orphan/manifests/{}", child.digest))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn blob_in_other_repository_is_blob_unknown() {
    let (_b, r) = start();
    let digest = r.push_blob("mgmt/owner-a", b"private to a").await;
    r.push_blob("mgmt/owner-b", b"something of b's own").await;
    expect_error(
        r.get(&format!("/v2/mgmt/owner-b/blobs/{digest}")).await,
        404,
        &["BLOB_UNKNOWN"],
    )
    .await;
    assert_eq!(
        r.head(&format!("/v2/mgmt/owner-b/blobs/{digest}"))
            .await
            .status()
            .as_u16(),
        404
    );
    // Range requests must not leak it either.
    let rb = r
        .req(Method::GET, &format!("/v2/mgmt/owner-b/blobs/{digest}"))
        .header("range", "bytes=0-3");
    assert_eq!(r.send(rb).await.status().as_u16(), 404);
}

#[tokio::test]
async fn blob_visible_in_repository_after_mount() {
    let (_b, r) = start();
    let digest = r.push_blob("mgmt/mount-a", b"shared by mount").await;
    let resp = r
        .post_upload(
            "mgmt/mount-b",
            &format!("?mount={digest}&from=mgmt/mount-a"),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    expect_status(
        r.get(&format!("/v2/mgmt/mount-b/blobs/{digest}")).await,
        200,
    )
    .await;
    // Deleting it from the target does not remove it from the source.
    assert_eq!(
        r.delete(&format!("/v2/mgmt/mount-b/blobs/{digest}"))
            .await
            .status()
            .as_u16(),
        202
    );
    expect_status(
        r.get(&format!("/v2/mgmt/mount-a/blobs/{digest}")).await,
        200,
    )
    .await;
    assert_eq!(
        r.head(&format!("/v2/mgmt/mount-b/blobs/{digest}"))
            .await
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn manifest_in_other_repository_is_manifest_unknown() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/man-a", "latest", "a").await;
    r.push_image("mgmt/man-b", "latest", "b").await;
    let resp = r
        .get(&format!("/v2/mgmt/man-b/manifests/{}", img.digest))
        .await;
    expect_error(resp, 404, &["MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn manifest_put_referencing_blob_only_in_other_repository_is_manifest_blob_unknown() {
    let (_b, r) = start();
    let img = r.push_image("mgmt/blobs-a", "latest", "a").await;
    r.push_blob("mgmt/blobs-b", b"unrelated").await;
    let resp = r
        .put_manifest("mgmt/blobs-b", "latest", OCI_MANIFEST, &img.body)
        .await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
}

#[tokio::test]
async fn index_put_referencing_manifest_only_in_other_repository_is_manifest_blob_unknown() {
    let (_b, r) = start();
    let child = r.push_image("mgmt/idx-a", "", "a").await;
    r.push_blob("mgmt/idx-b", b"unrelated").await;
    let body = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child.desc()],
    }))
    .unwrap();
    let resp = r
        .put_manifest("mgmt/idx-b", "multi", OCI_INDEX, &body)
        .await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
}
