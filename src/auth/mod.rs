//! Access control (design §8): users and personal access tokens, repository policies, and the Docker token flow's
//! signed access tokens. Plain domain code over the `AuthStore` trait; the HTTP side lives in `http::auth`.
//!
//! Nothing here caches an answer that the database could change: users and tokens are read on every request, so
//! the CLI (another process on the same WAL database) removes a user or revokes a token with immediate effect.

pub mod accounts;
pub mod cli;
pub mod glob;
pub mod jwt;
pub mod password;
pub mod policy;
pub mod ratelimit;
pub mod session;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::Digest as _;
use subtle::ConstantTimeEq;

pub use accounts::{AccountError, Accounts};
pub use glob::{RepoGlob, RepoKind};
pub use jwt::{AccessEntry, Claims, SigningKey};
pub use policy::{Action, Actions, Policy, Scope};
use store::AuthStore;

/// User names: what fits in a Basic header, a policy list and a log line without quoting.
pub fn valid_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Why a request could not be authenticated. Deliberately coarse: "no such user", "wrong password" and "revoked
/// token" are one variant, so no response can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required or credentials invalid")]
    BadCredentials,
    #[error("too many failed logins; retry in {0} s")]
    RateLimited(u64),
    #[error("access token invalid: {0}")]
    InvalidToken(String),
    /// The metadata store holding users and tokens cannot be reached right now (the client may retry).
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::meta::MetaError> for AuthError {
    fn from(e: crate::meta::MetaError) -> Self {
        use crate::meta::MetaError;
        match e {
            MetaError::Unavailable(d) | MetaError::Conflict(d) => AuthError::Unavailable(d),
            e => AuthError::Internal(e.to_string()),
        }
    }
}

/// A signed-in user as of this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerUser {
    pub name: String,
    pub admin: bool,
}

/// Who is calling, and what limits their credentials add on top of the policy.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub user: Option<CallerUser>,
    /// Scopes of the personal access token used, directly or to obtain the bearer token.
    pub pat: Option<(String, Vec<Scope>)>,
    /// What the bearer token grants (Docker token flow); `None` for Basic or anonymous callers.
    pub jwt: Option<Vec<AccessEntry>>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller::default()
    }

    /// The name an upload session is bound to and audit lines show; empty for anonymous callers.
    pub fn principal(&self) -> &str {
        self.user.as_ref().map_or("", |u| u.name.as_str())
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.admin)
    }
}

/// A token issued by the token endpoint.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: std::time::SystemTime,
    pub access: Vec<AccessEntry>,
}

/// One scope requested from the token endpoint, already resolved by the caller of `issue` to the repositories
/// its name can mean.
#[derive(Debug, Clone)]
pub enum Requested {
    Repository {
        name: String,
        actions: Vec<String>,
        meanings: Vec<(String, RepoKind)>,
    },
    Catalog,
}

/// Settings of `Auth` (compiled from `config::Auth`).
pub struct Settings {
    pub policy: Policy,
    pub service: String,
    /// Base URL of the token realm; `None`: from each request.
    pub realm: Option<String>,
    pub token_ttl: Duration,
    pub anonymous_browse: bool,
    pub max_failed_logins: u32,
    pub failed_login_window: Duration,
}

pub struct Auth {
    pub accounts: Accounts,
    store: Arc<dyn AuthStore>,
    key: SigningKey,
    pub settings: Settings,
    limiter: ratelimit::LoginLimiter,
    /// SHA-256 of (stored hash, password) pairs verified recently. Keyed by the stored hash, so a changed password
    /// or a removed user (whose hash is read from the database on every request) never hits a stale entry; it only
    /// spares re-running argon2 for clients that send Basic credentials with every request.
    verified: Mutex<HashSet<[u8; 32]>>,
}

const VERIFIED_CACHE_MAX: usize = 10_000;
/// `last_used` of a personal access token is written at most this often.
const TOUCH_INTERVAL_SECS: i64 = 60;

