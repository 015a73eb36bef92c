//! Access tokens of the Docker token flow: HS256 JWTs signed with a key that lives in the data directory, or in
//! the file `auth.signing_key_file` names (one file every replica reads, so they accept each other's tokens).
//!
//! berth is both the issuer and the only verifier of these tokens, so a symmetric key is enough and keeps the key
//! file a single random secret. The key file is re-read whenever it changes on disk, so `berth auth rotate-key`
//! takes effect in a running server at once: every token signed with the old key is refused from then on, and
//! clients fetch a new one through the usual 401 challenge.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Issuer claim of every token berth signs.
pub const ISSUER: &str = "berth";
/// The key file in the data directory when `auth.signing_key_file` is unset.
pub const KEY_FILE: &str = "jwt-signing.key";
/// Clock skew tolerated on `exp`/`nbf`.
const LEEWAY_SECS: u64 = 5;

/// One `access` entry (Docker token spec): a resource and the actions granted on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user name, empty for an anonymous caller.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub access: Vec<AccessEntry>,
    /// The personal access token the caller signed in with, re-checked on every request so revoking it also
    /// ends the access tokens obtained with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pat: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key {0} is malformed (expected 64 hex digits); rotate it")]
    Malformed(PathBuf),
    #[error(
        "signing key file {0} does not exist; write one with `berth auth rotate-key` and give every replica the same file"
    )]
    Missing(PathBuf),
}

/// What [`SigningKey::open`] does when the key file does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Create a fresh key: the data directory's own key, on first start.
    Create,
    /// Refuse to start: a configured shared key that is missing (an unmounted secret, a typo) must not be replaced
    /// by a key only this replica knows, which would make the replicas refuse each other's tokens.
    Fail,
}

struct Loaded {
    stamp: Option<Stamp>,
    secret: Vec<u8>,
}

/// The signing key, reloaded when its file changes.
pub struct SigningKey {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a fresh random key to `path` atomically (a temporary file beside it, then a rename, so readers and
/// other replicas see the old key or the new one, never a partial file), readable by the owner only.
pub fn write_new_key(path: &Path) -> Result<(), KeyError> {
    let secret: [u8; 32] = rand::random();
    write_key(path, &secret)
}

/// Gives `to_dir` the signing key of `from_dir` (`migrate-storage`), so access tokens issued before a move stay
/// valid after it. Returns false when `from_dir` has no key (its server never started) or `to_dir` has the same.
pub fn copy_key(from_dir: &Path, to_dir: &Path) -> Result<bool, KeyError> {
    let from = from_dir.join(KEY_FILE);
    if !from.exists() {
        return Ok(false);
    }
    let secret = read_key(&from)?;
    let to = to_dir.join(KEY_FILE);
    if to.exists() && read_key(&to).is_ok_and(|existing| existing == secret) {
        return Ok(false);
    }
    write_key(&to, &secret)?;
    Ok(true)
}

fn write_key(path: &Path, secret: &[u8]) -> Result<(), KeyError> {
    let name = path.file_name().ok_or_else(|| KeyError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(hex::encode(secret).as_bytes())
            .map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Modification time, size and inode: a rotation renames a new file into place, so the inode alone changes even
/// on file systems with coarse timestamps.
type Stamp = (SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let secret = hex::decode(text.trim()).map_err(|_| KeyError::Malformed(path.to_owned()))?;
    if secret.len() < 32 {
        return Err(KeyError::Malformed(path.to_owned()));
    }
    Ok(secret)
}

impl SigningKey {
    /// Opens the key at `path`; when the file does not exist, creates one or fails as `missing` says.
    pub fn open(path: &Path, missing: IfMissing) -> Result<SigningKey, KeyError> {
        let path = path.to_owned();
        if !path.exists() {
            if missing == IfMissing::Fail {
                return Err(KeyError::Missing(path));
            }
            write_new_key(&path)?;
            tracing::info!(path = %path.display(), "created a new token signing key");
        }
        let secret = read_key(&path)?;
        Ok(SigningKey {
            loaded: Mutex::new(Loaded {
                stamp: stamp(&path),
                secret,
            }),
            path,
        })
    }

    /// The current secret; re-read when the file's modification time or size changed (a rotation).
    fn secret(&self) -> Vec<u8> {
        let now = stamp(&self.path);
        let mut l = self.loaded.lock();
        if now.is_some() && now != l.stamp {
            match read_key(&self.path) {
                Ok(s) => {
                    l.secret = s;
                    l.stamp = now;
                    tracing::info!("token signing key changed on disk; reloaded");
                }
                Err(e) => tracing::warn!(error = %e, "cannot reload the token signing key"),
            }
        }
        l.secret.clone()
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.secret()),
        )
        .map_err(|e| e.to_string())
    }

    /// Verifies signature, algorithm, issuer, audience and lifetime. Anything else is refused.
    pub fn verify(&self, token: &str, audience: &str) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&[audience]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&self.secret()), &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &str, exp: i64) -> Claims {
        let now = crate::meta::now();
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: aud.into(),
            exp,
            nbf: now - 1,
            iat: now,
            jti: "x".into(),
            access: vec![],
            pat: None,
        }
    }

    #[test]
    fn signs_and_verifies_and_refuses_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let k = SigningKey::open(&path, IfMissing::Create).unwrap();
        let now = crate::meta::now();
        let t = k.sign(&claims("berth", now + 60)).unwrap();
        assert_eq!(k.verify(&t, "berth").unwrap().sub, "alice");
        assert!(k.verify(&t, "other").is_err(), "wrong audience");
        let expired = k.sign(&claims("berth", now - 600)).unwrap();
        assert!(k.verify(&expired, "berth").is_err(), "expired");
        assert!(k.verify("garbage", "berth").is_err());
        assert!(k.verify("a.b.c", "berth").is_err());
        // alg=none with the same claims
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(k.verify(&none, "berth").is_err(), "alg none");
        // a rotated key invalidates outstanding tokens
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_new_key(&path).unwrap();
        assert!(k.verify(&t, "berth").is_err(), "old key");
    }

    #[test]
    fn a_configured_key_file_is_never_created_and_is_shared_by_every_opener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("signing.key");
        assert!(matches!(
            SigningKey::open(&path, IfMissing::Fail),
            Err(KeyError::Missing(_))
        ));
        assert!(!path.exists(), "a missing shared key is not replaced");
        write_new_key(&path).unwrap();
        // Two openers of one file (two replicas): a token one signs, the other accepts.
        let (a, b) = (
            SigningKey::open(&path, IfMissing::Fail).unwrap(),
            SigningKey::open(&path, IfMissing::Fail).unwrap(),
        );
        let t = a.sign(&claims("berth", crate::meta::now() + 60)).unwrap();
        assert_eq!(b.verify(&t, "berth").unwrap().sub, "alice");
        let own = SigningKey::open(&dir.path().join(KEY_FILE), IfMissing::Create).unwrap();
        assert!(own.verify(&t, "berth").is_err(), "another key refuses it");
    }
}
