//! Results model, the human-readable tables, and the JSON form.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::meter::Usage;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One number a workload produced, e.g. "MB/s" or "p99 ms".
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub value: f64,
    pub better: Better,
    /// Key of the [`Ceiling`] this number should be held against, if any.
    pub ceiling: Option<String>,
}

impl Metric {
    pub fn higher(name: &'static str, value: f64) -> Metric {
        Metric {
            name,
            value,
            better: Better::Higher,
            ceiling: None,
        }
    }

    pub fn lower(name: &'static str, value: f64) -> Metric {
        Metric {
            name,
            value,
            better: Better::Lower,
            ceiling: None,
        }
    }

    pub fn against(mut self, ceiling: impl Into<String>) -> Metric {
        self.ceiling = Some(ceiling.into());
        self
    }
}

/// One measured case of a workload ("push monolithic 100 MiB") on one target.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub workload: String,
    pub metrics: Vec<Metric>,
    /// Server CPU and peak RSS during the measured phase, when the server's PID is known.
    pub usage: Option<Usage>,
}

/// Everything measured on one registry.
#[derive(Debug, Default)]
pub struct TargetResults {
    pub name: String,
    pub url: String,
    /// `--version` output of the server binary, when we started it.
    pub version: Option<String>,
    pub cases: Vec<CaseResult>,
    /// Whole-run server usage: CPU since the process started, peak RSS over all phases.
    pub overall: Option<Usage>,
    pub errors: Vec<String>,
}

/// A best-case number for this machine that no registry can beat.
#[derive(Clone, Debug)]
pub struct Ceiling {
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    pub value: f64,
}

