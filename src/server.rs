//! `berth serve`: wires the stores, the registry and the HTTP listeners together, runs background housekeeping,
//! and shuts down gracefully on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{BlobBackend, Config, MetadataBackend};
use crate::connections::{self, ConnectionLimits};
use crate::maint::Maintenance;
use crate::meta::{PgSettings, SqlStore};
use crate::registry::{Limits, Registry};
use crate::store::BlobStore;
use crate::store::fs::FsBlobStore;
use crate::store::object::ObjectBlobStore;

/// The file in the data directory that `berth serve` holds an exclusive advisory lock (`flock`) on for its whole
/// life. Commands that open the data directory directly (`berth import --data-dir`, …) take the same lock, so they
/// refuse to run beside a server instead of writing under its feet. The kernel drops the lock when the process
/// dies, even by `kill -9`, so a crash never leaves the directory locked.
pub const DATA_DIR_LOCK_FILE: &str = "berth.lock";

/// Holds the data-directory lock until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data-directory lock without waiting; fails, naming the directory, when another process holds it.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join(DATA_DIR_LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "data directory {} is in use by another berth process (a `berth serve`, or an export or import in \
             data-dir mode, holds {}); stop it first, or talk to the server with --server URL",
            dir.display(),
            DATA_DIR_LOCK_FILE
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// How often expired upload sessions are looked for.
const UPLOAD_EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// The registry and its maintenance jobs over one data directory.
pub struct Opened {
    pub registry: Arc<Registry>,
    pub maintenance: Arc<Maintenance>,
    /// The metadata store, which also serves the web UI's pages and access control.
    pub meta: Arc<SqlStore>,
}

/// Opens the metadata store `storage.metadata` names: `berth.db` in the data directory, or the PostgreSQL database
/// (not connected yet: the first operation connects and migrates; see `SqlStore::ready`).
pub fn open_meta(config: &Config) -> anyhow::Result<Arc<SqlStore>> {
    let s = &config.storage;
    let store = match s.metadata {
        MetadataBackend::Sqlite => {
            let dir = &s.data_dir;
            SqlStore::sqlite(&dir.join("berth.db"), s.sqlite_synchronous)
                .with_context(|| format!("cannot open metadata database in {}", dir.display()))?
        }
        MetadataBackend::Postgres => {
            let settings = PgSettings {
                url: s.postgres_url()?,
                pool_size: s.postgres_pool_size,
            };
            SqlStore::postgres(&settings).context("cannot open the PostgreSQL metadata store")?
        }
    };
    Ok(Arc::new(store))
}

