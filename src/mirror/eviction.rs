//! Keeping a mirror's cache within its budget (design invariant 6): least recently used blobs first, metadata
//! and bytes removed together, never a blob a private repository links. An evicted blob is simply fetched again.
//!
//! Rows go first, in one metadata transaction that also writes the blob's tombstone. The bytes are left to the
//! `tombstones` worker (`maint::scheduler`), which removes them once the tombstone is `maint::BYTES_DELAY` old, so
//! a request that read the row just before can still open them, and only after re-checking, under the digest lock
//! every publisher holds, that no row came back (a re-fetch or a push of the same digest): bytes a committed row
//! points at are never removed. The tombstone is in the database, so neither a crash nor a shutdown loses the
//! deletion.

use std::sync::Arc;
use std::time::Duration;

use super::{Mirror, Mirrors};
use crate::meta::Eviction;
use crate::metrics::{MirrorName, metrics};
use crate::registry::RegistryError;
use crate::worker::{Ran, Schedule, Workers, job_fn};

/// How often each mirror with a budget is checked even without new downloads.
const CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Candidates read per round.
const BATCH: usize = 64;

/// What one eviction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvictionPass {
    pub size_before: u64,
    pub size_after: u64,
    pub evicted: u64,
}

impl Mirrors {
    /// Starts one worker per mirror (`eviction:<mirror>`): a pass at start, after each completed download and
    /// every `CHECK_INTERVAL`. A mirror without a budget evicts nothing, but its pass still records hits and
    /// measures the cache for `berth_mirror_cache_bytes`.
    pub fn start_eviction(self: &Arc<Self>, workers: &Workers) {
        let mut seen = std::collections::HashSet::new();
        for m in self.by_name.values() {
            if !seen.insert(m.name.clone()) {
                continue;
            }
            let schedule = Schedule::every(CHECK_INTERVAL)
                .starting_now()
                .woken_by(m.evict_wake.clone());
            let (mirrors, m) = (self.clone(), m.clone());
            workers.spawn(
                format!("eviction:{}", m.name),
                schedule,
                job_fn(move || {
                    let (mirrors, m) = (mirrors.clone(), m.clone());
                    async move {
                        let pass = mirrors.evict(&m).await?;
                        Ok(match pass.evicted {
                            0 => Ran::done(),
                            n => Ran::noted(format!(
                                "evicted {} ({} to {})",
                                crate::human::count(n, "blob"),
                                crate::human::size(pass.size_before),
                                crate::human::size(pass.size_after)
                            )),
                        })
                    }
                }),
            );
        }
    }

    /// Records recent hits, then evicts least recently used blobs until the cache fits its budget.
    pub async fn evict(&self, m: &Mirror) -> Result<EvictionPass, RegistryError> {
        let meta = self.registry.metadata_store();
        let touched: Vec<_> = m.touched.lock().drain().collect();
        meta.touch_blobs(touched).await?;
        let label = MirrorName {
            mirror: m.name.clone(),
        };
        let mut size = meta.mirror_cache_size(&m.name).await?;
        let mut pass = EvictionPass {
            size_before: size,
            ..Default::default()
        };
        if let Some(budget) = m.budget {
            'rounds: while size > budget {
                let candidates = meta.mirror_lru(&m.name, BATCH).await?;
                if candidates.is_empty() {
                    break;
                }
                let mut progressed = false;
                for d in candidates {
                    if size <= budget {
                        break 'rounds;
                    }
                    if let Eviction::Unlinked { size: freed, .. } =
                        meta.evict_mirror_blob(&m.name, &d).await?
                    {
                        progressed = true;
                        size = size.saturating_sub(freed);
                        pass.evicted += 1;
                        metrics().mirror_evictions.get_or_create(&label).inc();
                        tracing::info!(mirror = %m.name, digest = %d, size = freed, "evicted cached blob");
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
        pass.size_after = size;
        metrics()
            .mirror_cache_bytes
            .get_or_create(&label)
            .set(size as i64);
        Ok(pass)
    }
}
