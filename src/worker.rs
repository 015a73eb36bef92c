//! Background work. Every job the server runs on its own — garbage collection, retention, scrub, mirror eviction,
//! upload expiry, the pull-time flush, … — is a [`Job`] that a [`Worker`] runs on a [`Schedule`], and the server
//! owns every worker in one [`Workers`]. A worker has a name, a state, its last error, its progress and the times of
//! its last and next runs; the admin API (`GET /api/v1/workers`), the UI's maintenance page and `/metrics`
//! (`berth_worker_*`) all read them from here, so a new kind of background work (event delivery, replication) is
//! one `Job` impl and one [`Workers::spawn`], with nothing else to wire.
//!
//! Stopping is cooperative: on shutdown every worker is told to stop; an idle one stops at once, a busy job sees
//! [`RunContext::stopping`] at its next step (a GC batch, a scrubbed blob) and returns early, and then each job's
//! [`Job::stop`] runs (the pull-time flush writes what it still holds). Nothing is aborted in the middle of a step;
//! only a worker still running when the shutdown timeout ends is left behind (and logged).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use rand::RngExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{WorkerLabel, WorkerStateLabel, metrics};

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Running its job.
    Busy,
    /// Waiting for its next run (or scheduled never, or its job's lease is held by another replica: see `detail`).
    Idle,
    /// Running, but pausing to keep to a rate limit (a deep scrub's `max_rate`).
    Throttled,
    /// Its last run failed (see `last_error`); it runs again at its next time.
    Failed,
}

impl WorkerState {
    pub const ALL: [WorkerState; 4] = [
        WorkerState::Busy,
        WorkerState::Idle,
        WorkerState::Throttled,
        WorkerState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Idle => "idle",
            WorkerState::Throttled => "throttled",
            WorkerState::Failed => "failed",
        }
    }
}

/// How far a busy worker's run is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// The current phase of the run (`blobs`, `hashing blobs`, …).
    pub phase: String,
    /// Steps of the phase done.
    pub done: u64,
    /// Steps of the phase in all, when known.
    pub total: Option<u64>,
}

/// When a run started and ended (unix seconds); `finished_at` is `None` while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RunTimes {
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// Everything a worker shows, as `GET /api/v1/workers` answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStatus {
    pub name: String,
    pub state: WorkerState,
    /// A note on the state: why an idle worker did not run (scheduling off, the lease held by another replica),
    /// what its last run found.
    pub detail: Option<String>,
    /// The error of the last failed run, kept after later runs succeed (the state says whether it is current).
    pub last_error: Option<String>,
    /// When that error happened (unix seconds).
    pub last_error_at: Option<i64>,
    /// Failed runs since the server started.
    pub failures: u64,
    /// While busy, how far the run is.
    pub progress: Option<Progress>,
    /// The latest run that did its job (the current one while busy).
    pub last_run: Option<RunTimes>,
    /// When the next run is due (unix seconds); `None` when nothing is scheduled.
    pub next_run: Option<i64>,
}

/// What a run did, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ran {
    /// The job did not run this time, for a reason that is no failure (another replica holds its lease).
    pub skipped: bool,
    /// Shown as the worker's `detail` until the next run.
    pub note: Option<String>,
}

impl Ran {
    pub fn done() -> Ran {
        Ran::default()
    }

    /// Done, with something to say (a scrub that found problems).
    pub fn noted(note: impl Into<String>) -> Ran {
        Ran {
            skipped: false,
            note: Some(note.into()),
        }
    }

    /// Not run this time, and why.
    pub fn skipped(reason: impl Into<String>) -> Ran {
        Ran {
            skipped: true,
            note: Some(reason.into()),
        }
    }
}

