//! Server resource usage from /proc: CPU seconds (utime+stime) and peak RSS.
//!
//! Peak RSS per workload uses the kernel's high-water mark (VmHWM), reset at
//! the start of each measured phase by writing "5" to /proc/PID/clear_refs.
//! Where the reset is not allowed, a 20 ms VmRSS sampler stands in for it
//! (it can miss short spikes, so the exact mark is preferred).

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// CPU and memory a server spent during one measured phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Meters one server process, or the sum over the replicas of one registry.
#[derive(Clone, Debug)]
pub struct ProcMeter {
    pids: Vec<u32>,
    ticks_per_second: f64,
}

impl ProcMeter {
    pub fn new(pid: u32) -> ProcMeter {
        ProcMeter::group(vec![pid])
    }

    /// CPU and RSS summed over `pids` (replicas: RSS peaks are summed per process, an upper bound of the joint peak).
    pub fn group(pids: Vec<u32>) -> ProcMeter {
        // SAFETY: sysconf has no preconditions; it only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ProcMeter {
            pids,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    /// The first (or only) process.
    pub fn pid(&self) -> u32 {
        self.pids[0]
    }

    /// User + system CPU time the processes have used since they started.
    pub fn cpu_seconds(&self) -> Result<f64> {
        self.pids.iter().map(|&p| self.cpu_seconds_of(p)).sum()
    }

    fn cpu_seconds_of(&self, pid: u32) -> Result<f64> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name is in parentheses and may contain spaces: parse after the last ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .with_context(|| format!("malformed {path}"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3 of stat(5), so utime (14) and stime (15) sit at 11 and 12.
        let field = |i: usize| -> Result<f64> {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v as f64)
                .with_context(|| format!("malformed {path}"))
        };
        Ok((field(11)? + field(12)?) / self.ticks_per_second)
    }

    /// (VmRSS, VmHWM) in bytes, summed over the processes.
    pub fn rss(&self) -> Result<(u64, u64)> {
        let mut sum = (0, 0);
        for &pid in &self.pids {
            let (rss, hwm) = Self::rss_of(pid)?;
            sum = (sum.0 + rss, sum.1 + hwm);
        }
        Ok(sum)
    }

    fn rss_of(pid: u32) -> Result<(u64, u64)> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok((kib("VmRSS:"), kib("VmHWM:")))
    }

    /// Starts measuring a phase: resets the RSS high-water mark and starts the sampler.
    pub fn begin(&self) -> Result<Span> {
        let hwm_reset = self
            .pids
            .iter()
            .all(|pid| std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok());
        let cpu_start = self.cpu_seconds()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let meter = self.clone();
        let sampler = tokio::spawn(async move {
            let mut peak = meter.rss().map(|(rss, _)| rss).unwrap_or(0);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let Ok((rss, _)) = meter.rss() {
                            peak = peak.max(rss);
                        }
                    }
                }
            }
            peak
        });
        Ok(Span {
            meter: self.clone(),
            cpu_start,
            hwm_reset,
            stop,
            sampler,
        })
    }
}

/// A phase being measured; see [`ProcMeter::begin`].
pub struct Span {
    meter: ProcMeter,
    cpu_start: f64,
    hwm_reset: bool,
    stop: oneshot::Sender<()>,
    sampler: JoinHandle<u64>,
}

impl Span {
    pub async fn finish(self) -> Result<Usage> {
        let cpu_end = self.meter.cpu_seconds()?;
        let (rss, hwm) = self.meter.rss()?;
        let _ = self.stop.send(());
        let sampled = self.sampler.await.context("RSS sampler task failed")?;
        let peak = if self.hwm_reset {
            hwm
        } else {
            sampled.max(rss)
        };
        Ok(Usage {
            cpu_seconds: cpu_end - self.cpu_start,
            peak_rss_bytes: peak,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn measures_own_process() {
        let meter = ProcMeter::new(std::process::id());
        let span = meter.begin().unwrap();
        let usage = span.finish().await.unwrap();
        assert!(usage.cpu_seconds >= 0.0);
        assert!(usage.peak_rss_bytes > 0);
    }
}
