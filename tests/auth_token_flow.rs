//! The Docker token flow: challenge, `/token`, signed access tokens and everything that must make them fail.

#[path = "common/auth.rs"]
mod auth;
mod common;

use auth::{Creds, code, fetch_token, send};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;

const POLICY: &str = r#"
[auth]
max_failed_logins = 0
token_ttl = "10m"

[[auth.policy]]
repositories = ["team/*"]
pull = ["@users"]
push = ["pusher"]
"#;

fn setup() -> auth::Secure {
    let b = auth::secure_berth(POLICY);
    auth::add_user(&b, "reader", "reader-pw");
    auth::add_user(&b, "pusher", "pusher-pw");
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn challenge_token_and_bearer_push_pull() {
    let b = setup();
    let base = b.url();
    let (s, h, body) = send(
        Method::GET,
        &format!("{base}/v2/"),
        &Creds::Anonymous,
        &[],
        vec![],
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (401, "UNAUTHORIZED"));
    let ch = auth::challenge(&h).expect("Bearer challenge on /v2/");
    assert_eq!(ch["realm"], format!("{base}/token"));
    assert_eq!(ch["service"], "berth");

    let (s, h, _) = send(
        Method::POST,
        &format!("{base}/v2/team/a/blobs/uploads/"),
        &Creds::Anonymous,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(
        auth::challenge(&h).unwrap()["scope"],
        "repository:team/a:pull,push"
    );

    let pusher = Creds::basic("pusher", "pusher-pw");
    let (s, t) = fetch_token(&base, &pusher, &["repository:team/a:pull,push"]).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["token"], t["access_token"]);
    assert_eq!(t["expires_in"], 600);
    assert!(t["issued_at"].as_str().unwrap().ends_with('Z'));
    let bearer = Creds::Bearer(t["token"].as_str().unwrap().to_owned());
    let pushed = auth::push_image(&base, &bearer, "team/a", "v1", "a").await;
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/team/a/manifests/{}", pushed.manifest),
        &bearer,
        &[("Accept", auth::OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send(Method::GET, &format!("{base}/v2/"), &bearer, &[], vec![]).await;
    assert_eq!(s, 200);

    // A scope granted for team/a does not reach team/b, although the user could push there: the client is told to
    // fetch a token for it.
    let (s, h, body) = send(
        Method::POST,
        &format!("{base}/v2/team/b/blobs/uploads/"),
        &bearer,
        &[],
        vec![],
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (401, "UNAUTHORIZED"));
    let ch = auth::challenge(&h).unwrap();
    assert_eq!(ch["scope"], "repository:team/b:pull,push");
    assert_eq!(ch["error"], "insufficient_scope");
    // Without the right at all, the answer is DENIED.
    let (s, _, body) = send(
        Method::GET,
        &format!("{base}/v2/secret/x/tags/list"),
        &bearer,
        &[],
        vec![],
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (403, "DENIED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_grants_the_intersection_of_request_and_rights() {
    let b = setup();
    let base = b.url();
    let (s, t) = fetch_token(
        &base,
        &Creds::basic("reader", "reader-pw"),
        &[
            "repository:team/a:pull,push,delete",
            "repository:secret/x:pull",
            "registry:catalog:*",
        ],
    )
    .await;
    assert_eq!(s, 200);
    let c = auth::claims(t["token"].as_str().unwrap());
    assert_eq!(c["sub"], "reader");
    assert_eq!(c["aud"], "berth");
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": "team/a", "actions": ["pull"]},
               {"type": "registry", "name": "catalog", "actions": ["*"]}])
    );
    // Space-separated scopes in one parameter, as some clients send them.
    let (_, t) = fetch_token(
        &base,
        &Creds::basic("pusher", "pusher-pw"),
        &["repository:team/a:pull repository:team/b:push"],
    )
    .await;
    assert_eq!(
        auth::claims(t["token"].as_str().unwrap())["access"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Anonymous callers get a token too, granting what anonymous callers may do (here: nothing).
    let (s, t) = fetch_token(&base, &Creds::Anonymous, &["repository:team/a:pull"]).await;
    assert_eq!(s, 200);
    let c = auth::claims(t["token"].as_str().unwrap());
    assert_eq!(
        (c["sub"].as_str(), c["access"].clone()),
        (Some(""), json!([]))
    );
    // Wrong credentials at the token endpoint: 401, whether the user exists or not.
    let (s, _) = fetch_token(
        &base,
        &Creds::basic("reader", "nope"),
        &["repository:team/a:pull"],
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = fetch_token(
        &base,
        &Creds::basic("nobody", "nope"),
        &["repository:team/a:pull"],
    )
    .await;
    assert_eq!(s, 401);
    // The catalog with a token granting it lists what the user may pull.
    let (_, t) = fetch_token(
        &base,
        &Creds::basic("reader", "reader-pw"),
        &["registry:catalog:*"],
    )
    .await;
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/_catalog"),
        &Creds::Bearer(t["token"].as_str().unwrap().into()),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    // Without the catalog scope, the bearer is sent back for one.
    let (_, t) = fetch_token(
        &base,
        &Creds::basic("reader", "reader-pw"),
        &["repository:team/a:pull"],
    )
    .await;
    let (s, h, _) = send(
        Method::GET,
        &format!("{base}/v2/_catalog"),
        &Creds::Bearer(t["token"].as_str().unwrap().into()),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(auth::challenge(&h).unwrap()["scope"], "registry:catalog:*");
}

fn sign(key: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .unwrap()
}

fn server_key(b: &common::Berth) -> Vec<u8> {
    hex::decode(
        std::fs::read_to_string(b.data_dir.join("jwt-signing.key"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_wrong_audience_and_wrong_key_tokens_are_refused() {
    let b = setup();
    let base = b.url();
    let url = format!("{base}/v2/team/a/tags/list");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |aud: &str, exp: i64| {
        json!({"iss": "berth", "sub": "reader", "aud": aud, "exp": exp, "nbf": now - 10, "iat": now - 10, "jti": "t",
               "access": [{"type": "repository", "name": "team/a", "actions": ["pull"]}]})
    };
    let key = server_key(&b);
    auth::push_image(
        &base,
        &Creds::basic("pusher", "pusher-pw"),
        "team/a",
        "v1",
        "x",
    )
    .await;
    // The control: a token built the same way with the server's key and valid claims works.
    let good = sign(&key, &claims("berth", now + 300));
    let (s, _, _) = send(Method::GET, &url, &Creds::Bearer(good.clone()), &[], vec![]).await;
    assert_eq!(s, 200);

    let other_key: [u8; 32] = [7; 32];
    let mut forged = good.split('.').map(str::to_owned).collect::<Vec<_>>();
    {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut c = claims("berth", now + 300);
        c["sub"] = "admin".into();
        c["access"][0]["name"] = "secret/x".into();
        forged[1] = e.encode(serde_json::to_vec(&c).unwrap());
    }
    let forged = forged.join(".");
    let none_alg = {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(serde_json::to_vec(&claims("berth", now + 300)).unwrap())
        )
    };
    for (what, token) in [
        ("forged payload", forged),
        ("alg none", none_alg),
        ("expired", sign(&key, &claims("berth", now - 120))),
        (
            "wrong audience",
            sign(&key, &claims("another-registry", now + 300)),
        ),
        ("wrong key", sign(&other_key, &claims("berth", now + 300))),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let (s, h, body) = send(Method::GET, &url, &Creds::Bearer(token), &[], vec![]).await;
        assert_eq!(
            (s.as_u16(), code(&body).as_str()),
            (401, "UNAUTHORIZED"),
            "{what}"
        );
        assert_eq!(
            auth::challenge(&h).unwrap()["error"],
            "invalid_token",
            "{what}"
        );
    }

    // Rotating the key ends every outstanding token at once, while the server runs.
    auth::cli_ok(&b.data_dir, &["auth", "rotate-key"], "");
    let (s, _, _) = send(Method::GET, &url, &Creds::Bearer(good), &[], vec![]).await;
    assert_eq!(s, 401, "token signed with the rotated-out key");
    let (_, t) = fetch_token(
        &base,
        &Creds::basic("reader", "reader-pw"),
        &["repository:team/a:pull"],
    )
    .await;
    let (s, _, _) = send(
        Method::GET,
        &url,
        &Creds::Bearer(t["token"].as_str().unwrap().into()),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200, "a fresh token works");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_or_removing_a_user_ends_access_at_once() {
    let b = setup();
    let base = b.url();
    let pat = auth::create_token(&b, "pusher", &["team/*:pull,push"], Some("90d"));
    let via_pat = Creds::basic("pusher", &pat);
    auth::push_image(&base, &via_pat, "team/a", "v1", "a").await;
    let (s, t) = fetch_token(&base, &via_pat, &["repository:team/a:pull,push,delete"]).await;
    assert_eq!(s, 200);
    let c = auth::claims(t["token"].as_str().unwrap());
    assert_eq!(
        c["access"][0]["actions"],
        json!(["pull", "push"]),
        "token scopes cap the grant"
    );
    let bearer = Creds::Bearer(t["token"].as_str().unwrap().into());
    let url = format!("{base}/v2/team/a/tags/list");
    assert_eq!(send(Method::GET, &url, &bearer, &[], vec![]).await.0, 200);
    // The token is listed with its last use.
    let list = auth::cli_ok(&b.data_dir, &["token", "list", "--user", "pusher"], "");
    let id = auth::token_id(&pat);
    let line = list
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("token listed");
    assert!(!line.contains(&pat), "the secret is never listed");
    assert_eq!(
        line.matches('Z').count(),
        3,
        "created, expires and last used: {line}"
    );

    auth::cli_ok(&b.data_dir, &["token", "revoke", &id], "");
    assert_eq!(
        send(Method::GET, &url, &via_pat, &[], vec![]).await.0,
        401,
        "revoked token as password"
    );
    assert_eq!(
        send(Method::GET, &url, &bearer, &[], vec![]).await.0,
        401,
        "access token obtained with it"
    );

    // Removing a user ends their password logins and their access tokens.
    let reader = Creds::basic("reader", "reader-pw");
    let (_, t) = fetch_token(&base, &reader, &["repository:team/a:pull"]).await;
    let reader_bearer = Creds::Bearer(t["token"].as_str().unwrap().into());
    assert_eq!(
        send(Method::GET, &url, &reader_bearer, &[], vec![]).await.0,
        200
    );
    auth::cli_ok(&b.data_dir, &["user", "remove", "reader"], "");
    assert_eq!(send(Method::GET, &url, &reader, &[], vec![]).await.0, 401);
    assert_eq!(
        send(Method::GET, &url, &reader_bearer, &[], vec![]).await.0,
        401
    );

    // A changed password takes effect at once as well.
    let pusher = Creds::basic("pusher", "pusher-pw");
    assert_eq!(send(Method::GET, &url, &pusher, &[], vec![]).await.0, 200);
    auth::cli_ok(&b.data_dir, &["user", "passwd", "pusher"], "new-pw\n");
    assert_eq!(send(Method::GET, &url, &pusher, &[], vec![]).await.0, 401);
    assert_eq!(
        send(
            Method::GET,
            &url,
            &Creds::basic("pusher", "new-pw"),
            &[],
            vec![]
        )
        .await
        .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_manages_users_and_tokens_for_admins_only() {
    let b = setup();
    let base = b.url();
    let admin = auth::admin();
    let body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let ct = [("Content-Type", "application/json")];
    for (creds, want) in [
        (Creds::Anonymous, 401),
        (Creds::basic("reader", "reader-pw"), 403),
    ] {
        let (s, _, _) = send(
            Method::GET,
            &format!("{base}/api/v1/users"),
            &creds,
            &[],
            vec![],
        )
        .await;
        assert_eq!(s, want);
        let (s, _, _) = send(
            Method::POST,
            &format!("{base}/api/v1/users"),
            &creds,
            &ct,
            body(json!({"name": "evil", "password": "x"})),
        )
        .await;
        assert_eq!(s, want);
    }
    let (s, _, _) = send(
        Method::POST,
        &format!("{base}/api/v1/users"),
        &admin,
        &ct,
        body(json!({"name": "ci", "password": "ci-pw"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _, _) = send(
        Method::POST,
        &format!("{base}/api/v1/users"),
        &admin,
        &ct,
        body(json!({"name": "ci", "password": "again"})),
    )
    .await;
    assert_eq!(s, 409);
    let (s, _, b2) = send(
        Method::GET,
        &format!("{base}/api/v1/users"),
        &admin,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let names: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&b2)
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["admin", "ci", "pusher", "reader"]);

    let (s, _, tb) = send(Method::POST, &format!("{base}/api/v1/tokens"), &admin, &ct,
        body(json!({"user": "pusher", "name": "ci", "scopes": ["team/*:pull,push"], "expires_in": "90d"}))).await;
    assert_eq!(s, 201);
    let created: serde_json::Value = serde_json::from_slice(&tb).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(
        send(
            Method::GET,
            &format!("{base}/v2/team/a/tags/list"),
            &Creds::basic("pusher", &token),
            &[],
            vec![]
        )
        .await
        .0,
        404,
        "token authenticates (repository empty)"
    );
    let (s, _, lb) = send(
        Method::GET,
        &format!("{base}/api/v1/tokens?user=pusher"),
        &admin,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        !String::from_utf8_lossy(&lb).contains(&token),
        "listing never shows a secret"
    );
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        send(
            Method::DELETE,
            &format!("{base}/api/v1/tokens/{id}"),
            &admin,
            &[],
            vec![]
        )
        .await
        .0,
        204
    );
    assert_eq!(
        send(
            Method::GET,
            &format!("{base}/v2/team/a/tags/list"),
            &Creds::basic("pusher", &token),
            &[],
            vec![]
        )
        .await
        .0,
        401
    );
    assert_eq!(
        send(
            Method::DELETE,
            &format!("{base}/api/v1/tokens/{id}"),
            &admin,
            &[],
            vec![]
        )
        .await
        .0,
        404
    );

    // A narrow token of an admin cannot use the admin API; a full one can.
    let narrow = auth::create_token(&b, "admin", &["team/*:pull"], None);
    assert_eq!(
        send(
            Method::GET,
            &format!("{base}/api/v1/users"),
            &Creds::basic("admin", &narrow),
            &[],
            vec![]
        )
        .await
        .0,
        403
    );
    let full = auth::create_token(&b, "admin", &["**:*"], None);
    assert_eq!(
        send(
            Method::GET,
            &format!("{base}/api/v1/users"),
            &Creds::basic("admin", &full),
            &[],
            vec![]
        )
        .await
        .0,
        200
    );

    assert_eq!(
        send(
            Method::PUT,
            &format!("{base}/api/v1/users/ci/password"),
            &admin,
            &ct,
            body(json!({"password": "new"}))
        )
        .await
        .0,
        204
    );
    assert_eq!(
        send(
            Method::GET,
            &format!("{base}/v2/"),
            &Creds::basic("ci", "new"),
            &[],
            vec![]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(
            Method::DELETE,
            &format!("{base}/api/v1/users/ci"),
            &admin,
            &[],
            vec![]
        )
        .await
        .0,
        204
    );
    assert_eq!(
        send(
            Method::GET,
            &format!("{base}/v2/"),
            &Creds::basic("ci", "new"),
            &[],
            vec![]
        )
        .await
        .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn immutable_tags_refuse_moving_a_tag() {
    let b = auth::secure_berth(
        "[[auth.policy]]\nrepositories = [\"release/**\"]\npull = [\"@users\"]\npush = [\"@users\"]\ndelete = [\"@users\"]\nimmutable_tags = true\n\n[[auth.policy]]\nrepositories = [\"**\"]\npull = [\"@users\"]\npush = [\"@users\"]\n",
    );
    let base = b.url();
    let admin = auth::admin();
    let first = auth::push_image(&base, &admin, "release/app", "1.0", "one").await;
    // Pushing the same manifest to the same tag again is fine (nothing moves).
    auth::push_image(&base, &admin, "release/app", "1.0", "one").await;
    // A different manifest under the same tag is refused…
    let cfg = serde_json::to_vec(&json!({"seed": "two"})).unwrap();
    let layer = b"layer two".to_vec();
    for blob in [&cfg, &layer] {
        let (s, _, _) = send(
            Method::POST,
            &format!(
                "{base}/v2/release/app/blobs/uploads/?digest={}",
                auth::sha256(blob)
            ),
            &admin,
            &[],
            blob.clone(),
        )
        .await;
        assert_eq!(s, 201);
    }
    let m2 = auth::manifest_for(&cfg, &layer);
    let (s, _, body) = send(
        Method::PUT,
        &format!("{base}/v2/release/app/manifests/1.0"),
        &admin,
        &[("Content-Type", auth::OCI_MANIFEST)],
        m2.clone(),
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (403, "DENIED"));
    // …also through ?tag= on a push by digest, and deleting the tag to re-create it is refused too.
    let (s, _, _) = send(
        Method::PUT,
        &format!(
            "{base}/v2/release/app/manifests/{}?tag=1.0",
            auth::sha256(&m2)
        ),
        &admin,
        &[("Content-Type", auth::OCI_MANIFEST)],
        m2.clone(),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, body) = send(
        Method::DELETE,
        &format!("{base}/v2/release/app/manifests/1.0"),
        &admin,
        &[],
        vec![],
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (403, "DENIED"));
    // The tag still names the first manifest; new tags are fine.
    let (_, h, _) = send(
        Method::HEAD,
        &format!("{base}/v2/release/app/manifests/1.0"),
        &admin,
        &[("Accept", auth::OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(h["docker-content-digest"].to_str().unwrap(), first.manifest);
    let (s, _, _) = send(
        Method::PUT,
        &format!("{base}/v2/release/app/manifests/1.1"),
        &admin,
        &[("Content-Type", auth::OCI_MANIFEST)],
        m2.clone(),
    )
    .await;
    assert_eq!(s, 201);
    // Elsewhere tags move as usual.
    auth::push_image(&base, &admin, "dev/app", "latest", "one").await;
    auth::push_image(&base, &admin, "dev/app", "latest", "two").await;
}