/// One kind of background work.
#[async_trait::async_trait]
pub trait Job: Send + Sync + 'static {
    /// One run. A long run checks `ctx.stopping()` between steps and returns early (an error is fine: a run that
    /// ends while the worker is being stopped is not counted as a failure).
    async fn run(&self, ctx: &RunContext) -> anyhow::Result<Ran>;

    /// Runs once when the worker stops, after its last run (the pull-time flush writes what it still holds).
    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A job from a closure, for work that needs neither progress nor a stop step.
pub fn job_fn<F, Fut>(f: F) -> impl Job
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Ran>> + Send + 'static,
{
    struct FnJob<F>(F);

    #[async_trait::async_trait]
    impl<F, Fut> Job for FnJob<F>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Ran>> + Send + 'static,
    {
        async fn run(&self, _: &RunContext) -> anyhow::Result<Ran> {
            (self.0)().await
        }
    }

    FnJob(f)
}

/// When a worker runs its job.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Zero: never (the worker is listed, idle, with `off` as its detail).
    interval: Duration,
    jitter: Duration,
    at_start: bool,
    wake: Option<Arc<Notify>>,
    off: &'static str,
}

impl Schedule {
    /// Every `interval` (zero: never), the first run one interval after start.
    pub fn every(interval: Duration) -> Schedule {
        Schedule {
            interval,
            jitter: Duration::ZERO,
            at_start: false,
            wake: None,
            off: "scheduled runs are off",
        }
    }

    /// Never: the worker is listed, idle, with `reason` as its detail.
    pub fn off(reason: &'static str) -> Schedule {
        Schedule {
            off: reason,
            ..Schedule::every(Duration::ZERO)
        }
    }

    /// Each run starts up to `jitter` later, at random (replicas and restarts do not all run at once).
    pub fn with_jitter(self, jitter: Duration) -> Schedule {
        Schedule { jitter, ..self }
    }

    /// The first run at start rather than after one interval.
    pub fn starting_now(self) -> Schedule {
        Schedule {
            at_start: true,
            ..self
        }
    }

    /// Also runs as soon as `wake` is notified (a mirror's eviction after each completed download).
    pub fn woken_by(self, wake: Arc<Notify>) -> Schedule {
        Schedule {
            wake: Some(wake),
            ..self
        }
    }

    fn wait(&self, first: bool) -> Duration {
        if first && self.at_start {
            return Duration::ZERO;
        }
        if self.jitter.is_zero() {
            return self.interval;
        }
        let extra = rand::rng().random_range(0..=self.jitter.as_millis() as u64);
        self.interval + Duration::from_millis(extra)
    }
}

/// One worker: its name and what it shows. The job's task owns the running; this is what everyone else reads.
pub struct Worker {
    name: String,
    status: Mutex<WorkerStatus>,
}

impl Worker {
    fn new(name: String) -> Worker {
        let status = WorkerStatus {
            name: name.clone(),
            state: WorkerState::Idle,
            detail: None,
            last_error: None,
            last_error_at: None,
            failures: 0,
            progress: None,
            last_run: None,
            next_run: None,
        };
        let w = Worker {
            name,
            status: Mutex::new(status),
        };
        w.show_state(WorkerState::Idle);
        let _ = metrics().worker_failures.get_or_create(&w.label());
        w
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> WorkerStatus {
        self.status.lock().clone()
    }

    fn label(&self) -> WorkerLabel {
        WorkerLabel {
            worker: self.name.clone(),
        }
    }

    /// Sets the state and its 0/1 gauges.
    fn set_state(&self, s: &mut WorkerStatus, state: WorkerState) {
        s.state = state;
        self.show_state(state);
    }

    fn show_state(&self, state: WorkerState) {
        for st in WorkerState::ALL {
            metrics()
                .worker_state
                .get_or_create(&WorkerStateLabel {
                    worker: self.name.clone(),
                    state: st.as_str(),
                })
                .set(i64::from(st == state));
        }
    }

    fn show_last_run(&self, at: i64) {
        metrics()
            .worker_last_run
            .get_or_create(&self.label())
            .set(at);
    }

    fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        f(&mut self.status.lock());
    }

