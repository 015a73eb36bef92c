//! Whole-database copy between metadata stores, for `berth migrate-storage` (docs/scale-out.md, "Moving to the
//! scale-out shape").
//!
//! SQLite and PostgreSQL hold the same tables with the same keys (`sqlite.rs` `MIGRATIONS`, `postgres/schema.rs`),
//! so the copy is generic: every table is read in primary-key order as rows of typed values and inserted as they
//! are, keeping repository ids (other tables refer to them) and every timestamp (pull times, access times, token
//! expiry). Reading streams through a bounded channel, so memory stays flat whatever the registry's size; the
//! destination is written in **one transaction**, so an interrupted copy leaves no metadata at all and a later run
//! starts the metadata over, while the blobs already copied are skipped.
//!
//! Not copied: upload sessions (their bytes are temporary objects of the source's blob store), GC tombstones (they
//! name bytes whose rows are already gone) and `repository.tag_version` (a cache stamp the tag triggers maintain).

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{StreamExt, TryStreamExt};
use rusqlite::TransactionBehavior;
use tokio::sync::mpsc;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::MetaError;
use super::postgres::PgMetadataStore;
use super::sqlite::SqliteMetadataStore;

/// How a column is typed on both backends (SQLite stores booleans as integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Int,
    Text,
    Bool,
}

/// A table as the copy sees it: its columns (in insert order) and its primary key (the read order).
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, ColumnType)],
    pub key: &'static [&'static str],
    /// `id` is a PostgreSQL sequence that must move past the copied ids.
    serial: bool,
}

use ColumnType::{Bool, Int, Text};