/// The identity of the replica serving `dir`, created on first use (`replica-id` in the data directory). Replicas
/// sharing a metadata store each have their own data directory, hence their own id.
fn replica_id(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Written whole under a temporary name, then linked into place only if absent: a process starting beside
    // another (a command-line run) ends up with the same id, never a torn one.
    let tmp = dir.join(format!("replica-id.{id}"));
    std::fs::write(&tmp, &id)?;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
        std::fs::remove_file(&path)?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    std::fs::remove_file(&tmp)?;
    match linked {
        Ok(()) => Ok(id),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

/// Opens the stores: blobs under the data directory, metadata where the config says. The server and the
/// maintenance commands open them the same way, so they share the cross-process digest locks (the data
/// directory's lock file on one host; PostgreSQL advisory locks across replicas).
pub fn open(config: &Config) -> anyhow::Result<Opened> {
    let dir = &config.storage.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let blobs = open_blobs(config)?;
    let meta = open_meta(config)?;
    let limits = Limits {
        max_manifest_size: config.limits.max_manifest_size.as_u64(),
        upload_expiry: config.limits.upload_expiry,
        max_page_size: config.limits.max_page_size,
        max_upload_sessions_per_principal: config.limits.max_upload_sessions_per_principal,
    };
    let mut registry =
        Registry::new(blobs, meta.clone(), limits).with_lock_file(dir.join("digest.locks"));
    if meta.shared() {
        registry = registry
            .with_store_locks()
            .with_replica_id(replica_id(dir).context("cannot read the replica id")?);
    }
    let registry = Arc::new(registry);
    let maintenance = Arc::new(Maintenance::new(registry.clone(), meta.clone()));
    Ok(Opened {
        registry,
        maintenance,
        meta,
    })
}

/// Opens the blob store `storage.blobs` names: under the data directory, or the object store.
pub fn open_blobs(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let dir = &config.storage.data_dir;
    Ok(match config.storage.blobs {
        BlobBackend::Filesystem => Arc::new(
            FsBlobStore::open(dir)
                .with_context(|| format!("cannot open blob store in {}", dir.display()))?,
        ),
        backend => Arc::new(
            ObjectBlobStore::open(&config.storage.object_settings())
                .with_context(|| format!("cannot open the {backend:?} blob store"))?,
        ),
    })
}

/// Opens access control: the user/token store (the metadata store, through its own connections) and the token
/// signing key: `auth.signing_key_file` (shared by replicas), or the data directory's, created on first start.
pub fn open_auth(config: &Config) -> anyhow::Result<crate::auth::Auth> {
    let dir = &config.storage.data_dir;
    let store = open_meta(config)?;
    let a = &config.auth;
    // A configured file is the replicas' shared key: never replaced by a fresh one here (see `IfMissing::Fail`).
    let missing = match a.signing_key_file {
        Some(_) => crate::auth::jwt::IfMissing::Fail,
        None => crate::auth::jwt::IfMissing::Create,
    };
    let key = crate::auth::SigningKey::open(&a.signing_key_path(dir), missing)?;
    let settings = crate::auth::Settings {
        policy: a.compile()?,
        service: a.service.clone(),
        realm: a.realm.clone(),
        token_ttl: a.token_ttl,
        anonymous_browse: a.anonymous_browse,
        max_failed_logins: a.max_failed_logins,
        failed_login_window: a.failed_login_window,
    };
    Ok(crate::auth::Auth::new(store, key, settings))
}

/// First start: no users yet, so create `admin`, with `BERTH_ADMIN_PASSWORD` or a random password shown once.
async fn bootstrap_admin(auth: &crate::auth::Auth) -> anyhow::Result<()> {
    let from_env = std::env::var("BERTH_ADMIN_PASSWORD").ok();
    let given = from_env.as_deref().is_some_and(|p| !p.is_empty());
    match auth.accounts.bootstrap_admin(from_env).await? {
        // Written to stderr directly rather than through tracing, so log shippers that collect structured
        // events do not store it; it is the only time it is ever shown.
        Some(pw) => eprintln!(
            "\n  berth: created user 'admin' with password: {pw}\n  (shown once; change it with `berth user passwd admin`)\n"
        ),
        None if given => {
            tracing::info!("created user 'admin' with the password from BERTH_ADMIN_PASSWORD")
        }
        None => {}
    }
    Ok(())
}

/// Binds a listener; IPv6 sockets are IPv6-only so `0.0.0.0:P` and `[::]:P` can both be bound.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the server until a shutdown signal, then lets in-flight requests finish (up to the configured timeout).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&config.storage.data_dir)?;
    let policies = crate::maint::retention::compile_all(&config.retention.policy)?;
    let Opened {
        registry,
        maintenance,
        meta,
    } = open(&config)?;
    // Fail at start, not at the first request, when the database is unreachable or too new.
    meta.ready()
        .await
        .context("cannot use the metadata database")?;
    let ui_store: Option<Arc<dyn crate::meta::ui::UiStore>> = match config.ui.enabled {
        true => Some(meta),
        false => None,
    };
    registry
        .reclaim_after_restart()
        .await
        .context("start-up housekeeping failed")?;

    let mirrors = Arc::new(
        crate::mirror::Mirrors::new(&config.mirror, registry.clone())
            .map_err(anyhow::Error::msg)?,
    );
    for m in &config.mirror {
        tracing::info!(mirror = %m.name, upstream = %m.upstream, aliases = ?m.aliases, "mirroring");
    }
    // Every background job runs as a worker of this set: visible at /api/v1/workers, stopped together at shutdown.
    let workers = Arc::new(crate::worker::Workers::new());
    mirrors.start_eviction(&workers);
    let ui = ui_store.map(|store| {
        Arc::new(crate::ui::Ui::new(
            store,
            registry.clone(),
            maintenance.clone(),
            policies.clone(),
            workers.clone(),
        ))
    });
    crate::maint::scheduler::start(&workers, maintenance, &config, policies);
    {
        let registry = registry.clone();
        workers.spawn(
            "upload-expiry",
            crate::worker::Schedule::every(UPLOAD_EXPIRY_INTERVAL),
            crate::worker::job_fn(move || {
                let registry = registry.clone();
                async move {
                    Ok(match registry.expire_uploads().await? {
                        0 => crate::worker::Ran::done(),
                        n => crate::worker::Ran::noted(format!("expired {n} upload sessions")),
                    })
                }
            }),
        );
    }
    let auth = Arc::new(open_auth(&config)?);
    bootstrap_admin(&auth).await?;
    {
        let auth = auth.clone();
        registry.set_immutable_tags(Arc::new(move |r| auth.immutable_tags(r.as_str())));
    }
    let state = crate::http::AppState {
        registry: registry.clone(),
        mirrors: mirrors.clone(),
        default_mirror: None,
        auth,
        tls: false,
        ui,
        workers: workers.clone(),
    };
    let mut plan: Vec<(&str, crate::http::AppState)> = config
        .server
        .listen
        .iter()
        .map(|l| (l.as_str(), state.clone()))
        .collect();
    for l in &config.server.mirror_listener {
        let m = mirrors.get(&l.mirror).with_context(|| {
            format!(
                "mirror listener {}: no mirror named {:?}",
                l.listen, l.mirror
            )
        })?;
        plan.push((
            l.listen.as_str(),
            crate::http::AppState {
                default_mirror: Some(m),
                // Every name there means the mirror, so private repositories could not be addressed.
                ui: None,
                ..state.clone()
            },
        ));
    }

    let mut tls_listeners = Vec::new();
    if let Some(tls) = &config.server.tls {
        let cert = Arc::new(crate::tls::ReloadingCert::open(&tls.cert, &tls.key)?);
        for l in &tls.listen {
            let addr: SocketAddr = l
                .parse()
                .with_context(|| format!("invalid listen address {l:?}"))?;
            let tcp = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
            let app = crate::http::router(crate::http::AppState {
                tls: true,
                ..state.clone()
            });
            tls_listeners.push((addr, crate::tls::TlsListener::new(tcp, cert.clone())?, app));
        }
    }

    let mut listeners = Vec::new();
    for (l, state) in plan {
        let addr: SocketAddr = l
            .parse()
            .with_context(|| format!("invalid listen address {l:?}"))?;
        match bind(addr) {
            Ok(listener) => listeners.push((addr, listener, crate::http::router(state), false)),
            // A host without IPv6 still serves on IPv4 with the default config.
            Err(e) if addr.is_ipv6() && config.server.listen.len() > 1 => {
                tracing::warn!(%addr, error = %e, "cannot listen on IPv6 address; continuing without it")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
        }
    }

    for l in &config.server.metrics_listen {
        let addr: SocketAddr = l
            .parse()
            .with_context(|| format!("invalid metrics listen address {l:?}"))?;
        let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push((addr, listener, crate::http::ops_router(state.clone()), true));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // One connection limit for every registry listener; the metrics listeners get their own, so probes and
    // scrapes still get through while clients hold every registry slot.
    let server = &config.server;
    let client_limits = ConnectionLimits::new(server.header_read_timeout, server.max_connections);
    let ops_limits = ConnectionLimits::new(server.header_read_timeout, server.max_connections);
    let mut servers = tokio::task::JoinSet::new();
    for (addr, listener, app, ops) in listeners {
        tracing::info!(%addr, data_dir = %config.storage.data_dir.display(), "berth listening");
        let limits = if ops { &ops_limits } else { &client_limits };
        servers.spawn(connections::serve(
            listener,
            app,
            limits.clone(),
            stop_rx.clone(),
        ));
    }
    for (addr, listener, app) in tls_listeners {
        tracing::info!(%addr, "berth listening (https)");
        servers.spawn(connections::serve(
            listener,
            app,
            client_limits.clone(),
            stop_rx.clone(),
        ));
    }

    let listener_failed = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down: finishing in-flight requests, stopping background workers");
            None
        }
        Some(res) = servers.join_next() => Some(res),
    };
    // One deadline for both: the listeners drain in-flight requests while the workers stop at their next step.
    let deadline = tokio::time::Instant::now() + config.server.shutdown_timeout;
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(res) = servers.join_next().await {
            if let Err(e) = res {
                tracing::warn!(error = %e, "listener task failed");
            }
        }
    };
    let (drained, _late) = tokio::join!(
        tokio::time::timeout_at(deadline, drain),
        workers.stop(deadline)
    );
    if drained.is_err() {
        tracing::warn!("shutdown timeout reached; exiting with requests still in flight");
    }
    // The pull-time flusher wrote what it held when it stopped; requests that finished after that, during the
    // drain, recorded pulls too.
    if let Err(e) = registry.flush_pulls().await {
        tracing::warn!(error = %e, "cannot record pull times");
    }
    if let Some(res) = listener_failed {
        res.context("listener task failed")?;
        anyhow::bail!("a listener stopped accepting connections");
    }
    Ok(())
}
