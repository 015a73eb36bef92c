//! The web UI over plain HTTP (no browser): sign-in and the session cookie, escaping of attacker-controlled
//! strings, authorization of pages and POSTs (a forbidden repository answers like a missing one), CSRF refusal,
//! pagination of many tags, platforms of single images, the favicon, and mirrors' upstream health.

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/ui.rs"]
mod ui;

use ui::{ALICE, BOB, FormExt, Session, XSS_ANNOTATION, XSS_LABEL, admin_reg, seeded};

#[tokio::test(flavor = "multi_thread")]
async fn ui_sign_in_sets_a_strict_http_only_session_cookie_and_sign_out_clears_it() {
    let s = seeded().await;
    let b = &s.berth;
    let http = common::client();

    let anon = http.get(format!("{}/ui", b.url())).send().await.unwrap();
    assert_eq!(anon.status(), 303, "anonymous visitors are sent to sign in");
    assert_eq!(anon.headers()["location"], "/ui/login");

    let wrong = ui::post_login(&http, &b.url(), "admin", "nope").await;
    assert_eq!(wrong.status(), 401);
    let set = wrong.headers()["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with("berth_login="),
        "only a fresh form nonce: {set}"
    );

    // A sign-in form posted from elsewhere (no nonce cookie) is refused, whatever the password.
    let forged = http
        .post(format!("{}/ui/login", b.url()))
        .form_pairs(&[
            ("login_csrf", "x"),
            ("user", "admin"),
            ("password", common::ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "login CSRF");
    assert!(
        !forged.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("berth_session=")
    );
    let ok = ui::post_login(&http, &b.url(), "admin", common::ADMIN_PASSWORD).await;
    assert_eq!(ok.status(), 303);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP listener: no Secure flag"
    );

    // The session cookie is not a bearer token for the registry API.
    let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    let api = http
        .get(format!("{}/v2/team/app/tags/list", b.url()))
        .bearer_auth(value)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);

    let sess = Session::login(b, "admin", common::ADMIN_PASSWORD).await;
    let csrf = sess.csrf().await;
    let (status, _) = sess.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    let out = sess
        .http
        .post(format!("{}/ui/logout", b.url()))
        .header("cookie", &sess.cookie)
        .form_pairs(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("berth_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_sign_in_accepts_a_personal_access_token_and_honours_its_scopes() {
    let s = seeded().await;
    let token = auth::create_token(&s.berth, ALICE.0, &["team/**:pull"], None);
    let sess = Session::login(&s.berth, ALICE.0, &token).await;
    let (_, html) = sess.get("/ui").await;
    assert!(html.contains("team/app"));
    assert!(
        !html.contains("secret/vault"),
        "the token's scope excludes secret/**"
    );
    let (_, tags) = sess.get("/ui/tags?repo=team/app").await;
    assert!(!tags.contains("/ui/tags/delete"), "the token cannot delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_escapes_labels_and_annotations_from_pushed_manifests() {
    let s = seeded().await;
    let sess = Session::login(&s.berth, "admin", common::ADMIN_PASSWORD).await;
    let (status, html) = sess
        .get(&format!("/ui/manifest?repo=team/app&ref={}", s.v1))
        .await;
    assert_eq!(status, 200);
    assert!(!html.contains(XSS_LABEL), "raw label markup in the page");
    assert!(
        !html.contains(XSS_ANNOTATION),
        "raw annotation markup in the page"
    );
    assert!(
        html.contains("&lt;script&gt;alert('xss')&lt;/script&gt;"),
        "label shown escaped"
    );
    assert!(
        html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "annotation shown escaped"
    );
    // The search box echoes the query: escaped too.
    let (_, html) = sess.get("/ui?q=%22%3E%3Cscript%3Ex()%3C/script%3E").await;
    assert!(!html.contains("<script>x()</script>"));
    assert!(html.contains("&quot;&gt;&lt;script&gt;x()&lt;/script&gt;"));
    // And no inline script may run at all.
    let r = sess
        .http
        .get(format!("{}/ui", sess.base))
        .header("cookie", &sess.cookie)
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_hides_repositories_the_user_may_not_pull_and_answers_like_a_missing_one() {
    let s = seeded().await;
    let bob = Session::login(&s.berth, BOB.0, BOB.1).await;
    let (_, list) = bob.get("/ui").await;
    assert!(list.contains("team/app") && list.contains("team/multi"));
    assert!(!list.contains("secret/vault"), "bob may not pull secret/**");
    let (_, search) = bob.get("/ui?q=vault").await;
    assert!(!search.contains("secret/vault"));

    let (forbidden_status, forbidden) = bob.get("/ui/tags?repo=secret/vault").await;
    let (missing_status, missing) = bob.get("/ui/tags?repo=secret/nothing-here").await;
    assert_eq!((forbidden_status, missing_status), (404, 404));
    assert_eq!(
        forbidden, missing,
        "a forbidden repository must look exactly like a missing one"
    );
    let (status, _) = bob.get("/ui/manifest?repo=secret/vault&ref=1").await;
    assert_eq!(status, 404);

    // A forged delete in a repository bob cannot see: like a missing one; where he can see but not delete: refused.
    let csrf = bob.csrf().await;
    let (status, _) = bob
        .post(
            "/ui/tags/delete",
            &[("csrf", &csrf), ("repo", "secret/vault"), ("tag", "1")],
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = bob
        .post(
            "/ui/tags/delete",
            &[("csrf", &csrf), ("repo", "team/app"), ("tag", "v1")],
        )
        .await;
    assert_eq!(status, 403);
    let (_, tags) = bob.get("/ui/tags?repo=team/app").await;
    assert!(
        !tags.contains("/ui/tags/delete"),
        "no delete button for bob"
    );
    assert!(tags.contains(">v1<"), "the tag is still there");

    // Mirrors and maintenance are for admins.
    assert_eq!(bob.get("/ui/mirrors").await.0, 404);
    assert_eq!(bob.get("/ui/maintenance").await.0, 404);

    let alice = Session::login(&s.berth, ALICE.0, ALICE.1).await;
    let (_, list) = alice.get("/ui").await;
    assert!(list.contains("secret/vault"));
    let (_, tags) = alice.get("/ui/tags?repo=team/app").await;
    assert!(
        tags.contains("/ui/tags/delete"),
        "alice may delete in team/**"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_refuses_posts_without_the_sessions_csrf_token() {
    let s = seeded().await;
    let alice = Session::login(&s.berth, ALICE.0, ALICE.1).await;
    let other = Session::login(&s.berth, "admin", common::ADMIN_PASSWORD).await;
    let foreign = other.csrf().await;
    for csrf in ["", "0000", foreign.as_str()] {
        let (status, _) = alice
            .post(
                "/ui/tags/delete",
                &[("csrf", csrf), ("repo", "team/app"), ("tag", "v1")],
            )
            .await;
        assert_eq!(status, 403, "csrf {csrf:?}");
    }
    // Without a session at all.
    let r = common::client()
        .post(format!("{}/ui/tags/delete", s.berth.url()))
        .form_pairs(&[("repo", "team/app"), ("tag", "v1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let reg = admin_reg(&s.berth);
    assert_eq!(
        reg.get("/v2/team/app/manifests/v1").await.status(),
        200,
        "v1 survived"
    );

    let csrf = alice.csrf().await;
    let (status, _) = alice
        .post(
            "/ui/tags/delete",
            &[("csrf", &csrf), ("repo", "team/app"), ("tag", "v1")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(
        reg.get("/v2/team/app/manifests/v1").await.status(),
        404,
        "v1 deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_pages_tags_a_hundred_at_a_time() {
    let b = common::Berth::start_secure(&[]);
    let r = admin_reg(&b);
    let img = r.push_image("many/tags", "", "many").await;
    let tags: Vec<String> = (0..250).map(|i| format!("t{i:04}")).collect();
    push_tags(&r, "many/tags", &img, &tags).await;
    let sess = Session::login(&b, "admin", common::ADMIN_PASSWORD).await;
    let rows = |html: &str| html.matches("<tr data-tag=").count();

    let (_, p1) = sess.get("/ui/tags?repo=many/tags").await;
    assert_eq!(rows(&p1), 100);
    assert!(p1.contains("250 tags"));
    assert!(p1.contains("last=t0099"), "link to the next page");
    let (_, p3) = sess.get("/ui/tags?repo=many/tags&last=t0199").await;
    assert_eq!(rows(&p3), 50);
    assert!(p3.contains(">t0249<") && !p3.contains("Next page"));
    let (_, filtered) = sess.get("/ui/tags?repo=many/tags&q=t012").await;
    assert_eq!(rows(&filtered), 10, "t0120..t0129");
}

/// Tags one manifest many times, 50 `tag` parameters per PUT (the URL must stay short).
pub async fn push_tags(r: &spec::Reg, repo: &str, img: &spec::Image, tags: &[String]) {
    for chunk in tags.chunks(50) {
        let q: Vec<String> = chunk.iter().map(|t| format!("tag={t}")).collect();
        let resp = r
            .put_manifest(
                repo,
                &format!("{}?{}", img.digest, q.join("&")),
                spec::OCI_MANIFEST,
                &img.body,
            )
            .await;
        assert_eq!(resp.status(), 201);
    }
}

/// The exact byte count of a tag row.
fn row_bytes(html: &str, tag: &str) -> u64 {
    let row = &html[html.find(&format!("<tr data-tag=\"{tag}\">")).expect("row")..];
    let at = row.find("data-bytes=\"").expect("size cell") + 12;
    row[at..].split('"').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_tag_size_counts_manifest_config_and_layers_and_an_indexs_children() {
    let b = common::Berth::start_secure(&[]);
    let r = admin_reg(&b);
    let img = r.push_image("sizes/one", "v1", "sizes").await;
    let want = (img.body.len() + img.config.len() + img.layer.len()) as u64;
    let a = r.push_image("sizes/multi", "", "a").await;
    let c = r.push_image("sizes/multi", "", "c").await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": spec::OCI_INDEX,
        "manifests": [
            {"mediaType": spec::OCI_MANIFEST, "digest": a.digest, "size": a.body.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": spec::OCI_MANIFEST, "digest": c.digest, "size": c.body.len(),
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}
        ]
    }))
    .unwrap();
    r.push_manifest("sizes/multi", "all", spec::OCI_INDEX, &index)
        .await;
    let want_index = index.len() as u64
        + [&a, &c]
            .iter()
            .map(|i| (i.body.len() + i.config.len() + i.layer.len()) as u64)
            .sum::<u64>();
    let sess = Session::login(&b, "admin", common::ADMIN_PASSWORD).await;
    let (_, one) = sess.get("/ui/tags?repo=sizes/one").await;
    assert_eq!(row_bytes(&one, "v1"), want);
    let (_, multi) = sess.get("/ui/tags?repo=sizes/multi").await;
    assert_eq!(row_bytes(&multi, "all"), want_index);
    assert!(
        multi.contains("linux/amd64, linux/arm/v7"),
        "platforms of the index"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_shows_mirrored_repositories_read_only() {
    let s = seeded().await;
    let sess = Session::login(&s.berth, "admin", common::ADMIN_PASSWORD).await;
    let (status, html) = sess.get("/ui/tags?repo=up/team/base").await;
    assert_eq!(status, 200);
    assert!(html.contains("<tr data-tag=\"1\">") && html.contains("mirror up"));
    assert!(
        !html.contains("/ui/tags/delete"),
        "no delete on a mirror, even for an admin"
    );
    let csrf = sess.csrf().await;
    let (status, _) = sess
        .post(
            "/ui/tags/delete",
            &[("csrf", &csrf), ("repo", "up/team/base"), ("tag", "1")],
        )
        .await;
    assert_eq!(status, 403);
    let (status, html) = sess.get("/ui/manifest?repo=up/team/base&ref=1").await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!("docker pull {}/up/team/base:1", s.berth.host())));
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_shows_anonymous_visitors_only_what_anonymous_may_pull_when_browsing_is_open() {
    let b = auth::secure_berth(
        "[auth]\nanonymous_browse = true\n\n[[auth.policy]]\nrepositories = [\"public/**\"]\npull = [\"@all\"]\n\n\
         [[auth.policy]]\nrepositories = [\"**\"]\npull = [\"@users\"]\npush = [\"@users\"]\n",
    );
    let r = admin_reg(&b);
    r.push_image("public/tool", "1", "pub").await;
    r.push_image("private/tool", "1", "priv").await;
    let http = common::client();
    let list = http.get(format!("{}/ui", b.url())).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let list = list.text().await.unwrap();
    assert!(list.contains("public/tool") && !list.contains("private/tool"));
    assert!(!list.contains("/ui/tags/delete") && list.contains("Sign in"));
    let hidden = http
        .get(format!("{}/ui/tags?repo=private/tool", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_can_be_turned_off() {
    let b = auth::secure_berth("[ui]\nenabled = false\n");
    let http = common::client();
    for path in ["/ui", "/ui/login", "/ui/static/berth.css", "/favicon.ico"] {
        let r = http.get(format!("{}{path}", b.url())).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

/// The markup of the table row that starts with `start` (e.g. `<tr data-tag="v1">`).
fn row<'a>(html: &'a str, start: &str) -> &'a str {
    let at = html
        .find(start)
        .unwrap_or_else(|| panic!("{start} in {html}"));
    let row = &html[at..];
    &row[..row.find("</tr>").expect("end of row")]
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_tags_show_a_single_platform_images_platform_from_its_config() {
    let b = common::Berth::start_secure(&[]);
    let r = admin_reg(&b);
    r.push_image("plat/one", "v1", "plat").await;
    let sess = Session::login(&b, "admin", common::ADMIN_PASSWORD).await;
    let (status, tags) = sess.get("/ui/tags?repo=plat/one").await;
    assert_eq!(status, 200);
    let v1 = row(&tags, "<tr data-tag=\"v1\">");
    assert!(v1.contains("<td>linux/amd64</td>"), "{v1}");
    assert!(!v1.contains('—'), "{v1}");
    // The manifest page says the same, from the same config.
    let (_, manifest) = sess.get("/ui/manifest?repo=plat/one&ref=v1").await;
    assert!(
        manifest.contains("<th>Platform</th><td>linux/amd64</td>"),
        "{manifest}"
    );
    assert!(tags.contains("1 tag<"), "one tag, in the singular: {tags}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_serves_a_favicon_and_every_page_links_it() {
    let b = common::Berth::start_secure(&[]);
    let http = common::client();
    for path in ["/favicon.ico", "/ui/static/favicon.svg"] {
        let r = http.get(format!("{}{path}", b.url())).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "image/svg+xml", "{path}");
        let body = r.text().await.unwrap();
        assert!(
            body.starts_with("<svg") && body.trim_end().ends_with("</svg>"),
            "{path}: {body}"
        );
    }
    let login = http
        .get(format!("{}/ui/login", b.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        login.contains(r#"<link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg">"#),
        "{login}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_mirrors_show_not_contacted_yet_then_ok_or_the_failures_cause() {
    let upstream = common::Berth::start();
    spec::Reg::new(upstream.url(), common::client())
        .push_image("team/app", "1", "health")
        .await;
    // Nothing listens on `dead`'s port: every connection is refused.
    let dead = format!("dead=http://127.0.0.1:{}", common::free_port());
    let live = format!("live={}", upstream.url());
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("berth.log");
    let b = common::Berth::start_secure_logging(
        &tmp.path().join("data"),
        &["--mirror", &dead, "--mirror", &live],
        &log,
    );
    let sess = Session::login(&b, "admin", common::ADMIN_PASSWORD).await;
    let (status, html) = sess.get("/ui/mirrors").await;
    assert_eq!(status, 200);
    for name in ["dead", "live"] {
        let r = row(&html, &format!("<tr data-mirror=\"{name}\">"));
        assert!(
            r.contains(r#"<span class="idle">not contacted yet</span>"#),
            "{r}"
        );
        assert!(!r.contains(r#"class="ok""#), "{r}");
    }

    let http = common::client();
    let pulled = http
        .get(format!("{}/v2/live/team/app/manifests/1", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), 200);
    let refused = http
        .get(format!("{}/v2/dead/team/app/manifests/1", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 502);
    let body = refused.text().await.unwrap().to_lowercase();
    assert!(body.contains("connection refused"), "the cause: {body}");

    let (_, html) = sess.get("/ui/mirrors").await;
    let live = row(&html, "<tr data-mirror=\"live\">");
    assert!(live.contains(r#"<span class="ok">ok</span>"#), "{live}");
    let dead = row(&html, "<tr data-mirror=\"dead\">");
    assert!(dead.contains("last request failed ("), "{dead}");
    assert!(
        dead.contains("error sending request")
            && dead.to_lowercase().contains("connection refused"),
        "the error with its cause: {dead}"
    );
    assert!(dead.contains("1 error, 0 stale answers"), "{dead}");
    let log = std::fs::read_to_string(&log).unwrap().to_lowercase();
    assert!(
        log.lines()
            .any(|l| l.contains("error sending request") && l.contains("connection refused")),
        "the log names the cause: {log}"
    );
}
