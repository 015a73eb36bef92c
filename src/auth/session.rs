//! Web UI sessions: a signed token in a cookie, made with the same key as the token flow's access tokens but for a
//! different audience (`<service>/ui`), so a session cookie is never accepted as a bearer token nor the reverse.
//! Like bearer tokens, a session is re-checked against the database on every request: removing the user or
//! revoking the personal access token used to sign in ends it.

use sha2::Digest as _;

use super::jwt::{Claims, ISSUER};
use super::{Auth, AuthError, Caller, CallerUser};

/// How long a UI session lasts; signing in again starts a new one.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;

impl Auth {
    fn session_audience(&self) -> String {
        format!("{}/ui", self.settings.service)
    }

    /// Signs a session for a caller that just signed in with a password or a personal access token.
    pub fn sign_session(&self, c: &Caller) -> Result<String, AuthError> {
        let Some(user) = &c.user else {
            return Err(AuthError::BadCredentials);
        };
        let now = crate::meta::now();
        let jti: [u8; 16] = rand::random();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: user.name.clone(),
            aud: self.session_audience(),
            exp: now + SESSION_TTL_SECS,
            nbf: now,
            iat: now,
            jti: hex::encode(jti),
            access: Vec::new(),
            pat: c.pat.as_ref().map(|(id, _)| id.clone()),
        };
        self.key.sign(&claims).map_err(AuthError::Internal)
    }

    /// The caller a session cookie stands for: the same rights as the password or personal access token it was
    /// signed in with, as of now.
    pub async fn session(&self, token: &str) -> Result<Caller, AuthError> {
        let claims = self
            .key
            .verify(token, &self.session_audience())
            .map_err(AuthError::InvalidToken)?;
        if let Some(pat) = &claims.pat {
            return match self.valid_token(pat, None).await? {
                Some((rec, c)) if rec.user == claims.sub => Ok(c),
                _ => Err(AuthError::InvalidToken("credentials revoked".into())),
            };
        }
        match self.store.user(&claims.sub).await? {
            Some(u) => Ok(Caller {
                user: Some(CallerUser {
                    name: u.name,
                    admin: u.admin,
                }),
                ..Caller::default()
            }),
            None => Err(AuthError::InvalidToken("credentials revoked".into())),
        }
    }
}

/// The CSRF token of a session: derived from the (secret, HttpOnly) session token, so only a page served to that
/// session can know it, and it changes with every sign-in.
pub fn csrf_token(session: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"berth-ui-csrf\0");
    h.update(session.as_bytes());
    hex::encode(&h.finalize()[..16])
}
