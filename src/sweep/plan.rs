//! Sweep files and plans: a config file with a `[sweep]` table of lists, expanded into
//! one resolved config per job in a new `sweep-<date>-<time>` folder.
//!
//! A job is one `distill` run (an objective, its swept hyper-parameters and a seed) or,
//! with `student = true` (the default), one `train student` run per seed, the baseline
//! that `collect` measures the gain against. Its id is the first 12 hex digits of the
//! SHA-256 of its kind and resolved config (with `runtime.out_dir` fixed to `runs`), so
//! planning the same grid again, into any folder, gives the same ids. This module checks
//! everything it can before anything runs: the sweep keys, every value against
//! [`Config::validate`], the data folder and the teacher checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::write_atomic;
use crate::config::{Config, ObjectiveFlags, Overrides, objective_flags};
use crate::error::{UsageError, usage};
use crate::run::RunKind;

/// The `[sweep]` keys that are objective hyper-parameters, with the flag each stands for
/// (every flag of [`crate::objective::FLAGS`] but the switches). Their order is the
/// order of the grid's axes.
pub fn params() -> Vec<(&'static str, &'static str)> {
    crate::objective::FLAGS
        .iter()
        .filter(|f| !f.sweep_key.is_empty())
        .map(|f| (f.sweep_key, f.name))
        .collect()
}

/// Every key `[sweep]` takes.
pub fn keys() -> Vec<&'static str> {
    std::iter::once("objective")
        .chain(params().into_iter().map(|(k, _)| k))
        .chain(["seeds", "student"])
        .collect()
}

/// The file in a sweep folder that holds the plan (JSON); `jobs.txt` is its one-line-per-
/// job view for people and other schedulers.
pub const PLAN_FILE: &str = "plan.json";
pub const JOBS_FILE: &str = "jobs.txt";

/// What a job trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// `kdtrain distill`.
    Distill,
    /// `kdtrain train student`: the student alone, the baseline of the gain.
    Student,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Distill => "distill",
            JobKind::Student => "student",
        }
    }

    /// The command words that run it.
    pub fn command(self) -> &'static [&'static str] {
        match self {
            JobKind::Distill => &["distill"],
            JobKind::Student => &["train", "student"],
        }
    }

    pub fn run_kind(self) -> RunKind {
        match self {
            JobKind::Distill => RunKind::Distilled,
            JobKind::Student => RunKind::Student,
        }
    }
}

/// One job of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// 0-based line of `jobs.txt` (Slurm's array task id).
    pub index: usize,
    /// 12 hex digits; also the run folder's name under `<sweep>/runs/`.
    pub id: String,
    pub kind: JobKind,
    /// The objective (`distill` jobs).
    pub objective: Option<String>,
    /// The swept values by `[sweep]` key (`t`, `alpha`, ...), only those this job's
    /// objective takes.
    pub params: BTreeMap<String, f64>,
    /// The objective's temperature in force (swept or from the config); `None` for mse
    /// and the student.
    pub temperature: Option<f64>,
    /// kd's, dkd's or mse's alpha in force; `None` for the others and the student.
    pub alpha: Option<f64>,
    pub seed: u64,
}

impl Job {
    /// The grid point without the seed, e.g. `kd t=2 alpha=0.5`, or `student`.
    pub fn point(&self) -> String {
        match self.kind {
            JobKind::Student => "student".into(),
            JobKind::Distill => {
                let mut s = self.objective.clone().unwrap_or_default();
                for (k, _) in params() {
                    if let Some(v) = self.params.get(k) {
                        s.push_str(&format!(" {k}={v}"));
                    }
                }
                s
            }
        }
    }

    /// The job's config file, relative to the sweep folder.
    pub fn config_path(&self) -> PathBuf {
        PathBuf::from("jobs").join(format!("{}.toml", self.id))
    }
}

