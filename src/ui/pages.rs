//! The HTML of every UI page, rendered with maud: every `(expr)` is HTML-escaped, so names, tags, labels and
//! annotations from pushed manifests cannot inject markup. No inline script or style (the HTTP layer sends a
//! Content-Security-Policy that forbids them); the two behaviours that need script live in `berth.js`.

use maud::{DOCTYPE, Markup, html};

use super::{Descriptor, Listing, MaintenanceView, ManifestView, MirrorView, TagView};
use crate::human::count;
use crate::maint::retention::RetentionSummary;
use crate::meta::ui::RepoRow;
use crate::mirror::upstream::Health;

pub const CSS: &str = include_str!("berth.css");
pub const JS: &str = include_str!("berth.js");
/// The tab icon (a ship carrying containers), also answered at `/favicon.ico`, where browsers look when a page names none.
pub const FAVICON: &str = include_str!("favicon.svg");

/// Who the page is rendered for.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// The signed-in user, `None` for anonymous visitors.
    pub user: Option<String>,
    pub admin: bool,
    /// The session's CSRF token, put in every form that changes something.
    pub csrf: Option<String>,
}

/// `application/x-www-form-urlencoded` escaping for query values.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn time(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn bytes(n: u64) -> String {
    crate::human::size(n)
}

fn short(d: &str) -> &str {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

fn tags_url(repo: &str) -> String {
    format!("/ui/tags?repo={}", enc(repo))
}

fn manifest_url(repo: &str, reference: &str) -> String {
    format!("/ui/manifest?repo={}&ref={}", enc(repo), enc(reference))
}

fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf.as_deref().unwrap_or_default()); }
}

