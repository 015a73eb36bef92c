//! Berth's one configuration struct. Every key has a default, so `berth serve` needs no file; a file only lists
//! what differs. Unknown keys are refused so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::meta::Synchronous;
pub use crate::store::config::{AzureStorage, BlobBackend, GcsStorage, S3Storage};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub limits: Limits,
    pub log: Log,
    /// Access control: users, tokens, policies (docs/auth.md).
    pub auth: Auth,
    /// Pull-through caches of upstream registries (`[[mirror]]` tables). Absent: the four well-known public
    /// registries; `mirror = []` disables mirroring.
    pub mirror: Vec<Mirror>,
    pub gc: Gc,
    pub retention: Retention,
    pub scrub: Scrub,
    /// The web UI at `/ui` (docs/ui.md).
    pub ui: Ui,
}

/// One upstream registry served read-only through berth.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Path prefix (`/v2/<name>/…`) and the registry host containerd names in `?ns=`, e.g. `docker.io`.
    pub name: String,
    /// Base URL of the upstream registry; `http://` only when said so explicitly.
    pub upstream: String,
    /// Further path prefixes that reach this mirror, e.g. `hub`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// A cached tag younger than this is served without asking the upstream.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Upstream credentials (Basic, or for the token flow). Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Name of an environment variable holding the password, instead of writing it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Time allowed to open a connection to the upstream.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to answer with headers.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Longest pause between body bytes before an upstream transfer is abandoned.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Cached blob bytes allowed for this mirror; above it the least recently used blobs are evicted (they are
    /// fetched again on the next miss). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_budget: Option<ByteSize>,
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(15)
}

impl Mirror {
    /// A mirror with default options, as `--mirror NAME=URL` creates.
    pub fn new(name: &str, upstream: &str, aliases: &[&str]) -> Mirror {
        Mirror {
            name: name.to_owned(),
            upstream: upstream.to_owned(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            tag_ttl: default_tag_ttl(),
            username: None,
            password: None,
            password_env: None,
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            idle_timeout: default_idle_timeout(),
            cache_budget: None,
        }
    }

    /// Parses `NAME=URL`.
    pub fn from_flag(flag: &str) -> Result<Mirror, ConfigError> {
        let (name, url) = flag
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("--mirror {flag:?}: expected NAME=URL")))?;
        Ok(Mirror::new(name.trim(), url.trim(), &[]))
    }

    /// The password: inline, or read from the named environment variable.
    pub fn resolved_password(&self) -> Result<Option<String>, ConfigError> {
        match (&self.password, &self.password_env) {
            (Some(p), None) => Ok(Some(p.clone())),
            (None, Some(var)) => std::env::var(var).map(Some).map_err(|_| {
                ConfigError::Invalid(format!(
                    "mirror {}: environment variable {var} is not set",
                    self.name
                ))
            }),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
                "mirror {}: set password or password_env, not both",
                self.name
            ))),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("mirror {:?}: {why}", self.name));
        for n in std::iter::once(&self.name).chain(&self.aliases) {
            let ok = !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:_".contains(&b));
            if !ok {
                return Err(bad(format!(
                    "{n:?} must be a host name (lowercase letters, digits, '.', '-', ':')"
                )));
            }
        }
        if !(self.upstream.starts_with("https://") || self.upstream.starts_with("http://")) {
            return Err(bad(format!(
                "upstream {:?} must start with https:// or http://",
                self.upstream
            )));
        }
        self.resolved_password()?;
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: Server::default(),
            storage: Storage::default(),
            limits: Limits::default(),
            log: Log::default(),
            gc: Gc::default(),
            retention: Retention::default(),
            scrub: Scrub::default(),
            ui: Ui::default(),
            auth: Auth::default(),
            mirror: vec![
                Mirror::new("docker.io", "https://registry-1.docker.io", &["hub"]),
                Mirror::new("ghcr.io", "https://ghcr.io", &[]),
                Mirror::new("quay.io", "https://quay.io", &[]),
                Mirror::new("registry.k8s.io", "https://registry.k8s.io", &[]),
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Addresses to listen on. An IPv6 listener is IPv6-only, so `0.0.0.0:P` and `[::]:P` coexist.
    pub listen: Vec<String>,
    /// Extra listeners where one mirror answers at the registry root (`/v2/library/alpine/…`), as Docker's
    /// `registry-mirrors` expects: `[[server.mirror_listener]] listen = "0.0.0.0:5001"`, `mirror = "docker.io"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirror_listener: Vec<MirrorListener>,
    /// Extra listeners serving only `/metrics`, `/healthz` and `/readyz` (e.g. on an internal interface), so
    /// scraping and probes need not reach the registry port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics_listen: Vec<String>,
    /// How long in-flight requests may run, and background workers may take to stop, after SIGTERM/SIGINT before
    /// the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's headers, counted from when the server starts waiting for
    /// them (a new connection's first request, or the next request on a kept-alive one). Slower clients are
    /// disconnected, so connections that drip their headers, or send nothing at all, cannot pile up. It is also how
    /// long a kept-alive connection may sit idle, hence longer than a slow-client guard alone would need.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most client connections served at once, over all registry listeners (plain, HTTPS, mirror listeners;
    /// the metrics listeners have as many again of their own). Connections beyond it wait in the kernel's
    /// accept queue until one closes, rather than being refused.
    pub max_connections: usize,
    /// HTTPS listeners (`[server.tls]`); the plain `listen` addresses stay available, e.g. for loopback or a proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// HTTPS listeners serving the same registry from a certificate and key in PEM files, reloaded when they change.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub listen: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Access control (`[auth]`). Policies decide per repository glob who may pull, push and delete.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// The `service` of token challenges and the audience of access tokens.
    pub service: String,
    /// Base URL clients reach berth at, for the token realm (`<realm>/token`); unset: taken from each request's
    /// `Host` header and listener scheme. Set it behind a TLS-terminating proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Lifetime of access tokens from the token endpoint.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// The key that signs access tokens and UI sessions (64 hex digits). Unset: `jwt-signing.key` in the data
    /// directory, created on first start. Set it to one file every replica reads (a mounted secret), so a token
    /// issued by one replica is accepted by all; berth then never creates it (a missing file is an error, not a
    /// fresh key that only this replica knows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// Answer `/v2/` and `/v2/_catalog` to anonymous callers instead of challenging them.
    pub anonymous_browse: bool,
    /// Failed logins allowed per source address and per user name within `failed_login_window`; 0: unlimited.
    pub max_failed_logins: u32,
    #[serde(with = "humantime_serde")]
    pub failed_login_window: Duration,
    /// Ordered rules; the first whose `repositories` match decides. No match: admins only.
    pub policy: Vec<AuthPolicy>,
}

