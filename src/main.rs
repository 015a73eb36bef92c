//! The `berth` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::config::{Config, DEFAULT_TOML, LogFormat};
use berth::human::{count, size};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A self-hosted OCI registry and pull-through cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (TOML); see `berth config default`.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:5000 (repeatable; replaces server.listen).
    #[arg(long, env = "BERTH_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Data directory (replaces storage.data_dir).
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Add a pull-through mirror, NAME=URL (repeatable), e.g. docker.io=https://registry-1.docker.io or
    /// local=http://127.0.0.1:5001. NAME is the path prefix and the ns= host it answers to; it replaces a
    /// configured mirror of the same name.
    #[arg(long = "mirror", value_name = "NAME=URL")]
    mirrors: Vec<String>,
    /// Open every repository to anonymous pull, push and delete, with no challenge (development and tests only;
    /// replaces the auth policies).
    #[arg(long, env = "BERTH_OPEN_ACCESS")]
    open_access: bool,
}

/// Where the data is, for commands that work on a data directory.
#[derive(clap::Args)]
struct DataArgs {
    /// Config file (TOML), as for `serve`.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (replaces storage.data_dir).
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl DataArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(d) = &self.data_dir {
            config.storage.data_dir = d.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    Serve(ServeArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Garbage-collect unreferenced manifests and blobs (safe while the server runs).
    Gc {
        #[command(flatten)]
        data: DataArgs,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Override gc.grace, e.g. 1s (for tests and emergencies).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Apply the retention policies (safe while the server runs).
    Retention {
        #[command(flatten)]
        data: DataArgs,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print the decisions as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the integrity of every repository and blob; exits 1 when problems are found.
    Scrub {
        #[command(flatten)]
        data: DataArgs,
        /// Re-hash every byte (otherwise check presence and size).
        #[arg(long)]
        deep: bool,
        /// Bytes per second to hash at most, e.g. 100MiB (default: unlimited).
        #[arg(long)]
        max_rate: Option<bytesize::ByteSize>,
        /// Do not drop damaged mirror cache entries; only report them.
        #[arg(long)]
        report_only: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when a berth endpoint answers 200 (a container HEALTHCHECK without curl).
    Healthcheck {
        /// The URL to ask.
        #[arg(long, default_value = "http://127.0.0.1:5000/healthz")]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show what is stored and the latest maintenance runs.
    Status {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        json: bool,
    },
    /// Manage users (also while the server runs).
    User(berth::auth::cli::UserArgs),
    /// Manage personal access tokens (also while the server runs).
    Token(berth::auth::cli::TokenArgs),
    /// Access-token signing key.
    Auth(berth::auth::cli::AuthArgs),
    /// Write images to one tar that is an OCI image layout and a `docker load` archive (docs/export-import.md).
    Export(berth::archive::cli::ExportArgs),
    /// Import images from an OCI layout tar or a `docker save` tar.
    Import(berth::archive::cli::ImportArgs),
    /// Import the storage root of a stopped CNCF distribution (registry:2), reporting anything broken.
    ImportDistribution(berth::archive::cli::ImportDistributionArgs),
    /// Copy a whole registry into another storage shape, e.g. SQLite + filesystem to PostgreSQL + S3 (servers
    /// stopped).
    MigrateStorage(berth::migrate::MigrateArgs),
    /// Mirror helpers.
    Mirror {
        #[command(subcommand)]
        command: MirrorCommand,
    },
}

#[derive(Subcommand)]
enum MirrorCommand {
    /// Warm mirror caches: pull images through a running berth, e.g. `docker.io/library/alpine:3.20`.
    Prefetch {
        /// The berth to pull through.
        #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:5000")]
        server: String,
        /// Only these platforms of multi-platform images, e.g. linux/amd64 (repeatable; default: all).
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// No per-blob progress lines.
        #[arg(long, short)]
        quiet: bool,
        /// Images as MIRROR/REPOSITORY[:TAG|@DIGEST].
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration, every key commented.
    Default,
    /// Check a config file and print the effective configuration.
    Check {
        #[arg(long, env = "BERTH_CONFIG")]
        config: PathBuf,
    },
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if !args.listen.is_empty() {
        config.server.listen = args.listen.clone();
    }
    if let Some(d) = &args.data_dir {
        config.storage.data_dir = d.clone();
    }
    for flag in &args.mirrors {
        let m = berth::config::Mirror::from_flag(flag)?;
        config.mirror.retain(|existing| existing.name != m.name);
        config.mirror.push(m);
    }
    if args.open_access {
        config.auth.open_access();
    }
    config.validate()?;
    Ok(config)
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(Some(path))?;
    print!("{}", toml::to_string_pretty(&config)?);
    Ok(())
}

fn prefetch(
    server: &str,
    images: &[String],
    platforms: &[String],
    quiet: bool,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = runtime.block_on(berth::prefetch::prefetch(server, images, platforms, quiet))?;
    eprintln!(
        "prefetched {} and {} ({})",
        count(s.manifests, "manifest"),
        count(s.blobs, "blob"),
        size(s.bytes)
    );
    Ok(())
}

/// Runs a maintenance command on a small runtime, logging warnings and errors to stderr.
fn maintenance<T>(
    data: &DataArgs,
    f: impl AsyncFnOnce(Config) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut config = data.load()?;
    config.log.level = "warn".into();
    init_logging(&config);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f(config))
}

fn healthcheck(url: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        let resp = client.get(url).send().await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "{url} answered {}",
            resp.status()
        );
        Ok(())
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(config.log.color.enabled())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// A command whose reader went away (`berth token list | head -1`) ends the way Unix filters do, killed quietly by
/// SIGPIPE, instead of Rust's default: SIGPIPE ignored, so `println!` meets EPIPE and panics with "failed printing
/// to stdout". One disposition set here covers every command's output (and clap's `--help`), where handling
/// `BrokenPipe` would mean replacing every `println!`. `serve` keeps SIGPIPE ignored: a long-running server must
/// see EPIPE as an error on the one stream (a log pipe whose reader restarted) rather than die of it. Data-dir
/// commands are as safe to stop this way as with `kill -9`: every write they make is crash-safe.
fn sigpipe_kills(kills: bool) {
    #[cfg(unix)]
    // SAFETY: called in `main` before any other thread exists; both are valid dispositions for SIGPIPE.
    unsafe {
        libc::signal(
            libc::SIGPIPE,
            if kills { libc::SIG_DFL } else { libc::SIG_IGN },
        );
    }
    #[cfg(not(unix))]
    let _ = kills;
}

fn main() -> ExitCode {
    sigpipe_kills(true);
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        sigpipe_kills(false);
    }
    let result = match cli.command {
        Command::Serve(args) => load(&args).and_then(|config| {
            init_logging(&config);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(berth::server::serve(config))
        }),
        Command::User(args) => berth::auth::cli::run_user(args),
        Command::Token(args) => berth::auth::cli::run_token(args),
        Command::Auth(args) => berth::auth::cli::run_auth(args),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => check_config(&config),
        Command::Mirror {
            command:
                MirrorCommand::Prefetch {
                    server,
                    platforms,
                    quiet,
                    images,
                },
        } => prefetch(&server, &images, &platforms, quiet),
        Command::Gc {
            data,
            dry_run,
            json,
            grace,
        } => maintenance(&data, async |c| {
            berth::maint::cli::gc(&c, grace, dry_run, json).await
        }),
        Command::Retention {
            data,
            dry_run,
            json,
        } => maintenance(&data, async |c| {
            berth::maint::cli::retention(&c, dry_run, json).await
        }),
        Command::Scrub {
            data,
            deep,
            max_rate,
            report_only,
            json,
        } => match maintenance(&data, async |c| {
            berth::maint::cli::scrub(&c, deep, max_rate.map(|r| r.as_u64()), report_only, json)
                .await
        }) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Healthcheck { url, timeout } => healthcheck(&url, timeout),
        Command::Status { data, json } => {
            maintenance(&data, async |c| berth::maint::cli::status(&c, json).await)
        }
        Command::Export(args) => berth::archive::cli::export(args),
        Command::Import(args) => berth::archive::cli::import(args),
        Command::ImportDistribution(args) => berth::archive::cli::import_distribution(args),
        Command::MigrateStorage(args) => berth::migrate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, as a bad config must produce.
            eprintln!("berth: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
