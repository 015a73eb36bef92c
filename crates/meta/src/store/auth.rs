//! `AuthStore`: users, personal access tokens and upload-session owners. Every read goes to the database, so a
//! token revoked or a user removed (by any replica or the CLI) is refused everywhere at once.

use super::SqlStore;
use crate::MetaError;
use crate::auth::{AuthStore, TokenRecord, UserRecord};
use crate::sql::{Row, read_tx, write_tx};

const USER_COLUMNS: &str = "name, password_hash, admin, created_at";
const TOKEN_COLUMNS: &str =
    r#"id, "user", name, secret_hash, scopes, created_at, expires_at, last_used"#;

fn user_row(r: &Row) -> Result<UserRecord, MetaError> {
    Ok(UserRecord {
        name: r.text(0)?,
        password_hash: r.text(1)?,
        admin: r.bool(2)?,
        created_at: r.int(3)?,
    })
}

fn token_row(r: &Row) -> Result<TokenRecord, MetaError> {
    Ok(TokenRecord {
        id: r.text(0)?,
        user: r.text(1)?,
        name: r.text(2)?,
        secret_hash: r.text(3)?,
        scopes: r.text(4)?,
        created_at: r.int(5)?,
        expires_at: r.opt_int(6)?,
        last_used: r.opt_int(7)?,
    })
}

/// Runs one statement in a write transaction; whether it changed exactly one row.
macro_rules! change_one {
    ($store:expr, $sql:expr, [$($p:expr),*]) => {{
        write_tx!($store.db(), |tx| async { Ok(tx.exec($sql, &[$((&$p).into()),*]).await? == 1) })
    }};
}

#[async_trait::async_trait]
impl AuthStore for SqlStore {
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, MetaError> {
        let name = name.to_owned();
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_user WHERE name = $1");
        read_tx!(self.db(), |tx| async {
            tx.opt(&sql, &[(&name).into()])
                .await?
                .as_ref()
                .map(user_row)
                .transpose()
        })
    }

    async fn users(&self) -> Result<Vec<UserRecord>, MetaError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_user ORDER BY name");
        read_tx!(self.db(), |tx| async {
            tx.query(&sql, &[]).await?.iter().map(user_row).collect()
        })
    }

    async fn create_user(&self, u: &UserRecord) -> Result<bool, MetaError> {
        let u = u.clone();
        change_one!(
            self,
            "INSERT INTO auth_user (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            [u.name, u.password_hash, u.admin, u.created_at]
        )
    }

    async fn upsert_user(&self, u: &UserRecord) -> Result<(), MetaError> {
        let u = u.clone();
        change_one!(
            self,
            "INSERT INTO auth_user (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
            [u.name, u.password_hash, u.admin, u.created_at]
        )
        .map(drop)
    }

    async fn set_password(&self, name: &str, hash: &str) -> Result<bool, MetaError> {
        let (name, hash) = (name.to_owned(), hash.to_owned());
        change_one!(
            self,
            "UPDATE auth_user SET password_hash = $2 WHERE name = $1",
            [name, hash]
        )
    }

    async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        let name = name.to_owned();
        // Tokens go by ON DELETE CASCADE, in the same statement's transaction.
        change_one!(self, "DELETE FROM auth_user WHERE name = $1", [name])
    }

    async fn count_users(&self) -> Result<u64, MetaError> {
        read_tx!(self.db(), |tx| async {
            tx.one("SELECT COUNT(*) FROM auth_user", &[]).await?.size(0)
        })
    }

    async fn create_token(&self, t: &TokenRecord) -> Result<(), MetaError> {
        let t = t.clone();
        let sql = format!(
            "INSERT INTO auth_token ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        change_one!(
            self,
            &sql,
            [
                t.id,
                t.user,
                t.name,
                t.secret_hash,
                t.scopes,
                t.created_at,
                t.expires_at,
                t.last_used
            ]
        )
        .map(drop)
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, MetaError> {
        let id = id.to_owned();
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM auth_token WHERE id = $1");
        read_tx!(self.db(), |tx| async {
            tx.opt(&sql, &[(&id).into()])
                .await?
                .as_ref()
                .map(token_row)
                .transpose()
        })
    }

    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, MetaError> {
        let user = user.map(str::to_owned);
        let sql = format!(
            r#"SELECT {TOKEN_COLUMNS} FROM auth_token WHERE CAST($1 AS TEXT) IS NULL OR "user" = $1
               ORDER BY "user", created_at, id"#
        );
        read_tx!(self.db(), |tx| async {
            tx.query(&sql, &[user.as_ref().into()])
                .await?
                .iter()
                .map(token_row)
                .collect()
        })
    }

    async fn delete_token(&self, id: &str) -> Result<bool, MetaError> {
        let id = id.to_owned();
        change_one!(self, "DELETE FROM auth_token WHERE id = $1", [id])
    }

    async fn touch_token(&self, id: &str, at: i64) -> Result<(), MetaError> {
        let id = id.to_owned();
        change_one!(
            self,
            "UPDATE auth_token SET last_used = $2 WHERE id = $1",
            [id, at]
        )
        .map(drop)
    }

    async fn set_upload_owner(&self, upload_id: &str, principal: &str) -> Result<(), MetaError> {
        let (id, p) = (upload_id.to_owned(), principal.to_owned());
        change_one!(
            self,
            "INSERT INTO upload_owner (id, principal) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET principal = excluded.principal",
            [id, p]
        )
        .map(drop)
    }

    async fn upload_owner(&self, upload_id: &str) -> Result<Option<String>, MetaError> {
        let id = upload_id.to_owned();
        read_tx!(self.db(), |tx| async {
            tx.opt(
                "SELECT principal FROM upload_owner WHERE id = $1",
                &[(&id).into()],
            )
            .await?
            .map(|r| r.text(0))
            .transpose()
        })
    }
}
