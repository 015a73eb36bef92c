//! The metadata rules, written once over [`sql::Tx`](super::sql::Tx) for SQLite and PostgreSQL alike: every method
//! of the store traits is one rule here (registry, below), in `maint.rs`, `ui.rs` or `auth.rs`.
//!
//! A rule that checks something and writes depending on it takes its locks first ([`Tx::lock`]: the digests it
//! checks or changes, the tags it writes), then checks, then writes; nothing is written before every check has
//! passed, so a rejection commits nothing.

mod auth;
mod maint;
mod ui;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::sql::postgres::{PgDb, PgSettings};
use super::sql::sqlite::{SqliteDb, Synchronous};
use super::sql::{Db, Dialect, Lock, Param, Row, Tx, Value, read_tx, scan_tx, vals, write_tx};
use super::{
    Coordination, Eviction, FetchLease, ManifestRecord, ManifestRejection, MetaError,
    MetadataStore, NewManifest, Page, RefKind, RemoveOutcome, StoreLock, UploadRecord, now,
};
use berth_oci::{Digest, RepoName, name::Tag};

/// Repositories whose tag list is kept in memory at most (the cache is dropped whole when full).
const TAG_LIST_CACHE_REPOS: usize = 1024;

/// Tag lists by repository name, with the repository id and `tag_version` they were read at. The id matters: a
/// repository deleted by GC and pushed again is a new row whose version counts from zero again.
type TagLists = Arc<Mutex<HashMap<String, ((i64, i64), Arc<Vec<String>>)>>>;

/// The metadata store, on either database.
pub struct SqlStore {
    db: Db,
    tag_lists: TagLists,
}

impl SqlStore {
    /// Opens (creating and migrating as needed) the SQLite database at `path`.
    pub fn sqlite(path: &Path, synchronous: Synchronous) -> Result<SqlStore, MetaError> {
        Ok(SqlStore::on(Db::Sqlite(SqliteDb::open(path, synchronous)?)))
    }

    /// Prepares PostgreSQL's pools; the first operation (or [`SqlStore::ready`]) connects and migrates.
    pub fn postgres(settings: &PgSettings) -> Result<SqlStore, MetaError> {
        Ok(SqlStore::on(Db::Postgres(PgDb::open(settings)?)))
    }

    fn on(db: Db) -> SqlStore {
        SqlStore {
            db,
            tag_lists: Default::default(),
        }
    }

    /// Connects and migrates now (PostgreSQL), so that `serve` fails at start, not at the first request.
    pub async fn ready(&self) -> Result<(), MetaError> {
        match &self.db {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(db) => db.ready().await,
        }
    }