/// One `[[auth.policy]]` rule. Lists name users, `@users` (anyone signed in) or `@all` (anonymous callers too).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    /// Repository globs: `*` within a path component, `**` across, `mirrors` for every mirrored repository.
    pub repositories: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<String>,
    /// A pushed tag never moves to another manifest (and is not deleted by tag).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable_tags: bool,
}

impl Auth {
    /// Where the token signing key lives: `signing_key_file`, or `jwt-signing.key` in `data_dir`.
    pub fn signing_key_path(&self, data_dir: &Path) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join(crate::auth::jwt::KEY_FILE))
    }
}

impl AuthPolicy {
    fn new(repositories: &[&str], pull: &[&str], push: &[&str], delete: &[&str]) -> AuthPolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        AuthPolicy {
            repositories: v(repositories),
            pull: v(pull),
            push: v(push),
            delete: v(delete),
            immutable_tags: false,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            service: "berth".into(),
            realm: None,
            token_ttl: Duration::from_secs(300),
            signing_key_file: None,
            anonymous_browse: false,
            max_failed_logins: 10,
            failed_login_window: Duration::from_secs(300),
            policy: vec![
                AuthPolicy::new(&["mirrors"], &["@all"], &[], &[]),
                AuthPolicy::new(&["**"], &["@users"], &["@users"], &["@users"]),
            ],
        }
    }
}

impl Auth {
    /// `serve --open-access`: every repository open to anonymous pull, push and delete, nothing challenged. For
    /// development and tests only.
    pub fn open_access(&mut self) {
        self.anonymous_browse = true;
        self.policy = vec![
            AuthPolicy::new(&["mirrors"], &["@all"], &[], &[]),
            AuthPolicy::new(&["**"], &["@all"], &["@all"], &["@all"]),
        ];
    }

