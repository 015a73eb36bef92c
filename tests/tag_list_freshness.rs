//! Tag lists are served from memory; they must never be stale, whoever changed the tags.

mod common;

use common::{Berth, client, sha256_digest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn tags(base: &str, q: &str) -> Vec<String> {
    let v: serde_json::Value = client()
        .get(format!("{base}/v2/fresh/app/tags/list{q}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn tag_list_follows_every_change_including_other_writers() {
    let b = Berth::start();
    let base = b.url();
    let config = br#"{"os":"linux"}"#;
    let cd = sha256_digest(config);
    let r = client()
        .post(format!("{base}/v2/fresh/app/blobs/uploads/?digest={cd}"))
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let md = sha256_digest(&manifest);
    for t in ["b", "a"] {
        let r = client()
            .put(format!("{base}/v2/fresh/app/manifests/{t}"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(tags(&base, "").await, ["a", "b"]);
    assert_eq!(tags(&base, "?n=1&last=a").await, ["b"]);

    // Another writer of the same database (the CLI, another replica) adds a tag behind the server's back.
    if common::on_postgres() {
        common::psql(
            &b.data_dir,
            &format!(
                "INSERT INTO tag (repo, name, manifest, updated_at)
                 SELECT id, 'c', '{md}', 0 FROM repository WHERE name = 'fresh/app'"
            ),
        );
    } else {
        let db = rusqlite::Connection::open(b.data_dir.join("berth.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        db.execute(
            "INSERT INTO tag (repo, name, manifest, updated_at)
             SELECT id, 'c', ?1, 0 FROM repository WHERE name = 'fresh/app'",
            [&md],
        )
        .unwrap();
    }
    assert_eq!(tags(&base, "").await, ["a", "b", "c"]);

    let r = client()
        .delete(format!("{base}/v2/fresh/app/manifests/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(tags(&base, "").await, ["a", "c"]);
    let r = client()
        .delete(format!("{base}/v2/fresh/app/manifests/{md}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(tags(&base, "").await.is_empty());
}
