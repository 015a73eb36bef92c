//! Opening what a config names: the data-directory lock, the metadata and blob stores, the registry with its
//! maintenance, and access control. `berth serve` and every command that works on a data directory (gc, scrub,
//! user, token, import, export, migrate-storage) open them here the same way, so they share the cross-process digest
//! locks (the data directory's lock file on one host; PostgreSQL advisory locks across replicas).

use std::sync::Arc;

use anyhow::Context;

use crate::config::{BlobBackend, Config, MetadataBackend};
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
