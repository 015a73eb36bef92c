//! The thin layer under the metadata rules: one transaction type over SQLite and PostgreSQL, so every rule and every
//! SQL text above it is written once (docs/architecture.md, "One metadata layer").
//!
//! What differs between the backends lives here and nowhere else:
//! - placeholders: rules write PostgreSQL's `$1`; SQLite gets `?1` (`sqlite::placeholders`);
//! - types: parameters and columns pass as [`Param`] and [`Value`] (integers, text, booleans, NULL); a boolean
//!   column is INTEGER on SQLite, and either reads back as `bool` with [`Row::bool`];
//! - locks: [`Tx::lock`] takes transaction-scoped advisory locks on PostgreSQL, where transactions run at READ
//!   COMMITTED side by side; on SQLite it does nothing, since every write transaction is `BEGIN IMMEDIATE` and SQLite
//!   runs one at a time;
//! - a few spellings ([`Dialect`]): `GREATEST` or two-argument `MAX`, `strpos` or `instr`, `FOR KEY SHARE`;
//! - how a transaction starts, commits and is retried (the [`write_tx!`], [`read_tx!`] and [`scan_tx!`] macros).
//!
//! SQLite's driver is synchronous: its futures are ready when first polled, and run with [`ready`] on the thread
//! that holds the connection. A rule must therefore await nothing but `Tx` methods.

pub mod postgres;
pub mod sqlite;

use std::future::Future;

use super::MetaError;
use berth_oci::Digest;

/// A statement parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bool(bool),
}

macro_rules! param_from {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl<'a> From<$t> for Param<'a> {
            fn from($v: $t) -> Self {
                $e
            }
        })*
    };
}

// Sizes and counts above `i64::MAX` cannot be stored; they saturate (no blob or page is that large).
param_from! {
    i64 => |v| Param::Int(v);
    &'a i64 => |v| Param::Int(*v);
    u64 => |v| Param::Int(i64::try_from(v).unwrap_or(i64::MAX));
    usize => |v| Param::Int(i64::try_from(v).unwrap_or(i64::MAX));
    bool => |v| Param::Bool(v);
    &'a bool => |v| Param::Bool(*v);
    &'a str => |v| Param::Text(v);
    &'a String => |v| Param::Text(v);
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// Refuses what no backend can store the same way: PostgreSQL's text cannot hold a NUL byte, SQLite's can, so
/// both refuse it here and answer such input identically.
fn check_params(params: &[Param<'_>]) -> Result<(), MetaError> {
    if params
        .iter()
        .any(|p| matches!(p, Param::Text(s) if s.contains('\0')))
    {
        return Err(MetaError::Invalid("text contains a NUL byte".into()));
    }
    Ok(())
}

/// A column value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

impl From<Param<'_>> for Value {
    fn from(p: Param<'_>) -> Self {
        match p {
            Param::Null => Value::Null,
            Param::Int(v) => Value::Int(v),
            Param::Text(s) => Value::Text(s.to_owned()),
            Param::Bool(b) => Value::Bool(b),
        }
    }
}

/// Owned statement parameters, from anything a [`Param`] is made of: `vals![repo.as_str(), size, now()]`.
macro_rules! vals {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::sql::Value::from($crate::sql::Param::from($v))),*]
    };
}

impl Value {
    /// This value as a parameter (copying a row into another database).
    pub fn as_param(&self) -> Param<'_> {
        match self {
            Value::Null => Param::Null,
            Value::Int(v) => Param::Int(*v),
            Value::Text(s) => Param::Text(s),
            Value::Bool(b) => Param::Bool(*b),
        }
    }
}

