//! `sweep collect`: every job's `summary.json` into `sweep.csv` (one row per job, also
//! the ones that did not finish), `summary.md` (mean ± sd over seeds per grid point, the
//! best point by *validation* accuracy with its test accuracy beside it, and its paired
//! gain over the student alone with a 95% t-interval), `heatmap.png` and `best.toml`.
//!
//! Nothing here chooses on the test set: the best point is the highest mean validation
//! accuracy, and its test accuracy is only reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::exec::{JobState, job_state, read_status, run_dir};
use super::plan::{Job, JobKind, Plan};
use crate::checkpoint::write_atomic;
use crate::report::{mean_sd, t_interval_95};

/// One row of `sweep.csv`: a job and, when it finished, its figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub job: Job,
    /// `finished`, `failed`, `unfinished`, `unstarted`, `running` or `missing`.
    pub state: String,
    /// Accuracy is a fraction in [0, 1]; loss the mean cross-entropy (nats).
    pub val_acc: Option<f64>,
    pub val_loss: Option<f64>,
    pub test_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub epochs: Option<usize>,
    pub best_epoch: Option<usize>,
    /// Wall-clock seconds of the job's last process (from `status/<id>.json`).
    pub seconds: Option<f64>,
    /// Process start to the first optimizer step, and data loading, seconds.
    pub startup_seconds: Option<f64>,
    pub data_load_seconds: Option<f64>,
}

/// Reads every job's state and summary.
pub fn rows(sweep: &Path, plan: &Plan) -> Vec<Row> {
    plan.jobs
        .iter()
        .map(|job| {
            let state = job_state(sweep, job);
            let status = read_status(sweep, job);
            let summary: Option<serde_json::Value> = (state == JobState::Finished)
                .then(|| std::fs::read_to_string(run_dir(sweep, job).join("summary.json")).ok())
                .flatten()
                .and_then(|t| serde_json::from_str(&t).ok());
            let f = |k: &str| summary.as_ref().and_then(|s| s[k].as_f64());
            let u = |k: &str| {
                summary
                    .as_ref()
                    .and_then(|s| s[k].as_u64())
                    .map(|v| v as usize)
            };
            let failed = state != JobState::Finished
                && state != JobState::Running
                && status
                    .as_ref()
                    .is_some_and(|s| !matches!(s.exit_code, 0 | 130));
            Row {
                job: job.clone(),
                state: if failed { "failed" } else { state.name() }.to_string(),
                val_acc: f("best_val_acc"),
                val_loss: f("best_val_ce"),
                test_acc: f("test_acc"),
                test_loss: f("test_loss"),
                epochs: u("epochs_run"),
                best_epoch: u("best_epoch"),
                seconds: status
                    .as_ref()
                    .filter(|_| summary.is_some())
                    .map(|s| s.seconds),
                startup_seconds: f("startup_seconds"),
                data_load_seconds: f("data_load_seconds"),
            }
        })
        .collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_default()
}

/// `sweep.csv`'s text.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "index,id,kind,point,objective,temperature,alpha,seed,state,val_acc,val_loss,test_acc,test_loss,epochs,best_epoch,seconds,startup_seconds,data_load_seconds\n",
    );
    for r in rows {
        let j = &r.job;
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            j.index,
            j.id,
            j.kind.name(),
            j.point(),
            j.objective.as_deref().unwrap_or(""),
            j.temperature.map(|v| v.to_string()).unwrap_or_default(),
            j.alpha.map(|v| v.to_string()).unwrap_or_default(),
            j.seed,
            r.state,
            opt(r.val_acc, 6),
            opt(r.val_loss, 6),
            opt(r.test_acc, 6),
            opt(r.test_loss, 6),
            r.epochs.map(|v| v.to_string()).unwrap_or_default(),
            r.best_epoch.map(|v| v.to_string()).unwrap_or_default(),
            opt(r.seconds, 2),
            opt(r.startup_seconds, 3),
            opt(r.data_load_seconds, 3),
        ));
    }
    s
}

/// One grid point over its finished seeds.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub kind: JobKind,
    pub objective: Option<String>,
    pub temperature: Option<f64>,
    pub alpha: Option<f64>,
    /// Jobs planned at this point (one per seed).
    pub planned: usize,
    /// Finished jobs: (seed, validation accuracy, test accuracy).
    pub runs: Vec<(u64, f64, f64)>,
    /// The first job of the point (for `best.toml`).
    pub first: Job,
}

