//! The PostgreSQL schema: the same tables, keys and triggers as SQLite's `MIGRATIONS` (so every query means the
//! same on both backends), applied as numbered migrations recorded in `berth_schema`.
//!
//! Text columns use the `"C"` collation: listings (tags, catalog) are ordered byte-wise as on SQLite and as the
//! distribution spec's lexical order asks, whatever the database's default collation.

use super::{LockSpace, PgError};

/// Versioned schema; `berth_schema.version` records how far a database has been migrated.
pub(super) const MIGRATIONS: &[&str] = &[
    // The whole SQLite schema as of its fourth migration, in one step.
    r#"
CREATE TABLE repository (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    kind TEXT NOT NULL DEFAULT 'private',
    mirror TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    tag_version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE blob (
    digest TEXT COLLATE "C" PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_access BIGINT NOT NULL
);
CREATE TABLE repo_blob (
    repo BIGINT NOT NULL REFERENCES repository(id),
    digest TEXT COLLATE "C" NOT NULL REFERENCES blob(digest),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX repo_blob_digest ON repo_blob(digest);
CREATE TABLE manifest (
    repo BIGINT NOT NULL REFERENCES repository(id),
    digest TEXT COLLATE "C" NOT NULL REFERENCES blob(digest),
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    subject TEXT COLLATE "C",
    size BIGINT NOT NULL,
    annotations TEXT,
    created_at BIGINT NOT NULL,
    last_pulled BIGINT,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX manifest_subject ON manifest(repo, subject) WHERE subject IS NOT NULL;
CREATE INDEX manifest_digest ON manifest(digest);
CREATE TABLE manifest_ref (
    repo BIGINT NOT NULL,
    manifest TEXT COLLATE "C" NOT NULL,
    child TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (repo, manifest, child, kind),
    FOREIGN KEY (repo, manifest) REFERENCES manifest(repo, digest)
);
CREATE INDEX manifest_ref_child ON manifest_ref(repo, child);
CREATE TABLE tag (
    repo BIGINT NOT NULL REFERENCES repository(id),
    name TEXT COLLATE "C" NOT NULL,
    manifest TEXT COLLATE "C" NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (repo, name),
    FOREIGN KEY (repo, manifest) REFERENCES manifest(repo, digest)
);
CREATE INDEX tag_manifest ON tag(repo, manifest);
CREATE TABLE upload (
    id TEXT COLLATE "C" PRIMARY KEY,
    repo TEXT COLLATE "C" NOT NULL,
    algorithm TEXT NOT NULL,
    started_at BIGINT NOT NULL
);

-- Tag lists are served from memory while a repository's tag_version is unchanged; the triggers keep it exact
-- whoever writes (any replica, the CLI). Only adding and removing a tag changes the list, as on SQLite.
CREATE FUNCTION berth_bump_tag_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE repository SET tag_version = tag_version + 1 WHERE id = NEW.repo;
    ELSE
        UPDATE repository SET tag_version = tag_version + 1 WHERE id = OLD.repo;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tag_added AFTER INSERT ON tag FOR EACH ROW EXECUTE FUNCTION berth_bump_tag_version();
CREATE TRIGGER tag_removed AFTER DELETE ON tag FOR EACH ROW EXECUTE FUNCTION berth_bump_tag_version();

CREATE TABLE blob_tombstone (
    digest TEXT COLLATE "C" PRIMARY KEY,
    deleted_at BIGINT NOT NULL
);
CREATE TABLE maint_run (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    outcome TEXT NOT NULL,
    dry_run BOOLEAN NOT NULL,
    summary TEXT
);
CREATE INDEX maint_run_kind ON maint_run(kind, id);

CREATE TABLE auth_user (
    name TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE TABLE auth_token (
    id TEXT COLLATE "C" PRIMARY KEY,
    "user" TEXT COLLATE "C" NOT NULL REFERENCES auth_user(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used BIGINT
);
CREATE INDEX auth_token_user ON auth_token("user");
CREATE TABLE upload_owner (
    id TEXT COLLATE "C" PRIMARY KEY REFERENCES upload(id) ON DELETE CASCADE,
    principal TEXT NOT NULL
);
"#,
    // Upload sessions continued by any replica (PostgreSQL only: on SQLite one process owns every session). The
    // committed length is the session's authority; a chunk is written under a claim (`writer` until
    // `writer_until`, unix seconds of the database's clock) that excludes concurrent writers on other replicas
    // without holding a connection. Sessions from before have no committed length and keep the old behaviour.
    r#"
ALTER TABLE upload ADD COLUMN committed BIGINT;
ALTER TABLE upload ADD COLUMN writer TEXT;
ALTER TABLE upload ADD COLUMN writer_until BIGINT;
"#,
];

/// Brings the database up to date in one transaction. Replicas starting together serialise on an advisory lock,
/// so exactly one applies each migration and the others then find it recorded.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, 0)",
        &[&(LockSpace::Migration as i32)],
    )
    .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS berth_schema (version INTEGER NOT NULL)")
        .await?;
    let version: Option<i32> = tx
        .query_opt("SELECT version FROM berth_schema", &[])
        .await?
        .map(|r| r.get(0));
    let version = match version {
        Some(v) => v as usize,
        None => {
            tx.execute("INSERT INTO berth_schema (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    if version > MIGRATIONS.len() {
        return Err(PgError::Meta(crate::meta::MetaError::Corrupt(format!(
            "database schema version {version} is newer than this berth understands ({}); upgrade berth",
            MIGRATIONS.len()
        ))));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(sql).await?;
        tx.execute("UPDATE berth_schema SET version = $1", &[&((i + 1) as i32)])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