    /// The policy rules, checked.
    pub fn compile(&self) -> Result<crate::auth::Policy, ConfigError> {
        use crate::auth::policy::{Grantee, Rule};
        let bad = |e: String| ConfigError::Invalid(format!("auth.policy: {e}"));
        let grantees = |l: &[String]| -> Result<Vec<Grantee>, ConfigError> {
            l.iter().map(|g| Grantee::parse(g).map_err(bad)).collect()
        };
        let mut rules = Vec::new();
        for p in &self.policy {
            if p.repositories.is_empty() {
                return Err(bad("every rule needs repositories".into()));
            }
            rules.push(Rule {
                repositories: p
                    .repositories
                    .iter()
                    .map(|g| {
                        g.parse()
                            .map_err(|e: crate::auth::glob::GlobError| bad(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?,
                pull: grantees(&p.pull)?,
                push: grantees(&p.push)?,
                delete: grantees(&p.delete)?,
                immutable_tags: p.immutable_tags,
            });
        }
        if self.service.is_empty() || self.service.contains('"') {
            return Err(ConfigError::Invalid(
                "auth.service must be a non-empty string without quotes".into(),
            ));
        }
        if let Some(r) = &self.realm
            && !(r.starts_with("https://") || r.starts_with("http://"))
        {
            return Err(ConfigError::Invalid(format!(
                "auth.realm {r:?} must start with https:// or http://"
            )));
        }
        Ok(crate::auth::Policy { rules })
    }
}

/// A listener whose unprefixed repositories belong to one mirror (design §3, `default_mirror`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorListener {
    pub listen: String,
    /// Name of a configured mirror.
    pub mirror: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Directory holding blobs (`blobs/`, `uploads/`, `tmp/`) and the SQLite database (`berth.db`).
    pub data_dir: PathBuf,
    /// Where metadata lives: `sqlite` (`berth.db` in the data directory, one server) or `postgres` (shared by
    /// several replicas; docs/scale-out.md).
    pub metadata: MetadataBackend,
    /// `full`: every commit is fsync'd (an acknowledged push survives power loss). `normal`: faster, survives a
    /// process crash but may lose the last acknowledged writes on power loss.
    pub sqlite_synchronous: Synchronous,
    /// Where blob bytes live: `filesystem` (under `data_dir`), or an object store for the scale-out shape
    /// (docs/scale-out.md), configured in the table of the same name.
    pub blobs: BlobBackend,
    pub s3: S3Storage,
    pub gcs: GcsStorage,
    pub azure: AzureStorage,
    /// With an object store: blob GETs are answered with a redirect to a pre-signed URL valid this long, so the
    /// bytes go from the object store to the client without passing through berth. Unset: berth streams them.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub redirect_ttl: Option<Duration>,
    /// PostgreSQL connection URL (`postgres://user:password@host:5432/berth`). Never logged; prefer
    /// `postgres_url_env` to keep the password out of this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// Name of an environment variable holding the PostgreSQL URL, instead of `postgres_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url_env: Option<String>,
    /// Connections per replica for metadata transactions (as many again at most hold digest locks and leases).
    pub postgres_pool_size: usize,
}

/// The metadata store behind `storage.metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    Sqlite,
    Postgres,
}

impl Storage {
    /// What the blob store needs of these keys.
    pub fn object_settings(&self) -> crate::store::config::ObjectSettings<'_> {
        crate::store::config::ObjectSettings {
            blobs: self.blobs,
            s3: &self.s3,
            gcs: &self.gcs,
            azure: &self.azure,
            redirect_ttl: self.redirect_ttl,
            data_dir: &self.data_dir,
        }
    }

    /// The PostgreSQL URL, from `postgres_url` or the variable `postgres_url_env` names.
    pub fn postgres_url(&self) -> Result<String, ConfigError> {
        match (&self.postgres_url, &self.postgres_url_env) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid(
                "storage: set postgres_url or postgres_url_env, not both".into(),
            )),
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                ConfigError::Invalid(format!(
                    "storage.postgres_url_env: environment variable {var} is not set"
                ))
            }),
            (None, None) => Err(ConfigError::Invalid(
                "storage.metadata = \"postgres\" needs postgres_url or postgres_url_env".into(),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest manifest accepted on push (the spec's recommended floor is 4 MiB).
    pub max_manifest_size: ByteSize,
    /// Upload sessions older than this are discarded with their bytes.
    #[serde(with = "humantime_serde")]
    pub upload_expiry: Duration,
    /// Most entries one page of `/v2/_catalog` or a tag list holds. A client asking for more (`?n=`) gets this
    /// many and a `Link` header to the next page, as the distribution spec allows; without `n` a tag list is
    /// still whole.
    pub max_page_size: usize,
    /// Most upload sessions one principal (a user; all anonymous callers count as one) may have open at once.
    /// Opening one more is refused with `429 TOOMANYREQUESTS` until one is finished, cancelled or expires.
    pub max_upload_sessions_per_principal: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// When log lines may carry ANSI colour escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    /// Only when stderr is a terminal and `NO_COLOR` is unset or empty (so files, pipes and journald get plain text).
    Auto,
    Always,
    Never,
}

impl LogColor {
    /// Whether to write colour escapes to stderr.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            LogColor::Always => true,
            LogColor::Never => false,
            LogColor::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `human` or `json` (one JSON object per line).
    pub format: LogFormat,
    /// Colour escapes in `human` lines: `auto` (only when stderr is a terminal and `NO_COLOR` is not set), `always`
    /// or `never`. JSON lines never carry any.
    pub color: LogColor,
    /// A tracing filter such as `info` or `berth=debug,tower_http=info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: vec!["0.0.0.0:5000".into(), "[::]:5000".into()],
            mirror_listener: Vec::new(),
            metrics_listen: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            tls: None,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: PathBuf::from("./berth-data"),
            metadata: MetadataBackend::Sqlite,
            sqlite_synchronous: Synchronous::Full,
            blobs: BlobBackend::Filesystem,
            s3: S3Storage::default(),
            gcs: GcsStorage::default(),
            azure: AzureStorage::default(),
            redirect_ttl: None,
            postgres_url: None,
            postgres_url_env: None,
            postgres_pool_size: 16,
        }
    }
}

