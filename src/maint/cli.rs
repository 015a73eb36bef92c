//! `berth gc`, `berth retention`, `berth scrub` and `berth status`: the same jobs the server schedules, run on a
//! data directory from a shell — beside a running server or without one. Output: a progress bar on a terminal, a
//! human summary on stdout, or JSON with `--json`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::gc::GcOptions;
use super::scrub::ScrubOptions;
use super::{Maintenance, Progress, Quiet};
use crate::config::Config;
use crate::human::{count, size};

/// A progress bar on stderr, one phase at a time.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        self.0.set_position(0);
        self.0.set_length(total);
        self.0.set_message(name.to_owned());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

/// Runs `f` with a progress bar when stderr is a terminal and output is not JSON.
async fn with_progress<T>(json: bool, f: impl AsyncFnOnce(&dyn Progress) -> T) -> T {
    if json || !std::io::stderr().is_terminal() {
        return f(&Quiet).await;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:24} [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let out = f(&Bar(bar.clone())).await;
    bar.finish_and_clear();
    out
}

fn open(config: &Config) -> anyhow::Result<std::sync::Arc<Maintenance>> {
    Ok(crate::stores::open(config)?.maintenance)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn time(t: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
        .to_string()
}

/// `berth gc`. Returns whether the run was clean (always, unless it failed).
pub async fn gc(
    config: &Config,
    grace: Option<Duration>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let maint = open(config)?;
    let opts = GcOptions {
        grace: grace.unwrap_or(config.gc.grace),
        untagged_ttl: config.gc.untagged_ttl,
        dry_run,
        wait_for_bytes: true,
    };
    let s = with_progress(json, async |p| maint.gc(&opts, p).await).await?;
    if json {
        return print_json(&s);
    }
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    println!(
        "garbage collection {verb}: {}, {}, {} ({})",
        count(s.manifests, "manifest"),
        count(s.links, "blob link"),
        count(s.blobs, "blob"),
        size(s.bytes)
    );
    if !s.dry_run {
        println!(
            "blob files removed: {} (+{}), kept because pushed again: {}; expired upload sessions: {}; \
             empty repositories removed: {}",
            s.files_deleted,
            count(s.orphan_files, "orphan file"),
            s.files_revived,
            s.upload_sessions,
            s.repositories
        );
    }
    Ok(())
}

/// `berth retention`.
pub async fn retention(config: &Config, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let policies = super::retention::compile_all(&config.retention.policy)?;
    if policies.is_empty() {
        anyhow::bail!("no retention policies configured ([[retention.policy]] in the config file)");
    }
    let maint = open(config)?;
    let s = with_progress(json, async |p| maint.retention(&policies, dry_run, p).await).await?;
    if json {
        return print_json(&s);
    }
    println!(
        "{:<40} {:<24} {:<20} {:<20} {:<13} REASON",
        "REPOSITORY", "TAG", "DIGEST", "PUSHED", "ACTION"
    );
    for d in &s.decisions {
        println!(
            "{:<40} {:<24} {:<20} {:<20} {:<13} {}",
            d.repository,
            d.tag.as_deref().unwrap_or("<untagged>"),
            &d.digest[..d.digest.len().min(19)],
            time(d.pushed_at),
            d.action,
            d.reason
        );
    }
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    println!(
        "retention over {}: kept {}, {verb} {} and {} ({} skipped: changed meanwhile)",
        count(s.repositories, "repository"),
        count(s.tags_kept, "tag"),
        count(s.tags_deleted, "tag"),
        count(s.manifests_deleted, "untagged manifest"),
        s.skipped
    );
    Ok(())
}

/// `berth scrub`. Returns false when problems were found (the process then exits non-zero).
pub async fn scrub(
    config: &Config,
    deep: bool,
    max_rate: Option<u64>,
    report_only: bool,
    json: bool,
) -> anyhow::Result<bool> {
    let maint = open(config)?;
    let opts = ScrubOptions {
        deep,
        max_rate,
        report_only,
    };
    let s = with_progress(json, async |p| maint.scrub(&opts, p).await).await?;
    if json {
        print_json(&s)?;
    } else {
        for p in &s.problems {
            println!(
                "{:<20} {} {}{} — {}",
                p.kind,
                p.digest,
                p.repository
                    .as_deref()
                    .map(|r| format!("in {r}: "))
                    .unwrap_or_default(),
                p.detail,
                p.action
            );
        }
        println!(
            "scrub ({}) checked {}, {}, {}, {}{}: {}, {} repaired",
            if s.deep { "deep" } else { "fast" },
            count(s.repositories, "repository"),
            count(s.manifests, "manifest"),
            count(s.references, "reference"),
            count(s.blobs, "blob"),
            if s.deep {
                format!(" ({} hashed)", size(s.bytes_hashed))
            } else {
                String::new()
            },
            count(s.problems.len(), "problem"),
            s.repaired
        );
    }
    Ok(s.problems.is_empty())
}

/// `berth status`: what is stored and how the last maintenance runs went.
pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let maint = open(config)?;
    let stats = maint.store().stats().await?;
    let runs = maint.store().recent_runs(3).await?;
    if json {
        return print_json(&serde_json::json!({ "storage": stats, "runs": runs }));
    }
    println!("data directory: {}", config.storage.data_dir.display());
    println!(
        "repositories: {} private, {} cached from mirrors; {}, {}",
        stats.private_repositories,
        stats.mirror_repositories,
        count(stats.manifests, "manifest"),
        count(stats.tags, "tag")
    );
    println!(
        "blobs: {} ({}); upload sessions open: {}; blob files awaiting deletion: {}",
        stats.blobs,
        size(stats.blob_bytes),
        stats.upload_sessions,
        stats.pending_byte_deletions
    );
    if runs.is_empty() {
        println!("maintenance: no runs yet");
    }
    for r in runs {
        println!(
            "{:<10} {} {:<9}{} {}",
            r.kind,
            time(r.started_at),
            r.outcome,
            if r.dry_run { " (dry run)" } else { "" },
            r.summary.unwrap_or_default()
        );
    }
    Ok(())
}
