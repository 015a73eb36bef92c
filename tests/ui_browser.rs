//! The web UI end to end in headless Chromium (driven through chromedriver): sign in, search, browse tags and a
//! manifest, copy the pull command, delete a tag, the mirrors and maintenance pages with a retention preview, sign
//! out, and a user without delete rights. A screenshot of every page goes to `target/ui-screenshots/`.

#[path = "common/auth.rs"]
mod auth;
mod common;
#[path = "common/spec.rs"]
mod spec;
#[path = "common/ui.rs"]
mod ui;
#[path = "common/webdriver.rs"]
mod webdriver;

use ui::{BOB, SBOM_TYPE, SIG_TYPE, XSS_LABEL, admin_reg, seeded};
use webdriver::{Browser, browser_available};

async fn sign_in(br: &Browser, base: &str, user: &str, password: &str) {
    br.goto(&format!("{base}/ui/login")).await;
    br.type_into("#user", user).await;
    br.type_into("#password", password).await;
    let button = br.find("#login").await;
    br.click(&button).await;
    br.find("#signed-in").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_flows_in_headless_chromium() {
    if !browser_available() {
        return;
    }
    let s = seeded().await;
    let base = s.berth.url();
    let br = Browser::start().await;

    // Anonymous visitors are sent to the sign-in form.
    br.goto(&format!("{base}/ui")).await;
    assert!(
        br.current_url().await.ends_with("/ui/login"),
        "{}",
        br.current_url().await
    );
    br.find("#password").await;
    br.screenshot("login").await;

    // A wrong password keeps you out.
    br.type_into("#user", "admin").await;
    br.type_into("#password", "wrong").await;
    let button = br.find("#login").await;
    br.click(&button).await;
    assert!(
        br.text_of("#login-error")
            .await
            .contains("Wrong user name or password")
    );

    sign_in(&br, &base, "admin", common::ADMIN_PASSWORD).await;
    assert_eq!(br.text_of("#signed-in").await, "admin");
    let repos = br.text_of("#repositories").await;
    for r in ["team/app", "team/multi", "secret/vault", "up/team/base"] {
        assert!(repos.contains(r), "{r} missing from {repos}");
    }
    br.screenshot("repositories").await;

    // Search.
    br.type_into("#search", "multi").await;
    let button = br.find("form.search button").await;
    br.click(&button).await;
    br.find("#repositories").await;
    let found = br.find_all("#repositories a.repo").await;
    assert_eq!(found.len(), 1);
    assert_eq!(br.text(&found[0]).await, "team/multi");
    br.screenshot("search").await;

    // A multi-arch index: platforms from its children.
    br.click(&found[0]).await;
    let row = br.text_of("tr[data-tag='1.0']").await;
    assert!(row.contains("linux/amd64, linux/arm64"), "{row}");
    br.screenshot("tags-multi-arch").await;

    // A repository's tags.
    br.goto(&format!("{base}/ui/tags?repo=team/app")).await;
    for t in ["v1", "v2", "latest"] {
        br.find(&format!("tr[data-tag='{t}']")).await;
    }
    assert!(br.text_of("p.count").await.starts_with("3 tags"));
    let v1_row = br.text_of("tr[data-tag='v1']").await;
    assert!(
        v1_row.contains("KiB"),
        "size of manifest + config + layers: {v1_row}"
    );
    assert!(v1_row.contains("never"), "never pulled: {v1_row}");
    br.screenshot("tags").await;

    // A manifest: config fields, layers, referrers, the pull command.
    let link = br.find("tr[data-tag='v1'] a.tag").await;
    br.click(&link).await;
    br.find("#pull-command").await;
    assert_eq!(
        br.text_of("#pull-command").await,
        format!("docker pull {}/team/app:v1", s.berth.host())
    );
    assert!(br.text_of("#entrypoint").await.contains("/usr/bin/app"));
    assert!(br.text_of("#env").await.contains("APP_MODE=production"));
    let labels = br.text_of("#labels").await;
    assert!(
        labels.contains(XSS_LABEL),
        "the label is shown as text: {labels}"
    );
    assert_eq!(br.find_all("#layers tbody tr").await.len(), 2);
    let referrers = br.text_of("#referrers").await;
    assert!(
        referrers.contains(SIG_TYPE) && referrers.contains(SBOM_TYPE),
        "{referrers}"
    );
    assert!(referrers.contains(&s.signature) && referrers.contains(&s.sbom));
    assert_eq!(br.text_of("#digest").await, s.v1);
    let xss_ran = br
        .eval("return window.__xss === true || document.querySelectorAll('img[src=x]').length > 0")
        .await;
    assert_eq!(xss_ran, false, "no injected markup became live");
    let copy = br.find("#copy").await;
    br.click(&copy).await;
    br.wait_text(&copy, "Copied").await;
    br.screenshot("manifest").await;

    // Delete a tag (with the confirmation dialog).
    br.goto(&format!("{base}/ui/tags?repo=team/app")).await;
    let del = br.find("tr[data-tag='v2'] button.danger").await;
    br.click(&del).await;
    let question = br.accept_alert().await;
    assert!(question.contains("Delete tag v2"), "{question}");
    br.find("#tags").await;
    assert!(
        br.find_all("tr[data-tag='v2']").await.is_empty(),
        "v2 still listed"
    );
    br.find("tr[data-tag='v1']").await;
    let reg = admin_reg(&s.berth);
    assert_eq!(
        reg.get("/v2/team/app/manifests/v2").await.status(),
        404,
        "v2 gone from the registry API"
    );
    assert_eq!(reg.get("/v2/team/app/manifests/v1").await.status(), 200);
    br.screenshot("tag-deleted").await;

    // Mirrors.
    br.goto(&format!("{base}/ui/mirrors")).await;
    let up = br.text_of("tr[data-mirror='up']").await;
    assert!(up.contains('%'), "hit ratio shown: {up}");
    assert!(
        up.contains("10 MiB") || up.contains("10.0 MiB"),
        "budget shown: {up}"
    );
    assert!(up.contains("ok"), "upstream healthy: {up}");
    br.screenshot("mirrors").await;

    // Maintenance with a retention preview.
    br.goto(&format!("{base}/ui/maintenance")).await;
    br.find("#stats").await;
    assert!(br.text_of("tr[data-job='gc']").await.contains("never run"));
    assert!(
        br.text_of("tr[data-job='scrub']")
            .await
            .contains("never run")
    );
    let preview = br.find("#preview").await;
    br.click(&preview).await;
    let summary = br.text_of("#preview-summary").await;
    assert!(
        summary.starts_with("1 tags"),
        "v1 is neither newest nor latest: {summary}"
    );
    let decisions = br.text_of("#preview-decisions").await;
    assert!(
        decisions.contains("v1") && decisions.contains("latest"),
        "{decisions}"
    );
    assert!(br.text_of("#runs").await.contains("retention (dry run)"));
    assert_eq!(
        reg.get("/v2/team/app/manifests/v1").await.status(),
        200,
        "a preview deletes nothing"
    );
    br.screenshot("maintenance").await;

    // Sign out.
    let out = br.find("#logout").await;
    br.click(&out).await;
    br.find("#password").await;
    br.goto(&format!("{base}/ui")).await;
    assert!(br.current_url().await.ends_with("/ui/login"), "signed out");
    br.screenshot("signed-out").await;

    // Bob may pull team/** but not delete there, and cannot see secret/**.
    sign_in(&br, &base, BOB.0, BOB.1).await;
    let repos = br.text_of("#repositories").await;
    assert!(!repos.contains("secret/vault"), "{repos}");
    br.goto(&format!("{base}/ui/tags?repo=team/app")).await;
    br.find("tr[data-tag='v1']").await;
    assert!(
        br.find_all("button.danger").await.is_empty(),
        "bob sees no delete button"
    );
    br.screenshot("no-delete-button").await;
    let forged = br
        .eval(
            "const csrf = document.querySelector('input[name=csrf]').value;
             return fetch('/ui/tags/delete', {method: 'POST',
                 body: new URLSearchParams({csrf, repo: 'team/app', tag: 'v1'})}).then(r => r.status);",
        )
        .await;
    assert_eq!(forged, 403, "a forged delete is refused");
    assert_eq!(reg.get("/v2/team/app/manifests/v1").await.status(), 200);
    br.goto(&format!("{base}/ui/tags?repo=secret/vault")).await;
    assert!(br.text_of("h1").await.contains("Not found"));
    br.quit().await;
}