/// A result row, read by column index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, MetaError> {
        self.0
            .get(i)
            .ok_or_else(|| MetaError::Corrupt(format!("result has no column {i}")))
    }

    fn mismatch(&self, i: usize, want: &str) -> MetaError {
        MetaError::Corrupt(format!(
            "column {i} is {:?}, expected {want}",
            self.0.get(i)
        ))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, MetaError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            Value::Bool(b) => Ok(Some(i64::from(*b))),
            Value::Text(_) => Err(self.mismatch(i, "an integer")),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64, MetaError> {
        self.opt_int(i)?
            .ok_or_else(|| self.mismatch(i, "an integer"))
    }

    /// A size or count: never negative as berth writes them.
    pub fn size(&self, i: usize) -> Result<u64, MetaError> {
        let v = self.int(i)?;
        u64::try_from(v).map_err(|_| self.mismatch(i, "a size"))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, MetaError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            _ => Err(self.mismatch(i, "text")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, MetaError> {
        self.opt_text(i)?.ok_or_else(|| self.mismatch(i, "text"))
    }

    pub fn bool(&self, i: usize) -> Result<bool, MetaError> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(v) => Ok(*v != 0),
            _ => Err(self.mismatch(i, "a boolean")),
        }
    }

    pub fn digest(&self, i: usize) -> Result<Digest, MetaError> {
        parse_digest(self.text(i)?)
    }

    pub fn opt_digest(&self, i: usize) -> Result<Option<Digest>, MetaError> {
        self.opt_text(i)?.map(parse_digest).transpose()
    }
}

pub fn parse_digest(s: String) -> Result<Digest, MetaError> {
    s.parse()
        .map_err(|e| MetaError::Corrupt(format!("bad digest {s:?} in database: {e}")))
}

/// What a transaction-scoped lock is on (see [`Tx::lock`]).
#[derive(Debug, Clone, Copy)]
pub enum Lock<'a> {
    /// A digest a transaction checks or changes: a push and a deletion of what it references serialise on it.
    Digest(&'a str),
    /// A tag being written (repository, tag): two pushes cannot both "create" an immutable tag.
    Tag(&'a str, &'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    /// The larger of two integers.
    pub fn greatest(self) -> &'static str {
        self.pick("MAX", "GREATEST")
    }

    /// An expression true when `needle` occurs in `haystack`, ignoring ASCII case.
    pub fn contains(self, haystack: &str, needle: &str) -> String {
        let f = self.pick("instr", "strpos");
        format!("{f}(lower({haystack}), lower({needle})) > 0")
    }

    /// Locks the rows a SELECT reads against deletion until commit (PostgreSQL; SQLite's writer excludes all).
    pub fn for_key_share(self) -> &'static str {
        self.pick("", " FOR KEY SHARE")
    }

    /// Locks the rows a SELECT reads against every other writer until commit.
    pub fn for_update(self) -> &'static str {
        self.pick("", " FOR UPDATE")
    }
}

