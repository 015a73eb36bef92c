//! `AuthStore` on SQLite: users, personal access tokens and upload-session owners (tables of migration 3). Every
//! read goes to the database, so a token revoked or a user removed by the CLI is refused by a running server at once.

use rusqlite::{OptionalExtension, params};

use super::SqliteMetadataStore;
use crate::auth::store::{AuthStore, TokenRecord, UserRecord};
use crate::meta::MetaError;

const USER_COLUMNS: &str = "name, password_hash, admin, created_at";
const TOKEN_COLUMNS: &str =
    "id, user, name, secret_hash, scopes, created_at, expires_at, last_used";

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        name: r.get(0)?,
        password_hash: r.get(1)?,
        admin: r.get(2)?,
        created_at: r.get(3)?,
    })
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        user: r.get(1)?,
        name: r.get(2)?,
        secret_hash: r.get(3)?,
        scopes: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        last_used: r.get(7)?,
    })
}

#[async_trait::async_trait]
impl AuthStore for SqliteMetadataStore {
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, MetaError> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM auth_user WHERE name = ?1"
            ))?
            .query_row([name], user_row)
            .optional()?)
        })
        .await
    }

    async fn users(&self) -> Result<Vec<UserRecord>, MetaError> {
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM auth_user ORDER BY name"
            ))?;
            let rows = s.query_map([], user_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn create_user(&self, u: &UserRecord) -> Result<bool, MetaError> {
        let u = u.clone();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT OR IGNORE INTO auth_user (name, password_hash, admin, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![u.name, u.password_hash, u.admin, u.created_at])?;
            Ok(n == 1)
        })
        .await
    }

    async fn upsert_user(&self, u: &UserRecord) -> Result<(), MetaError> {
        let u = u.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO auth_user (name, password_hash, admin, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
            )?
            .execute(params![u.name, u.password_hash, u.admin, u.created_at])?;
            Ok(())
        })
        .await
    }

    async fn set_password(&self, name: &str, hash: &str) -> Result<bool, MetaError> {
        let (name, hash) = (name.to_owned(), hash.to_owned());
        self.write(move |c| {
            let n = c
                .prepare_cached("UPDATE auth_user SET password_hash = ?2 WHERE name = ?1")?
                .execute(params![name, hash])?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        let name = name.to_owned();
        self.write(move |c| {
            // Tokens go by ON DELETE CASCADE, in the same statement's transaction.
            let n = c
                .prepare_cached("DELETE FROM auth_user WHERE name = ?1")?
                .execute([name])?;
            Ok(n == 1)
        })
        .await
    }

    async fn count_users(&self) -> Result<u64, MetaError> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM auth_user")?
                .query_row([], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    async fn create_token(&self, t: &TokenRecord) -> Result<(), MetaError> {
        let t = t.clone();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO auth_token ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                t.id,
                t.user,
                t.name,
                t.secret_hash,
                t.scopes,
                t.created_at,
                t.expires_at,
                t.last_used
            ])?;
            Ok(())
        })
        .await
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, MetaError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM auth_token WHERE id = ?1"
            ))?
            .query_row([id], token_row)
            .optional()?)
        })
        .await
    }

    async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRecord>, MetaError> {
        let user = user.map(str::to_owned);
        self.read(move |c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM auth_token WHERE ?1 IS NULL OR user = ?1 ORDER BY user, created_at, id"
            ))?;
            let rows = s
                .query_map([user], token_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_token(&self, id: &str) -> Result<bool, MetaError> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM auth_token WHERE id = ?1")?
                .execute([id])?;
            Ok(n == 1)
        })
        .await
    }

    async fn touch_token(&self, id: &str, at: i64) -> Result<(), MetaError> {
        let id = id.to_owned();
        self.write(move |c| {
            c.prepare_cached("UPDATE auth_token SET last_used = ?2 WHERE id = ?1")?
                .execute(params![id, at])?;
            Ok(())
        })
        .await
    }

    async fn set_upload_owner(&self, upload_id: &str, principal: &str) -> Result<(), MetaError> {
        let (id, p) = (upload_id.to_owned(), principal.to_owned());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO upload_owner (id, principal) VALUES (?1, ?2)",
            )?
            .execute(params![id, p])?;
            Ok(())
        })
        .await
    }

    async fn upload_owner(&self, upload_id: &str) -> Result<Option<String>, MetaError> {
        let id = upload_id.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT principal FROM upload_owner WHERE id = ?1")?
                    .query_row([id], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }
}