/// A planned sweep: the jobs of `plan.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The sweep file it was planned from.
    pub source: String,
    /// The objectives in the order of the sweep file.
    pub objectives: Vec<String>,
    pub seeds: Vec<u64>,
    /// Intra-op threads of each job (what Slurm's `--cpus-per-task` asks for).
    pub threads: usize,
    pub jobs: Vec<Job>,
}

impl Plan {
    /// Reads `<dir>/plan.json`.
    ///
    /// # Errors
    /// A usage error naming the folder when it is not a sweep folder.
    pub fn load(dir: &Path) -> Result<Plan> {
        let path = dir.join(PLAN_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            UsageError(format!(
                "{} is not a sweep folder ({} {e}); pass the folder that `kdtrain sweep plan` printed",
                dir.display(),
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            UsageError(format!(
                "{}: {e}; plan the sweep again with `kdtrain sweep plan`",
                path.display()
            ))
            .into()
        })
    }

    /// The job of `jobs.txt` line `index` (0-based).
    ///
    /// # Errors
    /// A usage error when there is no such line.
    pub fn job(&self, index: usize) -> Result<&Job> {
        self.jobs.get(index).ok_or_else(|| {
            UsageError(format!(
                "--index {index}: the sweep has {} jobs (0 to {})",
                self.jobs.len(),
                self.jobs.len().saturating_sub(1)
            ))
            .into()
        })
    }
}

/// The `[sweep]` table, checked: every list non-empty, distinct and of the right type.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    /// Empty: the config's `distill.objective`.
    pub objectives: Vec<String>,
    /// Values by key of [`params`], for the keys given.
    pub params: BTreeMap<&'static str, Vec<f64>>,
    /// Empty: the config's `seed`.
    pub seeds: Vec<u64>,
    /// Train the student alone per seed as extra jobs.
    pub student: bool,
}

/// Splits a sweep file into its base config text (the `[sweep]` section blanked, so that
/// line numbers in config errors stay right) and the `[sweep]` table.
fn split_sweep(text: &str) -> (String, bool) {
    let header = |l: &str| {
        let l = l.split('#').next().unwrap_or("").trim();
        l.starts_with('[')
            && l.ends_with(']')
            && l.len() > 2
            && l[1..l.len() - 1]
                .trim_matches(|c| c == '[' || c == ']')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-. \"".contains(c))
    };
    let mut in_sweep = false;
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if header(line) {
            let name = line.split('#').next().unwrap_or("").trim();
            in_sweep = name.trim_matches(|c| c == '[' || c == ']').trim() == "sweep";
            found |= in_sweep;
        }
        if !in_sweep {
            out.push_str(line);
        }
        out.push('\n');
    }
    (out, found)
}

fn list<'a>(key: &str, v: &'a toml::Value, example: &str) -> Result<&'a Vec<toml::Value>> {
    match v.as_array() {
        Some(a) if !a.is_empty() => Ok(a),
        _ => usage(format!(
            "key `sweep.{key}` = {}: expected a non-empty list, e.g. {key} = {example}",
            v.to_string().trim()
        )),
    }
}

