//! The metadata schema, declared once. SQLite's and PostgreSQL's migrations are rendered from the same steps, and
//! `berth migrate-storage` copies the tables these steps end with ([`tables`]), so a column added here is created,
//! migrated and copied on both backends alike.
//!
//! Both backends count the same versions: SQLite in `PRAGMA user_version`, PostgreSQL in `berth_schema.version`.
//! Before the steps were shared, PostgreSQL numbered its own two migrations (1 = steps 1–4, 2 = steps 1–5);
//! [`postgres_version`] reads those numbers.
//!
//! Text columns are `COLLATE "C"` on PostgreSQL: listings (tags, catalog) are ordered byte-wise as on SQLite and
//! as the distribution spec's lexical order asks, whatever the database's default collation.

use super::MetaError;

/// A column type, rendered per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Int,
    Text,
    /// INTEGER 0/1 on SQLite.
    Bool,
    /// The table's generated integer key.
    Serial,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
    /// `NOT NULL`, `UNIQUE`, `DEFAULT …`, `REFERENCES …`: the same words on both backends.
    pub rest: &'static str,
    /// Copied by `migrate-storage` (a cache stamp that triggers maintain is not).
    pub copied: bool,
}

const fn col(name: &'static str, ty: Type, rest: &'static str) -> Column {
    Column {
        name,
        ty,
        rest,
        copied: true,
    }
}

const fn stamp(name: &'static str, ty: Type, rest: &'static str) -> Column {
    Column {
        name,
        ty,
        rest,
        copied: false,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// The primary key (also the order in which `migrate-storage` reads).
    pub key: &'static [&'static str],
    /// Table constraints after the columns (composite keys, foreign keys).
    pub constraints: &'static [&'static str],
    /// Copied by `migrate-storage`: not upload sessions (their bytes are temporary objects of the source's blob
    /// store) nor GC tombstones (they name bytes whose rows are already gone).
    pub copied: bool,
}

