//! `berth user …`, `berth token …` and `berth auth …`: account management on the data directory. They open the
//! same SQLite database as `berth serve` (WAL), so they work while the server runs and take effect immediately.

use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::Accounts;
use super::policy::Scope;
use crate::config::Config;

/// Where the data lives: the same flags and environment as `serve`.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Config file (TOML); its storage.data_dir is used.
    #[arg(long, env = "BERTH_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (replaces storage.data_dir).
    #[arg(long, env = "BERTH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user. The password is read from stdin when it is not a terminal, else prompted for twice.
    Add {
        name: String,
        /// May do everything, including managing users and tokens over the admin API.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
    /// Remove a user and all their tokens.
    Remove { name: String },
    /// Change a user's password (read like `add`).
    Passwd { name: String },
    /// Import users from an htpasswd file (bcrypt hashes, `htpasswd -B`); existing users get the imported hash.
    ImportHtpasswd { file: PathBuf },
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a personal access token and print it (alone, on stdout) — the only time it is shown.
    Create {
        #[arg(long)]
        user: String,
        /// GLOB:ACTIONS, e.g. 'team/*:pull,push' or 'mirrors:pull' (repeatable). The token can do at most what
        /// its user may do.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d or 12h. Default: no expiry.
        #[arg(long)]
        expires: Option<String>,
        /// A label, e.g. ci.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tokens (never their secrets) with their last use.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Replace the access-token signing key. Outstanding access tokens stop working at once (a running server
    /// notices the new key file); clients fetch new ones through the usual challenge. Personal access tokens and
    /// passwords are not affected. Writes `auth.signing_key_file` when it is set: every replica reading that file
    /// switches to the new key.
    RotateKey,
}

fn data_dir(args: &DataArgs) -> anyhow::Result<(PathBuf, Config)> {
    let config = Config::load(args.config.as_deref())?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.storage.data_dir.clone());
    Ok((dir, config))
}

fn open(args: &DataArgs) -> anyhow::Result<Accounts> {
    let (dir, mut config) = data_dir(args)?;
    config.storage.data_dir = dir;
    Ok(Accounts::new(crate::stores::open_meta(&config)?))
}

/// The commands write the same `audit` lines as the server (user added, token created, …) to stderr, so the
/// record of account changes does not depend on which side made them. `RUST_LOG` overrides the filter.
fn init_audit_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,audit=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(crate::config::LogColor::Auto.enabled())
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    init_audit_log();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A password from stdin (first line, for scripts) or prompted for twice on a terminal.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password(format!("{prompt}: "))?;
        let b = rpassword::prompt_password(format!("{prompt} (again): "))?;
        if a != b {
            bail!("the passwords do not match");
        }
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

fn time(t: Option<i64>) -> String {
    match t {
        Some(t) if t >= 0 => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64),
        )
        .to_string(),
        _ => "never".into(),
    }
}

pub fn run_user(args: UserArgs) -> anyhow::Result<()> {
    let accounts = open(&args.data)?;
    runtime()?.block_on(async {
        match args.command {
            UserCommand::Add { name, admin } => {
                let pw = read_password(&format!("password for {name}"))?;
                accounts.add_user(&name, &pw, admin).await?;
                eprintln!("user {name} added{}", if admin { " (admin)" } else { "" });
            }
            UserCommand::List => {
                println!("{:<24} {:<6} CREATED", "NAME", "ADMIN");
                for u in accounts.users().await? {
                    println!("{:<24} {:<6} {}", u.name, u.admin, time(Some(u.created_at)));
                }
            }
            UserCommand::Remove { name } => {
                accounts.remove_user(&name).await?;
                eprintln!("user {name} removed with their tokens");
            }
            UserCommand::Passwd { name } => {
                let pw = read_password(&format!("new password for {name}"))?;
                accounts.set_password(&name, &pw).await?;
                eprintln!("password of {name} changed");
            }
            UserCommand::ImportHtpasswd { file } => {
                let mut text = String::new();
                std::fs::File::open(&file)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let names = accounts.import_htpasswd(&text).await?;
                eprintln!(
                    "imported {}: {}",
                    crate::human::count(names.len(), "user"),
                    names.join(", ")
                );
            }
        }
        Ok(())
    })
}

pub fn run_token(args: TokenArgs) -> anyhow::Result<()> {
    let accounts = open(&args.data)?;
    runtime()?.block_on(async {
        match args.command {
            TokenCommand::Create {
                user,
                scopes,
                expires,
                name,
            } => {
                let scopes = scopes
                    .iter()
                    .map(|s| s.parse::<Scope>().map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let expires = expires
                    .map(|e| {
                        humantime::parse_duration(&e).with_context(|| format!("--expires {e:?}"))
                    })
                    .transpose()?;
                let t = accounts
                    .create_token(&user, &name, &scopes, expires)
                    .await?;
                let expiry = match t.record.expires_at {
                    Some(_) => format!("expires {}", time(t.record.expires_at)),
                    None => "does not expire".to_owned(),
                };
                eprintln!(
                    "token {} for {user} created ({expiry}); it is shown only now:",
                    t.record.id
                );
                println!("{}", t.secret);
            }
            TokenCommand::List { user } => {
                println!(
                    "{:<16} {:<16} {:<12} {:<20} {:<20} {:<20} SCOPES",
                    "ID", "USER", "NAME", "CREATED", "EXPIRES", "LAST USED"
                );
                for t in accounts.tokens(user.as_deref()).await? {
                    println!(
                        "{:<16} {:<16} {:<12} {:<20} {:<20} {:<20} {}",
                        t.id,
                        t.user,
                        t.name,
                        time(Some(t.created_at)),
                        time(t.expires_at),
                        time(t.last_used),
                        t.scopes.replace('\n', " ")
                    );
                }
            }
            TokenCommand::Revoke { id } => {
                accounts.revoke_token(&id).await?;
                eprintln!("token {id} revoked");
            }
        }
        Ok(())
    })
}

pub fn run_auth(args: AuthArgs) -> anyhow::Result<()> {
    init_audit_log();
    let (dir, config) = data_dir(&args.data)?;
    match args.command {
        AuthCommand::RotateKey => {
            let path = config.auth.signing_key_path(&dir);
            super::jwt::write_new_key(&path)?;
            tracing::info!(target: "audit", event = "signing_key_rotated", path = %path.display(), "token signing key rotated");
            eprintln!(
                "new signing key written to {}; access tokens signed with the old key are refused from now on",
                path.display()
            );
        }
    }
    Ok(())
}
