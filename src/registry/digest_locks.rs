//! Per-digest locks that make "publish bytes, then commit the row" and "delete the row, then the bytes" mutually
//! exclusive for the same digest. Without them a deletion (garbage collection, mirror eviction) could check that no
//! row exists, a concurrent push could publish and commit, and the deletion would then remove bytes that a committed
//! row points at — the 200-with-0-bytes failure berth exists to prevent.
//!
//! Two layers: an async mutex per digest inside this process, then (when the registry has a lock file) a Linux
//! open-file-description lock on one byte of that file chosen by the digest, which excludes other processes on the
//! same data directory — `berth gc` from the command line while the server runs is exactly as safe as the server's
//! own scheduled run. OFD locks belong to the open file, not the process, and vanish when the holder dies, so a
//! `kill -9` never leaves a digest locked.
//!
//! With a metadata store that several replicas share (PostgreSQL), a third layer: the store's own lock
//! (`MetadataStore::lock_digest`, a session-level advisory lock), which excludes the other replicas, wherever they
//! run. It too dies with its holder's connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::meta::{MetadataStore, StoreLock};
use crate::oci::Digest;

/// Bytes of the lock file digests are spread over; two digests share a stripe with probability 2^-20.
const STRIPES: u64 = 1 << 20;

#[derive(Default)]
pub struct DigestLocks {
    held: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    file: Option<PathBuf>,
    store: Option<Arc<dyn MetadataStore>>,
}

/// Held while a digest's bytes and row change together; released on drop.
pub struct DigestGuard<'a> {
    locks: &'a DigestLocks,
    digest: Digest,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The open lock file whose stripe this guard holds; closing it releases the lock.
    _stripe: Option<std::fs::File>,
    /// The metadata store's lock, excluding other replicas.
    _store: Option<StoreLock>,
}

impl DigestLocks {
    /// Locks that also exclude other processes using the same `file`.
    pub fn shared_with_processes(file: PathBuf) -> DigestLocks {
        DigestLocks::default().with_lock_file(file)
    }

    /// These locks, also excluding other processes using the same `file`.
    pub fn with_lock_file(self, file: PathBuf) -> DigestLocks {
        DigestLocks {
            file: Some(file),
            ..self
        }
    }

    /// These locks, also excluding other replicas through the metadata store's locks.
    pub fn with_store(self, store: Arc<dyn MetadataStore>) -> DigestLocks {
        DigestLocks {
            store: Some(store),
            ..self
        }
    }

    pub async fn lock(&self, digest: &Digest) -> DigestGuard<'_> {
        let m = self.held.lock().entry(digest.clone()).or_default().clone();
        let guard = m.lock_owned().await;
        let stripe = match &self.file {
            Some(path) => lock_stripe(path, digest).await,
            None => None,
        };
        let store = match &self.store {
            // As with the lock file, a failure keeps the local layers and is logged; the store being unreachable
            // also fails the metadata writes this lock protects, so nothing is committed unprotected for long.
            Some(store) => store.lock_digest(digest).await.unwrap_or_else(|e| {
                tracing::error!(%digest, error = %e, "cannot take the cross-replica digest lock");
                None
            }),
            None => None,
        };
        DigestGuard {
            locks: self,
            digest: digest.clone(),
            guard: Some(guard),
            _stripe: stripe,
            _store: store,
        }
    }
}

/// Takes the digest's stripe of the lock file, polling while another process holds it (holders keep it for a
/// rename or an unlink, so waits are short). On an I/O error the in-process lock alone is kept, and logged.
async fn lock_stripe(path: &std::path::Path, digest: &Digest) -> Option<std::fs::File> {
    let stripe = u64::from_str_radix(&digest.hex()[..16], 16).unwrap_or(0) % STRIPES;
    let mut wait = Duration::from_millis(1);
    loop {
        match try_lock_stripe(path, stripe) {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot take the cross-process digest lock");
                return None;
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn try_lock_stripe(path: &std::path::Path, stripe: u64) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = stripe as libc::off_t;
    fl.l_len = 1;
    // SAFETY: `f` is an open descriptor and `fl` a valid, initialised flock for the duration of the call.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(None),
        _ => Err(e),
    }
}

/// Elsewhere only one process may use a data directory at a time; the in-process lock is the whole story.
#[cfg(not(target_os = "linux"))]
fn try_lock_stripe(
    _path: &std::path::Path,
    _stripe: u64,
) -> std::io::Result<Option<std::fs::File>> {
    Err(std::io::Error::other(
        "cross-process digest locks need Linux",
    ))
}

impl Drop for DigestGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.held.lock();
        // Forget the entry once nobody holds or waits for it, so the map stays as small as the work in flight.
        if map
            .get(&self.digest)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_digest_is_exclusive_and_entries_are_forgotten() {
        let locks = Arc::new(DigestLocks::default());
        let d = Digest::of(crate::oci::Algorithm::Sha256, b"x");
        let g = locks.lock(&d).await;
        let l2 = locks.clone();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(&d2).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second holder must wait");
        drop(g);
        waiter.await.unwrap();
        assert!(locks.held.lock().is_empty());
    }

    /// Two lock sets on the same file stand for two processes: the stripe excludes across them.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn lock_file_excludes_another_lock_set() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(DigestLocks::shared_with_processes(dir.path().join("locks")));
        let b = Arc::new(DigestLocks::shared_with_processes(dir.path().join("locks")));
        let d = Digest::of(crate::oci::Algorithm::Sha256, b"y");
        let g = a.lock(&d).await;
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            let _g = b.lock(&d2).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the other lock set must wait");
        drop(g);
        waiter.await.unwrap();
    }
}
