//! Access control, cell by cell: principals × repositories × actions, each with its exact status and OCI error
//! code. The policy under test:
//!
//! - `mirrors`: anyone pulls
//! - `team/**`: reader, pusher and deleter pull; pusher pushes; deleter deletes
//! - `public/**`: anyone pulls; pusher pushes
//! - anything else (`other/…`): no rule, so admins only

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/upstream.rs"]
mod upstream;

use auth::{Creds, code, send};
use reqwest::Method;

const ZERO: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn policy(upstream: &str) -> String {
    format!(
        r#"
[auth]
max_failed_logins = 0

[[auth.policy]]
repositories = ["mirrors"]
pull = ["@all"]

[[auth.policy]]
repositories = ["team/**"]
pull = ["reader", "pusher", "deleter"]
push = ["pusher"]
delete = ["deleter"]

[[auth.policy]]
repositories = ["public/**"]
pull = ["@all"]
push = ["pusher"]

[[mirror]]
name = "up"
upstream = "{upstream}"
"#
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Pull,
    Push,
    Delete,
}

/// Repository classes of the matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Team,
    Public,
    Other,
    Mirror,
}

/// What each principal may do, written out (not derived from berth's code).
fn may(principal: &str, class: Class, act: Act) -> bool {
    use Act::*;
    use Class::*;
    match (principal, class) {
        ("admin", Mirror) => act == Pull,
        ("admin", _) => true,
        (_, Mirror) => act == Pull && principal != "pusher-token",
        ("reader", Team | Public) => act == Pull,
        ("pusher", Team | Public) => act != Delete,
        ("deleter", Team) => act != Push,
        ("deleter", Public) => act == Pull,
        ("pusher-token", Team) => act != Delete,
        ("anonymous", Public) => act == Pull,
        _ => false,
    }
}

/// Principals whose credentials are invalid: every request is 401, whatever the repository.
const INVALID: [&str; 4] = [
    "expired-token",
    "revoked-token",
    "removed-user-token",
    "wrong-password",
];