fn layout(ctx: &Ctx, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · berth" }
                link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg";
                link rel="stylesheet" href="/ui/static/berth.css";
                script src="/ui/static/berth.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui" { "berth" }
                    nav {
                        a href="/ui" { "Repositories" }
                        @if ctx.admin {
                            a href="/ui/mirrors" { "Mirrors" }
                            a href="/ui/maintenance" { "Maintenance" }
                        }
                    }
                    div.who {
                        @if let Some(u) = &ctx.user {
                            span #signed-in { (u) }
                            form.inline method="post" action="/ui/logout" {
                                (csrf_field(ctx))
                                button #logout type="submit" { "Sign out" }
                            }
                        } @else {
                            a #sign-in href="/ui/login" { "Sign in" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// The sign-in form; `nonce` is the double-submit token matching the `berth_login` cookie (against login CSRF).
pub fn login(ctx: &Ctx, error: Option<&str>, user: &str, nonce: &str) -> String {
    layout(
        ctx,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error #login-error { (e) } }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="login_csrf" value=(nonce);
                label { "User" input #user name="user" autocomplete="username" value=(user) required; }
                label { "Password or access token"
                    input #password name="password" type="password" autocomplete="current-password" required; }
                button #login type="submit" { "Sign in" }
            }
        },
    )
}

pub fn message(ctx: &Ctx, title: &str, text: &str) -> String {
    layout(ctx, title, html! { h1 { (title) } p.message { (text) } })
}

pub fn repositories(ctx: &Ctx, listing: &Listing<RepoRow>, search: &str) -> String {
    layout(
        ctx,
        "Repositories",
        html! {
            h1 { "Repositories" }
            form.search method="get" action="/ui" {
                input #search name="q" type="search" placeholder="Search repositories" value=(search);
                button type="submit" { "Search" }
            }
            @if listing.rows.is_empty() {
                p.empty { "No repositories" @if !search.is_empty() { " match " q { (search) } } "." }
            } @else {
                table #repositories {
                    thead { tr { th { "Repository" } th { "Kind" } th.num { "Tags" } } }
                    tbody {
                        @for r in &listing.rows {
                            tr {
                                td { a.repo href=(tags_url(&r.name)) { (r.name) } }
                                td { @match &r.mirror { Some(m) => span.badge { "mirror " (m) }, None => "private" } }
                                td.num { (r.tags) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &listing.next {
                a.next href={ "/ui?q=" (enc(search)) "&last=" (enc(next)) } { "Next page →" }
            }
        },
    )
}

pub struct TagsPage<'a> {
    pub repo: &'a str,
    pub mirror: Option<&'a str>,
    pub listing: &'a Listing<TagView>,
    pub total: u64,
    pub search: &'a str,
    pub may_delete: bool,
}

pub fn tags(ctx: &Ctx, p: &TagsPage<'_>) -> String {
    layout(
        ctx,
        p.repo,
        html! {
            h1 { (p.repo) @if let Some(m) = p.mirror { " " span.badge { "mirror " (m) " (read-only)" } } }
            p.count { (count(p.total, "tag")) }
            form.search method="get" action="/ui/tags" {
                input type="hidden" name="repo" value=(p.repo);
                input #tag-search name="q" type="search" placeholder="Filter tags" value=(p.search);
                button type="submit" { "Filter" }
            }
            table #tags {
                thead { tr {
                    th { "Tag" } th { "Digest" } th.num { "Size" } th { "Platforms" } th { "Pushed" } th { "Last pulled" }
                    @if p.may_delete { th {} }
                } }
                tbody {
                    @for t in &p.listing.rows {
                        tr data-tag=(t.row.name) {
                            td { a.tag href=(manifest_url(p.repo, &t.row.name)) { (t.row.name) } }
                            td { a.digest href=(manifest_url(p.repo, &t.row.digest.to_string())) title=(t.row.digest.to_string()) { code { (short(&t.row.digest.to_string())) } } }
                            td.num data-bytes=(t.row.size) { (bytes(t.row.size)) }
                            td { @if t.platforms.is_empty() { "—" } @else { (t.platforms.join(", ")) } }
                            td { (time(t.row.pushed_at)) }
                            td { @match t.row.last_pulled { Some(s) => (time(s)), None => "never" } }
                            @if p.may_delete {
                                td { (delete_form(ctx, p.repo, &t.row.name)) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &p.listing.next {
                a.next href={ (tags_url(p.repo)) "&q=" (enc(p.search)) "&last=" (enc(next)) } { "Next page →" }
            }
        },
    )
}

fn delete_form(ctx: &Ctx, repo: &str, tag: &str) -> Markup {
    html! {
        form.inline method="post" action="/ui/tags/delete" data-confirm={ "Delete tag " (tag) " from " (repo) "?" } {
            (csrf_field(ctx))
            input type="hidden" name="repo" value=(repo);
            input type="hidden" name="tag" value=(tag);
            button.danger type="submit" { "Delete" }
        }
    }
}

fn kv(rows: &[(String, String)]) -> Markup {
    html! {
        table.kv { tbody { @for (k, v) in rows { tr { th { (k) } td { code { (v) } } } } } }
    }
}

fn descriptors(id: &str, repo: &str, rows: &[Descriptor], link: bool) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { "Digest" } th { "Media type" } th.num { "Size" } th { "Platform / artifact" } } }
            tbody {
                @for d in rows {
                    tr {
                        td { @if link { a href=(manifest_url(repo, &d.digest)) { code { (d.digest) } } } @else { code { (d.digest) } } }
                        td { (d.media_type) }
                        td.num { (bytes(d.size)) }
                        td {
                            @if let Some(p) = &d.platform { (p) }
                            @if let Some(a) = &d.artifact_type { (a) }
                            @for (k, v) in &d.annotations { div.annotation { small { (k) ": " (v) } } }
                        }
                    }
                }
            }
        }
    }
}

pub struct ManifestPage<'a> {
    pub view: &'a ManifestView,
    /// `host[:port]` clients pull from.
    pub host: &'a str,
    pub may_delete: bool,
}

pub fn manifest(ctx: &Ctx, p: &ManifestPage<'_>) -> String {
    let v = p.view;
    let digest = v.digest.to_string();
    let pull = match v.tags.first() {
        Some(t) => format!("docker pull {}/{}:{t}", p.host, v.repo),
        None => format!("docker pull {}/{}@{digest}", p.host, v.repo),
    };
    layout(
        ctx,
        &format!("{}@{}", v.repo, short(&digest)),
        html! {
            h1 { a href=(tags_url(&v.repo)) { (v.repo) } " @ " code { (short(&digest)) } }
            div.pull {
                code #pull-command { (pull) }
                button #copy type="button" data-copy="pull-command" { "Copy" }
            }
            table.kv #summary { tbody {
                tr { th { "Digest" } td { code #digest { (digest) } } }
                tr { th { "Media type" } td { (v.media_type) } }
                @if let Some(a) = &v.artifact_type { tr { th { "Artifact type" } td { (a) } } }
                tr { th { "Size" } td { (bytes(v.size)) } }
                tr { th { "Tags" } td #manifest-tags {
                    @for t in &v.tags {
                        span.tag { (t) }
                        @if p.may_delete { " " (delete_form(ctx, &v.repo, t)) }
                        " "
                    }
                } }
                @if let Some(s) = &v.subject { tr { th { "Subject" } td { a href=(manifest_url(&v.repo, s)) { code { (s) } } } } }
            } }
            @if let Some(c) = &v.config_fields {
                h2 { "Config" }
                table.kv #config { tbody {
                    @if let Some(pl) = &c.platform { tr { th { "Platform" } td { (pl) } } }
                    @if let Some(cr) = &c.created { tr { th { "Created" } td { (cr) } } }
                    tr { th { "Entrypoint" } td #entrypoint { code { (serde_json::to_string(&c.entrypoint).unwrap_or_default()) } } }
                    tr { th { "Cmd" } td { code { (serde_json::to_string(&c.cmd).unwrap_or_default()) } } }
                    @if let Some(w) = &c.working_dir { tr { th { "Working dir" } td { code { (w) } } } }
                    @if let Some(u) = &c.user { tr { th { "User" } td { code { (u) } } } }
                    @if !c.exposed_ports.is_empty() { tr { th { "Ports" } td { (c.exposed_ports.join(", ")) } } }
                } }
                h3 { "Environment" }
                ul #env { @for e in &c.env { li { code { (e) } } } }
                h3 { "Labels" }
                div #labels { (kv(&c.labels)) }
            }
            @if let Some(cd) = &v.config {
                h2 { "Config blob" }
                (descriptors("config-blob", &v.repo, std::slice::from_ref(cd), false))
            }
            @if !v.layers.is_empty() {
                h2 { "Layers (" (v.layers.len()) ")" }
                (descriptors("layers", &v.repo, &v.layers, false))
            }
            @if !v.children.is_empty() {
                h2 { "Platforms (" (v.children.len()) ")" }
                (descriptors("children", &v.repo, &v.children, true))
            }
            @if !v.annotations.is_empty() {
                h2 { "Annotations" }
                div #annotations { (kv(&v.annotations)) }
            }
            h2 { "Referrers (signatures, SBOMs, attestations)" }
            @if v.referrers.is_empty() { p.empty #no-referrers { "None" } }
            @else { (descriptors("referrers", &v.repo, &v.referrers, true)) }
        },
    )
}

pub fn mirrors(ctx: &Ctx, rows: &[MirrorView]) -> String {
    layout(
        ctx,
        "Mirrors",
        html! {
            h1 { "Mirrors" }
            p.note { "Counters since the server started; cache size from the metadata database." }
            @if rows.is_empty() { p.empty { "No mirrors configured." } }
            @else {
                table #mirrors {
                    thead { tr {
                        th { "Mirror" } th { "Upstream" } th.num { "Hit ratio" } th.num { "Served from cache" }
                        th.num { "Fetched upstream" } th { "Upstream health" } th.num { "Cache size / budget" }
                    } }
                    tbody {
                        @for m in rows {
                            tr data-mirror=(m.name) {
                                td { a href={ "/ui?q=" (enc(&m.name)) } { (m.name) } }
                                td { code { (m.upstream) } }
                                td.num { @match m.hit_ratio() { Some(r) => (format!("{:.0} %", r * 100.0)), None => "—" }
                                    br; small { (m.from_cache) " cached / " (m.from_upstream) " upstream reads" } }
                                td.num { (bytes(m.served_bytes)) }
                                td.num { (bytes(m.upstream_bytes)) }
                                td.health {
                                    @match &m.health {
                                        Health::NotContacted => span.idle { "not contacted yet" },
                                        Health::Answering { .. } => span.ok { "ok" },
                                        Health::Failing { at, error } => span.warn {
                                            "last request failed (" (time(*at)) "): " (error)
                                        },
                                    }
                                    @if m.errors > 0 || m.stale > 0 {
                                        br; small { (count(m.errors, "error")) ", " (count(m.stale, "stale answer")) }
                                    }
                                }
                                td.num {
                                    (bytes(m.cache_bytes)) " / "
                                    @match m.budget { Some(b) => (bytes(b)), None => "unlimited" }
                                    @if let Some(b) = m.budget { @if b > 0 {
                                        meter min="0" max=(b) value=(m.cache_bytes.min(b)) {}
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn summary_text(s: &Option<String>) -> String {
    s.as_deref()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.as_object().cloned())
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.is_number() || v.is_string() || v.is_boolean())
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub fn maintenance(ctx: &Ctx, v: &MaintenanceView, preview: Option<&RetentionSummary>) -> String {
    let s = &v.stats;
    layout(
        ctx,
        "Maintenance",
        html! {
            h1 { "Maintenance" }
            h2 { "Storage" }
            table.kv #stats { tbody {
                tr { th { "Repositories" } td { (s.private_repositories) " private, " (s.mirror_repositories) " mirrored" } }
                tr { th { "Manifests / tags" } td { (s.manifests) " / " (s.tags) } }
                tr { th { "Blobs" } td { (s.blobs) " (" (bytes(s.blob_bytes)) ": " (bytes(s.private_bytes)) " private, " (bytes(s.mirror_bytes)) " mirror cache only)" } }
                tr { th { "Upload sessions" } td { (s.upload_sessions) } }
            } }
            h2 { "Last runs" }
            table #runs {
                thead { tr { th { "Job" } th { "Started" } th { "Finished" } th { "Outcome" } th { "Summary" } } }
                tbody { @for job in ["gc", "retention", "scrub"] {
                    @let runs: Vec<_> = v.runs.iter().filter(|r| r.kind == job).collect();
                    @if runs.is_empty() {
                        tr data-job=(job) { td { (job) } td.empty colspan="4" { "never run" } }
                    }
                    @for r in runs {
                        tr data-job=(job) {
                            td { (r.kind) @if r.dry_run { " (dry run)" } }
                            td { (time(r.started_at)) }
                            td { @match r.finished_at { Some(f) => (time(f)), None => "—" } }
                            td { span class=(format!("outcome-{}", r.outcome)) { (r.outcome) } }
                            td { small { (summary_text(&r.summary)) } }
                        }
                    }
                } }
            }
            h2 { "Workers" }
            table #workers {
                thead { tr { th { "Worker" } th { "State" } th { "Progress" } th { "Last run" } th { "Next run" } th { "Detail" } th { "Last error" } } }
                tbody { @for w in &v.workers {
                    tr data-worker=(w.name) {
                        td { (w.name) }
                        td { span class=(format!("worker-{}", w.state.as_str())) { (w.state.as_str()) } }
                        td { @match &w.progress {
                            Some(p) => { (p.phase) " " (p.done) @if let Some(t) = p.total { " / " (t) } }
                            None => "—",
                        } }
                        td { @match w.last_run {
                            Some(r) => { (time(r.started_at)) @match r.finished_at {
                                Some(f) => { " (" (f - r.started_at) " s)" }
                                None => " (running)",
                            } }
                            None => "never",
                        } }
                        td { @match w.next_run { Some(t) => (time(t)), None => "—" } }
                        td { small { (w.detail.as_deref().unwrap_or_default()) } }
                        td { @if let Some(e) = &w.last_error {
                            small { (e) @if let Some(at) = w.last_error_at { " (" (time(at)) ", " (w.failures) " failures)" } }
                        } }
                    }
                } }
            }
            h2 { "Retention" }
            @if v.policies == 0 {
                p.empty #no-policies { "No retention policy is configured ([[retention.policy]] in the config)." }
            } @else {
                p { (v.policies) " policies configured. A preview runs retention as a dry run: nothing is deleted." }
                form method="post" action="/ui/maintenance/retention-preview" {
                    (csrf_field(ctx))
                    button #preview type="submit" { "Preview retention" }
                }
            }
            @if let Some(p) = preview {
                h3 { "Preview" }
                p #preview-summary { (p.tags_deleted) " tags and " (p.manifests_deleted) " untagged manifests would be deleted; "
                    (p.tags_kept) " tags kept, in " (p.repositories) " repositories." }
                table #preview-decisions {
                    thead { tr { th { "Repository" } th { "Tag" } th { "Digest" } th { "Pushed" } th { "Decision" } th { "Rule" } } }
                    tbody { @for d in &p.decisions {
                        tr class=(if d.action == "keep" { "keep" } else { "delete" }) {
                            td { (d.repository) }
                            td { @match &d.tag { Some(t) => (t), None => em { "untagged" } } }
                            td { code { (short(&d.digest)) } }
                            td { (time(d.pushed_at)) }
                            td { (d.action) }
                            td { (d.reason) }
                        }
                    } }
                }
            }
        },
    )
}