impl Point {
    pub fn mean_val(&self) -> Option<f64> {
        let v: Vec<f64> = self.runs.iter().map(|r| r.1).collect();
        (!v.is_empty()).then(|| mean_sd(&v).0)
    }
}

/// The grid points in plan order.
pub fn points(rows: &[Row]) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::new();
    for r in rows {
        let label = r.job.point();
        let i = match out.iter().position(|p| p.label == label) {
            Some(i) => i,
            None => {
                out.push(Point {
                    label,
                    kind: r.job.kind,
                    objective: r.job.objective.clone(),
                    temperature: r.job.temperature,
                    alpha: r.job.alpha,
                    planned: 0,
                    runs: Vec::new(),
                    first: r.job.clone(),
                });
                out.len() - 1
            }
        };
        out[i].planned += 1;
        if let (Some(v), Some(t)) = (r.val_acc, r.test_acc) {
            out[i].runs.push((r.job.seed, v, t));
        }
    }
    out
}

/// The distill point with the highest mean validation accuracy, among those with every
/// seed finished (or, if none has, among all with any).
pub fn best(points: &[Point]) -> Option<&Point> {
    let distill = || {
        points
            .iter()
            .filter(|p| p.kind == JobKind::Distill && !p.runs.is_empty())
    };
    let complete: Vec<&Point> = distill().filter(|p| p.runs.len() == p.planned).collect();
    let pool: Vec<&Point> = if complete.is_empty() {
        distill().collect()
    } else {
        complete
    };
    pool.into_iter().max_by(|a, b| {
        a.mean_val()
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&b.mean_val().unwrap_or(f64::NEG_INFINITY))
    })
}

fn pct_mean_sd(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    match mean_sd(v) {
        (m, Some(sd)) => format!("{:.2} ± {:.2}", m * 100.0, sd * 100.0),
        (m, None) => format!("{:.2}", m * 100.0),
    }
}

/// The paired per-seed test-accuracy differences (best − student), in percentage points.
pub fn gains(best: &Point, student: &Point) -> Vec<f64> {
    best.runs
        .iter()
        .filter_map(|(seed, _, t)| {
            student
                .runs
                .iter()
                .find(|(s, ..)| s == seed)
                .map(|(_, _, ts)| (t - ts) * 100.0)
        })
        .collect()
}

/// `summary.md`'s text.
pub fn markdown(sweep: &Path, plan: &Plan, rows: &[Row], points: &[Point]) -> String {
    let mut s = String::new();
    let finished = rows.iter().filter(|r| r.state == "finished").count();
    let name = sweep
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    s.push_str(&format!("# Sweep {name}\n\n"));
    s.push_str(&format!(
        "{finished} of {} jobs finished; seeds {:?}. Accuracies in percent, mean ± sample sd over \
         the finished seeds; the validation split chooses, the test set is only reported.\n\n",
        rows.len(),
        plan.seeds
    ));
    s.push_str("| point | objective | T | alpha | seeds | val acc % | test acc % |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    let best = best(points);
    for p in points {
        let val: Vec<f64> = p.runs.iter().map(|r| r.1).collect();
        let test: Vec<f64> = p.runs.iter().map(|r| r.2).collect();
        let mark = if best.is_some_and(|b| b.label == p.label) {
            " **(best)**"
        } else {
            ""
        };
        s.push_str(&format!(
            "| {}{mark} | {} | {} | {} | {}/{} | {} | {} |\n",
            p.label,
            p.objective.as_deref().unwrap_or("- (student alone)"),
            p.temperature.map_or("-".into(), |v| v.to_string()),
            p.alpha.map_or("-".into(), |v| v.to_string()),
            p.runs.len(),
            p.planned,
            pct_mean_sd(&val),
            pct_mean_sd(&test),
        ));
    }
    s.push('\n');
    match best {
        Some(b) => {
            let val: Vec<f64> = b.runs.iter().map(|r| r.1).collect();
            let test: Vec<f64> = b.runs.iter().map(|r| r.2).collect();
            s.push_str(&format!(
                "**Best by validation accuracy: {}**: validation {} %, test {} % (n = {}).\n\n",
                b.label,
                pct_mean_sd(&val),
                pct_mean_sd(&test),
                b.runs.len()
            ));
            match points.iter().find(|p| p.kind == JobKind::Student) {
                Some(st) => {
                    let g = gains(b, st);
                    if g.is_empty() {
                        s.push_str("Gain over the student alone: no seed finished for both.\n\n");
                    } else {
                        let (m, _) = mean_sd(&g);
                        let ci = t_interval_95(&g).map_or_else(
                            || "no interval with one seed".to_string(),
                            |(lo, hi)| format!("95% t-interval [{lo:+.2}, {hi:+.2}]"),
                        );
                        s.push_str(&format!(
                            "Gain over the student alone (test accuracy, paired by seed, n = {}): \
                             {m:+.2} percentage points, {ci}. The point was chosen on validation \
                             accuracy among {} points, so this gain is slightly optimistic.\n\n",
                            g.len(),
                            points.iter().filter(|p| p.kind == JobKind::Distill).count()
                        ));
                    }
                }
                None => s.push_str(
                    "No student-alone jobs in this sweep (`student = false`): no gain reported.\n\n",
                ),
            }
            s.push_str("`best.toml` is its config: `kdtrain distill --config best.toml`.\n\n");
        }
        None => s.push_str("No distill job finished: no best point.\n\n"),
    }
    let not_done: Vec<&Row> = rows.iter().filter(|r| r.state != "finished").collect();
    if not_done.is_empty() {
        s.push_str("Every job finished.\n");
    } else {
        s.push_str(&format!("## Jobs not finished ({})\n\n", not_done.len()));
        s.push_str("| index | id | point | seed | state | log |\n|---|---|---|---|---|---|\n");
        for r in not_done {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | logs/{}.log or logs/slurm-*_{}.out |\n",
                r.job.index,
                r.job.id,
                r.job.point(),
                r.job.seed,
                r.state,
                r.job.id,
                r.job.index
            ));
        }
        s.push_str(&format!(
            "\nComplete them with `kdtrain sweep run {0}` or `kdtrain sweep submit {0} --slurm`.\n",
            crate::error::quote(sweep)
        ));
    }
    s
}

