//! `berth migrate-storage --from CONFIG --to CONFIG`: copies everything a registry holds from one storage shape to
//! another — typically the single node (SQLite + filesystem) into the scale-out shape (PostgreSQL + an object store)
//! and back. See docs/scale-out.md, "Moving to the scale-out shape".
//!
//! Order matters for design invariant 2 (a blob row means whole, verified bytes):
//! 1. every blob the source's `blob` table lists is streamed into the destination's blob store through its upload
//!    path, hashed on the way, and published only when size and digest match; blobs the destination already has
//!    with the right size are skipped, so a re-run after an interruption only copies what is missing;
//! 2. only when every blob is there, the metadata is copied table by table in one destination transaction
//!    ([`crate::meta::transfer`]): an interruption leaves no metadata at all, never rows without bytes;
//! 3. row counts are compared, and with `--verify` every destination blob is read back and hashed.
//!
//! A destination whose metadata is empty (never used, or an interrupted migration) is filled; one that holds
//! exactly the source's metadata (a finished migration) only gets missing blobs; anything else is refused unless
//! `--force` replaces its metadata.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use crate::archive::progress::Progress;
use crate::config::{Config, MetadataBackend};
use crate::meta::transfer::{self, MetaDatabase, TABLES, Value};
use crate::meta::{PgSettings, SqlStore};
use crate::oci::Digest;
use crate::store::{BlobStore, StoreError};
use crate::stores::DataDirLock;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Config file of the registry to copy from (its server stopped).
    #[arg(long, value_name = "CONFIG")]
    pub from: PathBuf,
    /// Config file of the registry to copy into (its server stopped; its metadata empty, or a previous
    /// migration of the same source).
    #[arg(long, value_name = "CONFIG")]
    pub to: PathBuf,
    /// Only report what would be copied.
    #[arg(long)]
    pub dry_run: bool,
    /// After copying, read back every destination blob and check its digest.
    #[arg(long)]
    pub verify: bool,
    /// Replace the destination's metadata even when it holds something else (its blobs are kept; blobs no
    /// row refers to are reclaimed by `berth gc` later).
    #[arg(long)]
    pub force: bool,
    /// Blobs copied at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Why one blob could not be copied (or, with `--verify`, is wrong at the destination).