impl Storage {
    /// `BERTH_BLOBS` and `BERTH_S3_*` override the file, so one deployment template (or the test harness) can
    /// point any config at a bucket: `BERTH_BLOBS`, `BERTH_S3_BUCKET`, `BERTH_S3_PREFIX`, `BERTH_S3_ENDPOINT`,
    /// `BERTH_S3_REGION`, `BERTH_S3_ACCESS_KEY_ID`, `BERTH_S3_SECRET_ACCESS_KEY_ENV`, `BERTH_S3_PATH_STYLE`,
    /// `BERTH_S3_ALLOW_HTTP`.
    fn apply_env(&mut self) -> Result<(), ConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let flag = |name: &str, v: String| match v.as_str() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(ConfigError::Invalid(format!(
                "{name} must be true or false, not {v:?}"
            ))),
        };
        if let Some(v) = var("BERTH_BLOBS") {
            self.blobs = match v.as_str() {
                "filesystem" => BlobBackend::Filesystem,
                "s3" => BlobBackend::S3,
                "gcs" => BlobBackend::Gcs,
                "azure" => BlobBackend::Azure,
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "BERTH_BLOBS must be filesystem, s3, gcs or azure, not {v:?}"
                    )));
                }
            };
        }
        let s3 = &mut self.s3;
        if let Some(v) = var("BERTH_S3_BUCKET") {
            s3.bucket = v;
        }
        if let Some(v) = var("BERTH_S3_PREFIX") {
            s3.prefix = v;
        }
        if let Some(v) = var("BERTH_S3_ENDPOINT") {
            s3.endpoint = Some(v);
        }
        if let Some(v) = var("BERTH_S3_REGION") {
            s3.region = Some(v);
        }
        if let Some(v) = var("BERTH_S3_ACCESS_KEY_ID") {
            s3.access_key_id = Some(v);
        }
        if let Some(v) = var("BERTH_S3_SECRET_ACCESS_KEY_ENV") {
            s3.secret_access_key_env = Some(v);
        }
        if let Some(v) = var("BERTH_S3_PATH_STYLE") {
            s3.path_style = flag("BERTH_S3_PATH_STYLE", v)?;
        }
        if let Some(v) = var("BERTH_S3_ALLOW_HTTP") {
            s3.allow_http = flag("BERTH_S3_ALLOW_HTTP", v)?;
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_size: ByteSize::mib(4),
            upload_expiry: Duration::from_secs(24 * 3600),
            max_page_size: 1000,
            max_upload_sessions_per_principal: 100,
        }
    }
}

/// Online garbage collection (docs/maintenance.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gc {
    /// Time between scheduled runs; `0s` turns scheduling off (`berth gc` still works).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Each scheduled run starts up to this much later than the interval says, at random, so replicas and
    /// neighbours do not all start together.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Nothing pushed, mounted or confirmed by a HEAD within this window is collected.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Untagged manifests that no index or kept subject needs are collected once neither pushed nor pulled for
    /// this long; unset keeps them forever.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub untagged_ttl: Option<Duration>,
}

impl Default for Gc {
    fn default() -> Self {
        Gc {
            interval: Duration::from_secs(24 * 3600),
            jitter: Duration::from_secs(3600),
            grace: Duration::from_secs(3600),
            untagged_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// Retention policies and their schedule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Time between scheduled runs; `0s` turns scheduling off.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Policies, first match wins per repository; repositories no policy matches are left alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<RetentionPolicy>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            interval: Duration::from_secs(24 * 3600),
            jitter: Duration::from_secs(3600),
            policy: Vec::new(),
        }
    }
}

/// Which tags and untagged manifests of matching repositories to keep. A tag is kept when any `keep_*` rule
/// keeps it; the others are deleted (their manifests then become untagged, and garbage collection reclaims them).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Repository globs as in access policies (`*` within a path component, `**` across), e.g.
    /// `["team/**", "ci-cache"]`.
    pub repositories: Vec<String>,
    /// Keep the newest N tags by push time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_newest: Option<usize>,
    /// Always keep tags matching one of these: a tag name, a glob (`v*`), `semver` (e.g. `1.2.3`, `v2.0.0-rc1`), or
    /// `regex:EXPR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
    /// Keep tags whose image was pulled within this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_pulled_within: Option<Duration>,
    /// Delete untagged manifests (that no index or subject needs) older than this, neither pushed nor pulled since.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub delete_untagged_after: Option<Duration>,
    /// Only report what would be deleted.
    #[serde(default)]
    pub dry_run: bool,
}

