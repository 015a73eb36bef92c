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

/// One change of the schema. Tables and columns are written in a neutral dialect whose type words are `SERIAL`
/// (the table's generated integer key), `INT`, `TEXT` and `BOOL` (INTEGER 0/1 on SQLite); the rest of each
/// column (`NOT NULL`, `DEFAULT …`, `REFERENCES …`) and the table constraints are the same words on both.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// `CREATE TABLE name (columns and constraints, comma-separated)`.
    Table(&'static str, &'static str),
    /// `ALTER TABLE table ADD COLUMN column`.
    AddColumn(&'static str, &'static str),
    /// A statement spelled the same on both backends (indexes).
    Both(&'static str),
    /// A statement each backend spells its own way (triggers).
    Native {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

use Step::{AddColumn, Both, Table};

/// What `migrate-storage` leaves out: upload sessions (their bytes are temporary objects of the source's blob
/// store), GC tombstones (they name bytes whose rows are already gone) and `repository.tag_version` (a cache stamp
/// the tag triggers maintain).
const NOT_COPIED: &[&str] = &[
    "upload",
    "upload_owner",
    "blob_tombstone",
    "repository.tag_version",
];

/// Versions in order: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&[Step]] = &[
    // 1: the registry.
    &[
        Table(
            "repository",
            "id SERIAL, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL DEFAULT 'private', mirror TEXT,
             created_at INT NOT NULL",
        ),
        Table(
            "blob",
            "digest TEXT PRIMARY KEY, size INT NOT NULL, created_at INT NOT NULL, last_access INT NOT NULL",
        ),
        Table(
            "repo_blob",
            "repo INT NOT NULL REFERENCES repository(id), digest TEXT NOT NULL REFERENCES blob(digest),
             created_at INT NOT NULL, PRIMARY KEY (repo, digest)",
        ),
        Both("CREATE INDEX repo_blob_digest ON repo_blob(digest)"),
        Table(
            "manifest",
            "repo INT NOT NULL REFERENCES repository(id), digest TEXT NOT NULL REFERENCES blob(digest),
             media_type TEXT NOT NULL, artifact_type TEXT, subject TEXT, size INT NOT NULL, annotations TEXT,
             created_at INT NOT NULL, last_pulled INT, PRIMARY KEY (repo, digest)",
        ),
        Both("CREATE INDEX manifest_subject ON manifest(repo, subject) WHERE subject IS NOT NULL"),
        Table(
            "manifest_ref",
            "repo INT NOT NULL, manifest TEXT NOT NULL, child TEXT NOT NULL, kind TEXT NOT NULL,
             PRIMARY KEY (repo, manifest, child, kind),
             FOREIGN KEY (repo, manifest) REFERENCES manifest(repo, digest)",
        ),
        Both("CREATE INDEX manifest_ref_child ON manifest_ref(repo, child)"),
        Table(
            "tag",
            "repo INT NOT NULL REFERENCES repository(id), name TEXT NOT NULL, manifest TEXT NOT NULL,
             updated_at INT NOT NULL, PRIMARY KEY (repo, name),
             FOREIGN KEY (repo, manifest) REFERENCES manifest(repo, digest)",
        ),
        Both("CREATE INDEX tag_manifest ON tag(repo, manifest)"),
        Table(
            "upload",
            "id TEXT PRIMARY KEY, repo TEXT NOT NULL, algorithm TEXT NOT NULL, started_at INT NOT NULL",
        ),
    ],
    // 2: tag lists are served from memory while a repository's tag_version is unchanged; triggers keep it exact
    // whoever writes (this process, the CLI, another replica). Only adding and removing a tag changes the list.
    &[
        AddColumn("repository", "tag_version INT NOT NULL DEFAULT 0"),
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
        Table("blob_tombstone", "digest TEXT PRIMARY KEY, deleted_at INT NOT NULL"),
        Table(
            "maint_run",
            "id SERIAL, kind TEXT NOT NULL, started_at INT NOT NULL, finished_at INT, outcome TEXT NOT NULL,
             dry_run BOOL NOT NULL, summary TEXT",
        ),
        Both("CREATE INDEX maint_run_kind ON maint_run(kind, id)"),
    ],
    // 4: access control: users, personal access tokens (only a hash of the secret), and the principal that opened
    // each upload session (a session is continued only by whoever opened it).
    &[
        Table(
            "auth_user",
            "name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, admin BOOL NOT NULL DEFAULT FALSE,
             created_at INT NOT NULL",
        ),
        Table(
            "auth_token",
            r#"id TEXT PRIMARY KEY, "user" TEXT NOT NULL REFERENCES auth_user(name) ON DELETE CASCADE,
               name TEXT NOT NULL, secret_hash TEXT NOT NULL, scopes TEXT NOT NULL, created_at INT NOT NULL,
               expires_at INT, last_used INT"#,
        ),
        Both(r#"CREATE INDEX auth_token_user ON auth_token("user")"#),
        Table(
            "upload_owner",
            "id TEXT PRIMARY KEY REFERENCES upload(id) ON DELETE CASCADE, principal TEXT NOT NULL",
        ),
    ],
    // 5: upload sessions continued by any replica: the committed length is the session's authority, and a chunk is
    // written under a claim (`writer` until `writer_until`, unix seconds of the database's clock) that excludes
    // writers on other replicas without holding a connection. NULL `committed`: one process owns the session.
    &[
        AddColumn("upload", "committed INT"),
        AddColumn("upload", "writer TEXT"),
        AddColumn("upload", "writer_until INT"),
        Both("CREATE INDEX IF NOT EXISTS manifest_digest ON manifest(digest)"),
    ],
];

/// A column's type word in the neutral dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Serial,
    Int,
    Text,
    Bool,
}

/// A column as the latest version has it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
    pub copied: bool,
}