#[derive(Debug, thiserror::Error)]
pub enum BlobProblem {
    #[error("{0}: the row says it exists, but the source blob store has no bytes for it")]
    Missing(String),
    #[error("{digest}: {actual} bytes in the {side} blob store, the row says {expected}")]
    Size {
        side: &'static str,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{digest}: the {side} blob store's bytes hash to {actual}")]
    Digest {
        side: &'static str,
        digest: String,
        actual: Digest,
    },
    #[error("{0}: the blob row's digest is malformed")]
    BadRow(String),
    #[error("{digest}: {side} blob store: {source}")]
    Store {
        side: &'static str,
        digest: String,
        source: StoreError,
    },
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rows of each of [`TABLES`] in the source.
    pub rows: Vec<u64>,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    pub blobs_present: u64,
    /// The metadata was already the source's (a finished migration run again).
    pub metadata_present: bool,
    /// The metadata was written by this run.
    pub metadata_copied: bool,
    /// Bytes of every blob of the source.
    pub bytes_total: u64,
    pub signing_key_copied: bool,
    pub problems: Vec<String>,
}

impl Summary {
    fn rows_of(&self, table: &str) -> u64 {
        transfer::table_index(table)
            .and_then(|i| self.rows.get(i).copied())
            .unwrap_or(0)
    }
}

/// One side of the migration, opened with its data-directory lock held.
struct Side {
    config: Config,
    blobs: Arc<dyn BlobStore>,
    meta: MetaDatabase,
    _lock: DataDirLock,
}

/// What the destination's metadata is, compared with the source's.
enum DestinationState {
    Empty,
    SameAsSource,
    Other(String),
}

fn load(path: &Path, role: &str) -> anyhow::Result<Config> {
    Config::load_file(path).with_context(|| format!("--{role} {}", path.display()))
}

/// Opens a side: takes its data-directory lock first (refusing while a server runs on it), then the stores.
async fn open_side(config: Config, role: &str) -> anyhow::Result<Side> {
    let dir = config.storage.data_dir.clone();
    let source = role == "from";
    if source && !dir.is_dir() {
        bail!("--from: data directory {} does not exist", dir.display());
    }
    let lock = crate::stores::lock_data_dir(&dir).with_context(|| format!("--{role}"))?;
    if source
        && config.storage.metadata == MetadataBackend::Sqlite
        && !dir.join("berth.db").exists()
    {
        bail!(
            "--from: {} has no metadata database (berth.db); is storage.data_dir right?",
            dir.display()
        );
    }
    let meta = match config.storage.metadata {
        MetadataBackend::Sqlite => {
            let db = dir.join("berth.db");
            SqlStore::sqlite(&db, config.storage.sqlite_synchronous)
                .with_context(|| format!("--{role}: cannot open {}", db.display()))?
        }
        MetadataBackend::Postgres => {
            let settings = PgSettings {
                url: config.storage.postgres_url()?,
                pool_size: 4,
            };
            SqlStore::postgres(&settings)
                .with_context(|| format!("--{role}: PostgreSQL metadata store"))?
        }
    };
    meta.ready()
        .await
        .with_context(|| format!("--{role}: metadata store"))?;
    let meta = Arc::new(meta);
    if let Some(n) = transfer::other_sessions(&meta).await.unwrap_or(None)
        && n > 0
    {
        eprintln!(
            "warning: --{role}: other sessions connected to the PostgreSQL database: {n}; every berth replica \
             using it must be stopped during a migration"
        );
    }
    let blobs = crate::stores::open_blobs(&config).with_context(|| format!("--{role}"))?;
    Ok(Side {
        config,
        blobs,
        meta,
        _lock: lock,
    })
}

/// Refuses two configs that name the same store: copying a store onto itself would first empty it.
fn refuse_same_store(from: &Config, to: &Config) -> anyhow::Result<()> {
    let (a, b) = (&from.storage, &to.storage);
    let same_dir = match (
        std::path::absolute(&a.data_dir),
        std::path::absolute(&b.data_dir),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.data_dir == b.data_dir,
    };
    if same_dir {
        bail!(
            "--from and --to use the same data directory {}; give the destination its own",
            a.data_dir.display()
        );
    }
    if a.metadata == MetadataBackend::Postgres
        && b.metadata == MetadataBackend::Postgres
        && a.postgres_url()? == b.postgres_url()?
    {
        bail!("--from and --to use the same PostgreSQL database");
    }
    Ok(())
}

/// `berth migrate-storage`. Returns the summary; its `problems` are non-empty when some blob could not be copied
/// (then no metadata was written) or, with `--verify`, failed verification at the destination.
pub async fn migrate(args: &MigrateArgs, progress: &Progress) -> anyhow::Result<Summary> {
    let ignored = Config::storage_overrides_in_env();
    if !ignored.is_empty() {
        progress.println(format!(
            "note: {} ignored: migrate-storage reads each side's storage from its config file only",
            ignored.join(", ")
        ));
    }
    let from = load(&args.from, "from")?;
    let to = load(&args.to, "to")?;
    refuse_same_store(&from, &to)?;
    let src = open_side(from, "from").await?;
    let dst = open_side(to, "to").await?;

    let mut summary = Summary {
        rows: transfer::counts(&src.meta)
            .await
            .context("--from: counting rows")?,
        ..Summary::default()
    };
    let state = destination_state(&src, &dst).await?;
    match &state {
        DestinationState::Other(difference) if !args.force => bail!(
            "--to already holds other metadata ({difference}); migrate into an empty store, or pass --force to \
             replace the destination's metadata with the source's"
        ),
        DestinationState::SameAsSource => summary.metadata_present = true,
        _ => {}
    }

    if !args.dry_run {
        remove_interrupted_copies(&*dst.blobs, progress).await;
    }
    copy_blobs(&src, &dst, args, progress, &mut summary).await?;
    if args.dry_run || !summary.problems.is_empty() {
        return Ok(summary);
    }

    if !summary.metadata_present {
        progress.set_message("copying metadata".into());
        let (shown, mut copied) = (progress.clone(), vec![0u64; TABLES.len()]);
        let rows = transfer::stream_all(&src.meta, move |table, n| {
            copied[table] += n as u64;
            shown.set_message(format!(
                "copying metadata: {} {}",
                copied[table], TABLES[table].name
            ));
        });
        transfer::replace_all(&dst.meta, rows)
            .await
            .context("copying the metadata")?;
        summary.metadata_copied = true;
    }
    let copied = transfer::counts(&dst.meta)
        .await
        .context("--to: counting rows")?;
    for ((t, want), got) in TABLES.iter().zip(&summary.rows).zip(&copied) {
        if want != got {
            bail!(
                "after the copy the destination has {got} rows in {}, the source {want}",
                t.name
            );
        }
    }
    summary.signing_key_copied =
        crate::auth::jwt::copy_key(&src.config.storage.data_dir, &dst.config.storage.data_dir)
            .context("copying the token signing key")?;

    if args.verify {
        verify_blobs(&src, &dst, args, progress, &mut summary).await?;
    }
    Ok(summary)
}

async fn destination_state(src: &Side, dst: &Side) -> anyhow::Result<DestinationState> {
    let counts = transfer::counts(&dst.meta)
        .await
        .context("--to: counting rows")?;
    if counts.iter().all(|n| *n == 0) {
        return Ok(DestinationState::Empty);
    }
    Ok(
        match transfer::first_difference(&src.meta, &dst.meta)
            .await
            .context("comparing the metadata of --from and --to")?
        {
            None => DestinationState::SameAsSource,
            Some(d) => DestinationState::Other(d),
        },
    )
}

/// Prefix of the upload objects this command writes blobs into, so a later run can tell its own leftovers.
const UPLOAD_PREFIX: &str = "migrate";

/// Removes the upload objects of an earlier run that was killed mid-blob (no session row owns them; a server start
/// would reclaim them too). Best effort: a leftover only costs space.
async fn remove_interrupted_copies(store: &dyn BlobStore, progress: &Progress) {
    let Ok(ids) = store.list_uploads().await else {
        return;
    };
    for id in ids.iter().filter(|id| id.starts_with(UPLOAD_PREFIX)) {
        if let Err(e) = store.delete_upload(id).await {
            progress.println(format!(
                "note: cannot remove upload {id} left by an interrupted run: {e}"
            ));
        }
    }
}

/// Every row of the source's `blob` table, as (digest text, size).
fn blob_rows(
    meta: &MetaDatabase,
) -> impl futures_core::Stream<Item = anyhow::Result<(String, u64)>> + use<> {
    let table = transfer::table_index("blob").unwrap_or_default();
    transfer::rows(meta, table).map(|row| {
        let row = row.context("reading the source's blob table")?;
        match row.as_slice() {
            [Value::Text(digest), Value::Int(size), ..] => Ok((digest.clone(), *size as u64)),
            _ => bail!("the source's blob table has a malformed row"),
        }
    })
}

/// Step 1: copies every blob that is not already at the destination with its size.
async fn copy_blobs(
    src: &Side,
    dst: &Side,
    args: &MigrateArgs,
    progress: &Progress,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let total_bytes = {
        let mut total = 0u64;
        let mut rows = std::pin::pin!(blob_rows(&src.meta));
        while let Some((_, size)) = rows.try_next().await? {
            total += size;
        }
        total
    };
    summary.bytes_total = total_bytes;
    progress.add_total(total_bytes);
    progress.set_message(if args.dry_run {
        "checking blobs".into()
    } else {
        "copying blobs".into()
    });
    let outcomes = blob_rows(&src.meta)
        .map_ok(|(digest, size)| {
            let (from, to) = (src.blobs.clone(), dst.blobs.clone());
            let progress = progress.clone();
            let dry_run = args.dry_run;
            async move {
                let outcome = copy_blob(&*from, &*to, &digest, size, dry_run, &progress).await;
                Ok::<_, anyhow::Error>((size, outcome))
            }
        })
        .try_buffer_unordered(args.jobs as usize);
    let mut outcomes = std::pin::pin!(outcomes);
    while let Some((size, outcome)) = outcomes.try_next().await? {
        match outcome {
            Ok(Copied::Present) => summary.blobs_present += 1,
            Ok(Copied::Copied) => {
                summary.blobs_copied += 1;
                summary.bytes_copied += size;
            }
            Err(problem) => {
                progress.println(format!("problem: {problem}"));
                summary.problems.push(problem.to_string());
            }
        }
    }
    Ok(())
}

enum Copied {
    Present,
    /// Copied, or with `--dry-run` to be copied.
    Copied,
}

fn store_problem(side: &'static str, digest: &str) -> impl FnOnce(StoreError) -> BlobProblem {
    let digest = digest.to_owned();
    move |source| BlobProblem::Store {
        side,
        digest,
        source,
    }
}

/// Streams one blob into the destination's upload path, hashing it on the way; publishes it only when its size
/// and digest are right, so the destination never holds bytes under a digest they do not hash to.
async fn copy_blob(
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    digest_text: &str,
    size: u64,
    dry_run: bool,
    progress: &Progress,
) -> Result<Copied, BlobProblem> {
    let digest: Digest = digest_text
        .parse()
        .map_err(|_| BlobProblem::BadRow(digest_text.to_owned()))?;
    if to
        .stat(&digest)
        .await
        .map_err(store_problem("destination", digest_text))?
        == Some(size)
    {
        progress.advance(size);
        return Ok(Copied::Present);
    }
    if dry_run {
        progress.advance(size);
        return Ok(Copied::Copied);
    }
    let reader = match from.open(&digest, None).await {
        Ok(r) => r,
        Err(StoreError::NotFound) => return Err(BlobProblem::Missing(digest_text.to_owned())),
        Err(e) => return Err(store_problem("source", digest_text)(e)),
    };
    if reader.len != size {
        return Err(BlobProblem::Size {
            side: "source",
            digest: digest_text.to_owned(),
            expected: size,
            actual: reader.len,
        });
    }
    let hasher = Arc::new(Mutex::new(Some(digest.algorithm().hasher())));
    let body = {
        let (hasher, progress) = (hasher.clone(), progress.clone());
        reader.body.inspect_ok(move |chunk| {
            if let Some(h) = hasher.lock().as_mut() {
                h.update(chunk);
            }
            progress.advance(chunk.len() as u64);
        })
    };
    let id = format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple());
    to.create_upload(&id)
        .await
        .map_err(store_problem("destination", digest_text))?;
    let written = to.append_upload(&id, 0, Box::pin(body)).await;
    let checked = match written {
        Err(e) => Err(store_problem("destination", digest_text)(e)),
        Ok(n) if n != size => Err(BlobProblem::Size {
            side: "source",
            digest: digest_text.to_owned(),
            expected: size,
            actual: n,
        }),
        Ok(_) => match hasher.lock().take().map(|h| h.finish()) {
            Some(actual) if actual == digest => Ok(()),
            Some(actual) => Err(BlobProblem::Digest {
                side: "source",
                digest: digest_text.to_owned(),
                actual,
            }),
            None => Err(BlobProblem::BadRow(digest_text.to_owned())),
        },
    };
    let published = match checked {
        Ok(()) => to
            .publish_upload(&id, &digest)
            .await
            .map_err(store_problem("destination", digest_text)),
        Err(e) => Err(e),
    };
    if published.is_err() {
        let _ = to.delete_upload(&id).await;
    }
    published.map(|()| Copied::Copied)
}