/// The integrity scrubber and its schedule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scrub {
    /// Time between scheduled runs; `0s` turns scheduling off (`berth scrub` still works).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Scheduled runs re-hash every byte (otherwise they check presence and size).
    pub deep: bool,
    /// Bytes per second a scheduled deep scrub may read; `0 B` is unlimited.
    pub max_rate: ByteSize,
}

impl Default for Scrub {
    fn default() -> Self {
        Scrub {
            interval: Duration::from_secs(24 * 3600),
            jitter: Duration::from_secs(3600),
            deep: false,
            max_rate: ByteSize::mib(50),
        }
    }
}

/// The web UI.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ui {
    /// Serve the web UI at `/ui` on the main and TLS listeners (never on mirror listeners).
    pub enabled: bool,
}

impl Default for Ui {
    fn default() -> Self {
        Ui { enabled: true }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Human,
            color: LogColor::Auto,
            level: "info".into(),
        }
    }
}

/// The full default configuration with every key explained; `berth config default` prints it.
pub const DEFAULT_TOML: &str = r#"# berth configuration. Every key is optional; the values below are the defaults.
# Command-line flags (--listen, --data-dir) and BERTH_* environment variables override this file.

[server]
# Addresses to listen on. IPv6 listeners are IPv6-only, so both families can share a port.
listen = ["0.0.0.0:5000", "[::]:5000"]
# After SIGTERM/SIGINT, in-flight requests get this long to finish and background workers to stop.
shutdown_timeout = "30s"
# A client that takes longer than this to send a request's headers (or, on a kept-alive connection, to start
# its next request) is disconnected, so slow or silent connections cannot pile up.
header_read_timeout = "30s"
# Most client connections served at once over all registry listeners; more wait in the kernel's accept queue
# until one closes (metrics listeners have as many again of their own).
max_connections = 1024
# Extra listeners where one mirror answers at the registry root, for Docker's "registry-mirrors"
# (Docker only mirrors Docker Hub, and only at the root). For example:
# [[server.mirror_listener]]
# listen = "0.0.0.0:5001"
# mirror = "docker.io"
# Extra listeners that serve only /metrics, /healthz and /readyz, e.g. on an internal address:
# metrics_listen = ["127.0.0.1:9095"]
# HTTPS listeners from PEM files, reloaded when the files change (plain `listen` stays available):
# [server.tls]
# listen = ["0.0.0.0:5443"]
# cert = "/etc/berth/tls/cert.pem"
# key = "/etc/berth/tls/key.pem"

[storage]
# Blobs (blobs/, uploads/, tmp/) and the SQLite metadata database (berth.db) live here.
data_dir = "./berth-data"
# Metadata store: "sqlite" (berth.db in data_dir; one server) or "postgres" (several replicas share one
# database; see docs/scale-out.md). BERTH_METADATA overrides it.
metadata = "sqlite"
# "full": fsync every metadata commit, so an acknowledged push survives power loss.
# "normal": faster; survives a crash of berth, may lose the last acknowledged writes on power loss.
sqlite_synchronous = "full"
# Where blob bytes live: "filesystem" (under data_dir), or an object store for running several replicas:
# "s3", "gcs" or "azure", configured in the table of that name below (docs/scale-out.md). The SQLite
# database stays in data_dir; mirror downloads in flight are spooled to data_dir/spool.
blobs = "filesystem"
# With an object store: answer blob GETs with a 307 redirect to a pre-signed URL valid this long, so layer bytes
# go from the object store straight to clients (which must be able to reach it). Unset: berth streams them.
# redirect_ttl = "10m"

# [storage.s3]
# bucket = "berth"                     # must exist
# prefix = ""                          # key prefix inside the bucket
# endpoint = "http://minio:9000"       # S3-compatible server; absent: Amazon S3
# region = "us-east-1"                 # absent: AWS_REGION, else us-east-1
# access_key_id = "AKIA..."            # absent: AWS_* environment variables, then instance metadata
# secret_access_key_env = "BERTH_S3_SECRET"   # environment variable holding the secret key
# path_style = false                   # endpoint/bucket/key instead of bucket.endpoint/key
# allow_http = false                   # allow a plain http:// endpoint
#
# [storage.gcs]
# bucket = "berth"
# prefix = ""
# service_account_path = "/etc/berth/gcs.json"   # absent: GOOGLE_* variables, then the instance's account
#
# [storage.azure]
# account = "myaccount"
# container = "berth"                  # must exist
# prefix = ""
# access_key_env = "BERTH_AZURE_KEY"   # absent: AZURE_* variables, then managed identity
# endpoint = "http://azurite:10000/devstoreaccount1"
# allow_http = false
# With metadata = "postgres": the database URL, or the name of an environment variable holding it (keeps the
# password out of this file). BERTH_POSTGRES_URL overrides both. The URL is never logged.
# postgres_url = "postgres://berth:secret@db.internal:5432/berth"
# postgres_url_env = "BERTH_POSTGRES_URL_SECRET"
# Connections per replica for metadata transactions; as many again at most hold digest locks and leases.
postgres_pool_size = 16