/// Every table that is copied, parents before children (the order foreign keys need on insert).
pub const TABLES: &[Table] = &[
    Table {
        name: "repository",
        columns: &[
            ("id", Int),
            ("name", Text),
            ("kind", Text),
            ("mirror", Text),
            ("created_at", Int),
        ],
        key: &["id"],
        serial: true,
    },
    Table {
        name: "blob",
        columns: &[
            ("digest", Text),
            ("size", Int),
            ("created_at", Int),
            ("last_access", Int),
        ],
        key: &["digest"],
        serial: false,
    },
    Table {
        name: "repo_blob",
        columns: &[("repo", Int), ("digest", Text), ("created_at", Int)],
        key: &["repo", "digest"],
        serial: false,
    },
    Table {
        name: "manifest",
        columns: &[
            ("repo", Int),
            ("digest", Text),
            ("media_type", Text),
            ("artifact_type", Text),
            ("subject", Text),
            ("size", Int),
            ("annotations", Text),
            ("created_at", Int),
            ("last_pulled", Int),
        ],
        key: &["repo", "digest"],
        serial: false,
    },
    Table {
        name: "manifest_ref",
        columns: &[
            ("repo", Int),
            ("manifest", Text),
            ("child", Text),
            ("kind", Text),
        ],
        key: &["repo", "manifest", "child", "kind"],
        serial: false,
    },
    Table {
        name: "tag",
        columns: &[
            ("repo", Int),
            ("name", Text),
            ("manifest", Text),
            ("updated_at", Int),
        ],
        key: &["repo", "name"],
        serial: false,
    },
    Table {
        name: "maint_run",
        columns: &[
            ("id", Int),
            ("kind", Text),
            ("started_at", Int),
            ("finished_at", Int),
            ("outcome", Text),
            ("dry_run", Bool),
            ("summary", Text),
        ],
        key: &["id"],
        serial: true,
    },
    Table {
        name: "auth_user",
        columns: &[
            ("name", Text),
            ("password_hash", Text),
            ("admin", Bool),
            ("created_at", Int),
        ],
        key: &["name"],
        serial: false,
    },
    Table {
        name: "auth_token",
        columns: &[
            ("id", Text),
            ("user", Text),
            ("name", Text),
            ("secret_hash", Text),
            ("scopes", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("last_used", Int),
        ],
        key: &["id"],
        serial: false,
    },
];

/// Tables emptied before a copy but never copied (see the module comment), children first.
const CLEARED_ONLY: &[&str] = &["upload_owner", "upload", "blob_tombstone"];

/// The index of a table in [`TABLES`].
pub fn table_index(name: &str) -> Option<usize> {
    TABLES.iter().position(|t| t.name == name)
}

/// One column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

pub type Row = Vec<Value>;

/// Rows read per message on the copy channel.
const BATCH: usize = 500;

/// Messages of a table stream: a batch of rows, then the end (a stream that stops without it failed).
pub enum Chunk {
    Rows(Vec<Row>),
    End,
}

pub type RowStream = mpsc::Receiver<Result<Chunk, MetaError>>;

/// Messages of a whole-database load: rows of `TABLES[i]`, then `Commit` once every table was sent.
pub enum Load {
    Rows(usize, Vec<Row>),
    Commit,
}

/// A metadata database opened for whole-table reads and writes.
#[derive(Clone)]
pub enum MetaDatabase {
    Sqlite(Arc<SqliteMetadataStore>),
    Postgres(Arc<PgMetadataStore>),
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

fn column_list(t: &Table) -> String {
    t.columns
        .iter()
        .map(|(c, _)| quoted(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn select_sql(t: &Table) -> String {
    let key = t
        .key
        .iter()
        .map(|c| quoted(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {} FROM {} ORDER BY {key}",
        column_list(t),
        quoted(t.name)
    )
}

fn cleared_tables() -> impl Iterator<Item = &'static str> {
    CLEARED_ONLY
        .iter()
        .copied()
        .chain(TABLES.iter().rev().map(|t| t.name))
}

impl MetaDatabase {
    /// Rows in each of [`TABLES`].
    pub async fn counts(&self) -> Result<Vec<u64>, MetaError> {
        match self {
            MetaDatabase::Sqlite(s) => {
                s.read_scan(|conn| {
                    TABLES
                        .iter()
                        .map(|t| {
                            let n: i64 = conn.query_row(
                                &format!("SELECT COUNT(*) FROM {}", quoted(t.name)),
                                [],
                                |r| r.get(0),
                            )?;
                            Ok(n as u64)
                        })
                        .collect()
                })
                .await
            }
            MetaDatabase::Postgres(p) => {
                let conn = p.conn().await?;
                let mut out = Vec::with_capacity(TABLES.len());
                for t in TABLES {
                    let row = conn
                        .query_one(&format!("SELECT COUNT(*) FROM {}", quoted(t.name)), &[])
                        .await?;
                    out.push(row.try_get::<_, i64>(0)? as u64);
                }
                Ok(out)
            }
        }
    }

    /// Streams the rows of `TABLES[table]` in primary-key order, in batches, from a task of its own.
    pub fn read(&self, table: usize) -> RowStream {
        let (tx, rx) = mpsc::channel(4);
        let t = &TABLES[table];
        match self.clone() {
            MetaDatabase::Sqlite(s) => {
                tokio::spawn(async move {
                    let failed = tx.clone();
                    let result = s
                        .read_scan(move |conn| {
                            let mut stmt = conn.prepare(&select_sql(t))?;
                            let mut rows = stmt.query([])?;
                            let mut batch = Vec::with_capacity(BATCH);
                            while let Some(r) = rows.next()? {
                                batch.push(sqlite_row(t, r)?);
                                if batch.len() == BATCH
                                    && tx
                                        .blocking_send(Ok(Chunk::Rows(std::mem::take(&mut batch))))
                                        .is_err()
                                {
                                    return Ok(());
                                }
                            }
                            if !batch.is_empty() {
                                let _ = tx.blocking_send(Ok(Chunk::Rows(batch)));
                            }
                            let _ = tx.blocking_send(Ok(Chunk::End));
                            Ok(())
                        })
                        .await;
                    if let Err(e) = result {
                        let _ = failed.send(Err(e)).await;
                    }
                });
            }
            MetaDatabase::Postgres(p) => {
                tokio::spawn(async move {
                    let result = async {
                        let conn = p.conn().await?;
                        let no_params: Vec<&(dyn ToSql + Sync)> = Vec::new();
                        let stream = conn.query_raw(&select_sql(t), no_params).await?;
                        let mut stream = std::pin::pin!(stream);
                        let mut batch = Vec::with_capacity(BATCH);
                        while let Some(r) = stream.try_next().await? {
                            batch.push(pg_row(t, &r)?);
                            if batch.len() == BATCH
                                && tx
                                    .send(Ok(Chunk::Rows(std::mem::take(&mut batch))))
                                    .await
                                    .is_err()
                            {
                                return Ok(());
                            }
                        }
                        if !batch.is_empty() {
                            let _ = tx.send(Ok(Chunk::Rows(batch))).await;
                        }
                        let _ = tx.send(Ok(Chunk::End)).await;
                        Ok::<_, MetaError>(())
                    }
                    .await;
                    if let Err(e) = result {
                        let _ = tx.send(Err(e)).await;
                    }
                });
            }
        }
        rx
    }

    /// PostgreSQL: how many other client sessions are connected to the database (berth replicas, or anything
    /// else); `None` on SQLite, where the data-directory lock already excludes a running server.
    pub async fn other_sessions(&self) -> Result<Option<u64>, MetaError> {
        match self {
            MetaDatabase::Sqlite(_) => Ok(None),
            MetaDatabase::Postgres(p) => {
                let conn = p.conn().await?;
                let row = conn
                    .query_one(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                         AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                        &[],
                    )
                    .await?;
                Ok(Some(row.try_get::<_, i64>(0)? as u64))
            }
        }
    }

    /// [`MetaDatabase::read`] as a stream of rows.
    pub fn rows(
        &self,
        table: usize,
    ) -> impl futures_core::Stream<Item = Result<Row, MetaError>> + use<> {
        rows_of(self.read(table))
    }

    /// Empties every table, then inserts what `rows` delivers, all in one transaction that commits only when
    /// [`Load::Commit`] arrives: a failure or a closed channel before it leaves the database as it was.
    pub async fn replace_all(
        &self,
        mut rows: mpsc::Receiver<Result<Load, MetaError>>,
    ) -> Result<(), MetaError> {
        match self {
            MetaDatabase::Sqlite(s) => {
                s.write(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    for name in cleared_tables() {
                        tx.execute(&format!("DELETE FROM {}", quoted(name)), [])?;
                    }
                    let statements: Vec<String> = TABLES
                        .iter()
                        .map(|t| {
                            let marks = (1..=t.columns.len())
                                .map(|i| format!("?{i}"))
                                .collect::<Vec<_>>()
                                .join(", ");
                            format!(
                                "INSERT INTO {} ({}) VALUES ({marks})",
                                quoted(t.name),
                                column_list(t)
                            )
                        })
                        .collect();
                    loop {
                        match rows.blocking_recv() {
                            Some(Ok(Load::Rows(table, batch))) => {
                                let mut stmt = tx.prepare_cached(&statements[table])?;
                                for row in &batch {
                                    stmt.execute(rusqlite::params_from_iter(row.iter()))?;
                                }
                            }
                            Some(Ok(Load::Commit)) => break,
                            Some(Err(e)) => return Err(e),
                            None => {
                                return Err(MetaError::other(
                                    "the metadata copy stopped before its end",
                                ));
                            }
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            MetaDatabase::Postgres(p) => {
                let mut conn = p.conn().await?;
                let tx = conn.transaction().await?;
                for name in cleared_tables() {
                    tx.batch_execute(&format!("DELETE FROM {}", quoted(name)))
                        .await?;
                }
                loop {
                    match rows.recv().await {
                        Some(Ok(Load::Rows(table, batch))) => {
                            pg_insert(&tx, &TABLES[table], &batch).await?;
                        }
                        Some(Ok(Load::Commit)) => break,
                        Some(Err(e)) => return Err(e),
                        None => {
                            return Err(MetaError::other(
                                "the metadata copy stopped before its end",
                            ));
                        }
                    }
                }
                for t in TABLES.iter().filter(|t| t.serial) {
                    // The next id handed out must follow the copied ones (explicit ids do not move a sequence).
                    tx.batch_execute(&format!(
                        "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false)",
                        t.name
                    ))
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }
}

fn sqlite_row(t: &Table, r: &rusqlite::Row<'_>) -> Result<Row, MetaError> {
    t.columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| {
            Ok(match ty {
                Int => r.get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int),
                Text => r
                    .get::<_, Option<String>>(i)?
                    .map_or(Value::Null, Value::Text),
                Bool => r
                    .get::<_, Option<i64>>(i)?
                    .map_or(Value::Null, |v| Value::Bool(v != 0)),
            })
        })
        .collect()
}

fn pg_row(t: &Table, r: &tokio_postgres::Row) -> Result<Row, MetaError> {
    t.columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| {
            Ok(match ty {
                Int => r
                    .try_get::<_, Option<i64>>(i)?
                    .map_or(Value::Null, Value::Int),
                Text => r
                    .try_get::<_, Option<String>>(i)?
                    .map_or(Value::Null, Value::Text),
                Bool => r
                    .try_get::<_, Option<bool>>(i)?
                    .map_or(Value::Null, Value::Bool),
            })
        })
        .collect()
}

/// Inserts a batch with one multi-row `INSERT` (one round trip per batch, not per row).
async fn pg_insert(
    tx: &tokio_postgres::Transaction<'_>,
    t: &Table,
    batch: &[Row],
) -> Result<(), MetaError> {
    if batch.is_empty() {
        return Ok(());
    }
    let width = t.columns.len();
    let values = (0..batch.len())
        .map(|r| {
            let marks = (1..=width)
                .map(|c| format!("${}", r * width + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({marks})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {values}",
        quoted(t.name),
        column_list(t)
    );
    let params: Vec<&(dyn ToSql + Sync)> = batch
        .iter()
        .flat_map(|row| row.iter().map(|v| v as &(dyn ToSql + Sync)))
        .collect();
    tx.execute(&sql, &params).await?;
    Ok(())
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as V};
        Ok(match self {
            Value::Null => ToSqlOutput::Owned(V::Null),
            Value::Int(i) => ToSqlOutput::Owned(V::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(s.as_bytes())),
            Value::Bool(b) => ToSqlOutput::Owned(V::Integer(i64::from(*b))),
        })
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty) || <bool as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Reads every table of `from` into one message stream for [`MetaDatabase::replace_all`], table after table,
/// ending with [`Load::Commit`]; `on_rows(table, n)` is told about each batch (progress).
pub fn stream_all(
    from: &MetaDatabase,
    mut on_rows: impl FnMut(usize, usize) + Send + 'static,
) -> mpsc::Receiver<Result<Load, MetaError>> {
    let (tx, rx) = mpsc::channel(4);
    let from = from.clone();
    tokio::spawn(async move {
        for (table, t) in TABLES.iter().enumerate() {
            let mut rows = from.read(table);
            loop {
                let msg = match rows.recv().await {
                    Some(Ok(Chunk::Rows(batch))) => {
                        on_rows(table, batch.len());
                        Ok(Load::Rows(table, batch))
                    }
                    Some(Ok(Chunk::End)) => break,
                    Some(Err(e)) => Err(e),
                    None => Err(MetaError::other(format!(
                        "reading table {} stopped before its end",
                        t.name
                    ))),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        }
        let _ = tx.send(Ok(Load::Commit)).await;
    });
    rx
}

/// The first row where two databases differ, as `table: description`, or `None` when every copied table holds the
/// same rows (what a finished `migrate-storage` leaves).
pub async fn first_difference(
    a: &MetaDatabase,
    b: &MetaDatabase,
) -> Result<Option<String>, MetaError> {
    for (i, t) in TABLES.iter().enumerate() {
        let mut left = std::pin::pin!(a.rows(i));
        let mut right = std::pin::pin!(b.rows(i));
        loop {
            let (l, r) = (
                left.next().await.transpose()?,
                right.next().await.transpose()?,
            );
            let key = |row: &Row| row.first().map(Value::to_string).unwrap_or_default();
            let what = match (l, r) {
                (None, None) => break,
                (Some(l), Some(r)) if l == r => continue,
                (Some(l), Some(r)) if key(&l) == key(&r) => format!("row {} differs", key(&l)),
                (Some(l), _) => format!("row {} is missing", key(&l)),
                (None, Some(r)) => format!("row {} is not in the source", key(&r)),
            };
            return Ok(Some(format!("table {}: {what}", t.name)));
        }
    }
    Ok(None)
}

/// A table stream as a stream of rows (errors, and an end without [`Chunk::End`], as errors).
fn rows_of(rx: RowStream) -> impl futures_core::Stream<Item = Result<Row, MetaError>> {
    futures_util::stream::unfold(
        (rx, Vec::new().into_iter(), false),
        |(mut rx, mut buf, done)| async move {
            loop {
                if let Some(row) = buf.next() {
                    return Some((Ok(row), (rx, buf, done)));
                }
                if done {
                    return None;
                }
                match rx.recv().await {
                    Some(Ok(Chunk::Rows(batch))) => buf = batch.into_iter(),
                    Some(Ok(Chunk::End)) => return None,
                    Some(Err(e)) => return Some((Err(e), (rx, buf, true))),
                    None => {
                        return Some((
                            Err(MetaError::other("a table read stopped before its end")),
                            (rx, buf, true),
                        ));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table of the schema is either copied with all its columns or deliberately left out: a migration that
    /// adds a table or a column must say here what `migrate-storage` does with it, or this fails.
    #[test]
    fn every_table_and_column_of_the_schema_is_accounted_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        SqliteMetadataStore::open(&path, super::super::sqlite::Synchronous::Normal).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.sort();
        let mut known: Vec<String> = TABLES
            .iter()
            .map(|t| t.name)
            .chain(CLEARED_ONLY.iter().copied())
            .map(str::to_owned)
            .collect();
        known.sort();
        assert_eq!(tables, known);
        for t in TABLES {
            let columns: Vec<String> = conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{}')", t.name))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let copied: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
            let not_copied: Vec<&String> = columns
                .iter()
                .filter(|c| !copied.contains(&c.as_str()))
                .collect();
            // tag_version is a cache stamp the tag triggers rebuild (module comment).
            let expected: Vec<&str> = if t.name == "repository" {
                vec!["tag_version"]
            } else {
                vec![]
            };
            assert_eq!(not_copied, expected, "columns of {} not copied", t.name);
            assert!(
                copied.iter().all(|c| columns.iter().any(|k| k == c)),
                "{} has every column the copy names",
                t.name
            );
        }
    }

    #[tokio::test]
    async fn sqlite_to_sqlite_copies_every_row_and_compares_equal() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            Arc::new(
                SqliteMetadataStore::open(
                    &dir.path().join(name),
                    super::super::sqlite::Synchronous::Normal,
                )
                .unwrap(),
            )
        };
        let source = open("a.db");
        let (a, b) = (
            MetaDatabase::Sqlite(source.clone()),
            MetaDatabase::Sqlite(open("b.db")),
        );
        source
            .write(|conn| {
                conn.execute_batch(
                    "INSERT INTO repository (id, name, created_at) VALUES (7, 'team/app', 1);
                     INSERT INTO blob VALUES ('sha256:aa', 3, 1, 2);
                     INSERT INTO repo_blob VALUES (7, 'sha256:aa', 1);
                     INSERT INTO manifest VALUES (7, 'sha256:aa', 'm', NULL, NULL, 3, NULL, 1, 99);
                     INSERT INTO tag VALUES (7, 'v1', 'sha256:aa', 5);
                     INSERT INTO maint_run VALUES (3, 'gc', 1, 2, 'ok', 1, '{}');
                     INSERT INTO auth_user VALUES ('alice', 'hash', 1, 1);
                     INSERT INTO auth_token VALUES ('t1', 'alice', 'ci', 'h', 'team/*:pull', 1, NULL, 4);",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(first_difference(&a, &b).await.unwrap().is_some());
        b.replace_all(stream_all(&a, |_, _| {})).await.unwrap();
        assert_eq!(a.counts().await.unwrap(), b.counts().await.unwrap());
        assert_eq!(first_difference(&a, &b).await.unwrap(), None);
        // Loading again replaces rather than duplicates.
        b.replace_all(stream_all(&a, |_, _| {})).await.unwrap();
        assert_eq!(first_difference(&a, &b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_load_that_stops_before_its_end_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteMetadataStore::open(
                &dir.path().join("b.db"),
                super::super::sqlite::Synchronous::Normal,
            )
            .unwrap(),
        );
        let db = MetaDatabase::Sqlite(store);
        let (tx, rx) = mpsc::channel(4);
        let repo = vec![
            Value::Int(1),
            Value::Text("team/app".into()),
            Value::Text("private".into()),
            Value::Null,
            Value::Int(1),
        ];
        tx.send(Ok(Load::Rows(0, vec![repo]))).await.unwrap();
        drop(tx);
        assert!(db.replace_all(rx).await.is_err());
        assert!(db.counts().await.unwrap().iter().all(|n| *n == 0));
    }
}
