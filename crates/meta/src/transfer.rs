//! Whole-database copy between metadata stores, for `berth migrate-storage` (docs/scale-out.md, "Moving to the
//! scale-out shape").
//!
//! Both backends hold the tables of one schema (`meta::schema`), so the copy is generic: every table the schema
//! marks as copied is read in primary-key order, a page at a time, as rows of values and inserted as they are,
//! keeping repository ids (other tables refer to them) and every timestamp (pull times, access times, token
//! expiry). Reading streams through a bounded channel, so memory stays flat whatever the registry's size; the
//! destination is written in **one transaction**, so an interrupted copy leaves no metadata at all and a later run
//! starts the metadata over, while the blobs already copied are skipped.
//!
//! Not copied (the schema says which): upload sessions (their bytes are temporary objects of the source's blob
//! store), GC tombstones (they name bytes whose rows are already gone) and `repository.tag_version` (a cache stamp
//! the tag triggers maintain).

use std::sync::{Arc, LazyLock};

use futures_core::Stream;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::MetaError;
use super::schema::{self, TableShape, Type};
pub use super::sql::Value;
use super::sql::{Dialect, Param, write_tx};
use super::store::SqlStore;

/// Every table that is copied, parents before children (the order foreign keys need on insert).
pub static TABLES: LazyLock<Vec<TableShape>> =
    LazyLock::new(|| schema::tables().into_iter().filter(|t| t.copied).collect());

/// Every table, children first: all are emptied before a copy.
fn cleared_tables() -> Vec<&'static str> {
    schema::tables().iter().rev().map(|t| t.name).collect()
}

/// The index of a table in [`TABLES`].
pub fn table_index(name: &str) -> Option<usize> {
    TABLES.iter().position(|t| t.name == name)
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

/// Rows read per page and per message on the copy channel.
const BATCH: usize = 500;

/// Messages of a whole-database load: rows of `TABLES[i]`, then `Commit` once every table was sent.
pub enum Load {
    Rows(usize, Vec<Row>),
    Commit,
}

/// A metadata database opened for whole-table reads and writes.
pub type MetaDatabase = Arc<SqlStore>;

fn column_list(t: &TableShape) -> String {
    let names: Vec<&str> = t
        .columns
        .iter()
        .filter(|c| c.copied)
        .map(|c| c.name)
        .collect();
    names.join(", ")
}

/// The next page of a table after the row whose key values are `after`, in key order.
fn page_sql(t: &TableShape, after: bool) -> String {
    let key = t.key.join(", ");
    let marks: Vec<String> = (1..=t.key.len()).map(|i| format!("${i}")).collect();
    let filter = if after {
        format!("WHERE ({key}) > ({})", marks.join(", "))
    } else {
        String::new()
    };
    format!(
        "SELECT {} FROM {} {filter} ORDER BY {key} LIMIT {BATCH}",
        column_list(t),
        t.name
    )
}

/// A row as both backends give it: booleans as booleans (SQLite stores them as integers).
fn normalized(t: &TableShape, row: super::sql::Row) -> Row {
    t.columns
        .iter()
        .filter(|c| c.copied)
        .zip(row.0)
        .map(|(c, v)| match (c.ty, v) {
            (Type::Bool, Value::Int(i)) => Value::Bool(i != 0),
            (_, v) => v,
        })
        .collect()
}

/// Rows in each of [`TABLES`].
pub async fn counts(db: &SqlStore) -> Result<Vec<u64>, MetaError> {
    let mut out = Vec::with_capacity(TABLES.len());
    for t in TABLES.iter() {
        let sql = format!("SELECT COUNT(*) FROM {}", t.name);
        out.push(
            db.read(&sql, Vec::new())
                .await?
                .first()
                .map_or(Ok(0), |r| r.size(0))?,
        );
    }
    Ok(out)
}

/// PostgreSQL: how many other client sessions are connected to the database (berth replicas, or anything else);
/// `None` on SQLite, where the data-directory lock already excludes a running server.
pub async fn other_sessions(db: &SqlStore) -> Result<Option<u64>, MetaError> {
    if !db.shared() {
        return Ok(None);
    }
    let sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
    db.read(sql, Vec::new())
        .await?
        .first()
        .map(|r| r.size(0))
        .transpose()
}

/// The rows of `TABLES[table]` in primary-key order, a page at a time, each page read after the key of the last.
pub fn pages(
    db: &MetaDatabase,
    table: usize,
) -> impl Stream<Item = Result<Vec<Row>, MetaError>> + use<> {
    let db = db.clone();
    let t = &TABLES[table];
    let key: Vec<usize> = t
        .key
        .iter()
        .filter_map(|k| {
            t.columns
                .iter()
                .filter(|c| c.copied)
                .position(|c| c.name == *k)
        })
        .collect();
    futures_util::stream::try_unfold(Some(Vec::new()), move |after: Option<Vec<Value>>| {
        let (db, key) = (db.clone(), key.clone());
        async move {
            let Some(after) = after else { return Ok(None) };
            let rows = db.read(&page_sql(t, !after.is_empty()), after).await?;
            let page: Vec<Row> = rows.into_iter().map(|r| normalized(t, r)).collect();
            let next = match (page.len() == BATCH, page.last()) {
                (true, Some(last)) => {
                    Some(key.iter().filter_map(|i| last.get(*i).cloned()).collect())
                }
                _ => None,
            };
            Ok((!page.is_empty()).then_some((page, next)))
        }
    })
}

/// [`pages`] as a stream of rows.
pub fn rows(db: &MetaDatabase, table: usize) -> impl Stream<Item = Result<Row, MetaError>> + use<> {
    pages(db, table)
        .map_ok(|page| futures_util::stream::iter(page.into_iter().map(Ok)))
        .try_flatten()
}

/// One multi-row `INSERT` of a batch (one round trip per batch, not per row).
fn insert_sql(t: &TableShape, rows: usize) -> String {
    let width = t.columns.iter().filter(|c| c.copied).count();
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", marks.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        t.name,
        column_list(t),
        values.join(", ")
    )
}