/// `--verify`: reads every destination blob back and hashes it.
async fn verify_blobs(
    src: &Side,
    dst: &Side,
    args: &MigrateArgs,
    progress: &Progress,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let total: u64 = summary.rows_of("blob");
    progress.add_total(summary.bytes_total);
    progress.set_message(format!("verifying {total} blobs"));
    let problems = blob_rows(&src.meta)
        .map_ok(|(digest, size)| {
            let to = dst.blobs.clone();
            let progress = progress.clone();
            async move {
                let result = verify_blob(&*to, &digest, size, &progress).await;
                if let Err(BlobProblem::Size { .. } | BlobProblem::Digest { .. }) = &result
                    && let Ok(d) = digest.parse::<Digest>()
                {
                    // Provably not the blob: removed, so that the next run copies it again instead of skipping
                    // bytes of the right size.
                    let _ = to.delete(&d).await;
                }
                Ok::<_, anyhow::Error>(result)
            }
        })
        .try_buffer_unordered(args.jobs as usize);
    let mut problems = std::pin::pin!(problems);
    while let Some(result) = problems.try_next().await? {
        if let Err(problem) = result {
            progress.println(format!("problem: {problem}"));
            summary.problems.push(problem.to_string());
        }
    }
    Ok(())
}

async fn verify_blob(
    store: &dyn BlobStore,
    digest_text: &str,
    size: u64,
    progress: &Progress,
) -> Result<(), BlobProblem> {
    let digest: Digest = digest_text
        .parse()
        .map_err(|_| BlobProblem::BadRow(digest_text.to_owned()))?;
    let reader = store
        .open(&digest, None)
        .await
        .map_err(store_problem("destination", digest_text))?;
    let mut hasher = digest.algorithm().hasher();
    let mut n = 0u64;
    let mut body = reader.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| store_problem("destination", digest_text)(e.into()))?;
        hasher.update(&chunk);
        n += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    if n != size {
        return Err(BlobProblem::Size {
            side: "destination",
            digest: digest_text.to_owned(),
            expected: size,
            actual: n,
        });
    }
    let actual = hasher.finish();
    if actual != digest {
        return Err(BlobProblem::Digest {
            side: "destination",
            digest: digest_text.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// The command: runs [`migrate`] on a small runtime and prints the summary; fails when any blob was a problem.
pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let progress = Progress::new(args.quiet);
    let summary = runtime.block_on(migrate(&args, &progress));
    progress.finish();
    let s = summary?;
    let verb = if args.dry_run { "would copy" } else { "copied" };
    println!(
        "blobs: {} {verb} ({}), {} already present",
        s.blobs_copied,
        crate::human::size(s.bytes_copied),
        s.blobs_present,
    );
    let metadata = [
        ("repository", "repository"),
        ("manifest", "manifest"),
        ("tag", "tag"),
        ("auth_user", "user"),
        ("auth_token", "token"),
    ]
    .map(|(table, noun)| crate::human::count(s.rows_of(table), noun))
    .join(", ");
    if s.metadata_present {
        println!("metadata: already migrated ({metadata}, the same on both sides)");
    } else if s.metadata_copied || args.dry_run {
        println!("metadata: {verb} {metadata}");
    } else {
        println!("metadata: not copied");
    }
    if s.signing_key_copied {
        println!("token signing key copied");
    }
    if !s.problems.is_empty() {
        if s.metadata_copied || s.metadata_present {
            bail!(
                "{} failed verification (listed above; the wrong bytes were removed); run again to copy them \
                 anew",
                crate::human::count(s.problems.len(), "destination blob")
            );
        }
        bail!(
            "{} (listed above); no metadata was written: repair the source (`berth scrub` reports what is \
             broken) and run again, blobs already copied are skipped",
            crate::human::count(s.problems.len(), "problem")
        );
    }
    if args.verify && !args.dry_run {
        println!("verified: every destination blob hashes to its digest");
    }
    Ok(())
}
