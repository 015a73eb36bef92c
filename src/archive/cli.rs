//! The `export`, `import` and `import-distribution` subcommands: flags, choosing the registry (a running server
//! over HTTP, or a data directory opened directly), and the summary lines. `main.rs` only dispatches here.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::import::TagOverride;
use super::progress::Progress;
use super::target::{HttpRegistry, LocalRegistry, SharedDestination, SharedSource};
use super::{ImageRef, Platform};
use crate::config::Config;
use crate::human::{count, size};

/// Which registry to read or write: exactly one of `--server` or `--data-dir`/`--config`.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// A running berth, e.g. http://127.0.0.1:5000 (server mode).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// User name for --server (HTTP Basic); ignored in data-dir mode.
    #[arg(long, env = "BERTH_USER")]
    pub user: Option<String>,
    /// Name of the environment variable holding the password or access token for --user.
    #[arg(long, value_name = "VAR", default_value = "BERTH_PASSWORD")]
    pub password_env: String,
    /// Data directory of a stopped berth (data-dir mode); the server must not be running on it.
    #[arg(long, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Config file of a stopped berth (data-dir mode: its storage.data_dir and limits are used).
    #[arg(long, conflicts_with = "server")]
    pub config: Option<PathBuf>,
    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long, short)]
    pub quiet: bool,
}

/// The registry chosen by the flags, as what the command needs.
enum Opened {
    Http(Arc<HttpRegistry>),
    Local(Arc<LocalRegistry>),
}

impl RegistryArgs {
    fn open(&self) -> anyhow::Result<Opened> {
        match (&self.server, &self.data_dir, &self.config) {
            (Some(url), None, None) => {
                let credentials = match &self.user {
                    Some(user) => {
                        let password = std::env::var(&self.password_env).with_context(|| {
                            format!(
                                "--user {user} given but the environment variable {} (--password-env) is not set",
                                self.password_env
                            )
                        })?;
                        Some((user.clone(), password))
                    }
                    None => None,
                };
                Ok(Opened::Http(Arc::new(HttpRegistry::new(url, credentials)?)))
            }
            (None, data_dir, config) if data_dir.is_some() || config.is_some() => {
                let mut c = Config::load(config.as_deref())?;
                if let Some(d) = data_dir {
                    c.storage.data_dir = d.clone();
                }
                c.validate()?;
                Ok(Opened::Local(Arc::new(LocalRegistry::open(&c)?)))
            }
            _ => bail!(
                "say which registry: --server URL (a running berth) or --data-dir DIR / --config FILE (a stopped one)"
            ),
        }
    }

    fn source(&self) -> anyhow::Result<SharedSource> {
        Ok(match self.open()? {
            Opened::Http(h) => h,
            Opened::Local(l) => l,
        })
    }

    fn destination(&self) -> anyhow::Result<SharedDestination> {
        Ok(match self.open()? {
            Opened::Http(h) => h,
            Opened::Local(l) => l,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Images to export, as REPO[:TAG] or REPO@DIGEST (repository names as in the registry, e.g. team/app:v1).
    #[arg(required = true, value_name = "REF")]
    pub images: Vec<String>,
    /// The tar file to write (OCI image layout and docker-load archive in one).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// For multi-platform images: the platform docker's manifest.json lists, OS/ARCH[/VARIANT] (default: this
    /// machine's). The OCI index.json always keeps every platform.
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A tar written by `berth export`, `docker save` (optionally gzip-compressed), `skopeo copy` to
    /// oci-archive: or docker-archive:, or `ctr export`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// REPO: put every image in this repository (keeping their tags); REPO:TAG: the archive's one image under this
    /// name. Needed when the archive does not name its images with a repository.
    #[arg(long, value_name = "REPO[:TAG]")]
    pub tag: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub struct ImportDistributionArgs {
    /// Storage root of a stopped CNCF distribution (registry:2): its `rootdirectory`, the directory that holds
    /// docker/registry/v2 (that directory itself is accepted too).
    #[arg(value_name = "ROOT")]
    pub root: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// `berth export`.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let images = args
        .images
        .iter()
        .map(|s| ImageRef::parse(s).with_context(|| format!("image {s:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p).map_err(anyhow::Error::msg)?,
        None => Platform::host(),
    };
    let rt = runtime()?;
    let source = rt.block_on(async { args.registry.source() })?;
    let progress = Progress::new(args.registry.quiet);
    let s = rt
        .block_on(super::export::export(
            source,
            &images,
            &args.output,
            &platform,
            &progress,
        ))
        .with_context(|| format!("export to {} failed", args.output.display()));
    progress.finish();
    let s = s?;
    println!(
        "exported {} ({}, {}, {}) to {}",
        count(s.images, "image"),
        count(s.manifests, "manifest"),
        count(s.blobs, "blob"),
        size(s.bytes),
        args.output.display()
    );
    Ok(())
}

/// `berth import`.
pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let tag = args
        .tag
        .as_deref()
        .map(|t| TagOverride::parse(t).with_context(|| format!("--tag {t:?}")))
        .transpose()?;
    let rt = runtime()?;
    let dest = rt.block_on(async { args.registry.destination() })?;
    let progress = Progress::new(args.registry.quiet);
    let s = rt
        .block_on(super::import::import(
            dest,
            &args.file,
            tag.as_ref(),
            &progress,
        ))
        .with_context(|| format!("import of {} failed", args.file.display()));
    progress.finish();
    let s = s?;
    println!(
        "imported {}: {} stored, {} uploaded ({}), {} already present",
        count(s.images, "image"),
        count(s.manifests, "manifest"),
        count(s.blobs_uploaded, "blob"),
        size(s.bytes_uploaded),
        count(s.blobs_present, "blob")
    );
    Ok(())
}

/// `berth import-distribution`.
pub fn import_distribution(args: ImportDistributionArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let dest = rt.block_on(async { args.registry.destination() })?;
    let progress = Progress::new(args.registry.quiet);
    let report = rt.block_on(super::distribution::import(dest, &args.root, &progress));
    progress.finish();
    let report = report.with_context(|| format!("import of {} failed", args.root.display()))?;
    for p in &report.problems {
        println!("problem: {p}");
    }
    let s = &report.summary;
    println!(
        "imported {}, {}, {}, {} ({}); already present: {}, {}; {}",
        count(s.repositories, "repository"),
        count(s.tags, "tag"),
        count(s.manifests, "manifest"),
        count(s.blobs, "blob"),
        size(s.bytes),
        count(s.manifests_present, "manifest"),
        count(s.blobs_present, "blob"),
        count(report.problems.len(), "problem")
    );
    if !report.problems.is_empty() {
        bail!(
            "{} found in {} (listed above); everything else was imported",
            count(report.problems.len(), "problem"),
            args.root.display()
        );
    }
    Ok(())
}