    /// A run starts; returns the previous last run, restored if the run is skipped.
    fn begin(&self) -> Option<RunTimes> {
        let mut s = self.status.lock();
        let previous = s.last_run;
        self.set_state(&mut s, WorkerState::Busy);
        s.progress = None;
        s.next_run = None;
        s.last_run = Some(RunTimes {
            started_at: crate::meta::now(),
            finished_at: None,
        });
        previous
    }

    /// A run ended. `stopping`: the worker was told to stop meanwhile, so an error is the interruption, not a
    /// failure.
    fn finish(&self, result: anyhow::Result<Ran>, previous: Option<RunTimes>, stopping: bool) {
        let now = crate::meta::now();
        let mut s = self.status.lock();
        s.progress = None;
        match result {
            Ok(ran) => {
                if ran.skipped {
                    s.last_run = previous;
                } else if let Some(r) = &mut s.last_run {
                    r.finished_at = Some(now);
                    self.show_last_run(now);
                }
                s.detail = ran.note;
                self.set_state(&mut s, WorkerState::Idle);
            }
            Err(e) if stopping => {
                tracing::info!(worker = %self.name, error = %format!("{e:#}"), "run interrupted by shutdown");
                if let Some(r) = &mut s.last_run {
                    r.finished_at = Some(now);
                }
                s.detail = Some("interrupted by shutdown".into());
                self.set_state(&mut s, WorkerState::Idle);
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(worker = %self.name, error = %message, "background job failed");
                if let Some(r) = &mut s.last_run {
                    r.finished_at = Some(now);
                    self.show_last_run(now);
                }
                s.detail = None;
                s.last_error = Some(message);
                s.last_error_at = Some(now);
                s.failures += 1;
                metrics().worker_failures.get_or_create(&self.label()).inc();
                self.set_state(&mut s, WorkerState::Failed);
            }
        }
    }
}

/// What a running job gets: progress reporting, a rate-limit pause, and whether it should stop.
pub struct RunContext {
    worker: Arc<Worker>,
    stop: CancellationToken,
}

impl RunContext {
    /// True once the worker is told to stop: return at the next step.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when the worker is told to stop.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// A new phase of the run, with its number of steps when known.
    pub fn phase(&self, name: &str, total: Option<u64>) {
        self.worker.update(|s| {
            s.progress = Some(Progress {
                phase: name.to_owned(),
                done: 0,
                total,
            })
        });
    }

    /// `n` more steps of the phase done.
    pub fn advance(&self, n: u64) {
        self.worker.update(|s| match &mut s.progress {
            Some(p) => p.done += n,
            None => {
                s.progress = Some(Progress {
                    done: n,
                    ..Default::default()
                })
            }
        });
    }

    /// Pauses for `d` to keep to a rate limit, shown as `throttled`. False when told to stop meanwhile.
    pub async fn throttle(&self, d: Duration) -> bool {
        let w = &self.worker;
        w.update(|s| w.set_state(s, WorkerState::Throttled));
        let stopped = tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        };
        w.update(|s| w.set_state(s, WorkerState::Busy));
        !stopped
    }
}

/// The server's workers.
#[derive(Default)]
pub struct Workers {
    stop: CancellationToken,
    workers: Mutex<Vec<Arc<Worker>>>,
    tasks: Mutex<Vec<(String, JoinHandle<()>)>>,
}

impl Workers {
    pub fn new() -> Workers {
        Workers::default()
    }

    /// Starts a worker running `job` on `schedule`, until [`Workers::stop`].
    pub fn spawn(&self, name: impl Into<String>, schedule: Schedule, job: impl Job) -> Arc<Worker> {
        let worker = Arc::new(Worker::new(name.into()));
        let ctx = RunContext {
            worker: worker.clone(),
            stop: self.stop.child_token(),
        };
        let task = tokio::spawn(drive(ctx, schedule, job));
        self.workers.lock().push(worker.clone());
        self.tasks.lock().push((worker.name.clone(), task));
        worker
    }