[limits]
# Largest manifest accepted on push.
max_manifest_size = "4.0 MiB"
# Upload sessions older than this are discarded together with their bytes.
upload_expiry = "24h"
# Most entries in one page of /v2/_catalog or a tag list: a larger ?n= gets this many and a Link to the rest.
max_page_size = 1000
# Most open upload sessions per user (all anonymous callers count as one); one more gets 429 TOOMANYREQUESTS
# until a session is finished, cancelled or expires.
max_upload_sessions_per_principal = 100

[log]
# "human" or "json" (one object per line).
format = "human"
# Colour escapes in human lines: "auto" (only when stderr is a terminal and NO_COLOR is not set), "always", "never".
color = "auto"
# A tracing filter, e.g. "info" or "berth=debug". RUST_LOG overrides it.
level = "info"

[gc]
# Online garbage collection: untagged, unreferenced content is swept while the registry serves.
# Time between scheduled runs ("0s": only `berth gc`), and a random delay of up to `jitter` added to each.
interval = "1day"
jitter = "1h"
# Nothing pushed, mounted or confirmed by a HEAD within this window is collected.
grace = "1h"
# Untagged manifests (not listed by an index, not referring to a kept subject) go once neither pushed nor
# pulled for this long. Remove the key to keep them forever.
untagged_ttl = "7days"

[retention]
# Scheduled retention runs ("0s": only `berth retention`). Without policies nothing is deleted.
interval = "1day"
jitter = "1h"
# Policies, first match wins per repository. A tag is kept when any keep_* rule keeps it. For example,
# the newest 10 tags plus `latest` everywhere:
# [[retention.policy]]
# repositories = ["**"]           # globs as in [[auth.policy]]: "*" within a path component, "**" across
# keep_newest = 10
# keep_tags = ["latest"]          # names, globs ("v*"), "semver", or "regex:^release-"
# keep_pulled_within = "30days"
# delete_untagged_after = "14days"
# dry_run = true                  # only report, until you trust it

[scrub]
# Integrity scrub: repositories -> tags -> manifests -> references -> blobs.
interval = "1day"
jitter = "1h"
# Scheduled runs re-hash every byte (true) or check presence and size (false).
deep = false
# Bytes per second a scheduled deep scrub may read ("0 B": unlimited).
max_rate = "50.0 MiB"

[ui]
# The web UI at /ui (docs/ui.md): browse repositories, tags and manifests, delete tags, mirror and maintenance
# pages for admins. It shows only what the signed-in user may pull.
enabled = true

[auth]
# Access control; see docs/auth.md. Users and tokens live in the database (`berth user`, `berth token`).
# The `service` of token challenges and the audience of access tokens.
service = "berth"
# realm: base URL clients reach berth at, for the token endpoint (<realm>/token). Unset: from the request's Host.
# realm = "https://registry.example.com"
# Lifetime of access tokens handed out by /token.
token_ttl = "5m"
# signing_key_file: the key that signs access tokens and UI sessions. Unset: jwt-signing.key in data_dir, created on
# first start. With several replicas, point all of them at the same file (see docs/scale-out.md); it must exist
# (`berth auth rotate-key` writes a new one there).
# signing_key_file = "/run/secrets/berth-signing-key"
# Answer /v2/ and /v2/_catalog to anonymous callers without a challenge (the catalog only lists what they may pull).
anonymous_browse = false
# Failed logins allowed per source address and per user name within failed_login_window (0: unlimited).
max_failed_logins = 10
failed_login_window = "5m"

# Policies: the first rule whose `repositories` globs match a repository decides who may pull, push and delete it
# ("*" within a path component, "**" across, "mirrors" = every mirrored repository, named by mirror and upstream
# path, e.g. docker.io/library/alpine). Lists name users, "@users" (anyone signed in) or "@all" (anonymous too).
# `immutable_tags = true` refuses pushes that would move an existing tag. Admins may do everything; mirrors are
# read-only. No matching rule: admins only. Writing any [[auth.policy]] replaces these defaults.
[[auth.policy]]
# Mirrors: anyone may pull (containerd does not send pull secrets to mirrors).
repositories = ["mirrors"]
pull = ["@all"]