#[tokio::test(flavor = "multi_thread")]
async fn access_matrix() {
    let up = upstream::Upstream::start();
    let img = upstream::TestImage::new(7, &[100]);
    up.put_image("library/img", "v1", &img);
    let b = auth::secure_berth(&policy(&up.url()));
    let base = b.url();
    for u in ["reader", "pusher", "deleter", "gone"] {
        auth::add_user(&b, u, &format!("{u}-pw"));
    }
    let pusher_token = auth::create_token(&b, "pusher", &["team/*:pull,push"], Some("90d"));
    let expired = auth::create_token(&b, "pusher", &["**:*"], Some("0s"));
    let revoked = auth::create_token(&b, "pusher", &["**:*"], None);
    auth::cli_ok(
        &b.data_dir,
        &["token", "revoke", &auth::token_id(&revoked)],
        "",
    );
    let removed = auth::create_token(&b, "gone", &["**:*"], None);
    // Proves the token worked before its user went away.
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/_catalog"),
        &Creds::basic("gone", &removed),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    auth::cli_ok(&b.data_dir, &["user", "remove", "gone"], "");

    let admin = auth::admin();
    let team = auth::push_image(&base, &admin, "team/a", "v1", "team").await;
    let other = auth::push_image(&base, &admin, "other/x", "v1", "other").await;
    auth::push_image(&base, &admin, "public/p", "v1", "public").await;

    let principals: Vec<(&str, Creds)> = vec![
        ("anonymous", Creds::Anonymous),
        ("reader", Creds::basic("reader", "reader-pw")),
        ("pusher", Creds::basic("pusher", "pusher-pw")),
        ("deleter", Creds::basic("deleter", "deleter-pw")),
        ("admin", admin.clone()),
        ("pusher-token", Creds::basic("pusher", &pusher_token)),
        ("expired-token", Creds::basic("pusher", &expired)),
        ("revoked-token", Creds::basic("pusher", &revoked)),
        ("removed-user-token", Creds::basic("gone", &removed)),
        ("wrong-password", Creds::basic("reader", "not-the-password")),
    ];
    // (repository, class, exists)
    let repos = [
        ("team/a", Class::Team, true),
        ("team/missing", Class::Team, false),
        ("public/p", Class::Public, true),
        ("public/missing", Class::Public, false),
        ("other/x", Class::Other, true),
        ("other/missing", Class::Other, false),
        ("up/library/img", Class::Mirror, true),
        ("up/library/missing", Class::Mirror, false),
    ];

    let mut wrong = Vec::new();
    for (who, creds) in &principals {
        for (repo, class, exists) in repos {
            for act in [Act::Pull, Act::Push, Act::Delete] {
                let (method, url) = match act {
                    Act::Pull => (Method::GET, format!("{base}/v2/{repo}/manifests/v1")),
                    Act::Push => (Method::POST, format!("{base}/v2/{repo}/blobs/uploads/")),
                    Act::Delete => (Method::DELETE, format!("{base}/v2/{repo}/manifests/{ZERO}")),
                };
                let (status, headers, body) = send(
                    method,
                    &url,
                    creds,
                    &[("Accept", auth::OCI_MANIFEST)],
                    vec![],
                )
                .await;
                let got = (status.as_u16(), code(&body));
                let want: (u16, &str) = if INVALID.contains(who) {
                    (401, "UNAUTHORIZED")
                } else if class == Class::Mirror && act != Act::Pull {
                    // Mirrors are read-only for everyone; the mirror says so itself.
                    (405, "UNSUPPORTED")
                } else if *who == "anonymous" && !may(who, class, act) {
                    (401, "UNAUTHORIZED")
                } else if !may(who, class, act) {
                    (403, "DENIED")
                } else {
                    match act {
                        Act::Pull if exists => (200, ""),
                        Act::Pull => (404, "MANIFEST_UNKNOWN"),
                        Act::Push => (202, ""),
                        Act::Delete => (404, "MANIFEST_UNKNOWN"),
                    }
                };
                if got != (want.0, want.1.to_owned()) {
                    wrong.push(format!("{who} {act:?} {repo}: got {got:?}, want {want:?}"));
                }
                if got.0 == 401 && auth::challenge(&headers).is_none() {
                    wrong.push(format!(
                        "{who} {act:?} {repo}: 401 without a Bearer challenge"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Catalog: only what the caller may pull; invalid credentials and anonymous callers are challenged.
    let catalog = |creds: Creds| {
        let base = base.clone();
        async move {
            let (s, h, body) = send(
                Method::GET,
                &format!("{base}/v2/_catalog"),
                &creds,
                &[],
                vec![],
            )
            .await;
            let repos: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::from_value(v["repositories"].clone()).ok())
                .unwrap_or_default();
            (s.as_u16(), code(&body), repos, auth::challenge(&h))
        }
    };
    let (s, c, _, ch) = catalog(Creds::Anonymous).await;
    assert_eq!((s, c.as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(ch.unwrap()["scope"], "registry:catalog:*");
    for (who, creds) in &principals {
        if INVALID.contains(who) {
            let (s, c, _, _) = catalog(creds.clone()).await;
            assert_eq!((s, c.as_str()), (401, "UNAUTHORIZED"), "{who} catalog");
        }
    }
    let (s, _, reader_sees, _) = catalog(Creds::basic("reader", "reader-pw")).await;
    assert_eq!(s, 200);
    assert_eq!(reader_sees, ["public/p", "team/a", "up/library/img"]);
    let (_, _, token_sees, _) = catalog(Creds::basic("pusher", &pusher_token)).await;
    assert_eq!(token_sees, ["team/a"]);
    let (_, _, admin_sees, _) = catalog(admin.clone()).await;
    assert_eq!(
        admin_sees,
        ["other/x", "public/p", "team/a", "up/library/img"]
    );
    // Pagination counts only visible entries.
    let (s, h, body) = send(
        Method::GET,
        &format!("{base}/v2/_catalog?n=1"),
        &Creds::basic("reader", "reader-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["repositories"],
        serde_json::json!(["public/p"])
    );
    assert!(h.get("link").is_some());

    // Tags lists follow pull rights too.
    let (s, _, body) = send(
        Method::GET,
        &format!("{base}/v2/other/x/tags/list"),
        &Creds::basic("reader", "reader-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (403, "DENIED"));
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/team/a/tags/list"),
        &Creds::basic("reader", "reader-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);

    // A refusal for a repository that does not exist is byte-for-byte the refusal for one that does.
    for (creds, a, b2) in [
        (
            Creds::basic("reader", "reader-pw"),
            "other/x",
            "other/missing",
        ),
        (Creds::Anonymous, "team/a", "team/missing"),
    ] {
        let (s1, h1, b1) = send(
            Method::GET,
            &format!("{base}/v2/{a}/manifests/v1"),
            &creds,
            &[],
            vec![],
        )
        .await;
        let (s2, h2, bb) = send(
            Method::GET,
            &format!("{base}/v2/{b2}/manifests/v1"),
            &creds,
            &[],
            vec![],
        )
        .await;
        assert_eq!(s1, s2);
        assert_eq!(
            String::from_utf8_lossy(&b1).replace(a, "R"),
            String::from_utf8_lossy(&bb).replace(b2, "R")
        );
        let ch = |h: &reqwest::header::HeaderMap| {
            h.get("www-authenticate")
                .map(|v| v.to_str().unwrap().replace(a, "R").replace(b2, "R"))
        };
        assert_eq!(ch(&h1), ch(&h2));
    }

    // Cross-repository mount: from a repository the caller cannot read, nothing is mounted (a plain upload starts).
    let pusher = Creds::basic("pusher", "pusher-pw");
    let (s, _, _) = send(
        Method::POST,
        &format!(
            "{base}/v2/team/b/blobs/uploads/?mount={}&from=other/x",
            other.layer
        ),
        &pusher,
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        s, 202,
        "mount from an unreadable repository must not happen"
    );
    let (s, _, _) = send(
        Method::POST,
        &format!("{base}/v2/team/b/blobs/uploads/?mount={}", other.layer),
        &pusher,
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        s, 202,
        "mount from anywhere would reveal other repositories' blobs"
    );
    let (s, _, _) = send(
        Method::HEAD,
        &format!("{base}/v2/team/b/blobs/{}", other.layer),
        &pusher,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 404);
    // From a readable repository it mounts.
    let (s, _, _) = send(
        Method::POST,
        &format!(
            "{base}/v2/team/b/blobs/uploads/?mount={}&from=team/a",
            team.layer
        ),
        &pusher,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 201);
    // The deleter can delete what exists.
    let (s, _, _) = send(
        Method::DELETE,
        &format!("{base}/v2/team/a/manifests/{}", team.manifest),
        &Creds::basic("deleter", "deleter-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_session_is_bound_to_the_principal_that_opened_it() {
    let b = auth::secure_berth("");
    for u in ["alice", "bob"] {
        auth::add_user(&b, u, &format!("{u}-pw"));
    }
    let base = b.url();
    let alice = Creds::basic("alice", "alice-pw");
    let (s, h, _) = send(
        Method::POST,
        &format!("{base}/v2/shared/app/blobs/uploads/"),
        &alice,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 202);
    let loc = h["location"].to_str().unwrap().to_owned();
    let url = format!("{base}{loc}");
    for other in [Creds::basic("bob", "bob-pw"), auth::admin()] {
        let (s, _, body) = send(
            Method::PATCH,
            &url,
            &other,
            &[("Content-Type", "application/octet-stream")],
            b"x".to_vec(),
        )
        .await;
        assert_eq!(
            (s.as_u16(), code(&body).as_str()),
            (404, "BLOB_UPLOAD_UNKNOWN")
        );
        let (s, _, _) = send(Method::GET, &url, &other, &[], vec![]).await;
        assert_eq!(s, 404);
    }
    let (s, _, _) = send(
        Method::PATCH,
        &url,
        &alice,
        &[("Content-Type", "application/octet-stream")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(s, 202);
    let (s, _, _) = send(
        Method::PUT,
        &format!("{url}?digest={}", auth::sha256(b"x")),
        &alice,
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 201, "finishing one's own upload");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    let b = auth::secure_berth("[auth]\nmax_failed_logins = 0\n");
    auth::add_user(&b, "alice", "alice-pw");
    let url = format!("{}/v2/team/a/manifests/v1", b.url());
    let (s1, h1, b1) = send(
        Method::GET,
        &url,
        &Creds::basic("alice", "wrong"),
        &[],
        vec![],
    )
    .await;
    let (s2, h2, b2) = send(
        Method::GET,
        &url,
        &Creds::basic("nobody", "wrong"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        (s1, s2),
        (
            reqwest::StatusCode::UNAUTHORIZED,
            reqwest::StatusCode::UNAUTHORIZED
        )
    );
    assert_eq!(b1, b2);
    assert_eq!(h1.get("www-authenticate"), h2.get("www-authenticate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_throttled_per_user() {
    let b = auth::secure_berth("[auth]\nmax_failed_logins = 3\nfailed_login_window = \"10m\"\n");
    auth::add_user(&b, "alice", "alice-pw");
    let url = format!("{}/v2/", b.url());
    for _ in 0..3 {
        let (s, _, _) = send(
            Method::GET,
            &url,
            &Creds::basic("alice", "guess"),
            &[],
            vec![],
        )
        .await;
        assert_eq!(s, 401);
    }
    // Now even the right password waits: the limit is what stops guessing.
    let (s, h, body) = send(
        Method::GET,
        &url,
        &Creds::basic("alice", "alice-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (429, "TOOMANYREQUESTS"));
    assert!(h.get("retry-after").is_some());
    // Other users are not affected (loopback addresses are not throttled as a whole).
    auth::add_user(&b, "bob", "bob-pw");
    let (s, _, _) = send(
        Method::GET,
        &url,
        &Creds::basic("bob", "bob-pw"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_authorization_headers_are_refused_not_crashed_on() {
    let b = auth::secure_berth("");
    let url = format!("{}/v2/", b.url());
    let huge = format!("Basic {}", "A".repeat(20_000));
    for h in [
        "Basic",
        "Basic !!!notbase64",
        "Basic Zm9v",     // "foo": no colon
        "Basic //79/w==", // not UTF-8
        "Bearer",
        "Bearer a.b.c",
        "Bearer ....",
        "Digest x",
        huge.as_str(),
    ] {
        let resp = common::client()
            .get(&url)
            .header("Authorization", h)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{h:.40}");
    }
    let (s, _, _) = send(Method::GET, &url, &auth::admin(), &[], vec![]).await;
    assert_eq!(s, 200, "server still up");
}

/// Globs see a mirrored repository as `<mirror>/<upstream path>` however it is addressed: by prefix, by alias, with
/// containerd's `?ns=`, or at the root of a mirror listener.
#[tokio::test(flavor = "multi_thread")]
async fn mirror_globs_match_every_way_of_addressing_a_mirror() {
    let up = upstream::Upstream::start();
    let img = upstream::TestImage::new(3, &[50]);
    up.put_image("library/open", "v1", &img);
    up.put_image("library/closed", "v1", &img);
    let root_port = common::free_port();
    let b = auth::secure_berth(&format!(
        r#"
[[server.mirror_listener]]
listen = "127.0.0.1:{root_port}"
mirror = "up"

[[auth.policy]]
repositories = ["up/library/open"]
pull = ["@all"]

[[auth.policy]]
repositories = ["mirrors"]
pull = ["@users"]

[[mirror]]
name = "up"
aliases = ["alias"]
upstream = "{}"
"#,
        up.url()
    ));
    let base = b.url();
    let root = format!("http://127.0.0.1:{root_port}");
    for (repo, want) in [("open", 200), ("closed", 401)] {
        for url in [
            format!("{base}/v2/up/library/{repo}/manifests/v1"),
            format!("{base}/v2/alias/library/{repo}/manifests/v1"),
            format!("{base}/v2/library/{repo}/manifests/v1?ns=up"),
            format!("{root}/v2/library/{repo}/manifests/v1"),
        ] {
            let (s, h, _) = send(
                Method::GET,
                &url,
                &Creds::Anonymous,
                &[("Accept", auth::OCI_MANIFEST)],
                vec![],
            )
            .await;
            assert_eq!(s.as_u16(), want, "{url}");
            if want == 401 {
                // The challenge names the repository as the client addressed it, so its token request matches.
                let scope = auth::challenge(&h).unwrap()["scope"].clone();
                assert!(
                    scope.starts_with("repository:")
                        && scope.ends_with(&format!("library/{repo}:pull")),
                    "{scope}"
                );
            }
        }
    }
    // Signed in, the closed one opens (rule `mirrors`), also through the token flow with ns-style names.
    auth::add_user(&b, "alice", "alice-pw");
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/library/closed/manifests/v1?ns=up"),
        &Creds::basic("alice", "alice-pw"),
        &[("Accept", auth::OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let (_, t) = auth::fetch_token(
        &base,
        &Creds::basic("alice", "alice-pw"),
        &["repository:library/closed:pull"],
    )
    .await;
    let bearer = Creds::Bearer(t["token"].as_str().unwrap().to_owned());
    let (s, _, _) = send(
        Method::GET,
        &format!("{base}/v2/library/closed/manifests/v1?ns=up"),
        &bearer,
        &[("Accept", auth::OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    // The same token does not open a private repository of that name (no rule matches it: admins only).
    let (s, _, body) = send(
        Method::GET,
        &format!("{base}/v2/library/closed/manifests/v1"),
        &bearer,
        &[("Accept", auth::OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!((s.as_u16(), code(&body).as_str()), (403, "DENIED"));
}
