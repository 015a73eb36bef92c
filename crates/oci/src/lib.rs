//! The OCI vocabulary: digests, repository names and references, media types and manifest parsing.
//! Everything here is pure (no I/O) so it can be fuzzed and unit-tested in isolation.

pub mod digest;
pub mod manifest;
pub mod media;
pub mod name;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use manifest::{Descriptor, ManifestError, ParsedManifest};
pub use name::{NameError, Reference, RepoName};
