//! Images as files: `berth export` writes one tar that is both an OCI image layout and a `docker load` archive;
//! `berth import` reads OCI layout tars and `docker save` tars; `berth import-distribution` migrates a CNCF
//! distribution (`registry:2`) filesystem root. See `docs/export-import.md`.
//!
//! Every command talks to a registry through [`target::Source`] / [`target::Destination`]: either a running berth
//! over HTTP, or the data directory opened directly (server stopped, guarded by the data-dir lock). Either way blobs
//! go through the registry's verified publish path and manifests through its reference checks, so an interrupted or
//! refused import never leaves anything half visible (design invariants 1 and 2).

pub mod cli;
pub mod distribution;
pub mod docker;
pub mod export;
pub mod import;
pub mod layout;
pub mod progress;
pub mod tar_index;
pub mod target;

use crate::oci::{Digest, DigestError, NameError, Reference, RepoName};

pub use target::TargetError;

/// Largest `index.json`, `manifest.json` or manifest read from an archive into memory. Real ones are kilobytes;
/// the limit keeps a hostile archive from exhausting memory.
pub const MAX_JSON_SIZE: u64 = 16 << 20;

/// Everything that can be wrong with an archive (as opposed to the registry it is read from or written to).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("archive entry {0:?} has an unsafe path (absolute or with `..`)")]
    UnsafePath(String),
    #[error(
        "archive entry {entry:?} is a link to {target:?}, which is outside the archive or not a file in it"
    )]
    BadLink { entry: String, target: String },
    #[error(
        "archive entry {0:?} is of an unsupported type (only files, directories and in-archive links)"
    )]
    UnsupportedEntry(String),
    #[error("archive entry {0:?} appears twice")]
    Duplicate(String),
    #[error("archive is truncated: entry {0:?} extends past the end of the file")]
    Truncated(String),
    #[error("archive has no entry {0:?}")]
    Missing(String),
    #[error("{name} is {size} bytes, over the {limit}-byte limit")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("{name}: {message}")]
    Json { name: String, message: String },
    #[error("{name}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{name}: {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<DigestError> for ArchiveError {
    fn from(e: DigestError) -> Self {
        ArchiveError::Invalid(e.to_string())
    }
}

impl From<NameError> for ArchiveError {
    fn from(e: NameError) -> Self {
        ArchiveError::Invalid(e.to_string())
    }
}

/// An image named on the command line or in an archive: a repository and a tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repo: RepoName,
    pub reference: Reference,
}

impl ImageRef {
    /// `REPO[:TAG]` or `REPO@DIGEST` (tag `latest` when neither is given), `REPO` being a repository name of the
    /// registry as it is (a mirror's cache is `docker.io/library/alpine`).
    pub fn parse(s: &str) -> Result<ImageRef, NameError> {
        Self::parse_with(s, false)
    }

    /// [`ImageRef::parse`] for a name found in an archive (`docker.io/library/alpine:3.20`,
    /// `localhost:5000/app:v1`): a leading registry host — a first component with a `.` or `:`, or `localhost` — is
    /// dropped, since the image is being imported into this registry, not the one it came from.
    pub fn parse_foreign(s: &str) -> Result<ImageRef, NameError> {
        Self::parse_with(s, true)
    }

    fn parse_with(s: &str, drop_host: bool) -> Result<ImageRef, NameError> {
        let (name, reference) = if let Some((name, digest)) = s.split_once('@') {
            (name, Reference::Digest(digest.parse()?))
        } else {
            match s.rsplit_once(':') {
                // A colon after the last slash separates the tag; one before it belongs to a host:port.
                Some((name, tag)) if !tag.contains('/') => (name, Reference::Tag(tag.parse()?)),
                _ => (s, Reference::Tag("latest".parse()?)),
            }
        };
        let name = if drop_host { strip_host(name) } else { name };
        Ok(ImageRef {
            repo: name.parse()?,
            reference,
        })
    }

    /// `REPO:TAG` or `REPO@DIGEST`.
    pub fn display(&self) -> String {
        match &self.reference {
            Reference::Tag(t) => format!("{}:{t}", self.repo),
            Reference::Digest(d) => format!("{}@{d}", self.repo),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// Drops a registry host from a repository name (`docker.io/library/alpine` → `library/alpine`).
fn strip_host(name: &str) -> &str {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => name,
    }
}

/// An `os/arch[/variant]` platform, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).to_owned(),
                    architecture: (*arch).to_owned(),
                    variant: Some((*variant).to_owned()),
                })
            }
            _ => Err(format!("platform {s:?} is not OS/ARCH[/VARIANT]")),
        }
    }

    /// The machine this runs on, with Go's architecture names as images use them.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry's `platform` object is this platform (a variant given here must match; none given
    /// matches any).
    pub fn matches(&self, platform: &serde_json::Value) -> bool {
        let field = |k: &str| platform.get(k).and_then(|v| v.as_str());
        field("os") == Some(self.os.as_str())
            && field("architecture") == Some(self.architecture.as_str())
            && self
                .variant
                .as_deref()
                .is_none_or(|v| field("variant") == Some(v))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_references() {
        let r = ImageRef::parse("team/app:v1").unwrap();
        assert_eq!(r.display(), "team/app:v1");
        assert_eq!(
            ImageRef::parse("team/app").unwrap().display(),
            "team/app:latest"
        );
        assert_eq!(
            ImageRef::parse("docker.io/library/alpine:3.20")
                .unwrap()
                .display(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(
            ImageRef::parse_foreign("docker.io/library/alpine:3.20")
                .unwrap()
                .display(),
            "library/alpine:3.20"
        );
        assert_eq!(
            ImageRef::parse_foreign("localhost:5000/app")
                .unwrap()
                .display(),
            "app:latest"
        );
        assert!(ImageRef::parse("localhost:5000/app").is_err());
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            ImageRef::parse(&format!("app@{d}")).unwrap().display(),
            format!("app@{d}")
        );
        assert!(ImageRef::parse("Bad/Name:v1").is_err());
        assert!(ImageRef::parse("app:bad/tag/..").is_err());
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert!(
            p.matches(&serde_json::json!({"os":"linux","architecture":"arm64","variant":"v8"}))
        );
        assert!(!p.matches(&serde_json::json!({"os":"linux","architecture":"arm64"})));
        let p = Platform::parse("linux/amd64").unwrap();
        assert!(p.matches(&serde_json::json!({"os":"linux","architecture":"amd64"})));
        assert!(Platform::parse("linux").is_err());
    }
}
