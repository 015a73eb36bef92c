//! The scale-out shape against its peers (`berth-bench scale-out`; docs/scale-out.md, docs/benchmarks.md).
//!
//! Four targets on the same machine, in the same run: berth on one node (SQLite + filesystem, the default), berth
//! on PostgreSQL + S3 with one replica, berth on PostgreSQL + S3 with two replicas that connections take in turn
//! (as behind a layer-4 load balancer), and CNCF distribution with its S3 driver. Every target has a database and
//! a bucket of its own, because the workloads push the same content to each target and a shared store would turn
//! the second target's pushes into "already exists". The PostgreSQL server and the S3 server are the caller's (the
//! same ones CI uses: docs/benchmarks.md shows how to start them); the databases are dropped at the end, the
//! buckets are left to the throwaway S3 server.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use hyper::{Method, StatusCode};

use crate::client::{Endpoint, ReqBody, read_expect};
use crate::meter::ProcMeter;
use crate::servers::{self, DistributionStorage, ServerProcess, TempDir};
use crate::workloads::Target;

/// The servers of a scale-out run; [`ScaleOutEnv::targets`] are in the order single node, one replica, two
/// replicas, distribution.
pub struct ScaleOutEnv {
    single: ServerProcess,
    one: ServerProcess,
    pair: Vec<ServerProcess>,
    distribution: ServerProcess,
    postgres: String,
    databases: Vec<String>,
}

impl ScaleOutEnv {
    pub async fn start(
        berth: &Path,
        distribution: &Path,
        postgres: &str,
        s3: &str,
        scratch: &TempDir,
        logs: &Path,
        run_id: u64,
    ) -> Result<ScaleOutEnv> {
        let postgres = postgres.trim_end_matches('/').to_string();
        let s3 = s3.trim_end_matches('/').to_string();
        let id = format!("{:x}", run_id & 0xffff_ffff);
        // Databases are recorded before the servers start, so a failed start still drops them.
        let mut databases = Vec::new();
        let mut shape = |name: &str| -> Result<Vec<(String, String)>> {
            let database = format!("berth_bench_{id}_{}", name.replace('-', "_"));
            psql(&postgres, &format!("CREATE DATABASE {database}"))?;
            databases.push(database.clone());
            Ok(berth_env(
                &format!("{postgres}/{database}"),
                &s3,
                &format!("berth-bench-{id}-{name}"),
            ))
        };
        let env_one = shape("one")?;
        let env_pair = shape("pair")?;
        let mut env = PartialEnv {
            postgres: postgres.clone(),
            databases,
        };
        for bucket in [
            format!("berth-bench-{id}-one"),
            format!("berth-bench-{id}-pair"),
            format!("distribution-bench-{id}"),
        ] {
            create_bucket(&s3, &bucket).await?;
        }

        eprintln!("starting berth on one node (SQLite + filesystem)...");
        let single = servers::start_berth(berth, &scratch.subdir("berth-data")?, logs).await?;
        eprintln!("starting berth on PostgreSQL + S3, one replica...");
        let one = start_replica(berth, scratch, logs, "berth-s3-pg", &env_one).await?;
        eprintln!("starting berth on PostgreSQL + S3, two replicas...");
        let mut pair = Vec::new();
        for n in ["a", "b"] {
            pair.push(
                start_replica(
                    berth,
                    scratch,
                    logs,
                    &format!("berth-s3-pg-x2-{n}"),
                    &env_pair,
                )
                .await?,
            );
        }
        eprintln!("starting distribution with its S3 driver...");
        let bucket = format!("distribution-bench-{id}");
        let distribution = servers::start_distribution_with(
            distribution,
            &DistributionStorage::S3 {
                endpoint: &s3,
                bucket: &bucket,
            },
            logs,
            "distribution-s3",
            None,
        )
        .await?;
        Ok(ScaleOutEnv {
            single,
            one,
            pair,
            distribution,
            postgres,
            databases: std::mem::take(&mut env.databases),
        })
    }