/// What `collect` wrote.
pub struct Collected {
    pub rows: Vec<Row>,
    pub files: Vec<PathBuf>,
}

/// `sweep collect`: writes `sweep.csv`, `summary.md`, `heatmap.png` and (when a distill
/// point finished) `best.toml` into the sweep folder.
///
/// # Errors
/// A usage error for a folder that is not a sweep; runtime errors writing.
pub fn collect(sweep: &Path) -> Result<Collected> {
    let plan = Plan::load(sweep)?;
    let rows = rows(sweep, &plan);
    let pts = points(&rows);
    let mut files = Vec::new();
    let csv_path = sweep.join("sweep.csv");
    write_atomic(&csv_path, csv(&rows).as_bytes())?;
    files.push(csv_path);
    let md = sweep.join("summary.md");
    write_atomic(&md, markdown(sweep, &plan, &rows, &pts).as_bytes())?;
    files.push(md);
    let cells: Vec<super::heatmap::Cell> = pts
        .iter()
        .filter(|p| p.kind == JobKind::Distill)
        .map(|p| super::heatmap::Cell {
            objective: p.objective.clone().unwrap_or_default(),
            temperature: p.temperature,
            alpha: p.alpha,
            value: p.mean_val(),
        })
        .collect();
    let best_point = best(&pts);
    let best_cell = best_point.and_then(|b| {
        pts.iter()
            .filter(|p| p.kind == JobKind::Distill)
            .position(|p| p.label == b.label)
    });
    let png = sweep.join("heatmap.png");
    let baseline = pts
        .iter()
        .find(|p| p.kind == JobKind::Student)
        .and_then(Point::mean_val);
    super::heatmap::heatmap_png(&png, &cells, best_cell, baseline)?;
    files.push(png);
    let best_path = sweep.join("best.toml");
    if let Some(b) = best_point {
        let text = std::fs::read_to_string(sweep.join(b.first.config_path()))?;
        let mut by_seed: BTreeMap<u64, f64> = BTreeMap::new();
        for (s, v, _) in &b.runs {
            by_seed.insert(*s, *v);
        }
        let header = format!(
            "# The best point of sweep {} by mean validation accuracy: {} ({:.2} % over seeds {:?}).\n\
             # Run it with: kdtrain distill --config best.toml (set `seed` for another seed).\n",
            sweep.display(),
            b.label,
            b.mean_val().unwrap_or(f64::NAN) * 100.0,
            by_seed.keys().collect::<Vec<_>>()
        );
        write_atomic(&best_path, format!("{header}{text}").as_bytes())?;
        files.push(best_path);
    } else {
        let _ = std::fs::remove_file(&best_path);
    }
    Ok(Collected { rows, files })
}