[[auth.policy]]
# Private repositories: any signed-in user.
repositories = ["**"]
pull = ["@users"]
push = ["@users"]
delete = ["@users"]

# Pull-through caches. Clients reach a mirror by path prefix (/v2/docker.io/library/alpine/...), by containerd's
# ?ns=<host> (hosts.toml mirrors), or through an alias. Mirrors are read-only: pushes and deletes are refused.
# Without any [[mirror]] table these four are configured; write `mirror = []` (before any table) to have none.
# Keys: name (prefix and ns host), upstream (URL), aliases, tag_ttl (cached tags younger than this are served
# without asking the upstream), username / password or password_env (upstream credentials, never logged),
# connect_timeout, response_timeout (until the upstream sends headers), idle_timeout (longest pause in a body),
# cache_budget (e.g. "50 GiB": above it the least recently used cached blobs are evicted; unset: no limit).
[[mirror]]
# Docker Hub; one-component names get "library/" (alpine -> library/alpine).
name = "docker.io"
upstream = "https://registry-1.docker.io"
aliases = ["hub"]
tag_ttl = "5m"
connect_timeout = "5s"
response_timeout = "15s"
idle_timeout = "15s"

[[mirror]]
# GitHub's container registry.
name = "ghcr.io"
upstream = "https://ghcr.io"
tag_ttl = "5m"
connect_timeout = "5s"
response_timeout = "15s"
idle_timeout = "15s"

[[mirror]]
# Red Hat Quay.
name = "quay.io"
upstream = "https://quay.io"
tag_ttl = "5m"
connect_timeout = "5s"
response_timeout = "15s"
idle_timeout = "15s"

[[mirror]]
# Kubernetes images.
name = "registry.k8s.io"
upstream = "https://registry.k8s.io"
tag_ttl = "5m"
connect_timeout = "5s"
response_timeout = "15s"
idle_timeout = "15s"

