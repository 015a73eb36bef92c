//! Per-digest locks that make "publish bytes, then commit the row" and "delete the row, then the bytes" mutually
//! exclusive for the same digest within this process. Without them a deletion (mirror eviction) could check that
//! no row exists, a concurrent push could publish and commit, and the deletion would then remove bytes that a
//! committed row points at — the 200-with-0-bytes failure berth exists to prevent.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::oci::Digest;

#[derive(Default)]
pub struct DigestLocks(Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

/// Held while a digest's bytes and row change together; released on drop.
pub struct DigestGuard<'a> {
    locks: &'a DigestLocks,
    digest: Digest,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl DigestLocks {
    pub async fn lock(&self, digest: &Digest) -> DigestGuard<'_> {
        let m = self.0.lock().entry(digest.clone()).or_default().clone();
        let guard = m.lock_owned().await;
        DigestGuard {
            locks: self,
            digest: digest.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for DigestGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.0.lock();
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
        assert!(locks.0.lock().is_empty());
    }
}