fn pair_key(stored: &str, password: &str) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update((stored.len() as u64).to_be_bytes());
    h.update(stored.as_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

impl Auth {
    pub fn new(store: Arc<dyn AuthStore>, key: SigningKey, settings: Settings) -> Auth {
        Auth {
            accounts: Accounts::new(store.clone()),
            limiter: ratelimit::LoginLimiter::new(
                settings.max_failed_logins,
                settings.failed_login_window,
            ),
            store,
            key,
            settings,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Basic credentials: a user's password, or one of their personal access tokens in the password field.
    pub async fn login(
        &self,
        user: &str,
        secret: &str,
        ip: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        if let Some(retry) = self.limiter.blocked(ip, user) {
            tracing::warn!(target: "audit", event = "login_throttled", user, ip = %ip.map_or_else(|| "unknown".to_owned(), |i| i.to_string()), "failed-login limit reached");
            return Err(AuthError::RateLimited(retry));
        }
        let result = if accounts::looks_like_token(secret) {
            self.login_token(user, secret).await?
        } else {
            self.login_password(user, secret).await?
        };
        match result {
            Some(c) => Ok(c),
            None => {
                self.limiter.record_failure(ip, user);
                tracing::warn!(target: "audit", event = "login_failed", user, ip = %ip.map_or_else(|| "unknown".to_owned(), |i| i.to_string()), "failed login");
                Err(AuthError::BadCredentials)
            }
        }
    }

    async fn login_password(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Caller>, AuthError> {
        let Some(rec) = self.store.user(user).await? else {
            let pw = password.to_owned();
            let _ = tokio::task::spawn_blocking(move || password::verify_dummy(&pw)).await;
            return Ok(None);
        };
        let key = pair_key(&rec.password_hash, password);
        let cached = self.verified.lock().contains(&key);
        let ok = cached || {
            let (pw, stored) = (password.to_owned(), rec.password_hash.clone());
            tokio::task::spawn_blocking(move || password::verify(&pw, &stored))
                .await
                .map_err(|e| AuthError::Internal(e.to_string()))?
        };
        if !ok {
            return Ok(None);
        }
        if !cached {
            let mut v = self.verified.lock();
            if v.len() >= VERIFIED_CACHE_MAX {
                v.clear();
            }
            v.insert(key);
        }
        Ok(Some(Caller {
            user: Some(CallerUser {
                name: rec.name,
                admin: rec.admin,
            }),
            ..Caller::default()
        }))
    }

    async fn login_token(&self, user: &str, secret: &str) -> Result<Option<Caller>, AuthError> {
        let Some((id, _)) = accounts::split_token(secret) else {
            return Ok(None);
        };
        let Some(tok) = self.valid_token(id, Some(secret)).await? else {
            return Ok(None);
        };
        if tok.0.user != user {
            return Ok(None);
        }
        Ok(Some(tok.1))
    }

    /// A personal access token that is still valid (not expired, not revoked, its user still exists), as a caller.
    /// With `secret`, the secret must match the stored hash.
    async fn valid_token(
        &self,
        id: &str,
        secret: Option<&str>,
    ) -> Result<Option<(store::TokenRecord, Caller)>, AuthError> {
        let Some(rec) = self.store.token(id).await? else {
            return Ok(None);
        };
        if let Some(secret) = secret {
            let h = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
            if !bool::from(h.as_bytes().ct_eq(rec.secret_hash.as_bytes())) {
                return Ok(None);
            }
        }
        let now = crate::meta::now();
        if rec.expires_at.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        let Some(user) = self.store.user(&rec.user).await? else {
            return Ok(None);
        };
        if rec.last_used.is_none_or(|t| now - t >= TOUCH_INTERVAL_SECS)
            && let Err(e) = self.store.touch_token(&rec.id, now).await
        {
            tracing::warn!(error = %e, "cannot record token use");
        }
        let scopes = accounts::parse_scopes(&rec.scopes)
            .map_err(|e| AuthError::Internal(format!("token {}: {e}", rec.id)))?;
        let caller = Caller {
            user: Some(CallerUser {
                name: user.name,
                admin: user.admin,
            }),
            pat: Some((rec.id.clone(), scopes)),
            jwt: None,
        };
        Ok(Some((rec, caller)))
    }

    /// A bearer token from the token endpoint. The user (and the personal access token it was obtained with) is
    /// looked up again: removing the user or revoking the token ends the bearer token too.
    pub async fn bearer(&self, token: &str) -> Result<Caller, AuthError> {
        let claims = self
            .key
            .verify(token, &self.settings.service)
            .map_err(AuthError::InvalidToken)?;
        let mut caller = if let Some(pat) = &claims.pat {
            match self.valid_token(pat, None).await? {
                Some((rec, c)) if rec.user == claims.sub => c,
                _ => return Err(AuthError::InvalidToken("credentials revoked".into())),
            }
        } else if claims.sub.is_empty() {
            Caller::anonymous()
        } else {
            match self.store.user(&claims.sub).await? {
                Some(u) => Caller {
                    user: Some(CallerUser {
                        name: u.name,
                        admin: u.admin,
                    }),
                    ..Caller::default()
                },
                None => return Err(AuthError::InvalidToken("credentials revoked".into())),
            }
        };
        caller.jwt = Some(claims.access);
        Ok(caller)
    }

    /// What the caller's user and credentials allow on a repository, before any bearer-token limit.
    pub fn rights_without_token(&self, c: &Caller, canonical: &str, kind: RepoKind) -> Actions {
        let (user, admin) = match &c.user {
            Some(u) => (Some(u.name.as_str()), u.admin),
            None => (None, false),
        };
        let mut r = self.settings.policy.rights(user, admin, canonical, kind);
        if let Some((_, scopes)) = &c.pat {
            r = r.and(policy::scopes_allow(scopes, canonical, kind));
        }
        r
    }

    /// What the caller may do on a repository addressed as `raw` (the name in the URL), which resolves to
    /// `canonical`. A bearer token must grant the action for either name.
    pub fn rights(&self, c: &Caller, canonical: &str, kind: RepoKind, raw: &str) -> Actions {
        let r = self.rights_without_token(c, canonical, kind);
        match &c.jwt {
            None => r,
            Some(access) => r.and(token_grants(access, &[raw, canonical])),
        }
    }

    /// Whether the caller may mount a blob "from anywhere" (no `from`): only if it may pull every repository.
    pub fn may_pull_everything(&self, c: &Caller) -> bool {
        if c.jwt.is_some() {
            return false;
        }
        let (user, admin) = match &c.user {
            Some(u) => (Some(u.name.as_str()), u.admin),
            None => (None, false),
        };
        let scoped = c.pat.as_ref().is_none_or(|(_, scopes)| {
            scopes
                .iter()
                .any(|s| s.glob == RepoGlob::Pattern("**".into()) && s.actions.has(Action::Pull))
        });
        scoped && self.settings.policy.pulls_everything(user, admin)
    }

    /// Whether the caller may list the catalog (the listing itself is filtered by pull rights).
    pub fn may_browse(&self, c: &Caller) -> bool {
        match &c.jwt {
            Some(access) => access
                .iter()
                .any(|a| a.kind == "registry" && a.name == "catalog"),
            None => c.user.is_some() || self.settings.anonymous_browse,
        }
    }

    /// Whether `/v2/` answers an anonymous caller without a challenge.
    pub fn anonymous_browse(&self) -> bool {
        self.settings.anonymous_browse
    }

    /// The token endpoint: grants the intersection of what was asked for and what the caller may do.
    pub fn issue(&self, c: &Caller, requested: &[Requested]) -> Result<Issued, AuthError> {
        let mut access: Vec<AccessEntry> = Vec::new();
        for r in requested {
            match r {
                Requested::Catalog => {
                    if self.may_browse(c) {
                        access.push(AccessEntry {
                            kind: "registry".into(),
                            name: "catalog".into(),
                            actions: vec!["*".into()],
                        });
                    }
                }
                Requested::Repository {
                    name,
                    actions,
                    meanings,
                } => {
                    let may = meanings.iter().fold(Actions::NONE, |acc, (n, k)| {
                        acc.or(self.rights_without_token(c, n, *k))
                    });
                    let asked = actions.iter().fold(Actions::NONE, |acc, a| {
                        if a == "*" {
                            acc.or(Actions::ALL)
                        } else {
                            a.parse::<Action>().map_or(acc, |a| acc.with(a))
                        }
                    });
                    let granted = may.and(asked);
                    if granted.is_empty() {
                        continue;
                    }
                    match access
                        .iter_mut()
                        .find(|e| e.kind == "repository" && &e.name == name)
                    {
                        Some(e) => {
                            for a in granted.iter() {
                                if !e.actions.iter().any(|x| x == a.as_str()) {
                                    e.actions.push(a.as_str().into());
                                }
                            }
                        }
                        None => access.push(AccessEntry {
                            kind: "repository".into(),
                            name: name.clone(),
                            actions: granted.iter().map(|a| a.as_str().to_owned()).collect(),
                        }),
                    }
                }
            }
        }
        let now = crate::meta::now();
        let ttl = self.settings.token_ttl.as_secs().max(1);
        let jti: [u8; 16] = rand::random();
        let claims = Claims {
            iss: jwt::ISSUER.into(),
            sub: c.principal().to_owned(),
            aud: self.settings.service.clone(),
            exp: now + ttl as i64,
            nbf: now,
            iat: now,
            jti: hex::encode(jti),
            access: access.clone(),
            pat: c.pat.as_ref().map(|(id, _)| id.clone()),
        };
        let token = self.key.sign(&claims).map_err(AuthError::Internal)?;
        Ok(Issued {
            token,
            expires_in: ttl,
            issued_at: std::time::SystemTime::now(),
            access,
        })
    }

    /// Tags of private repositories matching an immutable-tags rule never move once set.
    pub fn immutable_tags(&self, repo: &str) -> bool {
        self.settings.policy.immutable_tags(repo)
    }

    /// Binds an upload session to the caller that opened it (anonymous sessions need no row).
    pub async fn bind_upload(&self, id: &str, c: &Caller) -> Result<(), AuthError> {
        if c.user.is_some() {
            self.store.set_upload_owner(id, c.principal()).await?;
        }
        Ok(())
    }

    /// Whether the caller opened this upload session.
    pub async fn owns_upload(&self, id: &str, c: &Caller) -> Result<bool, AuthError> {
        let owner = self.store.upload_owner(id).await?.unwrap_or_default();
        Ok(bool::from(owner.as_bytes().ct_eq(c.principal().as_bytes())))
    }
}

/// Actions a bearer token's `access` list grants on any of `names`.
fn token_grants(access: &[AccessEntry], names: &[&str]) -> Actions {
    access
        .iter()
        .filter(|a| a.kind == "repository" && names.contains(&a.name.as_str()))
        .flat_map(|a| a.actions.iter())
        .fold(Actions::NONE, |acc, a| {
            if a == "*" {
                Actions::ALL
            } else {
                a.parse::<Action>().map_or(acc, |x| acc.with(x))
            }
        })
}
