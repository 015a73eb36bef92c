//! Password hashing: argon2id for everything berth creates, bcrypt accepted for hashes imported from htpasswd.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether a stored hash is one berth can verify (argon2 PHC or bcrypt `$2a$`/`$2b$`/`$2y$`).
pub fn is_supported_hash(stored: &str) -> bool {
    is_bcrypt(stored) || PasswordHash::new(stored).is_ok()
}

fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| stored.starts_with(p))
}

/// Checks a password against a stored hash. A malformed hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    if is_bcrypt(stored) {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    match PasswordHash::new(stored) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends the same time as verifying a real password, for logins naming no user: otherwise the response time
/// would tell an attacker which user names exist.
pub fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored = DUMMY.get_or_init(|| {
        let random: [u8; 16] = rand::random();
        hash(&hex::encode(random)).unwrap_or_default()
    });
    let _ = verify(password, stored);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret", &h));
        assert!(!verify("s3cret!", &h));
    }

    #[test]
    fn bcrypt_hashes_from_htpasswd_verify() {
        let h = bcrypt::hash("pw", 4).unwrap();
        assert!(is_supported_hash(&h));
        assert!(verify("pw", &h));
        assert!(!verify("pW", &h));
    }

    #[test]
    fn garbage_hashes_never_match() {
        assert!(!is_supported_hash("{SHA}abc"));
        assert!(!verify("", "{SHA}abc"));
        assert!(!verify("", ""));
    }
}
