//! Synthetic blob content: cheap to generate, streamable, with a known digest.
//!
//! A blob is a seeded pseudo-random pool of at most [`POOL_SIZE`] bytes,
//! repeated until the blob's size is reached. Uploading it costs the client
//! nothing but slicing reference-counted buffers, so on a 2-core machine the
//! client does not steal CPU from the server being measured, and a 1 GiB blob
//! never has to be held in memory. Content repeats every 16 MiB; no registry
//! deduplicates below whole-blob granularity, so that does not flatter anyone.

use std::ops::Range;

use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::client::ReqBody;

/// Size of the random pool a blob's content cycles through.
pub const POOL_SIZE: usize = 16 << 20;

/// Largest body frame handed to hyper; big enough that per-frame overhead vanishes.
const FRAME_MAX: usize = 2 << 20;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A blob whose content and digest are known up front.
#[derive(Clone)]
pub struct Blob {
    pool: Bytes,
    size: u64,
    digest: String,
}

impl Blob {
    /// Generates a blob of `size` bytes from `seed`. Hashes the whole content,
    /// so for large sizes call [`Blob::generate_async`] instead.
    pub fn generate(seed: u64, size: u64) -> Blob {
        let pool_len = size.min(POOL_SIZE as u64) as usize;
        let mut pool = vec![0u8; pool_len];
        fill_random(seed, &mut pool);
        Blob::with_pool(Bytes::from(pool), size)
    }

    /// [`Blob::generate`] on the blocking pool: hashing 1 GiB takes most of a second.
    pub async fn generate_async(seed: u64, size: u64) -> Result<Blob> {
        tokio::task::spawn_blocking(move || Blob::generate(seed, size))
            .await
            .context("blob generator task failed")
    }

    /// A blob with exactly this content (configs, manifests).
    pub fn from_bytes(data: impl Into<Bytes>) -> Blob {
        let data: Bytes = data.into();
        let size = data.len() as u64;
        Blob::with_pool(data, size)
    }

    fn with_pool(pool: Bytes, size: u64) -> Blob {
        let mut blob = Blob {
            pool,
            size,
            digest: String::new(),
        };
        let mut hasher = Sha256::new();
        let mut chunks = blob.chunks(0..size);
        while let Some(chunk) = chunks.next_chunk() {
            hasher.update(&chunk);
        }
        blob.digest = format!("sha256:{}", hex(&hasher.finalize()));
        blob
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// `sha256:<hex>` digest of the full content.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The whole content as one buffer; only sensible for small blobs.
    pub fn to_bytes(&self) -> Bytes {
        if self.pool.len() as u64 == self.size {
            return self.pool.clone();
        }
        let mut out = Vec::with_capacity(self.size as usize);
        let mut chunks = self.chunks(0..self.size);
        while let Some(chunk) = chunks.next_chunk() {
            out.extend_from_slice(&chunk);
        }
        Bytes::from(out)
    }

    /// A request body streaming the byte range `range` of the blob.
    pub fn body(&self, range: Range<u64>) -> ReqBody {
        ReqBody::Pool(self.chunks(range))
    }

    fn chunks(&self, range: Range<u64>) -> PoolChunks {
        PoolChunks {
            pool: self.pool.clone(),
            pos: range.start,
            end: range.end.min(self.size),
        }
    }
}

/// Iterator-like cursor over a byte range of a pooled blob, yielding
/// zero-copy slices of the pool.
pub struct PoolChunks {
    pool: Bytes,
    pos: u64,
    end: u64,
}

impl PoolChunks {
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.pos >= self.end || self.pool.is_empty() {
            return None;
        }
        let off = (self.pos % self.pool.len() as u64) as usize;
        let n = (self.pool.len() - off)
            .min(FRAME_MAX)
            .min((self.end - self.pos) as usize);
        self.pos += n as u64;
        Some(self.pool.slice(off..off + n))
    }

    pub fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }
}

/// Fills `buf` with xorshift64 output: several GB/s, and good enough that
/// nothing downstream (compression, dedup) could take a shortcut.
pub fn fill_random(seed: u64, buf: &mut [u8]) {
    // splitmix64 step so that neighbouring seeds give unrelated streams.
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    s = (s ^ (s >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    s = (s ^ (s >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    s ^= s >> 31;
    if s == 0 {
        s = 1;
    }
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        w.copy_from_slice(&s.to_le_bytes());
    }
    let tail = words.into_remainder();
    s ^= s << 13;
    let n = tail.len();
    tail.copy_from_slice(&s.to_le_bytes()[..n]);
}

/// Lower-case hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// `sha256:<hex>` of a byte slice.
#[cfg(test)]
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Human-readable size for workload names ("100 MiB").
pub fn size_label(size: u64) -> String {
    if size >= GIB && size.is_multiple_of(GIB) {
        format!("{} GiB", size / GIB)
    } else if size >= MIB && size.is_multiple_of(MIB) {
        format!("{} MiB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{} KiB", size / KIB)
    } else {
        format!("{size} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_materialised_content() {
        for size in [0, 1, 7, 4096, POOL_SIZE as u64 + 12345] {
            let blob = Blob::generate(42, size);
            let bytes = blob.to_bytes();
            assert_eq!(bytes.len() as u64, size);
            assert_eq!(blob.digest(), sha256_digest(&bytes));
        }
    }

    #[test]
    fn ranges_concatenate_to_whole() {
        let blob = Blob::generate(7, POOL_SIZE as u64 * 2 + 100);
        let whole = blob.to_bytes();
        let cut = POOL_SIZE as u64 + 3;
        let mut joined = Vec::new();
        for range in [0..cut, cut..blob.size()] {
            let mut c = blob.chunks(range);
            while let Some(b) = c.next_chunk() {
                joined.extend_from_slice(&b);
            }
        }
        assert_eq!(joined, whole);
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(
            Blob::generate(1, 1024).digest(),
            Blob::generate(2, 1024).digest()
        );
    }
}
