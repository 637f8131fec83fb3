//! The multi-seed results of `reproduce`: per-seed rows, mean ± sample standard
//! deviation per model, and the paired gain of each distilled student over the student
//! trained alone with the same seed, with its 95% t-interval; written as `results.md`
//! and `results.json`. Accuracy is the test accuracy of the weights chosen on the
//! validation split; nothing here chooses anything on the test set.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use std::path::PathBuf;

/// What one training run produced, for the results tables and `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    /// The role: `teacher`, `student` or `distilled`.
    pub model: &'static str,
    /// The architecture spec (`mlp:128`).
    pub arch: String,
    /// The objective minimised (`ce` for teacher and student; `kd`, `dkd`, ...).
    pub objective: String,
    /// The objective and its hyper-parameters in one line.
    pub objective_settings: String,
    pub run_dir: PathBuf,
    pub params: i64,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub stopped_early: bool,
    /// Training-loop seconds of each epoch run in this process.
    pub epoch_seconds: Vec<f64>,
    /// Median training-loop seconds over every epoch of the run (those before a resume
    /// included); `null` only when no epoch completed.
    pub median_epoch_seconds: Option<f64>,
    /// Seconds to evaluate the test set (forward passes and metrics).
    pub eval_test_seconds: f64,
    /// Seconds from process start to the first optimizer step.
    pub startup_seconds: f64,
    /// Seconds to compute the teacher's cached logits before the first epoch (every
    /// view's, with augmentation); `null` without a cache.
    pub teacher_cache_seconds: Option<f64>,
    /// Seconds to read, validate and move the data to the device.
    pub data_load_seconds: f64,
    /// The set that `train_loss` and `train_acc` cover.
    pub train_set: String,
    /// Its size (the training split: the training images less the validation split).
    pub train_examples: i64,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Test figures of the checkpoint as saved: with classes omitted, of the corrected
    /// logits (the shift of `bias_correction` added), as `evaluate` computes them.
    pub test_loss: f64,
    pub test_acc: f64,
    /// Expected calibration error on the test set (15 bins).
    pub test_ece: f64,
    /// Validation accuracy and cross-entropy of the selected weights (the best epoch).
    pub best_val_acc: f64,
    pub best_val_ce: f64,
    pub threads: usize,
    pub device: String,
    /// The objective's temperature (dist: tau) when distilling.
    pub temperature: Option<f64>,
    /// kd's and mse's alpha when distilling with them.
    pub alpha: Option<f64>,
    pub seed: u64,
    /// The validation split (seed, size, hash).
    pub split: crate::data::SplitInfo,
    /// The data: source, shape, classes, normalisation.
    pub data: crate::data::DataRecord,
    /// Validation accuracy per epoch (for the comparison plot).
    pub val_acc: Vec<f64>,
    /// The teachers distilled: 0 (a teacher or a student alone), 1, or an ensemble's
    /// members.
    pub teachers: usize,
    /// With omitted classes (`data.omit_classes`): the shift chosen on validation and
    /// the accuracies before and after it; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias_correction: Option<crate::bias::BiasCorrection>,
}

/// A teacher of a `reproduce`, or its ensemble, on the test set.
#[derive(Debug, Clone, Serialize)]
pub struct TeacherSummary {
    /// Its file, or `ensemble of K (how)`.
    pub teacher: String,
    /// Its architecture spec, `torchscript`, or `ensemble`.
    pub arch: String,
    /// The file's SHA-256 (empty for the ensemble).
    pub sha256: String,
    /// Read from a file (`reproduce.teacher_file`), not trained by this run.
    pub from_file: bool,
    /// Test accuracy in [0, 1].
    pub test_acc: f64,
}

/// Mean and sample standard deviation (n - 1 in the denominator; `None` for n < 2).
pub fn mean_sd(x: &[f64]) -> (f64, Option<f64>) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, None);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt()))
}