/// One change of the schema.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Table(Table),
    AddColumn(&'static str, Column),
    /// A statement spelled the same on both backends (indexes).
    Both(&'static str),
    /// A statement each backend spells its own way (triggers).
    Native {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

use Type::{Bool, Int, Serial, Text};

/// Versions in order: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&[Step]] = &[
    // 1: the registry.
    &[
        Step::Table(Table {
            name: "repository",
            columns: &[
                col("id", Serial, ""),
                col("name", Text, "NOT NULL UNIQUE"),
                col("kind", Text, "NOT NULL DEFAULT 'private'"),
                col("mirror", Text, ""),
                col("created_at", Int, "NOT NULL"),
            ],
            key: &["id"],
            constraints: &[],
            copied: true,
        }),
        Step::Table(Table {
            name: "blob",
            columns: &[
                col("digest", Text, "PRIMARY KEY"),
                col("size", Int, "NOT NULL"),
                col("created_at", Int, "NOT NULL"),
                col("last_access", Int, "NOT NULL"),
            ],
            key: &["digest"],
            constraints: &[],
            copied: true,
        }),
        Step::Table(Table {
            name: "repo_blob",
            columns: &[
                col("repo", Int, "NOT NULL REFERENCES repository(id)"),
                col("digest", Text, "NOT NULL REFERENCES blob(digest)"),
                col("created_at", Int, "NOT NULL"),
            ],
            key: &["repo", "digest"],
            constraints: &["PRIMARY KEY (repo, digest)"],
            copied: true,
        }),
        Step::Both("CREATE INDEX repo_blob_digest ON repo_blob(digest)"),
        Step::Table(Table {
            name: "manifest",
            columns: &[
                col("repo", Int, "NOT NULL REFERENCES repository(id)"),
                col("digest", Text, "NOT NULL REFERENCES blob(digest)"),
                col("media_type", Text, "NOT NULL"),
                col("artifact_type", Text, ""),
                col("subject", Text, ""),
                col("size", Int, "NOT NULL"),
                col("annotations", Text, ""),
                col("created_at", Int, "NOT NULL"),
                col("last_pulled", Int, ""),
            ],
            key: &["repo", "digest"],
            constraints: &["PRIMARY KEY (repo, digest)"],
            copied: true,
        }),
        Step::Both(
            "CREATE INDEX manifest_subject ON manifest(repo, subject) WHERE subject IS NOT NULL",
        ),
        Step::Table(Table {
            name: "manifest_ref",
            columns: &[
                col("repo", Int, "NOT NULL"),
                col("manifest", Text, "NOT NULL"),
                col("child", Text, "NOT NULL"),
                col("kind", Text, "NOT NULL"),
            ],
            key: &["repo", "manifest", "child", "kind"],
            constraints: &[
                "PRIMARY KEY (repo, manifest, child, kind)",
                "FOREIGN KEY (repo, manifest) REFERENCES manifest(repo, digest)",
            ],
            copied: true,
        }),
        Step::Both("CREATE INDEX manifest_ref_child ON manifest_ref(repo, child)"),
        Step::Table(Table {
            name: "tag",
            columns: &[
                col("repo", Int, "NOT NULL REFERENCES repository(id)"),
                col("name", Text, "NOT NULL"),
                col("manifest", Text, "NOT NULL"),
                col("updated_at", Int, "NOT NULL"),
            ],
            key: &["repo", "name"],
            constraints: &[
                "PRIMARY KEY (repo, name)",
                "FOREIGN KEY (repo, manifest) REFERENCES manifest(repo, digest)",
            ],
            copied: true,
        }),
        Step::Both("CREATE INDEX tag_manifest ON tag(repo, manifest)"),
        Step::Table(Table {
            name: "upload",
            columns: &[
                col("id", Text, "PRIMARY KEY"),
                col("repo", Text, "NOT NULL"),
                col("algorithm", Text, "NOT NULL"),
                col("started_at", Int, "NOT NULL"),
            ],
            key: &["id"],
            constraints: &[],
            copied: false,
        }),
    ],
    // 2: tag lists are served from memory while a repository's tag_version is unchanged; triggers keep it exact
    // whoever writes (this process, the CLI, another replica). Only adding and removing a tag changes the list.
    &[
        Step::AddColumn(
            "repository",
            stamp("tag_version", Int, "NOT NULL DEFAULT 0"),
        ),
        Step::Native {
            sqlite: "CREATE TRIGGER tag_added AFTER INSERT ON tag BEGIN
                         UPDATE repository SET tag_version = tag_version + 1 WHERE id = NEW.repo;
                     END;
                     CREATE TRIGGER tag_removed AFTER DELETE ON tag BEGIN
                         UPDATE repository SET tag_version = tag_version + 1 WHERE id = OLD.repo;
                     END;",
            postgres: "CREATE FUNCTION berth_bump_tag_version() RETURNS trigger LANGUAGE plpgsql AS $$
                       BEGIN
                           IF TG_OP = 'INSERT' THEN
                               UPDATE repository SET tag_version = tag_version + 1 WHERE id = NEW.repo;
                           ELSE
                               UPDATE repository SET tag_version = tag_version + 1 WHERE id = OLD.repo;
                           END IF;
                           RETURN NULL;
                       END
                       $$;
                       CREATE TRIGGER tag_added AFTER INSERT ON tag
                           FOR EACH ROW EXECUTE FUNCTION berth_bump_tag_version();
                       CREATE TRIGGER tag_removed AFTER DELETE ON tag
                           FOR EACH ROW EXECUTE FUNCTION berth_bump_tag_version();",
        },
    ],
    // 3: maintenance: bytes whose row garbage collection deleted and that wait for deletion under the digest lock
    // (written in the row's transaction, so a crash in between loses nothing), and the history of runs.
    &[
        Step::Table(Table {
            name: "blob_tombstone",
            columns: &[
                col("digest", Text, "PRIMARY KEY"),
                col("deleted_at", Int, "NOT NULL"),
            ],
            key: &["digest"],
            constraints: &[],
            copied: false,
        }),
        Step::Table(Table {
            name: "maint_run",
            columns: &[
                col("id", Serial, ""),
                col("kind", Text, "NOT NULL"),
                col("started_at", Int, "NOT NULL"),
                col("finished_at", Int, ""),
                col("outcome", Text, "NOT NULL"),
                col("dry_run", Bool, "NOT NULL"),
                col("summary", Text, ""),
            ],
            key: &["id"],
            constraints: &[],
            copied: true,
        }),
        Step::Both("CREATE INDEX maint_run_kind ON maint_run(kind, id)"),
    ],
    // 4: access control: users, personal access tokens (only a hash of the secret), and the principal that opened
    // each upload session (a session is continued only by whoever opened it).
    &[
        Step::Table(Table {
            name: "auth_user",
            columns: &[
                col("name", Text, "PRIMARY KEY"),
                col("password_hash", Text, "NOT NULL"),
                col("admin", Bool, "NOT NULL DEFAULT FALSE"),
                col("created_at", Int, "NOT NULL"),
            ],
            key: &["name"],
            constraints: &[],
            copied: true,
        }),
        Step::Table(Table {
            name: "auth_token",
            columns: &[
                col("id", Text, "PRIMARY KEY"),
                col(
                    "\"user\"",
                    Text,
                    "NOT NULL REFERENCES auth_user(name) ON DELETE CASCADE",
                ),
                col("name", Text, "NOT NULL"),
                col("secret_hash", Text, "NOT NULL"),
                col("scopes", Text, "NOT NULL"),
                col("created_at", Int, "NOT NULL"),
                col("expires_at", Int, ""),
                col("last_used", Int, ""),
            ],
            key: &["id"],
            constraints: &[],
            copied: true,
        }),
        Step::Both("CREATE INDEX auth_token_user ON auth_token(\"user\")"),
        Step::Table(Table {
            name: "upload_owner",
            columns: &[
                col("id", Text, "PRIMARY KEY REFERENCES upload(id) ON DELETE CASCADE"),
                col("principal", Text, "NOT NULL"),
            ],
            key: &["id"],
            constraints: &[],
            copied: false,
        }),
    ],
    // 5: upload sessions continued by any replica: the committed length is the session's authority, and a chunk is
    // written under a claim (`writer` until `writer_until`, unix seconds of the database's clock) that excludes
    // writers on other replicas without holding a connection. NULL `committed`: one process owns the session.
    &[
        Step::AddColumn("upload", col("committed", Int, "")),
        Step::AddColumn("upload", col("writer", Text, "")),
        Step::AddColumn("upload", col("writer_until", Int, "")),
        Step::Both("CREATE INDEX IF NOT EXISTS manifest_digest ON manifest(digest)"),
    ],
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn render_column(c: &Column, backend: Backend) -> String {
    let ty = match (c.ty, backend) {
        (Int | Bool, Backend::Sqlite) => "INTEGER",
        (Text, Backend::Sqlite) => "TEXT",
        (Serial, Backend::Sqlite) => "INTEGER PRIMARY KEY",
        (Int, Backend::Postgres) => "BIGINT",
        (Text, Backend::Postgres) => "TEXT COLLATE \"C\"",
        (Bool, Backend::Postgres) => "BOOLEAN",
        (Serial, Backend::Postgres) => "BIGSERIAL PRIMARY KEY",
    };
    format!("{} {ty} {}", c.name, c.rest).trim_end().to_owned()
}

fn render(step: &Step, backend: Backend) -> String {
    match step {
        Step::Table(t) => {
            let mut parts: Vec<String> = t
                .columns
                .iter()
                .map(|c| render_column(c, backend))
                .collect();
            parts.extend(t.constraints.iter().map(|c| c.to_string()));
            // Composite keys are the row's identity on SQLite too: no hidden rowid beside them.
            let suffix = if backend == Backend::Sqlite && t.key.len() > 1 {
                " WITHOUT ROWID"
            } else {
                ""
            };
            format!(
                "CREATE TABLE {} (\n    {}\n){suffix};",
                t.name,
                parts.join(",\n    ")
            )
        }
        Step::AddColumn(table, c) => {
            format!(
                "ALTER TABLE {table} ADD COLUMN {};",
                render_column(c, backend)
            )
        }
        Step::Both(sql) => format!("{sql};"),
        Step::Native { sqlite, postgres } => match backend {
            Backend::Sqlite => sqlite.to_string(),
            Backend::Postgres => postgres.to_string(),
        },
    }
}

/// The migrations a database at `version` still needs: (the version it reaches, the SQL to run).
pub fn pending(backend: Backend, version: i64) -> Result<Vec<(i64, String)>, MetaError> {
    let latest = MIGRATIONS.len() as i64;
    if version > latest {
        return Err(MetaError::Corrupt(format!(
            "database schema version {version} is newer than this berth understands ({latest}); upgrade berth"
        )));
    }
    Ok(MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
        .map(|(i, steps)| {
            let sql: Vec<String> = steps.iter().map(|s| render(s, backend)).collect();
            (i as i64 + 1, sql.join("\n"))
        })
        .collect())
}

/// The shared version of a PostgreSQL database: its own numbers from before the steps were shared (1, 2) are
/// versions 4 and 5; versions 1 to 3 never existed there (the first migration created everything of 1–4).
pub fn postgres_version(stored: i64) -> i64 {
    match stored {
        1 => 4,
        2 => 5,
        v => v,
    }
}

/// A table as the latest version has it.
#[derive(Debug, Clone)]
pub struct TableShape {
    pub name: &'static str,
    pub columns: Vec<Column>,
    pub key: &'static [&'static str],
    pub copied: bool,
}

impl TableShape {
    /// Whether the table's key is a generated serial (a PostgreSQL sequence must move past copied ids).
    pub fn serial(&self) -> bool {
        self.columns.iter().any(|c| c.ty == Serial)
    }
}

/// Every table of the latest version, in creation order (parents before children, as foreign keys need).
pub fn tables() -> Vec<TableShape> {
    let mut out: Vec<TableShape> = Vec::new();
    for step in MIGRATIONS.iter().flat_map(|m| m.iter()) {
        match step {
            Step::Table(t) => out.push(TableShape {
                name: t.name,
                columns: t.columns.to_vec(),
                key: t.key,
                copied: t.copied,
            }),
            Step::AddColumn(table, c) => {
                if let Some(t) = out.iter_mut().find(|t| t.name == *table) {
                    t.columns.push(*c);
                }
            }
            Step::Both(_) | Step::Native { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_added_column_names_a_table_created_before_it() {
        let mut created = Vec::new();
        for step in MIGRATIONS.iter().flat_map(|m| m.iter()) {
            match step {
                Step::Table(t) => created.push(t.name),
                Step::AddColumn(table, _) => assert!(created.contains(table), "{table}"),
                _ => {}
            }
        }
    }

    #[test]
    fn both_backends_apply_every_migration_from_scratch() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for (_, sql) in pending(Backend::Sqlite, 0).unwrap() {
            conn.execute_batch(&sql).unwrap();
        }
        let pg = pending(Backend::Postgres, 0).unwrap();
        assert_eq!(pg.len(), MIGRATIONS.len());
        assert!(pg[0].1.contains("BIGSERIAL PRIMARY KEY"));
        assert!(pending(Backend::Sqlite, MIGRATIONS.len() as i64 + 1).is_err());
    }

    #[test]
    fn old_postgres_numbers_map_to_shared_versions() {
        assert_eq!(postgres_version(0), 0);
        assert_eq!(postgres_version(1), 4);
        assert_eq!(postgres_version(2), 5);
        assert_eq!(postgres_version(6), 6);
    }
}