    pub fn targets(&self) -> Vec<Target> {
        let target = |name: &str, servers: &[&ServerProcess]| {
            let ports: Vec<u16> = servers.iter().map(|s| s.endpoint.port()).collect();
            Target {
                name: name.to_string(),
                version: servers[0].version.clone(),
                endpoint: Endpoint::round_robin(&ports),
                meter: Some(ProcMeter::group(servers.iter().map(|s| s.pid()).collect())),
                mirror: None,
            }
        };
        vec![
            target("berth", &[&self.single]),
            target("berth-s3-pg", &[&self.one]),
            target("berth-s3-pg-x2", &self.pair.iter().collect::<Vec<_>>()),
            target("distribution-s3", &[&self.distribution]),
        ]
    }

    /// Ratio columns: the scale-out shape against distribution on the same S3 server, two replicas against one,
    /// and the scale-out shape against the single node.
    pub fn comparisons() -> Vec<(usize, usize)> {
        vec![(1, 3), (2, 1), (1, 0)]
    }

    /// Every server, for log tails after a failure.
    pub fn servers(&self) -> Vec<&ServerProcess> {
        let mut all = vec![&self.single, &self.one];
        all.extend(&self.pair);
        all.push(&self.distribution);
        all
    }
}

impl Drop for ScaleOutEnv {
    fn drop(&mut self) {
        // Servers first: a database with connections cannot be dropped cleanly.
        self.pair.clear();
        drop_databases(&self.postgres, &self.databases);
    }
}

/// Databases created before every server was up; dropped if the start fails.
struct PartialEnv {
    postgres: String,
    databases: Vec<String>,
}

impl Drop for PartialEnv {
    fn drop(&mut self) {
        drop_databases(&self.postgres, &self.databases);
    }
}

fn drop_databases(postgres: &str, databases: &[String]) {
    for database in databases {
        if let Err(e) = psql(
            postgres,
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        ) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The environment that puts berth's metadata in `database` and its blobs in `bucket` (docs/configuration.md).
fn berth_env(database: &str, s3: &str, bucket: &str) -> Vec<(String, String)> {
    [
        ("BERTH_METADATA", "postgres"),
        ("BERTH_POSTGRES_URL", database),
        ("BERTH_BLOBS", "s3"),
        ("BERTH_S3_BUCKET", bucket),
        ("BERTH_S3_ENDPOINT", s3),
        ("BERTH_S3_REGION", "us-east-1"),
        ("BERTH_S3_PATH_STYLE", "true"),
        ("BERTH_S3_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "berth-bench"),
        ("AWS_SECRET_ACCESS_KEY", "berth-bench"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn start_replica(
    berth: &Path,
    scratch: &TempDir,
    logs: &Path,
    name: &str,
    env: &[(String, String)],
) -> Result<ServerProcess> {
    let data = scratch.subdir(&format!("{name}-data"))?;
    servers::start_berth_with(berth, &data, logs, name, &[], env).await
}

/// Runs one statement on the PostgreSQL server's `postgres` database with `psql`.
fn psql(server: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{server}/postgres"))
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .context("running psql (apt-get install postgresql-client)")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?} on {server}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates `bucket` on the S3 server. Test servers (moto, s3s) take any signature; a placeholder names an account.
async fn create_bucket(s3: &str, bucket: &str) -> Result<()> {
    let mut conn = Endpoint::parse(s3)
        .context("--s3-endpoint must be http://host:port")?
        .connect()
        .await?;
    let req = conn
        .request(Method::PUT, &format!("/{bucket}"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=berth-bench/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(ReqBody::Empty)?;
    let resp = conn.send(req).await?;
    read_expect(resp, StatusCode::OK)
        .await
        .with_context(|| format!("creating bucket {bucket} on {s3}"))?;
    Ok(())
}