/// The two-sided 95% Student-t interval of the mean of `x`: mean ± t(0.975, n-1) · sd /
/// √n. `None` for fewer than two values.
pub fn t_interval_95(x: &[f64]) -> Option<(f64, f64)> {
    let (mean, sd) = mean_sd(x);
    let sd = sd?;
    let n = x.len() as f64;
    let t = StudentsT::new(0.0, 1.0, n - 1.0).ok()?.inverse_cdf(0.975);
    let half = t * sd / n.sqrt();
    Some((mean - half, mean + half))
}

/// One model's figures over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// `teacher`, `student`, or `distilled (kd)`.
    pub model: String,
    /// The architecture spec (`cnn:32,64,256,dropout=0.3`, `mlp:128`).
    pub arch: String,
    pub objective: String,
    pub objective_settings: String,
    pub params: i64,
    pub seeds: Vec<u64>,
    pub test_acc_mean: f64,
    pub test_acc_sd: Option<f64>,
    pub test_loss_mean: f64,
    pub test_ece_mean: f64,
    pub best_val_acc_mean: f64,
    pub epochs_run_mean: f64,
    pub best_epoch_mean: f64,
    /// Median over the seeds of each run's median epoch time.
    pub median_epoch_seconds: Option<f64>,
}

/// The paired gain of one model over another (a distilled student over the student
/// alone; a student distilled from an ensemble over one distilled from one teacher),
/// test accuracy, same seed.
#[derive(Debug, Clone, Serialize)]
pub struct Gain {
    /// The model's label in the tables (`distilled (kd)`); for the gains over the
    /// student alone also the objective's name, as before ensembles.
    pub objective: String,
    /// The model it is compared with (`student`).
    pub baseline: String,
    pub seeds: Vec<u64>,
    /// Per seed, in points (percentage points of accuracy).
    pub gains_points: Vec<f64>,
    pub mean_points: f64,
    pub sd_points: Option<f64>,
    /// The 95% t-interval of the mean gain, in points; `None` with one seed.
    pub interval_95_points: Option<(f64, f64)>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The data set: `Fashion-MNIST`, or the file or folder read, its source, shape and
    /// classes.
    pub dataset: String,
    /// The git commit of the binary that made these results, and when (UTC, RFC 3339).
    pub commit: &'static str,
    pub made: String,
    pub validation: String,
    /// What chose each run's weights: `validation accuracy` or `validation cross-entropy`.
    pub selection: String,
    pub seeds: Vec<u64>,
    pub teacher_per_seed: bool,
    pub models: Vec<ModelSummary>,
    pub gains: Vec<Gain>,
    /// Every run, with `"seed": N`.
    pub runs: Vec<RunOutcome>,
    /// Seconds for the whole `reproduce`.
    pub wall_seconds: f64,
    /// Which experiment (`full`, `fraction`, `omit`, `ensemble`).
    pub experiment: String,
    /// The teachers distilled, and an ensemble's accuracy, on the test set.
    pub teachers: Vec<TeacherSummary>,
    /// The students' training images, in words.
    pub transfer: String,
}

/// The median of `v`: its middle value, or the mean of the two middle values when `v`
/// has an even length (as Python's `statistics.median`, which the PyTorch twin in
/// `scripts/reference_pytorch.py` uses, so that the two compare like with like). `None`
/// when `v` is empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The label of a run in the tables.
pub fn label(r: &RunOutcome) -> String {
    match (r.model, r.teachers) {
        ("distilled", k) if k > 1 => format!("distilled ({}, ensemble of {k})", r.objective),
        ("distilled", _) => format!("distilled ({})", r.objective),
        (m, _) => m.to_string(),
    }
}

