//! Access tokens of the Docker token flow: HS256 JWTs signed with a key that lives in the data directory.
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
const KEY_FILE: &str = "jwt-signing.key";
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

/// Writes a fresh random key atomically (rename), readable by the owner only.
pub fn write_new_key(data_dir: &Path) -> Result<PathBuf, KeyError> {
    let secret: [u8; 32] = rand::random();
    write_key(data_dir, &secret)
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
    write_key(to_dir, &secret)?;
    Ok(true)
}

fn write_key(data_dir: &Path, secret: &[u8]) -> Result<PathBuf, KeyError> {
    let path = data_dir.join(KEY_FILE);
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
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
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
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
    /// Opens the key in `data_dir`, creating one on first start.
    pub fn open(data_dir: &Path) -> Result<SigningKey, KeyError> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            write_new_key(data_dir)?;
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
        let k = SigningKey::open(dir.path()).unwrap();
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
        write_new_key(dir.path()).unwrap();
        assert!(k.verify(&t, "berth").is_err(), "old key");
    }
}
