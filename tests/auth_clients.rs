//! Real clients against a berth with access control: skopeo through the token flow (password and personal access
//! token), containerd with a Basic `Authorization` header from `hosts.toml`, and anonymous pulls from a mirror while
//! private repositories stay closed.

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/image.rs"]
mod image;
#[path = "common/tools.rs"]
mod tools;
#[path = "common/upstream.rs"]
mod upstream;

use base64::Engine as _;
use image::build_multiarch;
use tools::{containerd_or_skip, skopeo, skopeo_ok};

fn policy(mirror_upstream: &str) -> String {
    format!(
        r#"
[auth]
max_failed_logins = 0

[[auth.policy]]
repositories = ["mirrors"]
pull = ["@all"]

[[auth.policy]]
repositories = ["team/**"]
pull = ["reader", "pusher"]
push = ["pusher"]

[[mirror]]
name = "up"
upstream = "{mirror_upstream}"
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_and_containerd_authenticate_and_mirrors_stay_anonymous() {
    if !common::tools_available(&["skopeo"], "skopeo") {
        return;
    }
    let up = upstream::Upstream::start();
    let img = upstream::TestImage::new(11, &[1000]);
    up.put_image("library/tool", "1.0", &img);
    let b = auth::secure_berth(&policy(&up.url()));
    auth::add_user(&b, "pusher", "pusher-pw");
    auth::add_user(&b, "reader", "reader-pw");
    let token = auth::create_token(&b, "pusher", &["team/*:pull,push"], Some("1d"));

    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (_layout, index, _) = build_multiarch(&tmp.path().join("src"), 0xA17, "v1");
    let src = format!("oci:{}:v1", tmp.path().join("src").display());
    let host = b.host();

    // Anonymous push: refused.
    let anon = skopeo(
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{host}/team/app:v1"),
        ],
        &home,
    );
    assert!(!anon.status.success(), "anonymous push must fail");

    // Password, then personal access token, through the token flow.
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            "pusher:pusher-pw",
            &src,
            &format!("docker://{host}/team/app:v1"),
        ],
        &home,
    );
    skopeo_ok(
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("pusher:{token}"),
            &src,
            &format!("docker://{host}/team/tok:v1"),
        ],
        &home,
    );
    for repo in ["team/app", "team/tok"] {
        let raw = skopeo_ok(
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                &format!("pusher:{token}"),
                &format!("docker://{host}/{repo}:v1"),
            ],
            &home,
        );
        assert_eq!(auth::sha256(&raw), index.digest, "{repo}");
    }
    // The token's scope does not reach beyond team/*, whatever the user may do.
    let outside = skopeo(
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("pusher:{token}"),
            &src,
            &format!("docker://{host}/elsewhere/app:v1"),
        ],
        &home,
    );
    assert!(!outside.status.success());
    // Anonymous reads of private repositories are refused.
    let anon_read = skopeo(
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/team/app:v1"),
        ],
        &home,
    );
    assert!(!anon_read.status.success());

    // The mirror serves anonymous callers.
    let raw = skopeo_ok(
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/up/library/tool:1.0"),
        ],
        &home,
    );
    assert_eq!(auth::sha256(&raw), img.digest);
    let back = tmp.path().join("back");
    skopeo_ok(
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/up/library/tool:1.0"),
            &format!("oci:{}:t", back.display()),
        ],
        &home,
    );

    // containerd: Basic credentials sent straight to /v2/ from hosts.toml.
    if !common::tools_available(&["containerd", "ctr"], "containerd") {
        return;
    }
    let Some(ctrd) = containerd_or_skip() else {
        return;
    };
    let hosts = ctrd.dir.path().join("hosts");
    let write_hosts = |password: &str| {
        let dir = hosts.join(&host);
        std::fs::create_dir_all(&dir).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("reader:{password}"));
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://{host}\".header]\n    Authorization = \"Basic {basic}\"\n"
            ),
        )
        .unwrap();
    };
    let hosts_dir = hosts.to_str().unwrap().to_owned();
    let image_ref = format!("{host}/team/app:v1");
    write_hosts("wrong");
    let refused = ctrd.ctr(&[
        "-n",
        "auth",
        "images",
        "pull",
        "--hosts-dir",
        &hosts_dir,
        "--all-platforms",
        &image_ref,
    ]);
    assert!(!refused.status.success(), "a wrong password must not pull");
    write_hosts("reader-pw");
    ctrd.ctr_ok(&[
        "-n",
        "auth",
        "images",
        "pull",
        "--hosts-dir",
        &hosts_dir,
        "--all-platforms",
        &image_ref,
    ]);
    let ls = ctrd.ctr_ok(&["-n", "auth", "images", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&image_ref) && l.contains(&index.digest)),
        "{image_ref} not pulled:\n{ls}"
    );
}
