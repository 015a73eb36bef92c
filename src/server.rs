//! `berth serve`: the HTTP listeners over the stores `stores` opens, background housekeeping, and a graceful
//! shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::connections::{self, ConnectionLimits};
use crate::stores::{Opened, lock_data_dir, open, open_auth};

/// How often expired upload sessions are looked for.
const UPLOAD_EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

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
        tracing::info!(mirror = %m.name, upstream = %m.upstream, aliases = %m.aliases.join(", "), "mirroring");
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
    // The last line of a clean stop: what a log reader (or an operator's `journalctl`) checks for.
    tracing::info!("berth stopped");
    Ok(())
}
