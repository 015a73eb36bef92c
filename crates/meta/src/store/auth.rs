//! `AuthStore`: users, personal access tokens and upload-session owners. Every read goes to the database, so a
//! token revoked or a user removed (by any replica or the CLI) is refused everywhere at once.

use super::SqlStore;
use crate::MetaError;
use crate::auth::{AuthStore, TokenRecord, UserRecord};
use crate::sql::{Row, vals};

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

#[async_trait::async_trait]
impl AuthStore for SqlStore {
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, MetaError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_user WHERE name = $1");
        self.read(&sql, vals![name])
            .await?
            .first()
            .map(user_row)
            .transpose()
    }

    async fn users(&self) -> Result<Vec<UserRecord>, MetaError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_user ORDER BY name");
        self.read(&sql, vals![])
            .await?
            .iter()
            .map(user_row)
            .collect()
    }

    async fn create_user(&self, u: &UserRecord) -> Result<bool, MetaError> {
        let sql =
            "INSERT INTO auth_user (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (name) DO NOTHING";
        Ok(self
            .exec(sql, vals![&u.name, &u.password_hash, u.admin, u.created_at])
            .await?
            == 1)
    }

    async fn upsert_user(&self, u: &UserRecord) -> Result<(), MetaError> {
        let sql =
            "INSERT INTO auth_user (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash";
        self.exec(sql, vals![&u.name, &u.password_hash, u.admin, u.created_at])
            .await
            .map(drop)
    }

    async fn set_password(&self, name: &str, hash: &str) -> Result<bool, MetaError> {
        let sql = "UPDATE auth_user SET password_hash = $2 WHERE name = $1";
        Ok(self.exec(sql, vals![name, hash]).await? == 1)
    }

    async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        // Tokens go by ON DELETE CASCADE, in the same statement's transaction.
        Ok(self
            .exec("DELETE FROM auth_user WHERE name = $1", vals![name])
            .await?
            == 1)
    }

    async fn count_users(&self) -> Result<u64, MetaError> {
        let rows = self.read("SELECT COUNT(*) FROM auth_user", vals![]).await?;
        rows.first().map_or(Ok(0), |r| r.size(0))
    }

    async fn create_token(&self, t: &TokenRecord) -> Result<(), MetaError> {
        let sql = format!(
            "INSERT INTO auth_token ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        let p = vals![
            &t.id,
            &t.user,
            &t.name,
            &t.secret_hash,
            &t.scopes,
            t.created_at,
            t.expires_at,
            t.last_used
        ];
        self.exec(&sql, p).await.map(drop)
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, MetaError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM auth_token WHERE id = $1");
        self.read(&sql, vals![id])
            .await?
            .first()
            .map(token_row)
            .transpose()
    }

    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, MetaError> {
        let sql = format!(
            r#"SELECT {TOKEN_COLUMNS} FROM auth_token WHERE CAST($1 AS TEXT) IS NULL OR "user" = $1
               ORDER BY "user", created_at, id"#
        );
        self.read(&sql, vals![user])
            .await?
            .iter()
            .map(token_row)
            .collect()
    }

    async fn delete_token(&self, id: &str) -> Result<bool, MetaError> {
        Ok(self
            .exec("DELETE FROM auth_token WHERE id = $1", vals![id])
            .await?
            == 1)
    }

    async fn touch_token(&self, id: &str, at: i64) -> Result<(), MetaError> {
        let sql = "UPDATE auth_token SET last_used = $2 WHERE id = $1";
        self.exec(sql, vals![id, at]).await.map(drop)
    }

    async fn set_upload_owner(&self, upload_id: &str, principal: &str) -> Result<(), MetaError> {
        let sql = "INSERT INTO upload_owner (id, principal) VALUES ($1, $2)
                   ON CONFLICT (id) DO UPDATE SET principal = excluded.principal";
        self.exec(sql, vals![upload_id, principal]).await.map(drop)
    }

    async fn upload_owner(&self, upload_id: &str) -> Result<Option<String>, MetaError> {
        let rows = self
            .read(
                "SELECT principal FROM upload_owner WHERE id = $1",
                vals![upload_id],
            )
            .await?;
        rows.first().map(|r| r.text(0)).transpose()
    }
}