impl Results {
    /// Summarises `runs` (teacher(s), then per seed the student and the distilled ones).
    pub fn new(
        runs: Vec<RunOutcome>,
        seeds: &[u64],
        objectives: &[String],
        teacher_per_seed: bool,
        validation: String,
        selection: String,
        wall_seconds: f64,
    ) -> Results {
        let mut labels: Vec<String> = Vec::new();
        for r in &runs {
            let l = label(r);
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        let models = labels
            .iter()
            .map(|l| {
                let rs: Vec<&RunOutcome> = runs.iter().filter(|r| &label(r) == l).collect();
                let col = |f: fn(&RunOutcome) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<_>>();
                let mean = |f: fn(&RunOutcome) -> f64| mean_sd(&col(f)).0;
                let (acc_mean, acc_sd) = mean_sd(&col(|r| r.test_acc));
                ModelSummary {
                    model: l.clone(),
                    arch: rs[0].arch.clone(),
                    objective: rs[0].objective.clone(),
                    objective_settings: rs[0].objective_settings.clone(),
                    params: rs[0].params,
                    seeds: rs.iter().map(|r| r.seed).collect(),
                    test_acc_mean: acc_mean,
                    test_acc_sd: acc_sd,
                    test_loss_mean: mean(|r| r.test_loss),
                    test_ece_mean: mean(|r| r.test_ece),
                    best_val_acc_mean: mean(|r| r.best_val_acc),
                    epochs_run_mean: mean(|r| r.epochs_run as f64),
                    best_epoch_mean: mean(|r| r.best_epoch as f64),
                    median_epoch_seconds: median(
                        rs.iter().filter_map(|r| r.median_epoch_seconds).collect(),
                    ),
                }
            })
            .collect();
        let acc = |label_: &str, seed: u64| {
            runs.iter()
                .find(|r| label(r) == label_ && r.seed == seed)
                .map(|r| r.test_acc)
        };
        // Each distilled model over the student alone (per objective: from one teacher,
        // then from the ensemble), then each ensemble's student over the one-teacher one.
        let mut pairs: Vec<(String, String, String)> = Vec::new();
        for o in objectives {
            for l in &labels {
                let one = format!("distilled ({o})");
                if *l == one {
                    pairs.push((o.clone(), l.clone(), "student".into()));
                } else if l.starts_with(&format!("distilled ({o}, ensemble")) {
                    pairs.push((l.clone(), l.clone(), "student".into()));
                }
            }
        }
        for o in objectives {
            let one = format!("distilled ({o})");
            for l in &labels {
                if l.starts_with(&format!("distilled ({o}, ensemble")) && labels.contains(&one) {
                    pairs.push((l.clone(), l.clone(), one.clone()));
                }
            }
        }
        let gains = pairs
            .into_iter()
            .map(|(name, model, baseline)| {
                let pairs: Vec<(u64, f64)> = seeds
                    .iter()
                    .filter_map(|&s| Some((s, (acc(&model, s)? - acc(&baseline, s)?) * 100.0)))
                    .collect();
                let g: Vec<f64> = pairs.iter().map(|p| p.1).collect();
                let (mean, sd) = mean_sd(&g);
                Gain {
                    objective: name,
                    baseline,
                    seeds: pairs.iter().map(|p| p.0).collect(),
                    interval_95_points: t_interval_95(&g),
                    gains_points: g,
                    mean_points: mean,
                    sd_points: sd,
                }
            })
            .filter(|g| !g.seeds.is_empty())
            .collect();
        let dataset = match runs.first().map(|r| &r.data) {
            Some(d)
                if d.source == crate::data::Source::Idx
                    && d.class_names == crate::data::DataSpec::fashion_mnist().class_names
                    && d.input == crate::data::DataSpec::fashion_mnist().describe() =>
            {
                "Fashion-MNIST".to_string()
            }
            Some(d) => format!(
                "{} ({}, {} images, {} classes)",
                d.path.display(),
                d.source.name(),
                d.input,
                d.classes
            ),
            None => "no runs".to_string(),
        };
        Results {
            dataset,
            commit: env!("KDTRAIN_GIT_COMMIT"),
            made: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            validation,
            selection,
            seeds: seeds.to_vec(),
            teacher_per_seed,
            models,
            gains,
            runs,
            wall_seconds,
            experiment: "full".into(),
            teachers: Vec::new(),
            transfer: String::new(),
        }
    }

    /// `results.md`: the summary table, the paired gains, and the per-seed rows.
    pub fn markdown(&self) -> String {
        let n = self.seeds.len();
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.to_string()).collect();
        let members = self
            .teachers
            .iter()
            .filter(|t| t.arch != "ensemble")
            .count();
        let teacher = match (self.teachers.first(), members) {
            (Some(t), _) if t.from_file => format!(
                "the file {} (not trained by this run), for every seed",
                t.teacher
            ),
            (_, k) if k > 1 => {
                format!("an ensemble of {k}, trained with the first seed, +1, ..., for every seed")
            }
            _ if self.teacher_per_seed => "one per seed".into(),
            _ => "one, trained with the first seed, for every seed".into(),
        };
        let transfer = match self.transfer.is_empty() {
            true => String::new(),
            false => format!("students' training images: {}; ", self.transfer),
        };
        let mut s = format!(
            "{}, test set; experiment {}; {transfer}{n} seed{} ({}); validation: {}; teacher: \
             {teacher}; each run's weights chosen on {}. Accuracy in percent, mean ± sample sd \
             over seeds.\n\n",
            self.dataset,
            self.experiment,
            if n == 1 { "" } else { "s" },
            seeds.join(", "),
            self.validation,
            self.selection
        );
        let pct = |v: f64| format!("{:.2}", v * 100.0);
        if !self.teachers.is_empty() {
            s.push_str(
                "| teacher | architecture | SHA-256 | test acc (%) |\n| --- | --- | --- | --- |\n",
            );
            for t in &self.teachers {
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    t.teacher,
                    t.arch,
                    t.sha256.get(..16).unwrap_or("-"),
                    pct(t.test_acc)
                ));
            }
            s.push('\n');
        }
        s.push_str("| model | architecture | objective | parameters | test acc (%) | validation acc (%) | test loss | ECE | epochs run (best) | s/epoch |\n");
        s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for m in &self.models {
            let acc = match m.test_acc_sd {
                Some(sd) => format!("{} ± {}", pct(m.test_acc_mean), pct(sd)),
                None => pct(m.test_acc_mean),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {acc} | {} | {:.4} | {:.4} | {:.1} ({:.1}) | {} |\n",
                m.model,
                m.arch,
                m.objective_settings,
                m.params,
                pct(m.best_val_acc_mean),
                m.test_loss_mean,
                m.test_ece_mean,
                m.epochs_run_mean,
                m.best_epoch_mean,
                m.median_epoch_seconds
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s.push_str("\nPaired gain of each distilled student over the model it is compared with (same seed), test accuracy in points:\n\n");
        s.push_str("| objective | over | per seed | mean | sd | 95% interval |\n| --- | --- | --- | --- | --- | --- |\n");
        for g in &self.gains {
            let per: Vec<String> = g
                .seeds
                .iter()
                .zip(&g.gains_points)
                .map(|(s, v)| format!("{s}: {v:+.2}"))
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {:+.2} | {} | {} |\n",
                g.objective,
                g.baseline,
                per.join(", "),
                g.mean_points,
                g.sd_points
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "-".into()),
                match g.interval_95_points {
                    Some((lo, hi)) => format!("{lo:+.2} to {hi:+.2}"),
                    None => "none: one seed gives no interval".into(),
                }
            ));
        }
        // Omitted classes: the bias shift chosen on validation, per model, mean ± sd.
        let corrected: Vec<&String> = self
            .models
            .iter()
            .map(|m| &m.model)
            .filter(|l| {
                self.runs
                    .iter()
                    .any(|r| &label(r) == *l && r.bias_correction.is_some())
            })
            .collect();
        if !corrected.is_empty() {
            s.push_str("\nOmitted classes: the shift of their logits chosen on validation (Hinton et al. 2015, section 3), test accuracy in percent before and after it, mean ± sd over seeds:\n\n| model | classes | shift | class test acc before | after | all test acc before | after |\n| --- | --- | --- | --- | --- | --- | --- |\n");
            let ms = |v: Vec<f64>| match mean_sd(&v) {
                (m, Some(sd)) => format!("{m:.2} ± {sd:.2}"),
                (m, None) => format!("{m:.2}"),
            };
            for l in corrected {
                let bcs: Vec<&crate::bias::BiasCorrection> = self
                    .runs
                    .iter()
                    .filter(|r| &label(r) == l)
                    .filter_map(|r| r.bias_correction.as_ref())
                    .collect();
                let class_acc =
                    |after: bool| -> Vec<f64> { bcs.iter().map(|b| b.class_acc(after)).collect() };
                s.push_str(&format!(
                    "| {l} | {} | {} | {} | {} | {} | {} |\n",
                    bcs[0].class_names.join(", "),
                    ms(bcs.iter().map(|b| b.shift).collect()),
                    ms(class_acc(false)),
                    ms(class_acc(true)),
                    ms(bcs.iter().map(|b| 100.0 * b.test_acc_before).collect()),
                    ms(bcs.iter().map(|b| 100.0 * b.test_acc_after).collect()),
                ));
            }
        }
        s.push_str("\nPer seed:\n\n| seed | model | test acc (%) | validation acc (%) | test loss | ECE | epochs run (best) |\n| --- | --- | --- | --- | --- | --- | --- |\n");
        for r in &self.runs {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} | {:.4} | {} ({}) |\n",
                r.seed,
                label(r),
                pct(r.test_acc),
                pct(r.best_val_acc),
                r.test_loss,
                r.test_ece,
                r.epochs_run,
                r.best_epoch
            ));
        }
        s.push_str(&format!(
            "\nWall time of the whole run: {:.0} s. Made by kdtrain {} at commit {} on {}.\n",
            self.wall_seconds,
            env!("CARGO_PKG_VERSION"),
            self.commit,
            self.made
        ));
        s
    }
}

