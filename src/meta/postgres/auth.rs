//! `AuthStore` on PostgreSQL: users, personal access tokens and upload-session owners. Every read goes to the
//! database, so a token revoked or a user removed (by any replica or the CLI) is refused everywhere at once.

use tokio_postgres::Row;

use super::{PgMetadataStore, execute, query, query_opt};
use crate::auth::store::{AuthStore, TokenRecord, UserRecord};
use crate::meta::MetaError;

const USER_COLUMNS: &str = "name, password_hash, admin, created_at";
const TOKEN_COLUMNS: &str =
    r#"id, "user", name, secret_hash, scopes, created_at, expires_at, last_used"#;

fn user_row(r: &Row) -> Result<UserRecord, tokio_postgres::Error> {
    Ok(UserRecord {
        name: r.try_get(0)?,
        password_hash: r.try_get(1)?,
        admin: r.try_get(2)?,
        created_at: r.try_get(3)?,
    })
}

fn token_row(r: &Row) -> Result<TokenRecord, tokio_postgres::Error> {
    Ok(TokenRecord {
        id: r.try_get(0)?,
        user: r.try_get(1)?,
        name: r.try_get(2)?,
        secret_hash: r.try_get(3)?,
        scopes: r.try_get(4)?,
        created_at: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        last_used: r.try_get(7)?,
    })
}

#[async_trait::async_trait]
impl AuthStore for PgMetadataStore {
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_user WHERE name = $1");
        Ok(query_opt(&c, &sql, &[&name])
            .await?
            .map(|r| user_row(&r))
            .transpose()?)
    }

    async fn users(&self) -> Result<Vec<UserRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM auth_user ORDER BY name");
        Ok(query(&c, &sql, &[])
            .await?
            .iter()
            .map(user_row)
            .collect::<Result<_, _>>()?)
    }

    async fn create_user(&self, u: &UserRecord) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        let n = execute(
            &c,
            "INSERT INTO auth_user (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
            &[&u.name, &u.password_hash, &u.admin, &u.created_at],
        )
        .await?;
        Ok(n == 1)
    }

    async fn upsert_user(&self, u: &UserRecord) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(
            &c,
            "INSERT INTO auth_user (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
            &[&u.name, &u.password_hash, &u.admin, &u.created_at],
        )
        .await?;
        Ok(())
    }

    async fn set_password(&self, name: &str, hash: &str) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        let n = execute(
            &c,
            "UPDATE auth_user SET password_hash = $2 WHERE name = $1",
            &[&name, &hash],
        )
        .await?;
        Ok(n == 1)
    }

    async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        // Tokens go by ON DELETE CASCADE, in the same statement.
        let n = execute(&c, "DELETE FROM auth_user WHERE name = $1", &[&name]).await?;
        Ok(n == 1)
    }

    async fn count_users(&self) -> Result<u64, MetaError> {
        let c = self.conn().await?;
        let rows = query(&c, "SELECT COUNT(*) FROM auth_user", &[]).await?;
        let n: i64 = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        Ok(n as u64)
    }

    async fn create_token(&self, t: &TokenRecord) -> Result<(), MetaError> {
        let c = self.conn().await?;
        let sql = format!(
            "INSERT INTO auth_token ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        execute(
            &c,
            &sql,
            &[
                &t.id,
                &t.user,
                &t.name,
                &t.secret_hash,
                &t.scopes,
                &t.created_at,
                &t.expires_at,
                &t.last_used,
            ],
        )
        .await?;
        Ok(())
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM auth_token WHERE id = $1");
        Ok(query_opt(&c, &sql, &[&id])
            .await?
            .map(|r| token_row(&r))
            .transpose()?)
    }

    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, MetaError> {
        let c = self.conn().await?;
        let sql = format!(
            r#"SELECT {TOKEN_COLUMNS} FROM auth_token WHERE $1::text IS NULL OR "user" = $1
               ORDER BY "user", created_at, id"#
        );
        Ok(query(&c, &sql, &[&user])
            .await?
            .iter()
            .map(token_row)
            .collect::<Result<_, _>>()?)
    }

    async fn delete_token(&self, id: &str) -> Result<bool, MetaError> {
        let c = self.conn().await?;
        let n = execute(&c, "DELETE FROM auth_token WHERE id = $1", &[&id]).await?;
        Ok(n == 1)
    }

    async fn touch_token(&self, id: &str, at: i64) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(
            &c,
            "UPDATE auth_token SET last_used = $2 WHERE id = $1",
            &[&id, &at],
        )
        .await?;
        Ok(())
    }

    async fn set_upload_owner(&self, upload_id: &str, principal: &str) -> Result<(), MetaError> {
        let c = self.conn().await?;
        execute(
            &c,
            "INSERT INTO upload_owner (id, principal) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET principal = excluded.principal",
            &[&upload_id, &principal],
        )
        .await?;
        Ok(())
    }

    async fn upload_owner(&self, upload_id: &str) -> Result<Option<String>, MetaError> {
        let c = self.conn().await?;
        Ok(query_opt(
            &c,
            "SELECT principal FROM upload_owner WHERE id = $1",
            &[&upload_id],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
    }
}