/// Splits at the commas outside parentheses.
fn items(list: &'static str) -> impl Iterator<Item = &'static str> {
    let mut depth = 0i32;
    list.split(move |c| {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        c == ',' && depth == 0
    })
    .map(str::trim)
}

/// A column definition's name and type (`None` for a table constraint).
fn column(def: &str) -> Option<(&str, Type)> {
    let mut words = def.split_whitespace();
    let name = words.next()?;
    let ty = match words.next()? {
        "SERIAL" => Type::Serial,
        "INT" => Type::Int,
        "TEXT" => Type::Text,
        "BOOL" => Type::Bool,
        _ => return None,
    };
    Some((name, ty))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn render_column(def: &str, backend: Backend) -> String {
    let Some((name, ty)) = column(def) else {
        return def.to_owned();
    };
    let word = match (ty, backend) {
        (Type::Serial, Backend::Sqlite) => "INTEGER PRIMARY KEY",
        (Type::Int | Type::Bool, Backend::Sqlite) => "INTEGER",
        (Type::Text, Backend::Sqlite) => "TEXT",
        (Type::Serial, Backend::Postgres) => "BIGSERIAL PRIMARY KEY",
        (Type::Int, Backend::Postgres) => "BIGINT",
        (Type::Text, Backend::Postgres) => "TEXT COLLATE \"C\"",
        (Type::Bool, Backend::Postgres) => "BOOLEAN",
    };
    let rest = def.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
    format!("{name} {word} {rest}").trim_end().to_owned()
}

fn render(step: &Step, backend: Backend) -> String {
    match step {
        Table(name, defs) => {
            let parts: Vec<String> = items(defs).map(|d| render_column(d, backend)).collect();
            // Composite keys are the row's identity on SQLite too: no hidden rowid beside them.
            let composite = defs.contains("PRIMARY KEY (");
            let suffix = if backend == Backend::Sqlite && composite {
                " WITHOUT ROWID"
            } else {
                ""
            };
            format!("CREATE TABLE {name} ({}){suffix};", parts.join(", "))
        }
        AddColumn(table, def) => format!(
            "ALTER TABLE {table} ADD COLUMN {};",
            render_column(def, backend)
        ),
        Both(sql) => format!("{sql};"),
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
    /// The primary key (also the order in which `migrate-storage` reads).
    pub key: Vec<&'static str>,
    pub copied: bool,
}

impl TableShape {
    /// Whether the table's key is a generated serial (a PostgreSQL sequence must move past copied ids).
    pub fn serial(&self) -> bool {
        self.columns.iter().any(|c| c.ty == Type::Serial)
    }
}

/// Every table of the latest version, in creation order (parents before children, as foreign keys need).
pub fn tables() -> Vec<TableShape> {
    let mut out: Vec<TableShape> = Vec::new();
    let add = |t: &mut TableShape, def: &'static str| {
        if let Some((name, ty)) = column(def) {
            let copied = !NOT_COPIED.contains(&format!("{}.{name}", t.name).as_str());
            t.columns.push(Column { name, ty, copied });
            if ty == Type::Serial || def.contains("PRIMARY KEY") {
                t.key = vec![name];
            }
        } else if let Some(key) = def.strip_prefix("PRIMARY KEY (") {
            t.key = key
                .trim_end_matches(')')
                .split(',')
                .map(str::trim)
                .collect();
        }
    };
    for step in MIGRATIONS.iter().flat_map(|m| m.iter()) {
        match *step {
            Table(name, defs) => {
                let mut t = TableShape {
                    name,
                    columns: Vec::new(),
                    key: Vec::new(),
                    copied: !NOT_COPIED.contains(&name),
                };
                items(defs).for_each(|d| add(&mut t, d));
                out.push(t);
            }
            AddColumn(table, def) => {
                if let Some(t) = out.iter_mut().find(|t| t.name == table) {
                    add(t, def);
                }
            }
            Both(_) | Step::Native { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_a_key_and_every_column_a_type() {
        for step in MIGRATIONS.iter().flat_map(|m| m.iter()) {
            if let AddColumn(_, def) = step {
                assert!(column(def).is_some(), "{def}");
            }
        }
        for t in tables() {
            assert!(!t.key.is_empty(), "{} has a key", t.name);
            assert!(
                t.key.iter().all(|k| t.columns.iter().any(|c| c.name == *k)),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn a_newer_database_is_refused() {
        assert!(pending(Backend::Sqlite, MIGRATIONS.len() as i64 + 1).is_err());
        assert_eq!(
            pending(Backend::Postgres, MIGRATIONS.len() as i64)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn old_postgres_numbers_map_to_shared_versions() {
        assert_eq!(postgres_version(0), 0);
        assert_eq!(postgres_version(1), 4);
        assert_eq!(postgres_version(2), 5);
        assert_eq!(postgres_version(6), 6);
    }
}