# Adding another upstream, e.g. a company registry with credentials from the environment:
# [[mirror]]
# name = "registry.example.com"
# upstream = "https://registry.example.com"
# username = "robot"
# password_env = "EXAMPLE_REGISTRY_PASSWORD"
# cache_budget = "20 GiB"
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads a config file (or the defaults when `path` is `None`), applies the `BERTH_*` environment overrides
    /// and validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = Self::read(path)?;
        config.storage.apply_env()?;
        config.apply_env()?;
        config.validate()?;
        Ok(config)
    }

    /// Loads a config file and validates it, without the `BERTH_*` environment overrides: for commands that open
    /// two stores at once (`migrate-storage`), where one override would otherwise point both at the same place.
    /// Variables the file names itself (`postgres_url_env`, `secret_access_key_env`, …) are still read.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::read(Some(path))?;
        config.validate()?;
        Ok(config)
    }

    /// The names of the `BERTH_*` storage overrides set in this environment ([`Config::load`] applies them).
    pub fn storage_overrides_in_env() -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, v)| {
                !v.is_empty()
                    && (matches!(
                        k.as_str(),
                        "BERTH_METADATA" | "BERTH_POSTGRES_URL" | "BERTH_BLOBS"
                    ) || k.starts_with("BERTH_S3_"))
            })
            .map(|(k, _)| k)
            .collect()
    }

    fn read(path: Option<&Path>) -> Result<Config, ConfigError> {
        Ok(match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                Config::parse(&text).map_err(|message| ConfigError::Parse {
                    path: p.into(),
                    message,
                })?
            }
        })
    }

    /// `BERTH_METADATA` and `BERTH_POSTGRES_URL` replace the storage keys of the file, for every command that loads
    /// a config (`serve`, maintenance, users, tokens, archives): one environment selects the store for all of them.
    fn apply_env(&mut self) -> Result<(), ConfigError> {
        match std::env::var("BERTH_METADATA").as_deref() {
            Ok("postgres") => self.storage.metadata = MetadataBackend::Postgres,
            Ok("sqlite") => self.storage.metadata = MetadataBackend::Sqlite,
            Ok("") | Err(_) => {}
            Ok(other) => {
                return Err(ConfigError::Invalid(format!(
                    "BERTH_METADATA={other:?}: expected sqlite or postgres"
                )));
            }
        }
        if let Ok(url) = std::env::var("BERTH_POSTGRES_URL")
            && !url.is_empty()
        {
            self.storage.postgres_url = Some(url);
            self.storage.postgres_url_env = None;
        }
        Ok(())
    }

    /// Parses TOML text; the error is one line naming the offending key.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.message().trim().replace('\n', " "))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.is_empty() {
            return Err(ConfigError::Invalid(
                "server.listen must name at least one address".into(),
            ));
        }
        let listens = self
            .server
            .listen
            .iter()
            .chain(self.server.mirror_listener.iter().map(|l| &l.listen))
            .chain(&self.server.metrics_listen)
            .chain(self.server.tls.iter().flat_map(|t| &t.listen));
        for l in listens {
            l.parse::<std::net::SocketAddr>().map_err(|e| {
                ConfigError::Invalid(format!("server.listen: {l:?} is not an address:port ({e})"))
            })?;
        }
        for l in &self.server.mirror_listener {
            if !self
                .mirror
                .iter()
                .any(|m| m.name == l.mirror || m.aliases.contains(&l.mirror))
            {
                return Err(ConfigError::Invalid(format!(
                    "server.mirror_listener {}: no mirror named {:?}",
                    l.listen, l.mirror
                )));
            }
        }
        let s = &self.storage;
        let missing = match s.blobs {
            BlobBackend::Filesystem => None,
            BlobBackend::S3 if s.s3.bucket.is_empty() => Some("storage.s3.bucket"),
            BlobBackend::Gcs if s.gcs.bucket.is_empty() => Some("storage.gcs.bucket"),
            BlobBackend::Azure if s.azure.account.is_empty() => Some("storage.azure.account"),
            BlobBackend::Azure if s.azure.container.is_empty() => Some("storage.azure.container"),
            _ => None,
        };
        if let Some(key) = missing {
            return Err(ConfigError::Invalid(format!(
                "{key} must be set when storage.blobs is an object store"
            )));
        }
        if let Some(ttl) = s.redirect_ttl {
            if s.blobs == BlobBackend::Filesystem {
                return Err(ConfigError::Invalid(
                    "storage.redirect_ttl needs an object store (storage.blobs = \"s3\", \"gcs\" or \"azure\")"
                        .into(),
                ));
            }
            // S3 refuses pre-signed URLs valid for more than 7 days; below a second a client cannot use one.
            if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(7 * 24 * 3600) {
                return Err(ConfigError::Invalid(
                    "storage.redirect_ttl must be between 1s and 7 days".into(),
                ));
            }
        }
        if self.limits.max_page_size == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_page_size must be positive".into(),
            ));
        }
        if self.limits.max_upload_sessions_per_principal == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_upload_sessions_per_principal must be positive".into(),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "server.max_connections must be positive".into(),
            ));
        }
        if self.server.header_read_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "server.header_read_timeout must be positive".into(),
            ));
        }
        if self.limits.max_manifest_size.as_u64() == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_manifest_size must be positive".into(),
            ));
        }
        if self.storage.metadata == MetadataBackend::Postgres {
            self.storage.postgres_url()?;
            if self.storage.postgres_pool_size == 0 {
                return Err(ConfigError::Invalid(
                    "storage.postgres_pool_size must be positive".into(),
                ));
            }
        }
        self.auth.compile()?;
        crate::maint::retention::compile_all(&self.retention.policy)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for m in &self.mirror {
            m.validate()?;
            for n in std::iter::once(&m.name).chain(&m.aliases) {
                if !seen.insert(n.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "mirror name or alias {n:?} is used twice"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default_config() {
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::parse("[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::parse("[storrage]\n").unwrap_err();
        assert!(err.contains("storrage"), "{err}");
    }

    #[test]
    fn human_sizes_and_durations() {
        let c = Config::parse("[limits]\nmax_manifest_size = \"1 MiB\"\nupload_expiry = \"15m\"\n")
            .unwrap();
        assert_eq!(c.limits.max_manifest_size.as_u64(), 1 << 20);
        assert_eq!(c.limits.upload_expiry, Duration::from_secs(900));
    }

    #[test]
    fn postgres_metadata_needs_exactly_one_url_source() {
        let c = Config::parse("[storage]\nmetadata = \"postgres\"\n").unwrap();
        assert!(c.validate().is_err(), "no URL");
        let c = Config::parse(
            "[storage]\nmetadata = \"postgres\"\npostgres_url = \"postgres://a@b/c\"\n\
             postgres_url_env = \"X\"\n",
        )
        .unwrap();
        assert!(c.validate().is_err(), "two sources");
        let c = Config::parse(
            "[storage]\nmetadata = \"postgres\"\npostgres_url = \"postgres://a@b/c\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.storage.postgres_url().unwrap(), "postgres://a@b/c");
        assert!(Config::parse("[storage]\nmetadata = \"mysql\"\n").is_err());
    }

    #[test]
    fn bad_listen_address_is_invalid() {
        let mut c = Config::default();
        c.server.listen = vec!["localhost".into()];
        assert!(c.validate().is_err());
    }
}