/// The paper's figures beside ours, for `reproduce --experiment paper`: one row per
/// experiment, from Hinton, Vinyals and Dean 2015 (their data named: MNIST and a speech
/// acoustic model, not ours).
pub fn paper_markdown(all: &[(crate::config::Experiment, Results)]) -> String {
    use crate::config::Experiment;
    let pct = |v: f64| format!("{:.2}", v * 100.0);
    let model = |r: &Results, l: &str| r.models.iter().find(|m| m.model == l).cloned();
    let acc = |m: Option<ModelSummary>| match m {
        Some(m) => match m.test_acc_sd {
            Some(sd) => format!("{} ± {}", pct(m.test_acc_mean), pct(sd)),
            None => pct(m.test_acc_mean),
        },
        None => "-".into(),
    };
    let gain = |g: Option<&Gain>| match g {
        Some(g) => match g.interval_95_points {
            Some((lo, hi)) => format!("{:+.2} ({lo:+.2} to {hi:+.2})", g.mean_points),
            None => format!("{:+.2}", g.mean_points),
        },
        None => "-".into(),
    };
    let mut s = String::from(
        "# Hinton, Vinyals and Dean 2015, reproduced\n\nThe paper's figures are on its data \
         (MNIST, and a speech recognition acoustic model's frame accuracy); ours are on this \
         run's data set, test accuracy in percent, mean ± sd over seeds, every choice made \
         on the validation split. Gains are paired (same seed), in points, with their 95% \
         interval.\n\n| experiment | paper: data | paper: alone | paper: distilled | ours: \
         data | ours: alone | ours: distilled | ours: gain |\n| --- | --- | --- | --- | --- | \
         --- | --- | --- |\n",
    );
    for (e, r) in all {
        let objective = r
            .gains
            .iter()
            .find(|g| g.baseline == "student")
            .map(|g| g.objective.clone())
            .unwrap_or_else(|| "kd".into());
        let one = format!("distilled ({objective})");
        let (paper_data, paper_alone, paper_distilled) = match e {
            Experiment::Fraction => (
                "speech, 3% of the training set (§6, Table 5)",
                "44.5 (all data: 58.9)",
                "57.0",
            ),
            Experiment::Omit => (
                "MNIST without any 3 in the transfer set (§3)",
                "-",
                "97.94 (206 errors, 133 of them on the 1,010 threes); 98.91 with the 3's bias \
                 raised by 3.5, chosen on the test set (14 errors on threes)",
            ),
            Experiment::Ensemble => (
                "speech, 10 models (§4, Table 1)",
                "58.9 (the ensemble: 61.1)",
                "60.8",
            ),
            _ => (
                "MNIST, 800-800 net (§3)",
                "98.54 (146 errors)",
                "99.26 (74 errors; teacher 67)",
            ),
        };
        let (distilled, g) = match e {
            Experiment::Ensemble => {
                let ens = r
                    .models
                    .iter()
                    .find(|m| {
                        m.model
                            .starts_with(&format!("distilled ({objective}, ensemble"))
                    })
                    .cloned();
                let g = ens.as_ref().and_then(|m| {
                    r.gains
                        .iter()
                        .find(|g| g.objective == m.model && g.baseline == "student")
                });
                (
                    format!(
                        "{} (from one teacher: {})",
                        acc(ens.clone()),
                        acc(model(r, &one))
                    ),
                    g,
                )
            }
            Experiment::Omit => {
                // The omitted classes' test accuracy before and after the shift, mean
                // over the seeds.
                let bcs: Vec<&crate::bias::BiasCorrection> = r
                    .runs
                    .iter()
                    .filter(|x| label(x) == one)
                    .filter_map(|x| x.bias_correction.as_ref())
                    .collect();
                let class = |after: bool| {
                    let v: Vec<f64> = bcs.iter().map(|b| b.class_acc(after)).collect();
                    v.iter().sum::<f64>() / v.len().max(1) as f64
                };
                let names = bcs
                    .first()
                    .map(|b| b.class_names.join(", "))
                    .unwrap_or_default();
                (
                    format!(
                        "{}; {names}: {:.2} as trained, {:.2} with the shift chosen on validation",
                        acc(model(r, &one)),
                        class(false),
                        class(true)
                    ),
                    r.gains
                        .iter()
                        .find(|g| g.objective == objective && g.baseline == "student"),
                )
            }
            _ => (
                acc(model(r, &one)),
                r.gains
                    .iter()
                    .find(|g| g.objective == objective && g.baseline == "student"),
            ),
        };
        s.push_str(&format!(
            "| {} | {paper_data} | {paper_alone} | {paper_distilled} | {} | {} | {distilled} | {} |\n",
            e.key(),
            r.transfer,
            acc(model(r, "student")),
            gain(g)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_averages_the_two_middle_values_of_an_even_count() {
        use super::median;
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 10.0]), Some(3.0));
    }

    use super::*;

    #[test]
    fn sample_sd_and_t_interval_hand_checked() {
        // x = [1, 2, 3, 4]: mean 2.5, sample sd sqrt(5/3) = 1.290994;
        // t(0.975, 3) = 3.182446 (scipy.stats.t.ppf(0.975, 3)); half-width
        // 3.182446 * 1.290994 / 2 = 2.054260.
        let x = [1.0, 2.0, 3.0, 4.0];
        let (m, sd) = mean_sd(&x);
        assert_eq!(m, 2.5);
        assert!((sd.unwrap() - 1.290_994).abs() < 1e-6);
        let (lo, hi) = t_interval_95(&x).unwrap();
        assert!((lo - (2.5 - 2.054_260)).abs() < 1e-5, "{lo}");
        assert!((hi - (2.5 + 2.054_260)).abs() < 1e-5, "{hi}");
        // Two values: t(0.975, 1) = 12.706205.
        let (lo, _) = t_interval_95(&[0.0, 2.0]).unwrap();
        assert!(
            (lo - (1.0 - 12.706_205 * 2f64.sqrt() / 2f64.sqrt())).abs() < 1e-4,
            "{lo}"
        );
        assert!(t_interval_95(&[1.0]).is_none());
        assert_eq!(mean_sd(&[1.0]).1, None);
    }
}
