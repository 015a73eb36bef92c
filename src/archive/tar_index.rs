//! Random access to the files of a tar archive without extracting it: one pass over the headers records where each
//! file's bytes are, then any file can be streamed from the archive on demand, in whatever order the import needs.
//!
//! Nothing is ever written to disk under an entry's name, so a hostile name cannot escape anywhere; still, names
//! that are absolute or climb with `..` are refused outright (no legitimate image archive has them). Symbolic and
//! hard links are resolved *inside* the archive — older `docker save` links duplicate layers to one `layer.tar` —
//! and a link leaving the archive, dangling, or looping is an error.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ArchiveError, MAX_JSON_SIZE};
use crate::store::ByteStream;

/// Where a file's bytes are in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub size: u64,
}

/// The files of an archive, by normalised name (`blobs/sha256/…`, no leading `./`).
pub struct TarIndex {
    path: PathBuf,
    files: HashMap<String, Span>,
    /// Keeps a decompressed copy of a gzip-compressed archive alive.
    _decompressed: Option<tempfile::TempPath>,
}

/// How far link chains are followed before they are called a loop.
const MAX_LINK_HOPS: usize = 16;

impl TarIndex {
    /// Reads every header of the archive at `path` (decompressing it first into a temporary file when it is gzip,
    /// as `docker save | gzip` produces). Blocking: call from `spawn_blocking`.
    pub fn scan(path: &Path) -> Result<TarIndex, ArchiveError> {
        let mut file = std::fs::File::open(path)?;
        let mut magic = [0u8; 2];
        let n = read_up_to(&mut file, &mut magic)?;
        file.seek(SeekFrom::Start(0))?;
        let (file, path, decompressed) = if n == 2 && magic == [0x1f, 0x8b] {
            let tmp = tempfile::NamedTempFile::new()?;
            let (mut out, tmp_path) = tmp.into_parts();
            let mut gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
            std::io::copy(&mut gz, &mut out).map_err(|e| {
                ArchiveError::Invalid(format!("cannot decompress gzip archive: {e}"))
            })?;
            out.sync_all()?;
            let f = std::fs::File::open(&tmp_path)?;
            (f, tmp_path.to_path_buf(), Some(tmp_path))
        } else {
            (file, path.to_path_buf(), None)
        };
        let file_len = file.metadata()?.len();
        let mut files = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| ArchiveError::Invalid(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| ArchiveError::Invalid(format!("not a readable tar archive: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
            let display = raw.display().to_string();
            let Some(name) = normalise(&raw) else {
                return Err(ArchiveError::UnsafePath(display));
            };
            let kind = entry.header().entry_type();
            if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            }
            if name.is_empty() {
                return Err(ArchiveError::UnsupportedEntry(display));
            }
            if kind.is_file() || kind.is_contiguous() {
                let span = Span {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                if span.offset.saturating_add(span.size) > file_len {
                    return Err(ArchiveError::Truncated(name));
                }
                if files.insert(name.clone(), span).is_some() || links.contains_key(&name) {
                    return Err(ArchiveError::Duplicate(name));
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| ArchiveError::Invalid(e.to_string()))?
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                // A symlink is relative to its own directory; a hard link names a path from the archive's root.
                let base = if kind.is_symlink() {
                    name.rsplit_once('/').map_or("", |(dir, _)| dir)
                } else {
                    ""
                };
                let resolved = join(base, &target).ok_or_else(|| ArchiveError::BadLink {
                    entry: name.clone(),
                    target: target.clone(),
                })?;
                if files.contains_key(&name) || links.insert(name.clone(), resolved).is_some() {
                    return Err(ArchiveError::Duplicate(name));
                }
            } else {
                return Err(ArchiveError::UnsupportedEntry(name));
            }
        }
        for (name, first) in &links {
            let mut target = first.clone();
            let mut hops = 0;
            let span = loop {
                if let Some(span) = files.get(&target) {
                    break *span;
                }
                match links.get(&target) {
                    Some(next) if hops < MAX_LINK_HOPS => {
                        target = next.clone();
                        hops += 1;
                    }
                    _ => {
                        return Err(ArchiveError::BadLink {
                            entry: name.clone(),
                            target: first.clone(),
                        });
                    }
                }
            };
            files.insert(name.clone(), span);
        }
        Ok(TarIndex {
            path,
            files,
            _decompressed: decompressed,
        })
    }

    pub fn get(&self, name: &str) -> Option<Span> {
        self.files.get(name).copied()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// Streams a file's bytes from the archive.
    pub async fn open(&self, name: &str) -> Result<(u64, ByteStream), ArchiveError> {
        let span = self
            .get(name)
            .ok_or_else(|| ArchiveError::Missing(name.to_owned()))?;
        let mut f = tokio::fs::File::open(&self.path).await?;
        f.seek(SeekFrom::Start(span.offset)).await?;
        let reader = f.take(span.size);
        Ok((
            span.size,
            Box::pin(tokio_util::io::ReaderStream::with_capacity(
                reader,
                256 << 10,
            )),
        ))
    }

    /// A blocking reader of a file's bytes (for hashing passes run in `spawn_blocking`).
    pub fn open_blocking(
        &self,
        name: &str,
    ) -> Result<(u64, impl std::io::BufRead + use<>), ArchiveError> {
        let span = self
            .get(name)
            .ok_or_else(|| ArchiveError::Missing(name.to_owned()))?;
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(span.offset))?;
        Ok((
            span.size,
            std::io::BufReader::with_capacity(256 << 10, f.take(span.size)),
        ))
    }

    /// Reads a small file (JSON) whole, refusing one over `limit` bytes.
    pub async fn read(&self, name: &str, limit: u64) -> Result<Bytes, ArchiveError> {
        let span = self
            .get(name)
            .ok_or_else(|| ArchiveError::Missing(name.to_owned()))?;
        if span.size > limit.min(MAX_JSON_SIZE) {
            return Err(ArchiveError::TooLarge {
                name: name.to_owned(),
                size: span.size,
                limit: limit.min(MAX_JSON_SIZE),
            });
        }
        let mut f = tokio::fs::File::open(&self.path).await?;
        f.seek(SeekFrom::Start(span.offset)).await?;
        let mut buf = Vec::with_capacity(span.size as usize);
        f.take(span.size).read_to_end(&mut buf).await?;
        if buf.len() as u64 != span.size {
            return Err(ArchiveError::Truncated(name.to_owned()));
        }
        Ok(buf.into())
    }
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `a/./b` → `a/b`; `None` for absolute paths and any `..`.
fn normalise(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Resolves a link target against `base` (a directory inside the archive); `None` when it is absolute or climbs
/// out of the archive.
fn join(base: &str, target: &str) -> Option<String> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_traversal_refused() {
        assert_eq!(
            normalise(Path::new("./blobs/sha256/ab")).unwrap(),
            "blobs/sha256/ab"
        );
        assert!(normalise(Path::new("../x")).is_none());
        assert!(normalise(Path::new("a/../../x")).is_none());
        assert!(normalise(Path::new("/etc/passwd")).is_none());
    }

    /// Writes a tar of (name, kind, data-or-link-target) entries to a temporary file.
    fn tar_file(entries: &[(&str, tar::EntryType, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_size(0);
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        b.finish().unwrap();
        f
    }

    #[tokio::test]
    async fn links_resolve_to_files_inside_the_archive() {
        use tar::EntryType::{Link, Regular, Symlink};
        let f = tar_file(&[
            ("a/layer.tar", Regular, b"layer bytes"),
            ("b/layer.tar", Symlink, b"../a/layer.tar"),
            ("c/layer.tar", Symlink, b"../b/layer.tar"),
            ("d/layer.tar", Link, b"a/layer.tar"),
        ]);
        let idx = TarIndex::scan(f.path()).unwrap();
        for name in ["a/layer.tar", "b/layer.tar", "c/layer.tar", "d/layer.tar"] {
            assert_eq!(
                &idx.read(name, 100).await.unwrap()[..],
                b"layer bytes",
                "{name}"
            );
        }
        assert!(matches!(
            idx.read("a/layer.tar", 5).await,
            Err(ArchiveError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_links_and_duplicates_are_refused() {
        use tar::EntryType::{Fifo, Regular, Symlink};
        for (entries, what) in [
            (
                vec![("x", Symlink, &b"y"[..]), ("y", Symlink, &b"x"[..])],
                "loop",
            ),
            (vec![("x", Symlink, &b"nowhere"[..])], "dangling"),
            (vec![("x", Symlink, &b"/etc/passwd"[..])], "absolute"),
            (vec![("d/x", Symlink, &b"../../etc/passwd"[..])], "escaping"),
        ] {
            let f = tar_file(&entries);
            assert!(
                matches!(TarIndex::scan(f.path()), Err(ArchiveError::BadLink { .. })),
                "{what}"
            );
        }
        let f = tar_file(&[("x", Regular, b"1"), ("./x", Regular, b"2")]);
        assert!(matches!(
            TarIndex::scan(f.path()),
            Err(ArchiveError::Duplicate(_))
        ));
        let f = tar_file(&[("p", Fifo, b"")]);
        assert!(matches!(
            TarIndex::scan(f.path()),
            Err(ArchiveError::UnsupportedEntry(_))
        ));
    }

    #[test]
    fn links_stay_inside() {
        assert_eq!(join("abc", "../def/layer.tar").unwrap(), "def/layer.tar");
        assert_eq!(join("", "blobs/sha256/x").unwrap(), "blobs/sha256/x");
        assert!(join("abc", "../../etc/passwd").is_none());
        assert!(join("abc", "/etc/passwd").is_none());
    }
}