/// Parses and checks the `[sweep]` table.
///
/// # Errors
/// Usage errors naming the key `sweep.<key>`, the value and what is expected.
pub fn parse_grid(table: &toml::Table) -> Result<Grid> {
    let mut g = Grid {
        student: true,
        ..Grid::default()
    };
    for (key, v) in table {
        match key.as_str() {
            "objective" => {
                for x in list(key, v, "[\"kd\", \"dkd\"]")? {
                    let name = x.as_str().ok_or_else(|| {
                        UsageError(format!(
                            "key `sweep.objective`: {x} is not a name; expected one of {}",
                            crate::objective::NAMES.join(", ")
                        ))
                    })?;
                    crate::config::check_objective(name, "key `sweep.objective`")?;
                    g.objectives.push(name.to_string());
                }
                distinct(key, &g.objectives)?;
            }
            "seeds" => {
                for x in list(key, v, "[0, 1, 2]")? {
                    match x.as_integer() {
                        Some(s) if s >= 0 => g.seeds.push(s as u64),
                        _ => {
                            return usage(format!(
                                "key `sweep.seeds`: {x} is not a seed; expected integers >= 0"
                            ));
                        }
                    }
                }
                if g.seeds.len() > 1000 {
                    return usage("key `sweep.seeds`: more than 1000 seeds");
                }
                distinct(key, &g.seeds)?;
            }
            "student" => {
                g.student = v.as_bool().ok_or_else(|| {
                    UsageError(format!("key `sweep.student` = {v}: expected true or false"))
                })?;
            }
            k => {
                let Some((name, _)) = params().into_iter().find(|(p, _)| *p == k) else {
                    return usage(format!(
                        "unknown key `sweep.{k}`; [sweep] takes {}",
                        keys().join(", ")
                    ));
                };
                let mut vals = Vec::new();
                for x in list(k, v, "[1, 2, 4]")? {
                    let f = match x {
                        toml::Value::Integer(i) => *i as f64,
                        toml::Value::Float(f) => *f,
                        _ => {
                            return usage(format!(
                                "key `sweep.{k}`: {x} is not a number; expected a list of numbers"
                            ));
                        }
                    };
                    if name == "warmup" && !(f >= 0.0 && f.fract() == 0.0) {
                        return usage(format!(
                            "key `sweep.warmup` = {f}: expected whole epochs >= 0"
                        ));
                    }
                    vals.push(f);
                }
                let keys: Vec<String> = vals.iter().map(|v| v.to_string()).collect();
                distinct(k, &keys)?;
                g.params.insert(name, vals);
            }
        }
    }
    Ok(g)
}

fn distinct<T: PartialEq + std::fmt::Debug>(key: &str, v: &[T]) -> Result<()> {
    for (i, a) in v.iter().enumerate() {
        if v[..i].contains(a) {
            return usage(format!(
                "key `sweep.{key}`: {a:?} is listed twice; expected distinct values"
            ));
        }
    }
    Ok(())
}

/// The flags an objective takes a `[sweep]` key as.
fn takes(objective: &str, flag: &str) -> bool {
    objective_flags(objective).contains(&flag)
}

/// `base` with one objective, its hyper-parameter values and a seed applied.
fn job_config(base: &Config, objective: &str, values: &[(&str, f64)], seed: u64) -> Result<Config> {
    let mut p = ObjectiveFlags::default();
    for &(k, v) in values {
        if let Some((_, flag)) = params().into_iter().find(|(key, _)| *key == k) {
            p.set(flag, v);
        }
    }
    let mut c = base.clone();
    c.apply(&Overrides {
        objectives: vec![objective.to_string()],
        params: p,
        seed: Some(seed),
        ..Overrides::default()
    })?;
    c.validate()?;
    c.canonicalize();
    Ok(c)
}

/// The temperature and alpha in force for `objective` in `c` (for tables and the heatmap),
/// as its registry spec names them.
pub fn t_alpha(c: &Config, objective: &str) -> (Option<f64>, Option<f64>) {
    c.distill.t_alpha(objective)
}

/// The job's id: 12 hex digits of SHA-256 over its kind and config TOML.
pub fn job_id(kind: JobKind, config_toml: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"kdtrain sweep job\n");
    h.update(kind.name().as_bytes());
    h.update(b"\n");
    h.update(config_toml.as_bytes());
    crate::hex(&h.finalize()[..6])
}

/// A job with its resolved config TOML, before it is written.
pub struct PlannedJob {
    pub job: Job,
    pub toml: String,
}