    /// Whether replicas may share this store (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    pub(super) fn db(&self) -> &Db {
        &self.db
    }

    pub(super) fn dialect(&self) -> Dialect {
        match self.db {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// One statement in a write transaction of its own; the rows it changed.
    pub(super) async fn exec(&self, sql: &str, params: Vec<Value>) -> Result<u64, MetaError> {
        self.exec_each(sql, vec![params]).await
    }

    /// One statement run once per parameter list, all in one write transaction; the rows they changed.
    pub(super) async fn exec_each(
        &self,
        sql: &str,
        each: Vec<Vec<Value>>,
    ) -> Result<u64, MetaError> {
        let sql = sql.to_owned();
        write_tx!(&self.db, |tx| async {
            let mut n = 0;
            for params in &each {
                n += tx.exec(&sql, &as_params(params)).await?;
            }
            Ok(n)
        })
    }

    /// One point read (see `read_tx!`).
    pub(super) async fn read(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>, MetaError> {
        read_tx!(&self.db, |tx| async {
            tx.query(sql, &as_params(&params)).await
        })
    }

    /// One long read on its own snapshot (see `scan_tx!`).
    pub(super) async fn scan(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>, MetaError> {
        let sql = sql.to_owned();
        scan_tx!(&self.db, |tx| async {
            tx.query(&sql, &as_params(&params)).await
        })
    }

    /// Commits a verified blob (its bytes are published) and links it into `repo`, a private repository or, with
    /// `mirror`, a cached one.
    async fn put_blob(
        &self,
        repo: &RepoName,
        mirror: Option<&str>,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError> {
        let (repo, mirror, digest) = (
            repo.to_string(),
            mirror.map(str::to_owned),
            digest.to_string(),
        );
        write_tx!(&self.db, |tx| async {
            tx.lock(&[Lock::Digest(&digest)]).await?;
            let id = ensure_repo(tx, &repo, mirror.as_deref()).await?;
            insert_blob(tx, &digest, size).await?;
            link_blob(tx, id, &digest).await
        })
    }

    async fn remove(
        &self,
        repo: &RepoName,
        digest: &Digest,
        how: &'static Removal,
    ) -> Result<RemoveOutcome, MetaError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        write_tx!(&self.db, |tx| remove(tx, &repo, &digest, how))
    }
}

fn as_params(values: &[Value]) -> Vec<Param<'_>> {
    values.iter().map(Value::as_param).collect()
}

/// The first column of every row, as text.
pub(super) fn texts(rows: Vec<Row>) -> Result<Vec<String>, MetaError> {
    rows.iter().map(|r| r.text(0)).collect()
}

pub(super) async fn repo_id(tx: &mut Tx<'_>, repo: &str) -> Result<Option<i64>, MetaError> {
    tx.opt("SELECT id FROM repository WHERE name = $1", &[repo.into()])
        .await?
        .map(|r| r.int(0))
        .transpose()
}

/// The repository's id, creating it (private, or cached for `mirror`) when missing. On PostgreSQL the row is locked
/// `FOR KEY SHARE` until commit, so `gc_delete_empty_repositories` cannot delete it under the rows this adds.
async fn ensure_repo(tx: &mut Tx<'_>, repo: &str, mirror: Option<&str>) -> Result<i64, MetaError> {
    let kind = if mirror.is_some() {
        "mirror"
    } else {
        "private"
    };
    let select = format!(
        "SELECT id FROM repository WHERE name = $1{}",
        tx.dialect().for_key_share()
    );
    for _ in 0..3 {
        if let Some(r) = tx.opt(&select, &[repo.into()]).await? {
            return r.int(0);
        }
        // A concurrent creator (another replica) makes this insert do nothing; the next select then sees its row.
        if let Some(r) = tx
            .opt(
                "INSERT INTO repository (name, kind, mirror, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[repo.into(), kind.into(), mirror.into(), now().into()],
            )
            .await?
        {
            return r.int(0);
        }
    }
    Err(MetaError::Conflict(format!(
        "repository {repo:?} keeps disappearing while being created"
    )))
}

async fn insert_blob(tx: &mut Tx<'_>, digest: &str, size: u64) -> Result<(), MetaError> {
    tx.exec(
        "INSERT INTO blob (digest, size, created_at, last_access) VALUES ($1, $2, $3, $3)
         ON CONFLICT (digest) DO NOTHING",
        &[digest.into(), size.into(), now().into()],
    )
    .await?;
    Ok(())
}

/// Inserts a manifest's blob row and its manifest row (both idempotent: same digest, same bytes).
async fn insert_manifest(
    tx: &mut Tx<'_>,
    repo: i64,
    rec: &ManifestRecord,
    t: i64,
) -> Result<(), MetaError> {
    let digest = rec.digest.to_string();
    let subject = rec.subject.as_ref().map(|s| s.to_string());
    insert_blob(tx, &digest, rec.size).await?;
    tx.exec(
        "INSERT INTO manifest (repo, digest, media_type, artifact_type, subject, size, annotations, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (repo, digest) DO NOTHING",
        &[
            repo.into(),
            (&digest).into(),
            (&rec.media_type).into(),
            rec.artifact_type.as_ref().into(),
            subject.as_ref().into(),
            rec.size.into(),
            rec.annotations.as_ref().into(),
            t.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Points a tag at a manifest (creating or moving it) and stamps the time.
async fn set_tag(
    tx: &mut Tx<'_>,
    repo: i64,
    tag: &str,
    digest: &str,
    t: i64,
) -> Result<(), MetaError> {
    tx.exec(
        "INSERT INTO tag (repo, name, manifest, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (repo, name) DO UPDATE SET manifest = excluded.manifest, updated_at = excluded.updated_at",
        &[repo.into(), tag.into(), digest.into(), t.into()],
    )
    .await?;
    Ok(())
}

/// Records that a blob's row is gone and its bytes are to be deleted (see `maint::gc`).
pub(super) async fn tombstone(tx: &mut Tx<'_>, digest: &str) -> Result<(), MetaError> {
    tx.exec(
        "INSERT INTO blob_tombstone (digest, deleted_at) VALUES ($1, $2)
         ON CONFLICT (digest) DO UPDATE SET deleted_at = excluded.deleted_at",
        &[digest.into(), now().into()],
    )
    .await?;
    Ok(())
}

/// Makes a blob visible in a repository (idempotent). `created_at` is the link's last confirmation, from which
/// garbage collection counts its grace period, so linking again (a re-push, a mount) renews it.
async fn link_blob(tx: &mut Tx<'_>, repo: i64, digest: &str) -> Result<(), MetaError> {
    tx.exec(
        "INSERT INTO repo_blob (repo, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repo, digest) DO UPDATE SET created_at = excluded.created_at",
        &[repo.into(), digest.into(), now().into()],
    )
    .await?;
    Ok(())
}

pub(super) const MANIFEST_COLUMNS: &str =
    "m.digest, m.media_type, m.artifact_type, m.subject, m.size, m.annotations";

pub(super) fn to_record(r: &Row) -> Result<ManifestRecord, MetaError> {
    Ok(ManifestRecord {
        digest: r.digest(0)?,
        media_type: r.text(1)?,
        artifact_type: r.opt_text(2)?,
        subject: r.opt_digest(3)?,
        size: r.size(4)?,
        annotations: r.opt_text(5)?,
    })
}

/// A size from an optional row's first column.
fn size_of(row: Option<Row>) -> Result<Option<u64>, MetaError> {
    row.map(|r| r.size(0)).transpose()
}

async fn put_manifest(
    tx: &mut Tx<'_>,
    m: &NewManifest,
) -> Result<Result<(), ManifestRejection>, MetaError> {
    let digest = m.record.digest.to_string();
    let refs: Vec<String> = m.refs.iter().map(|r| r.digest.to_string()).collect();
    let mut locks: Vec<Lock<'_>> = std::iter::once(&digest)
        .chain(&refs)
        .map(|d| Lock::Digest(d))
        .collect();
    locks.extend(
        m.tags
            .iter()
            .map(|t| Lock::Tag(m.repo.as_str(), t.as_str())),
    );
    tx.lock(&locks).await?;
    let select = format!(
        "SELECT id FROM repository WHERE name = $1{}",
        tx.dialect().for_key_share()
    );
    let existing = match tx.opt(&select, &[m.repo.as_str().into()]).await? {
        Some(r) => Some(r.int(0)?),
        None => None,
    };
    let mut missing = Vec::new();
    for (r, d) in m.refs.iter().zip(&refs) {
        let sql = match r.kind {
            RefKind::Config | RefKind::Layer => {
                "SELECT b.size FROM repo_blob rb JOIN blob b ON b.digest = rb.digest
                 WHERE rb.repo = $1 AND rb.digest = $2"
            }
            RefKind::Child => "SELECT size FROM manifest WHERE repo = $1 AND digest = $2",
        };
        let actual = match existing {
            None => None,
            Some(id) => size_of(tx.opt(sql, &[id.into(), d.into()]).await?)?,
        };
        match actual {
            None => missing.push(r.digest.clone()),
            Some(a) if a != r.size => {
                return Ok(Err(ManifestRejection::SizeMismatch {
                    digest: r.digest.clone(),
                    declared: r.size,
                    actual: a,
                }));
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Ok(Err(ManifestRejection::Missing(missing)));
    }
    if m.immutable_tags
        && let Some(id) = existing
    {
        for t in &m.tags {
            let current = tx
                .opt(
                    "SELECT manifest FROM tag WHERE repo = $1 AND name = $2",
                    &[id.into(), t.as_str().into()],
                )
                .await?;
            if current
                .map(|r| r.text(0))
                .transpose()?
                .is_some_and(|c| c != digest)
            {
                return Ok(Err(ManifestRejection::TagImmutable(t.clone())));
            }
        }
    }
    let id = match existing {
        Some(id) => id,
        None => ensure_repo(tx, m.repo.as_str(), None).await?,
    };
    let t = now();
    insert_manifest(tx, id, &m.record, t).await?;
    for (r, d) in m.refs.iter().zip(&refs) {
        tx.exec(
            "INSERT INTO manifest_ref (repo, manifest, child, kind) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[id.into(), (&digest).into(), d.into(), r.kind.as_str().into()],
        )
        .await?;
    }
    for tag in &m.tags {
        set_tag(tx, id, tag.as_str(), &digest, t).await?;
    }
    Ok(Ok(()))
}

async fn mount_blob(
    tx: &mut Tx<'_>,
    repo: &str,
    from: Option<&str>,
    digest: &str,
) -> Result<Option<u64>, MetaError> {
    tx.lock(&[Lock::Digest(digest)]).await?;
    let row = match from {
        Some(from) => {
            tx.opt(
                "SELECT b.size FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                 JOIN blob b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest = $2",
                &[from.into(), digest.into()],
            )
            .await?
        }
        None => {
            tx.opt(
                "SELECT b.size FROM blob b WHERE b.digest = $1
                 AND EXISTS (SELECT 1 FROM repo_blob rb WHERE rb.digest = b.digest)",
                &[digest.into()],
            )
            .await?
        }
    };
    let Some(size) = size_of(row)? else {
        return Ok(None);
    };
    let id = ensure_repo(tx, repo, None).await?;
    link_blob(tx, id, digest).await?;
    Ok(Some(size))
}

/// How to remove a blob link or a manifest (`$1` the repository id, `$2` the digest): whether it is there, the
/// first manifest in the repository that still references it, and what to delete.
struct Removal {
    present: &'static str,
    referrer: &'static str,
    deletes: &'static [&'static str],
}

async fn remove(
    tx: &mut Tx<'_>,
    repo: &str,
    digest: &str,
    how: &Removal,
) -> Result<RemoveOutcome, MetaError> {
    tx.lock(&[Lock::Digest(digest)]).await?;
    let Some(id) = repo_id(tx, repo).await? else {
        return Ok(RemoveOutcome::NotFound);
    };
    let p = [id.into(), digest.into()];
    if !tx.exists(how.present, &p).await? {
        return Ok(RemoveOutcome::NotFound);
    }
    if let Some(r) = tx.opt(how.referrer, &p).await? {
        return Ok(RemoveOutcome::ReferencedBy(r.digest(0)?));
    }
    for sql in how.deletes {
        tx.exec(sql, &p).await?;
    }
    Ok(RemoveOutcome::Removed)
}

async fn list_tags(
    tx: &mut Tx<'_>,
    cache: &TagLists,
    repo: &str,
    page: &Page,
) -> Result<Option<Vec<String>>, MetaError> {
    // Version first, then the list (a later snapshot): a list cached under a version is never older than that
    // version, so a cached list is stale only if the version moved, whoever moved it.
    let Some(row) = tx
        .opt(
            "SELECT id, tag_version FROM repository WHERE name = $1",
            &[repo.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let key = (row.int(0)?, row.int(1)?);
    let cached = cache
        .lock()
        .get(repo)
        .filter(|(v, _)| *v == key)
        .map(|(_, t)| t.clone());
    let tags = match cached {
        Some(t) => t,
        None => {
            let t = Arc::new(texts(
                tx.query(
                    "SELECT name FROM tag WHERE repo = $1 ORDER BY name",
                    &[key.0.into()],
                )
                .await?,
            )?);
            let mut c = cache.lock();
            if c.len() >= TAG_LIST_CACHE_REPOS {
                c.clear();
            }
            c.insert(repo.to_owned(), (key, t.clone()));
            t
        }
    };
    let start = page
        .last
        .as_ref()
        .map_or(0, |l| tags.partition_point(|t| t <= l));
    let end = page
        .n
        .map_or(tags.len(), |n| tags.len().min(start.saturating_add(n)));
    Ok(Some(tags[start..end.max(start)].to_vec()))
}

async fn evict_mirror_blob(
    tx: &mut Tx<'_>,
    mirror: &str,
    digest: &str,
) -> Result<Eviction, MetaError> {
    tx.lock(&[Lock::Digest(digest)]).await?;
    let private = tx
        .exists(
            "SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
             WHERE rb.digest = $1 AND r.kind = 'private' LIMIT 1",
            &[digest.into()],
        )
        .await?;
    let size = size_of(
        tx.opt("SELECT size FROM blob WHERE digest = $1", &[digest.into()])
            .await?,
    )?;
    let Some(size) = size.filter(|_| !private) else {
        return Ok(Eviction::Kept);
    };
    let unlinked = tx
        .exec(
            "DELETE FROM repo_blob WHERE digest = $2
             AND repo IN (SELECT id FROM repository WHERE kind = 'mirror' AND mirror = $1)",
            &[mirror.into(), digest.into()],
        )
        .await?;
    if unlinked == 0 {
        return Ok(Eviction::Kept);
    }
    let referenced = tx
        .one(
            "SELECT EXISTS (SELECT 1 FROM repo_blob WHERE digest = $1)
                 OR EXISTS (SELECT 1 FROM manifest WHERE digest = $1)",
            &[digest.into()],
        )
        .await?
        .bool(0)?;
    if !referenced {
        tx.exec("DELETE FROM blob WHERE digest = $1", &[digest.into()])
            .await?;
        tombstone(tx, digest).await?;
    }
    Ok(Eviction::Unlinked {
        size,
        row_deleted: !referenced,
    })
}

fn to_upload(r: &Row) -> Result<UploadRecord, MetaError> {
    let id = r.text(0)?;
    Ok(UploadRecord {
        repo: r
            .text(1)?
            .parse()
            .map_err(|e| MetaError::Corrupt(format!("upload {id} repository: {e}")))?,
        algorithm: r
            .text(2)?
            .parse()
            .map_err(|e| MetaError::Corrupt(format!("upload {id} algorithm: {e}")))?,
        started_at: r.int(3)?,
        committed: r.opt_int(4)?.map(|_| r.size(4)).transpose()?,
        id,
    })
}

/// Blobs cached by `mirror` that no private repository links (those are not the cache's to evict).
const MIRROR_ONLY: &str = "EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                   WHERE rb.digest = b.digest AND r.kind = 'mirror' AND r.mirror = $1)
    AND NOT EXISTS (SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                    WHERE rb.digest = b.digest AND r.kind = 'private')";

/// A blob link's removal: refused while a manifest in the repository uses the blob.
const UNLINK: Removal = Removal {
    present: "SELECT 1 FROM repo_blob WHERE repo = $1 AND digest = $2",
    referrer: "SELECT manifest FROM manifest_ref WHERE repo = $1 AND child = $2 AND kind IN ('config', 'layer') LIMIT 1",
    deletes: &["DELETE FROM repo_blob WHERE repo = $1 AND digest = $2"],
};

/// A manifest's removal with its tags and references: refused while an index in the repository lists it.
const DELETE_MANIFEST: Removal = Removal {
    present: "SELECT 1 FROM manifest WHERE repo = $1 AND digest = $2",
    referrer: "SELECT manifest FROM manifest_ref
               WHERE repo = $1 AND child = $2 AND kind = 'child' AND manifest != $2 LIMIT 1",
    deletes: &[
        "DELETE FROM tag WHERE repo = $1 AND manifest = $2",
        "DELETE FROM manifest_ref WHERE repo = $1 AND manifest = $2",
        "DELETE FROM manifest WHERE repo = $1 AND digest = $2",
    ],
};

/// A repository's manifest by digest (`$1`, `$2`), or by tag with the tag's time as column 6.
fn manifest_sql(by_tag: bool) -> String {
    match by_tag {
        false => format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifest m JOIN repository r ON r.id = m.repo
             WHERE r.name = $1 AND m.digest = $2"
        ),
        true => format!(
            "SELECT {MANIFEST_COLUMNS}, t.updated_at FROM tag t JOIN repository r ON r.id = t.repo
             JOIN manifest m ON m.repo = t.repo AND m.digest = t.manifest WHERE r.name = $1 AND t.name = $2"
        ),
    }
}

#[async_trait::async_trait]
impl MetadataStore for SqlStore {
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError> {
        self.put_blob(repo, None, digest, size).await
    }

    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let sql = "SELECT b.size FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                   JOIN blob b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest = $2";
        size_of(
            self.read(sql, vals![repo.as_str(), &digest.to_string()])
                .await?
                .pop(),
        )
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        from: Option<&RepoName>,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError> {
        let (repo, from, digest) = (
            repo.to_string(),
            from.map(|f| f.to_string()),
            digest.to_string(),
        );
        write_tx!(&self.db, |tx| mount_blob(
            tx,
            &repo,
            from.as_deref(),
            &digest
        ))
    }

    async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<RemoveOutcome, MetaError> {
        self.remove(repo, digest, &UNLINK).await
    }

    async fn put_manifest(
        &self,
        m: NewManifest,
    ) -> Result<Result<(), ManifestRejection>, MetaError> {
        write_tx!(&self.db, |tx| put_manifest(tx, &m))
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let rows = self
            .read(
                &manifest_sql(false),
                vals![repo.as_str(), &digest.to_string()],
            )
            .await?;
        rows.first().map(to_record).transpose()
    }

    async fn tagged_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        Ok(self.cached_tag(repo, tag).await?.map(|(m, _)| m))
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<RemoveOutcome, MetaError> {
        self.remove(repo, digest, &DELETE_MANIFEST).await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, MetaError> {
        let sql = "DELETE FROM tag WHERE repo = (SELECT id FROM repository WHERE name = $1) AND name = $2";
        Ok(self.exec(sql, vals![repo.as_str(), tag.as_str()]).await? > 0)
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        page: &Page,
    ) -> Result<Option<Vec<String>>, MetaError> {
        let (repo, page, cache) = (repo.to_string(), page.clone(), self.tag_lists.clone());
        read_tx!(&self.db, |tx| list_tags(tx, &cache, &repo, &page))
    }

    async fn list_repositories(&self, page: &Page) -> Result<Vec<String>, MetaError> {
        let sql = "SELECT name FROM repository WHERE name > $1 ORDER BY name LIMIT $2";
        let last = page.last.as_deref().unwrap_or_default();
        texts(
            self.read(sql, vals![last, page.n.unwrap_or(usize::MAX)])
                .await?,
        )
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ManifestRecord>, MetaError> {
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifest m JOIN repository r ON r.id = m.repo
             WHERE r.name = $1 AND m.subject = $2 AND (CAST($3 AS TEXT) IS NULL OR m.artifact_type = $3)
             ORDER BY m.digest"
        );
        let rows = self
            .read(
                &sql,
                vals![repo.as_str(), &subject.to_string(), artifact_type],
            )
            .await?;
        rows.iter().map(to_record).collect()
    }

    async fn cache_manifest(
        &self,
        repo: &RepoName,
        mirror: &str,
        record: &ManifestRecord,
        tag: Option<&Tag>,
    ) -> Result<(), MetaError> {
        let (repo, mirror, rec, tag) = (
            repo.to_string(),
            mirror.to_owned(),
            record.clone(),
            tag.map(|t| t.to_string()),
        );
        write_tx!(&self.db, |tx| async {
            let digest = rec.digest.to_string();
            let mut locks = vec![Lock::Digest(&digest)];
            locks.extend(tag.as_deref().map(|t| Lock::Tag(&repo, t)));
            tx.lock(&locks).await?;
            let id = ensure_repo(tx, &repo, Some(&mirror)).await?;
            let t = now();
            insert_manifest(tx, id, &rec, t).await?;
            if let Some(tag) = &tag {
                set_tag(tx, id, tag, &digest, t).await?;
            }
            Ok(())
        })
    }

    async fn cached_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(ManifestRecord, i64)>, MetaError> {
        let rows = self
            .read(&manifest_sql(true), vals![repo.as_str(), tag.as_str()])
            .await?;
        rows.first()
            .map(|r| Ok((to_record(r)?, r.int(6)?)))
            .transpose()
    }

    async fn touch_tag(&self, repo: &RepoName, tag: &Tag) -> Result<(), MetaError> {
        let sql = "UPDATE tag SET updated_at = $3 WHERE repo = (SELECT id FROM repository WHERE name = $1) AND name = $2";
        self.exec(sql, vals![repo.as_str(), tag.as_str(), now()])
            .await
            .map(drop)
    }

    async fn cache_blob(
        &self,
        repo: &RepoName,
        mirror: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError> {
        self.put_blob(repo, Some(mirror), digest, size).await
    }

    async fn link_mirror_blob(
        &self,
        repo: &RepoName,
        mirror: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError> {
        let (repo, mirror, digest) = (repo.to_string(), mirror.to_owned(), digest.to_string());
        write_tx!(&self.db, |tx| async {
            tx.lock(&[Lock::Digest(&digest)]).await?;
            let sql = "SELECT b.size FROM blob b WHERE b.digest = $2 AND EXISTS (
                           SELECT 1 FROM repo_blob rb JOIN repository r ON r.id = rb.repo
                           WHERE rb.digest = b.digest AND r.kind = 'mirror' AND r.mirror = $1)";
            let Some(size) = size_of(tx.opt(sql, &[(&mirror).into(), (&digest).into()]).await?)?
            else {
                return Ok(None);
            };
            let id = ensure_repo(tx, &repo, Some(&mirror)).await?;
            link_blob(tx, id, &digest).await?;
            Ok(Some(size))
        })
    }

    async fn touch_blobs(&self, digests: Vec<Digest>) -> Result<(), MetaError> {
        // Sorted: concurrent touches update the rows in the same order.
        let mut digests: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        digests.sort();
        digests.dedup();
        let sql = "UPDATE blob SET last_access = $1 WHERE digest = $2";
        self.exec_each(sql, digests.iter().map(|d| vals![now(), d]).collect())
            .await
            .map(drop)
    }

    async fn mirror_cache_size(&self, mirror: &str) -> Result<u64, MetaError> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blob b WHERE {MIRROR_ONLY}"
        );
        Ok(size_of(self.read(&sql, vals![mirror]).await?.pop())?.unwrap_or(0))
    }

    async fn mirror_lru(&self, mirror: &str, limit: usize) -> Result<Vec<Digest>, MetaError> {
        let sql = format!(
            "SELECT b.digest FROM blob b WHERE {MIRROR_ONLY} ORDER BY b.last_access, b.digest LIMIT $2"
        );
        self.read(&sql, vals![mirror, limit])
            .await?
            .iter()
            .map(|r| r.digest(0))
            .collect()
    }

    async fn evict_mirror_blob(
        &self,
        mirror: &str,
        digest: &Digest,
    ) -> Result<Eviction, MetaError> {
        let (mirror, digest) = (mirror.to_owned(), digest.to_string());
        write_tx!(&self.db, |tx| evict_mirror_blob(tx, &mirror, &digest))
    }

    async fn blob_exists(&self, digest: &Digest) -> Result<bool, MetaError> {
        let rows = self
            .read(
                "SELECT 1 FROM blob WHERE digest = $1",
                vals![&digest.to_string()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn record_pulls(&self, pulls: Vec<(RepoName, Digest)>, at: i64) -> Result<(), MetaError> {
        let mut pulls: Vec<(String, String)> = pulls
            .iter()
            .map(|(r, d)| (r.to_string(), d.to_string()))
            .collect();
        pulls.sort();
        let sql = "UPDATE manifest SET last_pulled = $3
                   WHERE repo = (SELECT id FROM repository WHERE name = $1) AND digest = $2";
        self.exec_each(sql, pulls.iter().map(|(r, d)| vals![r, d, at]).collect())
            .await
            .map(drop)
    }

    async fn touch_link(&self, repo: &RepoName, digest: &Digest) -> Result<(), MetaError> {
        let p = vals![repo.as_str(), &digest.to_string(), now()];
        // Read first: a link confirmed within the last second needs no write, so repeated HEADs stay cheap. The
        // update's own condition makes a racing GC deletion and this renewal exclude each other.
        let fresh =
            "SELECT 1 FROM repo_blob WHERE repo = (SELECT id FROM repository WHERE name = $1)
                     AND digest = $2 AND created_at >= $3";
        if !self.read(fresh, p.clone()).await?.is_empty() {
            return Ok(());
        }
        let sql = "UPDATE repo_blob SET created_at = $3
                   WHERE repo = (SELECT id FROM repository WHERE name = $1) AND digest = $2 AND created_at < $3";
        self.exec(sql, p).await.map(drop)
    }

    async fn create_upload(&self, u: &UploadRecord) -> Result<(), MetaError> {
        // Shared sessions start with a committed length, the authority replicas check their state against.
        let committed = self.shared().then_some(0i64);
        let sql = "INSERT INTO upload (id, repo, algorithm, started_at, committed) VALUES ($1, $2, $3, $4, $5)";
        let p = vals![
            &u.id,
            u.repo.as_str(),
            u.algorithm.as_str(),
            u.started_at,
            committed
        ];
        self.exec(sql, p).await.map(drop)
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, MetaError> {
        let sql = "SELECT id, repo, algorithm, started_at, committed FROM upload WHERE id = $1";
        self.read(sql, vals![id])
            .await?
            .first()
            .map(to_upload)
            .transpose()
    }

    async fn delete_upload(&self, id: &str) -> Result<(), MetaError> {
        self.exec("DELETE FROM upload WHERE id = $1", vals![id])
            .await
            .map(drop)
    }

    async fn expired_uploads(&self, started_before: i64) -> Result<Vec<String>, MetaError> {
        texts(
            self.read(
                "SELECT id FROM upload WHERE started_at < $1",
                vals![started_before],
            )
            .await?,
        )
    }
}

// Upload claims are rows, not session locks: a chunk can take minutes to arrive, and holding a connection for each
// upload in flight would tie the number of concurrent pushes to the pool. Times are the database's clock, so
// replicas with skewed clocks agree on expiry. A single server owns its sessions: every claim is granted there.
const NOW: &str = "extract(epoch FROM clock_timestamp())::BIGINT";

#[async_trait::async_trait]
impl Coordination for SqlStore {
    async fn claim_upload(
        &self,
        id: &str,
        offset: u64,
        writer: &str,
        stale: &str,
        ttl: Duration,
    ) -> Result<bool, MetaError> {
        let sql = format!(
            "UPDATE upload SET writer = $3, writer_until = {NOW} + $4 WHERE id = $1 AND committed = $2
               AND (writer IS NULL OR writer_until < {NOW} OR starts_with(writer, $5))"
        );
        let p = vals![id, offset, writer, ttl.as_secs(), stale];
        Ok(!self.shared() || self.exec(&sql, p).await? == 1)
    }

    async fn renew_upload_claim(
        &self,
        id: &str,
        writer: &str,
        ttl: Duration,
    ) -> Result<bool, MetaError> {
        let sql =
            format!("UPDATE upload SET writer_until = {NOW} + $3 WHERE id = $1 AND writer = $2");
        Ok(!self.shared() || self.exec(&sql, vals![id, writer, ttl.as_secs()]).await? == 1)
    }

    async fn release_upload(&self, id: &str, writer: &str, offset: u64) -> Result<bool, MetaError> {
        let sql = "UPDATE upload SET committed = $3, writer = NULL, writer_until = NULL WHERE id = $1 AND writer = $2";
        Ok(!self.shared() || self.exec(sql, vals![id, writer, offset]).await? == 1)
    }

    async fn lock_digest(&self, digest: &Digest) -> Result<Option<StoreLock>, MetaError> {
        let Db::Postgres(db) = &self.db else {
            return Ok(None);
        };
        db.lock_digest(&digest.to_string()).await
    }

    async fn try_lease_fetch(&self, key: &str) -> Result<FetchLease, MetaError> {
        let Db::Postgres(db) = &self.db else {
            return Ok(FetchLease::NotShared);
        };
        db.try_lease_fetch(key).await
    }

    async fn try_lease(&self, job: &str) -> Result<Option<StoreLock>, MetaError> {
        let Db::Postgres(db) = &self.db else {
            return Ok(Some(StoreLock::new(Box::new(()))));
        };
        db.try_lease(job).await
    }
}
