//! What the auth domain needs from the metadata store (re-exported by `berth::auth::store`): users and tokens
//! share the database, its transactions and its schema with everything else.

use crate::MetaError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// argon2id PHC string, or a bcrypt hash imported from htpasswd.
    pub password_hash: String,
    pub admin: bool,
    pub created_at: i64,
}

/// A personal access token. Only a hash of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public part of the token, used to find it.
    pub id: String,
    pub user: String,
    /// A label such as `ci`.
    pub name: String,
    /// SHA-256 of the secret part (the secret has 256 random bits, so a slow hash adds nothing).
    pub secret_hash: String,
    /// Scopes as `GLOB:ACTIONS`, one per line.
    pub scopes: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used: Option<i64>,
}

#[async_trait::async_trait]
pub trait AuthStore: Send + Sync + 'static {
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, MetaError>;
    async fn users(&self) -> Result<Vec<UserRecord>, MetaError>;
    /// Creates a user; `false` when the name is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<bool, MetaError>;
    /// Creates or replaces a user (htpasswd import).
    async fn upsert_user(&self, user: &UserRecord) -> Result<(), MetaError>;
    /// `false` when there is no such user.
    async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool, MetaError>;
    /// Removes a user and all their tokens; `false` when there was no such user.
    async fn delete_user(&self, name: &str) -> Result<bool, MetaError>;
    async fn count_users(&self) -> Result<u64, MetaError>;

    async fn create_token(&self, token: &TokenRecord) -> Result<(), MetaError>;
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, MetaError>;
    /// Tokens of one user, or of everyone with `None`.
    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, MetaError>;
    /// `false` when there was no such token.
    async fn delete_token(&self, id: &str) -> Result<bool, MetaError>;
    async fn touch_token(&self, id: &str, at: i64) -> Result<(), MetaError>;

    /// Binds an upload session to the principal that opened it.
    async fn set_upload_owner(&self, upload_id: &str, principal: &str) -> Result<(), MetaError>;
    /// The principal an upload session is bound to (`None`: opened anonymously, or no such session).
    async fn upload_owner(&self, upload_id: &str) -> Result<Option<String>, MetaError>;
}
