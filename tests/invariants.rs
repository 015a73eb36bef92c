//! Design invariants 1, 2 and 7 (../shared/design.md §5), each as a black-box test that would catch its violation.

mod common;

use common::{Berth, client, sha256_digest};
use reqwest::StatusCode;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

async fn push_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let d = sha256_digest(data);
    let r = client()
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "push blob");
    d
}

fn image_manifest(config: &str, config_len: usize, layer: &str, layer_len: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_len}],
    }))
    .unwrap()
}

async fn put_manifest(
    base: &str,
    repo: &str,
    reference: &str,
    ct: &str,
    body: &[u8],
) -> reqwest::Response {
    client()
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", ct)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// A bodiless request.
async fn call(method: reqwest::Method, url: String) -> reqwest::Response {
    client().request(method, url).send().await.unwrap()
}

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Invariant 1: no dangling references — a manifest is only recorded when all it references is present, and nothing
/// it references can be removed from under it.
#[tokio::test]
async fn invariant1_no_dangling_references() {
    let b = Berth::start();
    let base = b.url();
    let repo = "inv/one";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"layer bytes";
    let cd = push_blob(&base, repo, config).await;
    let missing = sha256_digest(b"never pushed");

    // A manifest naming a blob that is not in the repository is refused and nothing is tagged.
    let bad = image_manifest(&cd, config.len(), &missing, 12);
    let r = put_manifest(&base, repo, "broken", OCI_MANIFEST, &bad).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let tags: serde_json::Value = call(reqwest::Method::GET, format!("{base}/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));

    // A blob pushed to another repository does not count.
    let ld_elsewhere = push_blob(&base, "inv/other", layer).await;
    let r = put_manifest(
        &base,
        repo,
        "v1",
        OCI_MANIFEST,
        &image_manifest(&cd, config.len(), &ld_elsewhere, layer.len()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Once present, the manifest is accepted; an index over it too; a second index over a missing child is not.
    let ld = push_blob(&base, repo, layer).await;
    let m = image_manifest(&cd, config.len(), &ld, layer.len());
    let r = put_manifest(&base, repo, "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let md = sha256_digest(&m);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": m.len()}],
    }))
    .unwrap();
    assert_eq!(
        put_manifest(&base, repo, "multi", OCI_INDEX, &index)
            .await
            .status(),
        StatusCode::CREATED
    );
    let dangling = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 10}],
    }))
    .unwrap();
    let r = put_manifest(&base, repo, "dangling", OCI_INDEX, &dangling).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    // Referenced content cannot be deleted from under its referrer (distribution #3324).
    let r = call(
        reqwest::Method::DELETE,
        format!("{base}/v2/{repo}/blobs/{ld}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "DENIED");
    let r = call(
        reqwest::Method::DELETE,
        format!("{base}/v2/{repo}/manifests/{md}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = call(
        reqwest::Method::GET,
        format!("{base}/v2/{repo}/manifests/multi"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Deleting top-down works, and each tag disappears with its manifest.
    let id = sha256_digest(&index);
    let r = call(
        reqwest::Method::DELETE,
        format!("{base}/v2/{repo}/manifests/{id}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = call(
        reqwest::Method::DELETE,
        format!("{base}/v2/{repo}/manifests/{md}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = call(
        reqwest::Method::DELETE,
        format!("{base}/v2/{repo}/blobs/{ld}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let tags: serde_json::Value = call(reqwest::Method::GET, format!("{base}/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
}

/// Invariant 2: a 200 always carries every byte of the blob. If the stored bytes were damaged behind berth's back,
/// the response is an error before any header, never a short body.
#[tokio::test]
async fn invariant2_damaged_blob_is_never_served_short() {
    let b = Berth::start();
    let base = b.url();
    let data = vec![7u8; 100_000];
    let d = push_blob(&base, "inv/two", &data).await;
    let r = call(reqwest::Method::GET, format!("{base}/v2/inv/two/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), data.len());

    common::overwrite_blob(&b.data_dir, &d, &data[..10]);
    let r = call(reqwest::Method::GET, format!("{base}/v2/inv/two/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let r = client()
        .get(format!("{base}/v2/inv/two/blobs/{d}"))
        .header("range", "bytes=50-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// Invariant 2: bytes that do not hash to the claimed digest are never published under it.
#[tokio::test]
async fn invariant2_wrong_digest_publishes_nothing() {
    let b = Berth::start();
    let base = b.url();
    let claimed = sha256_digest(b"what the client claims");
    let r = client()
        .post(format!("{base}/v2/inv/two/blobs/uploads/?digest={claimed}"))
        .body(b"something else".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = call(
        reqwest::Method::HEAD,
        format!("{base}/v2/inv/two/blobs/{claimed}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!common::blob_exists(&b.data_dir, &claimed));
    let actual = sha256_digest(b"something else");
    assert!(!common::blob_exists(&b.data_dir, &actual));
}

/// Invariant 7: after kill -9, leftovers of interrupted writes are reclaimed at start and sessions resume.
#[tokio::test]
async fn invariant7_restart_reclaims_leftovers_and_resumes_uploads() {
    let mut b = Berth::start();
    let base = b.url();
    let r = client()
        .post(format!("{base}/v2/inv/seven/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let first = vec![1u8; 300_000];
    let r = client()
        .patch(format!("{base}{loc}"))
        .header("content-range", format!("0-{}", first.len() - 1))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    b.kill9();
    if common::s3_endpoint().is_none() {
        // What a crash mid-write leaves behind: a staging file, an upload object no session owns.
        std::fs::write(b.data_dir.join("tmp").join("stray"), b"partial").unwrap();
        std::fs::write(
            b.data_dir.join("uploads").join("0123456789abcdef"),
            b"partial",
        )
        .unwrap();
        b.restart_after_kill9();
        assert!(!b.data_dir.join("tmp").join("stray").exists());
        assert!(!b.data_dir.join("uploads").join("0123456789abcdef").exists());
    } else {
        // On an object store the local leftover is a mirror download's spool file. Staged upload objects no
        // session owns are only reclaimed once an hour old (another replica may still be writing them), which
        // a test cannot wait for; tests/object_store.rs covers the crash of a chunked upload there.
        std::fs::write(b.data_dir.join("spool").join("stray"), b"partial").unwrap();
        b.restart_after_kill9();
        assert!(!b.data_dir.join("spool").join("stray").exists());
    }

    let st = call(reqwest::Method::GET, format!("{base}{loc}")).await;
    assert_eq!(st.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        st.headers()["range"],
        format!("0-{}", first.len() - 1).as_str()
    );
    let second = vec![2u8; 1000];
    let mut all = first.clone();
    all.extend_from_slice(&second);
    let d = sha256_digest(&all);
    let r = client()
        .put(format!("{base}{loc}?digest={d}"))
        .header(
            "content-range",
            format!("{}-{}", first.len(), all.len() - 1),
        )
        .body(second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = call(
        reqwest::Method::GET,
        format!("{base}/v2/inv/seven/blobs/{d}"),
    )
    .await
    .bytes()
    .await
    .unwrap();
    assert_eq!(sha256_digest(&got), d);
}