/// Expands `grid` over `base` into jobs: per objective, the product of the swept keys it
/// takes (in [`params`] order), then the seeds innermost; then the student per seed.
///
/// # Errors
/// A usage error naming `sweep.<key>` when no listed objective takes a swept key, or a
/// value is out of range for the config key it sets.
pub fn expand(base: &Config, grid: &Grid) -> Result<Vec<PlannedJob>> {
    let objectives = if grid.objectives.is_empty() {
        vec![base.distill.objective.clone()]
    } else {
        grid.objectives.clone()
    };
    let seeds = if grid.seeds.is_empty() {
        vec![base.seed]
    } else {
        grid.seeds.clone()
    };
    for (&key, vals) in &grid.params {
        let flag = params()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map_or("", |p| p.1);
        if !objectives.iter().any(|o| takes(o, flag)) {
            let which: Vec<&str> = crate::objective::NAMES
                .iter()
                .copied()
                .filter(|o| takes(o, flag))
                .collect();
            return usage(format!(
                "key `sweep.{key}`: no objective of this sweep ({}) takes {key}; {} do",
                objectives.join(", "),
                which.join(", ")
            ));
        }
        // Each value alone, so the error names the sweep key and the config key.
        for o in objectives.iter().filter(|o| takes(o, flag)) {
            for &v in vals {
                job_config(base, o, &[(key, v)], base.seed).map_err(|e| {
                    UsageError(format!("key `sweep.{key}` = {v} (objective {o}): {e:#}"))
                })?;
            }
        }
    }
    let mut jobs = Vec::new();
    let mut push = |kind: JobKind,
                    objective: Option<&str>,
                    values: &[(&'static str, f64)],
                    seed: u64,
                    c: Config|
     -> Result<()> {
        if jobs.len() >= MAX_JOBS {
            return usage(format!(
                "the grid has more than {MAX_JOBS} jobs (objectives x values x seeds); give \
                 fewer values, or split it into several sweep files"
            ));
        }
        let mut c = c;
        c.runtime.out_dir = PathBuf::from("runs");
        let toml = c.to_toml()?;
        let (temperature, alpha) = objective.map_or((None, None), |o| t_alpha(&c, o));
        jobs.push(PlannedJob {
            job: Job {
                index: jobs.len(),
                id: job_id(kind, &toml),
                kind,
                objective: objective.map(String::from),
                params: values.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
                temperature,
                alpha,
                seed,
            },
            toml,
        });
        Ok(())
    };
    for o in &objectives {
        let axes: Vec<(&'static str, &Vec<f64>)> = params()
            .iter()
            .filter(|(_, flag)| takes(o, flag))
            .filter_map(|(k, _)| grid.params.get(k).map(|v| (*k, v)))
            .collect();
        let mut combos: Vec<Vec<(&'static str, f64)>> = vec![Vec::new()];
        for (k, vals) in &axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    vals.iter().map(move |&v| {
                        let mut c = c.clone();
                        c.push((*k, v));
                        c
                    })
                })
                .collect();
        }
        for combo in &combos {
            for &seed in &seeds {
                let c = job_config(base, o, combo, seed)?;
                push(JobKind::Distill, Some(o), combo, seed, c)?;
            }
        }
    }
    if grid.student {
        for &seed in &seeds {
            let mut c = base.clone();
            c.seed = seed;
            push(JobKind::Student, None, &[], seed, c)?;
        }
    }
    Ok(jobs)
}

/// Options of `sweep plan` besides the sweep file.
pub struct PlanOptions {
    /// The common flags (`--epochs`, `--data-dir`, `--out-dir`, `--threads`, ...).
    pub overrides: Overrides,
    /// `--teacher`.
    pub teacher: Option<PathBuf>,
}

/// Reads a sweep file into its base config (flags applied, data folder and teacher
/// resolved to absolute paths) and its grid.
///
/// # Errors
/// Usage errors naming the file and the key.
pub fn read_sweep_file(path: &Path, opts: &PlanOptions) -> Result<(Config, Grid)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read sweep file {}: {e}; pass a TOML file with a [sweep] table",
            path.display()
        ))
    })?;
    let in_file = |msg: String| UsageError(format!("sweep file {}: {msg}", path.display()));
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        in_file(match line {
            Some(l) => format!("line {l}: {}", e.message().trim()),
            None => e.message().trim().to_string(),
        })
    })?;
    let sweep = match table.get("sweep") {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(v) => {
            return Err(in_file(format!(
                "key `sweep` = {v}: expected a table ([sweep] with lists such as t = [1, 2, 4])"
            ))
            .into());
        }
        None => {
            return Err(in_file(
                "no [sweep] table; add one with lists, e.g. [sweep] t = [1, 2, 4], alpha = [0.5, 0.9], seeds = [0, 1, 2]".into(),
            )
            .into());
        }
    };
    let (base_text, as_section) = split_sweep(&text);
    if !as_section {
        return Err(in_file(
            "write the sweep as a `[sweep]` section of its own (not inline or dotted keys)".into(),
        )
        .into());
    }
    let explicit_threads = table
        .get("runtime")
        .and_then(|r| r.get("threads"))
        .is_some()
        || opts.overrides.threads.is_some();
    // A flag's bad value is the flag's, not the sweep file's.
    let mut base = Config::parse(&base_text)
        .map_err(in_file)?
        .with_overrides(&opts.overrides, |e| in_file(format!("{e:#}")).into())?;
    if !explicit_threads {
        // One intra-op thread per job: jobs run side by side, one per core.
        base.runtime.threads = 1;
    }
    base.canonicalize();
    let grid = parse_grid(&sweep).map_err(|e| in_file(format!("{e:#}")))?;

    // The data folder and the teacher, resolved now, so every job (also on another node
    // of a cluster with the same paths) reads the same files.
    let named = (!base.data.dir.as_os_str().is_empty()).then(|| base.data.dir.clone());
    let data = crate::data::locate(named.as_deref())?;
    base.data.dir = absolute(&data);
    // Every sweep has distill jobs (the objectives default to `distill.objective`).
    {
        let teacher = match (&opts.teacher, &base.distill.teacher) {
            (Some(t), _) => t.clone(),
            (None, t) if !t.as_os_str().is_empty() => t.clone(),
            (None, _) => {
                let out = base.runtime.out_dir.as_path();
                crate::run::newest_model(out, RunKind::Teacher).ok_or_else(|| {
                    UsageError(format!(
                        "no finished teacher checkpoint in {}/teacher-*/model.safetensors (interrupted runs are skipped; finish one with --resume); run `kdtrain train teacher` first, or pass --teacher PATH",
                        out.display()
                    ))
                })?
            }
        };
        if !teacher.is_file() {
            return usage(format!(
                "teacher checkpoint {} not found; pass --teacher PATH to a model.safetensors written by `kdtrain train teacher`",
                teacher.display()
            ));
        }
        base.distill.teacher = absolute(&teacher);
    }
    Ok((base, grid))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The most jobs one sweep may plan: ten times Slurm's default `MaxArraySize` (1001),