pub struct Report {
    pub mode: &'static str,
    pub quick: bool,
    /// One line describing the machine (CPU, cores, memory, kernel), for comparing runs.
    pub machine: String,
    pub targets: Vec<TargetResults>,
    pub ceilings: Vec<Ceiling>,
    /// Ratio columns, as `(a, b)` indices into `targets` for "a/b"; [`Report::pairwise`] for two targets.
    pub comparisons: Vec<(usize, usize)>,
    pub notes: Vec<String>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Report {
    /// The ratio columns of a run on `targets` registries: the first against the second when there are two.
    pub fn pairwise(targets: usize) -> Vec<(usize, usize)> {
        if targets == 2 {
            vec![(0, 1)]
        } else {
            Vec::new()
        }
    }

    /// The tables printed on stdout: every target, a ratio column per comparison (berth/distribution in
    /// `compare`), and the first target held against the ceilings.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        let comparisons: Vec<(usize, usize)> = self
            .comparisons
            .iter()
            .copied()
            .filter(|&(a, b)| a < names.len() && b < names.len())
            .collect();
        let ratio_headers = || {
            comparisons
                .iter()
                .map(|&(a, b)| format!("{}/{}", names[a], names[b]))
        };
        let ratios = |values: &[Option<f64>]| {
            comparisons
                .iter()
                .map(|&(a, b)| ratio(values[a], values[b]))
                .collect::<Vec<_>>()
        };
        let _ = writeln!(out, "machine: {}", self.machine);
        for t in &self.targets {
            let version = t.version.as_deref().unwrap_or("version unknown");
            let _ = writeln!(out, "{}: {} ({version})", t.name, t.url);
        }
        let _ = writeln!(out);

        // Rows in order of first appearance across targets.
        let mut rows: Vec<(String, &'static str, Option<String>)> = Vec::new();
        for t in &self.targets {
            for c in &t.cases {
                for m in &c.metrics {
                    if !rows
                        .iter()
                        .any(|(w, n, _)| *w == c.workload && *n == m.name)
                    {
                        rows.push((c.workload.clone(), m.name, m.ceiling.clone()));
                    }
                }
            }
        }

        let mut header = vec!["workload".to_string(), "metric".to_string()];
        header.extend(names.iter().map(|n| n.to_string()));
        header.extend(ratio_headers());
        header.push("ceiling".to_string());
        if let Some(first) = names.first() {
            header.push(format!("{first}/ceiling"));
        }
        let mut table = Table::new(header, 2);
        let mut last_workload = String::new();
        for (workload, metric, ceiling_key) in &rows {
            let values: Vec<Option<f64>> = self
                .targets
                .iter()
                .map(|t| t.metric(workload, metric))
                .collect();
            let shown = if *workload == last_workload {
                String::new()
            } else {
                workload.clone()
            };
            last_workload = workload.clone();
            let mut row = vec![shown, metric.to_string()];
            row.extend(values.iter().map(|v| fmt_opt(*v)));
            row.extend(ratios(&values));
            let ceiling = ceiling_key
                .as_ref()
                .and_then(|k| self.ceilings.iter().find(|c| &c.key == k));
            row.push(ceiling.map(|c| fmt_num(c.value)).unwrap_or_default());
            row.push(ratio(
                values.first().copied().flatten(),
                ceiling.map(|c| c.value),
            ));
            table.row(row);
        }
        let _ = writeln!(out, "{}", table.render());

        if self.targets.iter().any(|t| t.overall.is_some()) {
            let _ = writeln!(
                out,
                "Server resources during each measured phase (CPU = user+sys seconds, RSS = peak MiB):"
            );
            let mut header = vec!["workload".to_string()];
            for n in &names {
                header.push(format!("{n} CPU s"));
            }
            header.extend(ratio_headers());
            for n in &names {
                header.push(format!("{n} RSS MiB"));
            }
            header.extend(ratio_headers());
            let mut table = Table::new(header, 1);
            let mut workloads: Vec<&str> = Vec::new();
            for t in &self.targets {
                for c in &t.cases {
                    if !workloads.contains(&c.workload.as_str()) {
                        workloads.push(&c.workload);
                    }
                }
            }
            let usage_rows = workloads
                .iter()
                .map(|w| {
                    let u: Vec<Option<Usage>> = self.targets.iter().map(|t| t.usage(w)).collect();
                    (w.to_string(), u)
                })
                .chain(std::iter::once((
                    "overall (whole run, incl. setup)".to_string(),
                    self.targets.iter().map(|t| t.overall).collect(),
                )));
            for (w, u) in usage_rows {
                let cpu: Vec<Option<f64>> = u.iter().map(|x| x.map(|x| x.cpu_seconds)).collect();
                let rss: Vec<Option<f64>> = u
                    .iter()
                    .map(|x| x.map(|x| x.peak_rss_bytes as f64 / MIB))
                    .collect();
                let mut row = vec![w];
                row.extend(cpu.iter().map(|v| fmt_opt(*v)));
                row.extend(ratios(&cpu));
                row.extend(rss.iter().map(|v| fmt_opt(*v)));
                row.extend(ratios(&rss));
                table.row(row);
            }
            let _ = writeln!(out, "{}", table.render());
        }

        if !self.ceilings.is_empty() {
            let _ = writeln!(out, "Ceilings on this machine:");
            let mut table = Table::new(
                vec![
                    "key".into(),
                    "ceiling".into(),
                    "value".into(),
                    "unit".into(),
                ],
                2,
            );
            for c in &self.ceilings {
                table.row(vec![
                    c.key.clone(),
                    c.label.clone(),
                    fmt_num(c.value),
                    c.unit.to_string(),
                ]);
            }
            let _ = writeln!(out, "{}", table.render());
        }

        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        for t in &self.targets {
            for e in &t.errors {
                let _ = writeln!(out, "error [{}]: {e}", t.name);
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let usage = |u: &Option<Usage>| {
            u.map(|u| json!({ "cpu_seconds": u.cpu_seconds, "peak_rss_bytes": u.peak_rss_bytes }))
        };
        json!({
            "tool": "berth-bench",
            "mode": self.mode,
            "quick": self.quick,
            "machine": self.machine,
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name,
                "url": t.url,
                "version": t.version,
                "overall": usage(&t.overall),
                "errors": t.errors,
                "cases": t.cases.iter().map(|c| json!({
                    "workload": c.workload,
                    "usage": usage(&c.usage),
                    "metrics": c.metrics.iter().map(|m| json!({
                        "name": m.name,
                        "value": m.value,
                        "higher_is_better": m.better == Better::Higher,
                        "ceiling": m.ceiling,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "ceilings": self.ceilings.iter().map(|c| json!({
                "key": c.key, "label": c.label, "unit": c.unit, "value": c.value,
            })).collect::<Vec<_>>(),
            "comparisons": self.comparisons.iter().map(|&(a, b)| json!({
                "numerator": self.targets.get(a).map(|t| &t.name),
                "denominator": self.targets.get(b).map(|t| &t.name),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

impl TargetResults {
    fn metric(&self, workload: &str, name: &str) -> Option<f64> {
        self.cases
            .iter()
            .filter(|c| c.workload == workload)
            .flat_map(|c| &c.metrics)
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    fn usage(&self, workload: &str) -> Option<Usage> {
        self.cases
            .iter()
            .find(|c| c.workload == workload)
            .and_then(|c| c.usage)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => String::new(),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_else(|| "-".into())
}

/// Three significant-ish digits: enough to compare, few enough to read.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Plain-text table: the first `left` columns left-aligned (labels), the rest right-aligned (numbers).
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    left: usize,
}

impl Table {
    fn new(header: Vec<String>, left: usize) -> Table {
        Table {
            header,
            rows: Vec::new(),
            left,
        }
    }

    fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    s.push_str("  ");
                }
                if i < self.left {
                    let _ = write!(s, "{cell:<w$}");
                } else {
                    let _ = write!(s, "{cell:>w$}");
                }
            }
            format!("{}\n", s.trim_end())
        };
        let mut out = line(&self.header);
        out.push_str(
            &"-".repeat(widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1)),
        );
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(workload: &str, v: f64) -> CaseResult {
        CaseResult {
            workload: workload.into(),
            metrics: vec![Metric::higher("MB/s", v).against("hash")],
            usage: Some(Usage {
                cpu_seconds: 1.0,
                peak_rss_bytes: 10 << 20,
            }),
        }
    }

    #[test]
    fn renders_pair_with_ratios_and_ceiling() {
        let report = Report {
            mode: "compare",
            quick: true,
            machine: "test".into(),
            targets: vec![
                TargetResults {
                    name: "berth".into(),
                    cases: vec![case("push 1 MiB", 200.0)],
                    overall: Some(Usage::default()),
                    ..Default::default()
                },
                TargetResults {
                    name: "distribution".into(),
                    cases: vec![case("push 1 MiB", 100.0)],
                    overall: Some(Usage::default()),
                    ..Default::default()
                },
            ],
            ceilings: vec![Ceiling {
                key: "hash".into(),
                label: "hash-on-receive".into(),
                unit: "MB/s",
                value: 400.0,
            }],
            comparisons: Report::pairwise(2),
            notes: vec![],
        };
        let text = report.render();
        assert!(text.contains("berth/distribution"), "{text}");
        assert!(text.contains("2.00"), "{text}");
        assert!(text.contains("0.50"), "{text}");
        assert_eq!(
            report.to_json()["targets"][0]["cases"][0]["metrics"][0]["value"],
            200.0
        );
    }
}