/// Empties every table, then inserts what `rows` delivers, all in one transaction that commits only when
/// [`Load::Commit`] arrives: a failure or a closed channel before it leaves the database as it was.
pub async fn replace_all(
    db: &SqlStore,
    mut rows: mpsc::Receiver<Result<Load, MetaError>>,
) -> Result<(), MetaError> {
    write_tx!(db.db(), |tx| async {
        for name in cleared_tables() {
            tx.exec(&format!("DELETE FROM {name}"), &[]).await?;
        }
        loop {
            // SQLite's transaction runs on a blocking thread of its own, where waiting for the channel is fine.
            let msg = match tx.dialect() {
                Dialect::Sqlite => rows.blocking_recv(),
                Dialect::Postgres => rows.recv().await,
            };
            match msg {
                Some(Ok(Load::Rows(table, batch))) if !batch.is_empty() => {
                    let params: Vec<Param<'_>> =
                        batch.iter().flatten().map(Value::as_param).collect();
                    tx.exec(&insert_sql(&TABLES[table], batch.len()), &params)
                        .await?;
                }
                Some(Ok(Load::Rows(..))) => {}
                Some(Ok(Load::Commit)) => break,
                Some(Err(e)) => return Err(e),
                None => return Err(MetaError::other("the metadata copy stopped before its end")),
            }
        }
        if tx.dialect() == Dialect::Postgres {
            for t in TABLES.iter().filter(|t| t.serial()) {
                // The next id handed out must follow the copied ones (explicit ids do not move a sequence).
                tx.query(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false)",
                        t.name
                    ),
                    &[],
                )
                .await?;
            }
        }
        Ok(())
    })
}

/// Reads every table of `from` into one message stream for [`replace_all`], table after table,
/// ending with [`Load::Commit`]; `on_rows(table, n)` is told about each batch (progress).
pub fn stream_all(
    from: &MetaDatabase,
    mut on_rows: impl FnMut(usize, usize) + Send + 'static,
) -> mpsc::Receiver<Result<Load, MetaError>> {
    let (tx, rx) = mpsc::channel(4);
    let from = from.clone();
    tokio::spawn(async move {
        for table in 0..TABLES.len() {
            let mut pages = std::pin::pin!(pages(&from, table));
            while let Some(page) = pages.next().await {
                let failed = page.is_err();
                let msg = page.map(|batch| {
                    on_rows(table, batch.len());
                    Load::Rows(table, batch)
                });
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
        let mut left = std::pin::pin!(rows(a, i));
        let mut right = std::pin::pin!(rows(b, i));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::sqlite::Synchronous;

    fn open(dir: &std::path::Path, name: &str) -> MetaDatabase {
        Arc::new(SqlStore::sqlite(&dir.join(name), Synchronous::Normal).unwrap())
    }

    /// Every table the database has is either copied or deliberately left out by the schema, and the copy names
    /// only columns the database has.
    #[test]
    fn every_table_and_column_of_the_schema_is_accounted_for() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), "berth.db"));
        let conn = rusqlite::Connection::open(dir.path().join("berth.db")).unwrap();
        let names = |sql: &str| -> Vec<String> {
            let mut v: Vec<String> = conn
                .prepare(sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            v.sort();
            v
        };
        let mut known: Vec<String> = schema::tables().iter().map(|t| t.name.to_owned()).collect();
        known.sort();
        assert_eq!(
            names("SELECT name FROM sqlite_master WHERE type = 'table'"),
            known
        );
        for t in schema::tables() {
            let mut declared: Vec<String> = t
                .columns
                .iter()
                .map(|c| c.name.trim_matches('"').to_owned())
                .collect();
            declared.sort();
            assert_eq!(
                names(&format!("SELECT name FROM pragma_table_info('{}')", t.name)),
                declared,
                "columns of {}",
                t.name
            );
        }
        let not_copied: Vec<&str> = TABLES
            .iter()
            .flat_map(|t| t.columns.iter().filter(|c| !c.copied).map(|c| c.name))
            .collect();
        // tag_version is a cache stamp the tag triggers rebuild (module comment).
        assert_eq!(not_copied, ["tag_version"]);
    }
}