    /// What every worker shows, by name.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        let mut all: Vec<WorkerStatus> = self.workers.lock().iter().map(|w| w.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Tells every worker to stop and waits for them until `deadline`; logs one line per worker still running
    /// then (which is left behind) and returns their names.
    pub async fn stop(&self, deadline: tokio::time::Instant) -> Vec<String> {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let total = tasks.len();
        let mut late = Vec::new();
        for (name, mut task) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(worker = %name, error = %e, "worker ended abnormally")
                }
                Err(_) => {
                    tracing::warn!(worker = %name, "worker did not stop within the shutdown timeout");
                    task.abort();
                    late.push(name);
                }
            }
        }
        tracing::info!(
            stopped = total - late.len(),
            left_running = late.len(),
            "background workers stopped"
        );
        late
    }
}

/// A worker's life: wait for the next run (or a wake-up, or the stop), run, record; at the stop, the job's stop step.
async fn drive(ctx: RunContext, schedule: Schedule, job: impl Job) {
    let worker = ctx.worker.clone();
    if schedule.interval.is_zero() {
        worker.update(|s| s.detail = Some(schedule.off.to_owned()));
        ctx.stop.cancelled().await;
    } else {
        let mut first = true;
        loop {
            let wait = schedule.wait(first);
            first = false;
            worker.update(|s| s.next_run = Some(crate::meta::now() + wait.as_secs() as i64));
            let woken = async {
                match &schedule.wake {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ctx.stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = woken => {}
            }
            let previous = worker.begin();
            // A panicking job (a bug) is a failed run, not a worker that silently stays busy forever.
            let result = match std::panic::AssertUnwindSafe(job.run(&ctx))
                .catch_unwind()
                .await
            {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("the job panicked (see the log)")),
            };
            worker.finish(result, previous, ctx.stopping());
            if ctx.stopping() {
                break;
            }
        }
    }
    worker.update(|s| s.next_run = None);
    if let Err(e) = job.stop().await {
        tracing::error!(worker = %worker.name, error = %format!("{e:#}"), "worker's stop step failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn status(ws: &Workers, name: &str) -> WorkerStatus {
        ws.statuses()
            .into_iter()
            .find(|s| s.name == name)
            .expect("worker listed")
    }

    #[tokio::test]
    async fn a_failed_run_shows_failed_with_its_error_and_the_next_success_idle() {
        let ws = Workers::new();
        let n = Arc::new(AtomicU64::new(0));
        let runs = n.clone();
        ws.spawn(
            "t-flaky",
            Schedule::every(Duration::from_millis(20)).starting_now(),
            job_fn(move || {
                let k = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    match k {
                        0 => anyhow::bail!("disk on fire"),
                        _ => Ok(Ran::done()),
                    }
                }
            }),
        );
        until("first run", || status(&ws, "t-flaky").failures == 1).await;
        let s = status(&ws, "t-flaky");
        assert_eq!(s.last_error.as_deref(), Some("disk on fire"));
        until("second run", || n.load(Ordering::SeqCst) >= 2).await;
        until("idle", || status(&ws, "t-flaky").state == WorkerState::Idle).await;
        let s = status(&ws, "t-flaky");
        assert!(s.last_run.and_then(|r| r.finished_at).is_some(), "{s:?}");
        assert_eq!(s.last_error.as_deref(), Some("disk on fire"));
        assert!(
            ws.stop(tokio::time::Instant::now() + Duration::from_secs(1))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_panicking_job_is_a_failed_run_and_runs_again() {
        let ws = Workers::new();
        let n = Arc::new(AtomicU64::new(0));
        let runs = n.clone();
        ws.spawn(
            "t-panics",
            Schedule::every(Duration::from_millis(20)).starting_now(),
            job_fn(move || {
                let k = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(k > 0, "first run panics");
                    Ok(Ran::done())
                }
            }),
        );
        until("recovered", || {
            let s = status(&ws, "t-panics");
            s.failures == 1 && s.state == WorkerState::Idle
        })
        .await;
        let s = status(&ws, "t-panics");
        assert!(s.last_error.is_some_and(|e| e.contains("panicked")));
        ws.stop(tokio::time::Instant::now() + Duration::from_secs(1))
            .await;
    }

    #[tokio::test]
    async fn a_skipped_run_is_idle_with_its_reason_and_keeps_the_last_run() {
        let ws = Workers::new();
        ws.spawn(
            "t-leased",
            Schedule::every(Duration::from_millis(10)).starting_now(),
            job_fn(|| async { Ok(Ran::skipped("another replica holds the lease")) }),
        );
        until("a run", || status(&ws, "t-leased").detail.is_some()).await;
        let s = status(&ws, "t-leased");
        assert_ne!(s.state, WorkerState::Failed);
        assert_eq!(s.last_run, None);
        ws.stop(tokio::time::Instant::now() + Duration::from_secs(1))
            .await;
    }

    struct Stubborn(Arc<AtomicU64>);

    #[async_trait::async_trait]
    impl Job for Stubborn {
        async fn run(&self, ctx: &RunContext) -> anyhow::Result<Ran> {
            // Checks for the stop only every 10 s: longer than the test's shutdown timeout.
            while !ctx.stopping() {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(Ran::done())
        }
        async fn stop(&self) -> anyhow::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    struct Cooperative(Arc<AtomicU64>);

    #[async_trait::async_trait]
    impl Job for Cooperative {
        async fn run(&self, ctx: &RunContext) -> anyhow::Result<Ran> {
            ctx.phase("steps", Some(1000));
            for _ in 0..1000 {
                if ctx.stopping() {
                    anyhow::bail!("interrupted");
                }
                ctx.advance(1);
                if !ctx.throttle(Duration::from_millis(50)).await {
                    anyhow::bail!("interrupted");
                }
            }
            Ok(Ran::done())
        }
        async fn stop(&self) -> anyhow::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn stop_waits_for_cooperative_workers_and_names_those_left_running() {
        let ws = Workers::new();
        let stops = Arc::new(AtomicU64::new(0));
        let every = Schedule::every(Duration::from_secs(3600)).starting_now();
        ws.spawn("t-stubborn", every.clone(), Stubborn(stops.clone()));
        ws.spawn("t-cooperative", every.clone(), Cooperative(stops.clone()));
        ws.spawn(
            "t-idle",
            Schedule::every(Duration::from_secs(3600)),
            Cooperative(stops.clone()),
        );
        ws.spawn(
            "t-off",
            Schedule::off("no policy"),
            Cooperative(stops.clone()),
        );
        until("throttled", || {
            status(&ws, "t-cooperative").state == WorkerState::Throttled
        })
        .await;
        let s = status(&ws, "t-cooperative");
        assert_eq!(
            s.progress.as_ref().map(|p| p.total),
            Some(Some(1000)),
            "{s:?}"
        );
        assert_eq!(status(&ws, "t-off").detail.as_deref(), Some("no policy"));
        assert!(status(&ws, "t-idle").next_run.is_some());
        let started = tokio::time::Instant::now();
        let late = ws.stop(started + Duration::from_millis(500)).await;
        assert_eq!(late, vec!["t-stubborn".to_string()]);
        assert!(started.elapsed() < Duration::from_secs(2));
        // Every worker that stopped ran its stop step; the interrupted run is no failure.
        assert_eq!(stops.load(Ordering::SeqCst), 3);
        let s = status(&ws, "t-cooperative");
        assert_eq!((s.state, s.failures), (WorkerState::Idle, 0), "{s:?}");
    }
}