/// One connection inside a transaction (or, for point reads, outside one).
pub enum Tx<'a> {
    Sqlite(&'a mut rusqlite::Connection),
    Postgres(postgres::PgConn<'a>),
}

impl Tx<'_> {
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    pub async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, MetaError> {
        check_params(params)?;
        match self {
            Tx::Sqlite(c) => sqlite::query(c, sql, params),
            Tx::Postgres(c) => c.query(sql, params).await,
        }
    }

    /// The first row, if any.
    pub async fn opt(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, MetaError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Exactly one row (aggregates).
    pub async fn one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, MetaError> {
        self.opt(sql, params)
            .await?
            .ok_or_else(|| MetaError::Corrupt(format!("no row from {sql:?}")))
    }

    pub async fn exists(&mut self, sql: &str, params: &[Param<'_>]) -> Result<bool, MetaError> {
        Ok(self.opt(sql, params).await?.is_some())
    }

    /// Runs a statement; the number of rows it changed.
    pub async fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, MetaError> {
        check_params(params)?;
        match self {
            Tx::Sqlite(c) => sqlite::execute(c, sql, params),
            Tx::Postgres(c) => c.execute(sql, params).await,
        }
    }

    /// Takes these locks until the transaction ends, in one global order (so transactions never deadlock on
    /// them). Taken first in a transaction, they make the checks after them see everything the previous holder
    /// committed: each statement at READ COMMITTED reads a fresh snapshot.
    pub async fn lock(&mut self, locks: &[Lock<'_>]) -> Result<(), MetaError> {
        match self {
            Tx::Sqlite(_) => Ok(()),
            Tx::Postgres(c) => c.lock(locks).await,
        }
    }
}

/// Runs a SQLite rule to completion on this thread. Its futures never wait (see the module comment); one that
/// does is a bug, reported instead of blocking.
pub fn ready<T>(f: impl Future<Output = Result<T, MetaError>>) -> Result<T, MetaError> {
    futures_util::FutureExt::now_or_never(f).unwrap_or_else(|| {
        Err(MetaError::other(
            "a SQLite metadata rule waited on something else",
        ))
    })
}

/// Pins a rule's output type, so `?` and `Ok` inside an `async` block know their error type.
pub fn typed<T, F: Future<Output = Result<T, MetaError>>>(f: F) -> F {
    f
}

/// The two databases a store can run on.
pub enum Db {
    Sqlite(sqlite::SqliteDb),
    Postgres(postgres::PgDb),
}

/// Runs `$body` (an expression of a future using `$tx: &mut Tx`) in a write transaction and commits it when it
/// returns `Ok`. SQLite: on the writer connection, `BEGIN IMMEDIATE`, on a blocking thread (the captured values
/// move there). PostgreSQL: READ COMMITTED, and run again after a serialization failure or deadlock, so the body
/// must only touch the database.
macro_rules! write_tx {
    ($db:expr, |$tx:ident| $body:expr) => {
        match $db {
            $crate::sql::Db::Sqlite(db) => {
                db.write(move |conn| {
                    let $tx = &mut $crate::sql::Tx::Sqlite(conn);
                    $crate::sql::ready($body)
                })
                .await
            }
            $crate::sql::Db::Postgres(db) => {
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    let mut conn = db.conn().await?;
                    let result = async {
                        let t = conn.transaction().await.map_err($crate::MetaError::from)?;
                        let out = {
                            let $tx = &mut $crate::sql::Tx::Postgres(
                                $crate::sql::postgres::PgConn::Tx(&t),
                            );
                            $crate::sql::typed($body).await
                        }?;
                        t.commit().await.map_err($crate::MetaError::from)?;
                        Ok::<_, $crate::MetaError>(out)
                    }
                    .await;
                    match result {
                        Err(e) if $crate::sql::postgres::retry(&e, attempt).await => {}
                        other => break other,
                    }
                }
            }
        }
    };
}

/// Runs `$body` as a point read: on SQLite inline on a pooled reader connection (WAL readers never wait for the
/// writer, and a hand-off to a blocking thread costs more than the read), on PostgreSQL on a pooled connection.
macro_rules! read_tx {
    ($db:expr, |$tx:ident| $body:expr) => {
        match $db {
            $crate::sql::Db::Sqlite(db) => db.read(move |conn| {
                let $tx = &mut $crate::sql::Tx::Sqlite(conn);
                $crate::sql::ready($body)
            }),
            $crate::sql::Db::Postgres(db) => {
                let conn = db.conn().await?;
                let $tx =
                    &mut $crate::sql::Tx::Postgres($crate::sql::postgres::PgConn::Client(&conn));
                $crate::sql::typed($body).await
            }
        }
    };
}

/// Runs `$body` in one read-only transaction whose statements all see the same snapshot (maintenance scans and
/// pages): on SQLite a deferred transaction on a reader connection, on a blocking thread; on PostgreSQL REPEATABLE
/// READ, read only.
macro_rules! scan_tx {
    ($db:expr, |$tx:ident| $body:expr) => {
        match $db {
            $crate::sql::Db::Sqlite(db) => {
                db.scan(move |conn| {
                    let $tx = &mut $crate::sql::Tx::Sqlite(conn);
                    $crate::sql::ready($body)
                })
                .await
            }
            $crate::sql::Db::Postgres(db) => {
                let mut conn = db.conn().await?;
                let t = conn
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err($crate::MetaError::from)?;
                let out = {
                    let $tx = &mut $crate::sql::Tx::Postgres($crate::sql::postgres::PgConn::Tx(&t));
                    $crate::sql::typed($body).await
                }?;
                t.commit().await.map_err($crate::MetaError::from)?;
                Ok::<_, $crate::MetaError>(out)
            }
        }
    };
}

pub(crate) use {read_tx, scan_tx, vals, write_tx};
