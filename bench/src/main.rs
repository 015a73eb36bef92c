//! berth-bench: zb-style OCI registry benchmarks over the plain HTTP
//! distribution API, for any registry (`run`) or berth against CNCF
//! distribution on the same machine (`compare`), with machine ceilings.

mod blob;
mod ceilings;
mod client;
mod load;
mod meter;
mod mirror;
mod registry;
mod report;
mod scaleout;
mod servers;
mod workloads;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::client::Endpoint;
use crate::meter::{ProcMeter, Usage};
use crate::mirror::MirrorEnv;
use crate::report::{CaseResult, Report, TargetResults, fmt_num};
use crate::servers::TempDir;
use crate::workloads::{Params, Target, Workload};

#[derive(Parser)]
#[command(
    name = "berth-bench",
    version,
    about = "Benchmark OCI registries (zb-style workloads)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all workloads against a registry that is already running.
    Run(RunArgs),
    /// Start berth and CNCF distribution locally and run the workloads on both.
    Compare(CompareArgs),
    /// The scale-out shape: berth on one node, berth on PostgreSQL + S3 with one and with two replicas, and CNCF
    /// distribution with its S3 driver on the same S3 server.
    ScaleOut(ScaleOutArgs),
}

#[derive(Args)]
struct Common {
    /// Smaller sizes, fewer repetitions, 2 s load phases; no 1 GiB blobs.
    #[arg(long)]
    quick: bool,
    /// Also write results as JSON to PATH (default berth-bench.json; `-` for
    /// stdout, which moves the table to stderr).
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "berth-bench.json")]
    json: Option<PathBuf>,
    /// Run only these workloads (comma-separated). Default: all (`run`: all
    /// but mirror, unless --mirror-proxy-port is given).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Skip the machine ceilings (hash-on-receive, disk, nginx).
    #[arg(long)]
    no_ceilings: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Registry base URL, plain HTTP.
    #[arg(long)]
    url: String,
    /// PID of the registry process, to report its CPU and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Directory on the registry's disk for the disk-write ceiling (default: temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Mirror workload: the bench starts an upstream registry with a counting
    /// proxy on 127.0.0.1:PORT; the registry at --url must already mirror
    /// http://127.0.0.1:PORT (e.g. `berth serve --mirror up=http://127.0.0.1:PORT`).
    #[arg(long, value_name = "PORT")]
    mirror_proxy_port: Option<u16>,
    /// Mirror workload: repository prefix under which the registry serves the
    /// upstream (`up` for `--mirror up=...`; `""` if it mirrors at the root).
    #[arg(long, value_name = "PREFIX", default_value = "up")]
    mirror_prefix: String,
    /// CNCF distribution binary, started as the mirror workload's upstream.
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    distribution: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct CompareArgs {
    /// berth binary (default: target/release/berth in the workspace).
    #[arg(long)]
    berth: Option<PathBuf>,
    /// CNCF distribution binary (Debian package docker-registry).
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    distribution: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ScaleOutArgs {
    /// berth binary (default: target/release/berth in the workspace).
    #[arg(long)]
    berth: Option<PathBuf>,
    /// CNCF distribution binary (Debian package docker-registry).
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    distribution: PathBuf,
    /// PostgreSQL server URL without a database, e.g. postgres://postgres@127.0.0.1:5432; the bench creates a
    /// database per target and drops it at the end (needs `psql`).
    #[arg(long, value_name = "URL")]
    postgres: String,
    /// S3-compatible server, plain HTTP, path-style, taking any credentials (e.g. moto): http://127.0.0.1:PORT.
    #[arg(long, value_name = "URL")]
    s3_endpoint: String,
    #[command(flatten)]
    common: Common,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Dropping the run future on Ctrl-C runs the destructors that kill servers
    // and remove scratch data (they live in their own process groups, so the
    // terminal's SIGINT does not reach them).
    let result = tokio::select! {
        r = run(cli) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    match cli.command {
        Command::Run(args) => {
            let params = Params::new(args.common.quick, run_id);
            let scratch = TempDir::new("berth-bench")?;
            let endpoint = Endpoint::parse(&args.url)?;
            let workloads = selected(&args.common, |w| {
                w != Workload::Mirror || args.mirror_proxy_port.is_some()
            });
            let mirror_port = if workloads.contains(&Workload::Mirror) {
                Some(args.mirror_proxy_port.context(
                    "the mirror workload needs --mirror-proxy-port PORT, with the registry at --url \
                     mirroring http://127.0.0.1:PORT",
                )?)
            } else {
                None
            };
            check_registry(&endpoint).await?;
            // Declared before the target so the upstream outlives the run.
            let mut mirror_env = None;
            if let Some(port) = mirror_port {
                eprintln!("starting the mirror upstream and the counting proxy on port {port}...");
                let logs = scratch.subdir("logs")?;
                mirror_env =
                    Some(MirrorEnv::start(&args.distribution, &scratch, &logs, port).await?);
            }
            let meter = args.pid.map(ProcMeter::new);
            let target = Target {
                name: "registry".into(),
                version: None,
                mirror: mirror_env
                    .as_ref()
                    .map(|env| env.target(endpoint.clone(), &args.mirror_prefix, meter.clone())),
                endpoint,
                meter,
            };
            let data_dir = args
                .data_dir
                .unwrap_or_else(|| scratch.path().to_path_buf());
            let report = bench(
                "run",
                &[target],
                &params,
                &args.common,
                &workloads,
                &data_dir,
                &scratch,
            )
            .await;
            if report
                .as_ref()
                .map_or(true, |r| r.targets.iter().any(|t| !t.errors.is_empty()))
                && let Some(env) = &mirror_env
            {
                eprintln!(
                    "--- last log lines of the upstream ---\n{}",
                    env.upstream.log_tail()
                );
            }
            drop(mirror_env);
            let report = report?;
            emit(&report, args.common.json.as_deref())?;
            fail_on_errors(&report)
        }
        Command::ScaleOut(args) => scale_out(args, run_id).await,
        Command::Compare(args) => {
            let params = Params::new(args.common.quick, run_id);
            let workloads = selected(&args.common, |_| true);
            // Declared first so it is dropped last, after the servers using it are dead.
            let scratch = TempDir::new("berth-bench")?;
            let berth_bin = args.berth.unwrap_or_else(default_berth_path);
            let logs = scratch.subdir("logs")?;
            eprintln!("starting berth ({})...", berth_bin.display());
            let berth =
                servers::start_berth(&berth_bin, &scratch.subdir("berth-data")?, &logs).await?;
            eprintln!("starting distribution ({})...", args.distribution.display());
            let distribution = servers::start_distribution(
                &args.distribution,
                &scratch.subdir("distribution-data")?,
                &logs,
            )
            .await?;
            // The mirror set-up: an upstream distribution behind the counting
            // proxy, berth mirroring it under `up/`, distribution proxying it at the root.
            let mut mirror_env = None;
            let mut mirrors = Vec::new();
            if workloads.contains(&Workload::Mirror) {
                eprintln!("starting the mirror upstream (distribution) and the counting proxy...");
                let env = MirrorEnv::start(&args.distribution, &scratch, &logs, 0).await?;
                let upstream = env.proxy.url();
                eprintln!("starting berth --mirror up={upstream}...");
                mirrors.push(
                    servers::start_berth_mirror(
                        &berth_bin,
                        &scratch.subdir("berth-mirror-data")?,
                        &logs,
                        "up",
                        &upstream,
                    )
                    .await?,
                );
                eprintln!("starting distribution in proxy mode (remoteurl {upstream})...");
                mirrors.push(
                    servers::start_distribution_with(
                        &args.distribution,
                        &servers::DistributionStorage::Filesystem(
                            &scratch.subdir("distribution-proxy-data")?,
                        ),
                        &logs,
                        "distribution-proxy",
                        Some(&upstream),
                    )
                    .await?,
                );
                mirror_env = Some(env);
            }
            let prefixes = ["up", ""];
            let targets: Vec<Target> = [&berth, &distribution]
                .iter()
                .enumerate()
                .map(|(i, s)| Target {
                    name: s.name.clone(),
                    version: s.version.clone(),
                    endpoint: s.endpoint.clone(),
                    meter: Some(ProcMeter::new(s.pid())),
                    mirror: mirror_env.as_ref().map(|env| {
                        env.target(
                            mirrors[i].endpoint.clone(),
                            prefixes[i],
                            Some(ProcMeter::new(mirrors[i].pid())),
                        )
                    }),
                })
                .collect();
            let report = bench(
                "compare",
                &targets,
                &params,
                &args.common,
                &workloads,
                scratch.path(),
                &scratch,
            )
            .await;
            let failed = report
                .as_ref()
                .map_or(true, |r| r.targets.iter().any(|t| !t.errors.is_empty()));
            if failed {
                let servers = [&berth, &distribution]
                    .into_iter()
                    .chain(&mirrors)
                    .chain(mirror_env.as_ref().map(|e| &e.upstream));
                for server in servers {
                    eprintln!(
                        "--- last log lines of {} ---\n{}",
                        server.name,
                        server.log_tail()
                    );
                }
            }
            drop(targets);
            drop(mirrors);
            drop(mirror_env);
            drop(berth);
            drop(distribution);
            let report = report?;
            emit(&report, args.common.json.as_deref())?;
            fail_on_errors(&report)
        }
    }
}

async fn scale_out(args: ScaleOutArgs, run_id: u64) -> Result<()> {
    let params = Params::new(args.common.quick, run_id);
    let workloads = selected(&args.common, |w| w != Workload::Mirror);
    if workloads.contains(&Workload::Mirror) {
        anyhow::bail!("the mirror workload is not part of scale-out (use compare)");
    }
    // Declared first so it is dropped last, after the servers using it are dead.
    let scratch = TempDir::new("berth-bench")?;
    let logs = scratch.subdir("logs")?;
    let env = scaleout::ScaleOutEnv::start(
        &args.berth.unwrap_or_else(default_berth_path),
        &args.distribution,
        &args.postgres,
        &args.s3_endpoint,
        &scratch,
        &logs,
        run_id,
    )
    .await?;
    let targets = env.targets();
    let report = bench(
        "scale-out",
        &targets,
        &params,
        &args.common,
        &workloads,
        scratch.path(),
        &scratch,
    )
    .await
    .map(|mut r| {
        r.comparisons = scaleout::ScaleOutEnv::comparisons();
        r
    });
    if report
        .as_ref()
        .map_or(true, |r| r.targets.iter().any(|t| !t.errors.is_empty()))
    {
        for server in env.servers() {
            eprintln!(
                "--- last log lines of {} ---\n{}",
                server.name,
                server.log_tail()
            );
        }
    }
    drop(targets);
    drop(env);
    let report = report?;
    emit(&report, args.common.json.as_deref())?;
    fail_on_errors(&report)
}

/// The workloads asked for with --workloads, or else those of `Workload::ALL`
/// that `default` accepts.
fn selected(common: &Common, default: impl Fn(Workload) -> bool) -> Vec<Workload> {
    if common.workloads.is_empty() {
        Workload::ALL.into_iter().filter(|w| default(*w)).collect()
    } else {
        common.workloads.clone()
    }
}

/// Fails fast, before any ceiling is measured, if the URL is not an open OCI registry.
async fn check_registry(endpoint: &Endpoint) -> Result<()> {
    let mut conn = endpoint.connect().await?;
    let req = conn
        .request(hyper::Method::GET, "/v2/")
        .body(client::ReqBody::Empty)?;
    conn.call(req, hyper::StatusCode::OK).await.context(
        "GET /v2/ must answer 200 (registries requiring authentication are not supported)",
    )?;
    Ok(())
}

/// A run in which some workload failed exits non-zero (after printing what
/// did work), so CI notices.
fn fail_on_errors(report: &Report) -> Result<()> {
    let failed: usize = report.targets.iter().map(|t| t.errors.len()).sum();
    if failed > 0 {
        anyhow::bail!("{failed} workload run(s) failed; see the errors above");
    }
    Ok(())
}

/// target/release/berth next to this crate's workspace root.
fn default_berth_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    root.join("target/release/berth")
}

/// Ceilings first, then each workload on each target in turn, so both
/// registries see the same machine state for the same workload. A failing
/// workload is recorded and the run goes on.
async fn bench(
    mode: &'static str,
    targets: &[Target],
    params: &Params,
    common: &Common,
    workloads: &[Workload],
    data_dir: &Path,
    scratch: &TempDir,
) -> Result<Report> {
    let busy = other_cpu_load().await;
    if busy > 0.2 {
        eprintln!(
            "warning: {:.0}% of the machine's CPU is busy before the run; results will be noisy",
            busy * 100.0
        );
    }
    let (ceilings, mut notes) = if common.no_ceilings {
        (Vec::new(), Vec::new())
    } else {
        ceilings::measure(params, data_dir, scratch).await
    };
    for c in &ceilings {
        eprintln!("  {}: {} {}", c.label, fmt_num(c.value), c.unit);
    }

    let mut results: Vec<TargetResults> = targets
        .iter()
        .map(|t| TargetResults {
            name: t.name.clone(),
            url: t.endpoint.describe(),
            version: t.version.clone(),
            ..Default::default()
        })
        .collect();
    for &workload in workloads {
        for (target, result) in targets.iter().zip(results.iter_mut()) {
            flush_dirty_pages().await;
            eprintln!("[{}] {}...", target.name, workload.label());
            let name = target.name.clone();
            let progress = move |c: &CaseResult| {
                let metrics: Vec<String> = c
                    .metrics
                    .iter()
                    .map(|m| format!("{} {}", fmt_num(m.value), m.name))
                    .collect();
                eprintln!("[{name}]   {}: {}", c.workload, metrics.join(", "));
            };
            let (mut cases, outcome) = workload.run(target, params, &progress).await;
            result.cases.append(&mut cases);
            if let Err(e) = outcome {
                eprintln!("[{}]   FAILED: {e:#}", target.name);
                result.errors.push(format!("{}: {e:#}", workload.label()));
            }
        }
    }
    for (target, result) in targets.iter().zip(results.iter_mut()) {
        if let Some(meter) = &target.meter {
            let mirror = target.mirror.as_ref().and_then(|m| m.meter.as_ref());
            // In `run` mode the mirror is the same process: count it once.
            let mirror = mirror.filter(|m| m.pid() != meter.pid());
            result.overall = overall_usage(meter, mirror, &result.cases);
        }
    }
    if busy > 0.2 {
        notes.push(format!(
            "{:.0}% of the machine's CPU was busy with other work just before the run: treat these numbers as noisy",
            busy * 100.0
        ));
    }
    notes.push(
        "MB/s = 10^6 bytes/s; ratio columns divide the targets their headers name (a/b), and the last one the \
         first target by the ceiling; for ms rows lower is better"
            .to_string(),
    );
    Ok(Report {
        mode,
        quick: params.quick,
        machine: machine_description(),
        targets: results,
        ceilings,
        comparisons: Report::pairwise(targets.len()),
        notes,
    })
}

/// CPU since the server started, and the largest peak RSS seen in any phase
/// (or since the last reset, if that is larger). With a separate mirror
/// process (compare), its CPU is added and its peak counts too.
fn overall_usage(
    meter: &ProcMeter,
    mirror: Option<&ProcMeter>,
    cases: &[CaseResult],
) -> Option<Usage> {
    let mut cpu = meter.cpu_seconds().ok()?;
    let (_, mut hwm) = meter.rss().ok()?;
    if let Some(m) = mirror {
        cpu += m.cpu_seconds().ok()?;
        hwm = hwm.max(m.rss().ok()?.1);
    }
    let peak = cases
        .iter()
        .filter_map(|c| c.usage.map(|u| u.peak_rss_bytes))
        .fold(hwm, u64::max);
    Some(Usage {
        cpu_seconds: cpu,
        peak_rss_bytes: peak,
    })
}

/// Fraction of all cores busy over one second, sampled from /proc/stat
/// before anything is started: on a 2-core machine a concurrent build
/// halves every number, and the report should say so.
async fn other_cpu_load() -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...: idle = idle + iowait.
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
        Some((fields.iter().take(8).sum(), idle))
    }
    let Some((total0, idle0)) = sample() else {
        return 0.0;
    };
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let Some((total1, idle1)) = sample() else {
        return 0.0;
    };
    let total = total1.saturating_sub(total0).max(1) as f64;
    1.0 - idle1.saturating_sub(idle0) as f64 / total
}

/// CPU model, core count, memory and kernel, from /proc.
fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Lets the previous workload's writeback finish before the next starts, so
/// one registry's dirty pages are not flushed on the other's time.
async fn flush_dirty_pages() {
    // SAFETY: sync(2) has no preconditions.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
}

fn emit(report: &Report, json: Option<&Path>) -> Result<()> {
    let table = report.render();
    let json_text =
        serde_json::to_string_pretty(&report.to_json()).context("serialising results")?;
    match json {
        Some(p) if p == Path::new("-") => {
            eprint!("{table}");
            println!("{json_text}");
        }
        Some(p) => {
            print!("{table}");
            std::fs::write(p, json_text + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!("JSON results written to {}", p.display());
        }
        None => print!("{table}"),
    }
    Ok(())
}
