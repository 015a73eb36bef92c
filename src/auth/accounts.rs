//! Managing users and personal access tokens: the operations behind `berth user …`, `berth token …` and the admin
//! API, with their audit lines.

use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;

use super::password;
use super::policy::Scope;
use super::store::{AuthStore, TokenRecord, UserRecord};
use crate::meta::MetaError;

/// Prefix of every personal access token, so secret scanners (and berth itself) recognise one.
pub const TOKEN_PREFIX: &str = "berth_pat_";

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid user name {0:?}: use 1-64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("no token {0:?}")]
    NoSuchToken(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Internal(String),
}

/// A freshly created token: the secret (shown once) and what was stored.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub secret: String,
    pub record: TokenRecord,
}

pub fn looks_like_token(secret: &str) -> bool {
    secret.starts_with(TOKEN_PREFIX)
}

/// `berth_pat_<id>_<secret>` → (id, secret part).
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse())
        .collect()
}

pub struct Accounts {
    store: Arc<dyn AuthStore>,
}

async fn hash_blocking(password: String) -> Result<String, AccountError> {
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?
        .map_err(AccountError::Internal)
}

impl Accounts {
    pub fn new(store: Arc<dyn AuthStore>) -> Accounts {
        Accounts { store }
    }

    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        admin: bool,
    ) -> Result<UserRecord, AccountError> {
        if !super::valid_user_name(name) {
            return Err(AccountError::InvalidName(name.into()));
        }
        if password.is_empty() {
            return Err(AccountError::EmptyPassword);
        }
        let rec = UserRecord {
            name: name.to_owned(),
            password_hash: hash_blocking(password.to_owned()).await?,
            admin,
            created_at: crate::meta::now(),
        };
        if !self.store.create_user(&rec).await? {
            return Err(AccountError::UserExists(name.into()));
        }
        tracing::info!(target: "audit", event = "user_added", user = name, admin, "user added");
        Ok(rec)
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>, AccountError> {
        Ok(self.store.users().await?)
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, AccountError> {
        Ok(self.store.user(name).await?)
    }

    pub async fn remove_user(&self, name: &str) -> Result<(), AccountError> {
        if !self.store.delete_user(name).await? {
            return Err(AccountError::NoSuchUser(name.into()));
        }
        tracing::info!(target: "audit", event = "user_removed", user = name, "user removed with their tokens");
        Ok(())
    }

    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), AccountError> {
        if password.is_empty() {
            return Err(AccountError::EmptyPassword);
        }
        let hash = hash_blocking(password.to_owned()).await?;
        if !self.store.set_password(name, &hash).await? {
            return Err(AccountError::NoSuchUser(name.into()));
        }
        tracing::info!(target: "audit", event = "password_changed", user = name, "password changed");
        Ok(())
    }

    /// Imports `user:hash` lines (bcrypt from `htpasswd -B`, or argon2). Existing users get the imported hash.
    /// Returns the imported names; lines berth cannot verify are refused as a whole, before anything is written.
    pub async fn import_htpasswd(&self, text: &str) -> Result<Vec<String>, AccountError> {
        let mut users = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line.split_once(':').ok_or_else(|| {
                AccountError::Invalid(format!("line {}: expected user:hash", i + 1))
            })?;
            if !super::valid_user_name(name) {
                return Err(AccountError::InvalidName(name.into()));
            }
            if !password::is_supported_hash(hash) {
                return Err(AccountError::Invalid(format!(
                    "line {} ({name}): only bcrypt (htpasswd -B) and argon2 hashes are supported",
                    i + 1
                )));
            }
            users.push(UserRecord {
                name: name.to_owned(),
                password_hash: hash.to_owned(),
                admin: false,
                created_at: crate::meta::now(),
            });
        }
        for u in &users {
            self.store.upsert_user(u).await?;
            tracing::info!(target: "audit", event = "user_imported", user = %u.name, "user imported from htpasswd");
        }
        Ok(users.into_iter().map(|u| u.name).collect())
    }

    /// Creates a personal access token; only the hash of its secret is stored.
    pub async fn create_token(
        &self,
        user: &str,
        name: &str,
        scopes: &[Scope],
        expires_in: Option<Duration>,
    ) -> Result<CreatedToken, AccountError> {
        if self.store.user(user).await?.is_none() {
            return Err(AccountError::NoSuchUser(user.into()));
        }
        if scopes.is_empty() {
            return Err(AccountError::Invalid(
                "a token needs at least one scope, e.g. 'team/*:pull,push'".into(),
            ));
        }
        let id: [u8; 8] = rand::random();
        let secret: [u8; 32] = rand::random();
        let id = hex::encode(id);
        let full = format!("{TOKEN_PREFIX}{id}_{}", hex::encode(secret));
        let now = crate::meta::now();
        let record = TokenRecord {
            id: id.clone(),
            user: user.to_owned(),
            name: name.to_owned(),
            secret_hash: hex::encode(sha2::Sha256::digest(full.as_bytes())),
            scopes: scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            created_at: now,
            expires_at: expires_in.map(|d| now.saturating_add(d.as_secs() as i64)),
            last_used: None,
        };
        self.store.create_token(&record).await?;
        tracing::info!(target: "audit", event = "token_created", user, token_id = %id, name,
            scopes = %record.scopes.replace('\n', " "), expires_at = %record.expires_at.map_or_else(|| "never".to_owned(), |t| humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64)).to_string()),
            "personal access token created");
        Ok(CreatedToken {
            secret: full,
            record,
        })
    }

    pub async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, AccountError> {
        Ok(self.store.tokens(user).await?)
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, AccountError> {
        Ok(self.store.token(id).await?)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), AccountError> {
        if !self.store.delete_token(id).await? {
            return Err(AccountError::NoSuchToken(id.into()));
        }
        tracing::info!(target: "audit", event = "token_revoked", token_id = id, "personal access token revoked");
        Ok(())
    }

    /// First start: with no users at all, creates `admin` with `password` or a random one, which is returned so
    /// the caller can show it once.
    pub async fn bootstrap_admin(
        &self,
        password: Option<String>,
    ) -> Result<Option<String>, AccountError> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let (pw, generated) = match password.filter(|p| !p.is_empty()) {
            Some(p) => (p, false),
            None => {
                let r: [u8; 18] = rand::random();
                (hex::encode(r), true)
            }
        };
        match self.add_user("admin", &pw, true).await {
            Ok(_) => Ok(generated.then_some(pw)),
            // Another process (a replica, the CLI) created it first.
            Err(AccountError::UserExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format_round_trips() {
        let t = format!("{TOKEN_PREFIX}0123456789abcdef_{}", "ab".repeat(32));
        assert_eq!(split_token(&t).unwrap().0, "0123456789abcdef");
        assert!(split_token("berth_pat_short_x").is_none());
        assert!(split_token("password").is_none());
        assert!(split_token(&format!("{TOKEN_PREFIX}0123456789abcdef_")).is_none());
    }
}