/// and each job a folder of files.
pub const MAX_JOBS: usize = 10_000;

/// Plans a sweep: reads `file`, expands it, and writes a new `sweep-<date>-<time>` folder
/// under the out-dir with `plan.json`, `jobs.txt`, `jobs/<id>.toml` and a copy of the
/// sweep file. Returns the folder.
///
/// # Errors
/// Usage errors for the sweep file (see [`read_sweep_file`], [`expand`]; more than
/// [`MAX_JOBS`] jobs); runtime errors writing the folder.
pub fn plan(file: &Path, opts: &PlanOptions) -> Result<(PathBuf, Plan)> {
    let (base, grid) = read_sweep_file(file, opts)?;
    let planned = expand(&base, &grid)
        .map_err(|e| UsageError(format!("sweep file {}: {e:#}", file.display())))?;
    let out = base.runtime.out_dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| {
        UsageError(format!(
            "--out-dir {}: cannot create it ({e}); choose a writable folder",
            out.display()
        ))
    })?;
    // Two plans in the same second each get their own folder.
    let dir = crate::run::claim_stamped_dir(&out, "sweep").map_err(|(dir, e)| {
        UsageError(format!(
            "cannot create sweep folder {} ({e}); choose a writable --out-dir",
            dir.display()
        ))
    })?;
    let dir = absolute(&dir);
    std::fs::create_dir_all(dir.join("jobs"))?;
    let mut lines = String::new();
    for p in &planned {
        write_atomic(&dir.join(p.job.config_path()), p.toml.as_bytes())?;
        lines.push_str(&format!(
            "{}\t{}\t{} seed={}\n",
            p.job.id,
            p.job.kind.name(),
            p.job.point(),
            p.job.seed
        ));
    }
    let plan = Plan {
        source: absolute(file).display().to_string(),
        objectives: planned.iter().filter_map(|p| p.job.objective.clone()).fold(
            Vec::new(),
            |mut v, o| {
                if !v.contains(&o) {
                    v.push(o);
                }
                v
            },
        ),
        seeds: if grid.seeds.is_empty() {
            vec![base.seed]
        } else {
            grid.seeds.clone()
        },
        threads: base.runtime.threads,
        jobs: planned.into_iter().map(|p| p.job).collect(),
    };
    write_atomic(&dir.join(JOBS_FILE), lines.as_bytes())?;
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    write_atomic(&dir.join("sweep.toml"), &text)?;
    write_atomic(
        &dir.join(PLAN_FILE),
        serde_json::to_string_pretty(&plan)?.as_bytes(),
    )?;
    Ok((dir, plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(text: &str) -> Result<Grid> {
        parse_grid(&toml::from_str::<toml::Table>(text).unwrap())
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            ("t = []", "`sweep.t` = []: expected a non-empty list"),
            ("t = 2", "`sweep.t` = 2: expected a non-empty list"),
            ("alpha = [\"x\"]", "`sweep.alpha`: \"x\" is not a number"),
            ("temp = [1]", "unknown key `sweep.temp`"),
            ("seeds = [0, 0]", "`sweep.seeds`: 0 is listed twice"),
            ("seeds = [-1]", "`sweep.seeds`: -1 is not a seed"),
            ("objective = [\"xx\"]", "key `sweep.objective` = \"xx\""),
            ("warmup = [1.5]", "`sweep.warmup` = 1.5"),
            ("student = 1", "`sweep.student` = 1"),
        ] {
            let e = grid(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn expansion_order_and_out_of_range() {
        let base = Config::default();
        let g =
            grid("objective = [\"kd\", \"dist\"]\nt = [1, 2]\nalpha = [0.5, 0.9]\nseeds = [3, 4]")
                .unwrap();
        let jobs = expand(&base, &g).unwrap();
        // kd: 2 t x 2 alpha x 2 seeds; dist takes t only: 2 x 2; students: 2.
        assert_eq!(jobs.len(), 8 + 4 + 2);
        assert_eq!(jobs[0].job.point(), "kd t=1 alpha=0.5");
        assert_eq!((jobs[0].job.seed, jobs[1].job.seed), (3, 4));
        assert_eq!(jobs[8].job.point(), "dist t=1");
        assert_eq!(jobs[8].job.alpha, None);
        assert_eq!(jobs[13].job.kind, JobKind::Student);
        let ids: std::collections::BTreeSet<_> = jobs.iter().map(|j| &j.job.id).collect();
        assert_eq!(ids.len(), jobs.len(), "ids are distinct");
        // The same grid again gives the same ids.
        let again = expand(&base, &g).unwrap();
        assert!(jobs.iter().zip(&again).all(|(a, b)| a.job.id == b.job.id));

        let e = expand(&base, &grid("alpha = [1.5]").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("`sweep.alpha` = 1.5") && e.contains("distill.kd.alpha"),
            "{e}"
        );
        let e = expand(
            &base,
            &grid("objective = [\"dist\"]\nalpha = [0.5]").unwrap(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("`sweep.alpha`: no objective"), "{e}");
    }

    #[test]
    fn sweep_section_is_blanked_keeping_lines() {
        let (base, found) =
            split_sweep("seed = 1\n[sweep]\nt = [\n 1,\n 2]\n[train]\nepochs = 3\n");
        assert!(found);
        assert_eq!(base, "seed = 1\n\n\n\n\n[train]\nepochs = 3\n");
    }
}
