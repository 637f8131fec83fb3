//! The commands: `train`, `distill`, `evaluate`, `reproduce`. Each resolves and checks
//! everything it needs (config, device, data folder, run folder, teacher checkpoint)
//! before loading data or training, then runs the stages in order:
//! config -> data -> model -> training loop -> checkpoint and reports.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tch::Device;

use crate::checkpoint::Checkpoint;
use crate::cli::{Cli, Command, ModelArg};
use crate::config::{Config, UsageError, Validation, usage};
use crate::data::{self, Dataset};
use crate::eval::{self, Metrics};
use crate::loss::DistillLoss;
use crate::model::{Arch, Mlp};
use crate::optim::AdamConfig;
use crate::run::{Run, RunKind};
use crate::schedule::CosineDecay;
use crate::train::{self, LoopConfig, Objective};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let (config_path, required) = match &cli.common.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("config.toml"), false),
    };
    let mut config = Config::load(&config_path, required)?;
    config.apply(&cli.overrides());
    config.validate()?;
    let device = crate::device::resolve(&config.runtime.device)?;
    // The resolved config (written next to each checkpoint) names the device used.
    config.runtime.device = match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    };
    let threads = crate::device::set_threads(config.runtime.threads);
    let env = Env {
        config,
        device,
        threads,
        cli: &cli,
    };
    match &cli.command {
        Command::Train { model } => {
            let kind = match model {
                ModelArg::Teacher => RunKind::Teacher,
                ModelArg::Student => RunKind::Student,
            };
            let data_dir = env.data_dir()?;
            let mut run = Run::open(
                &env.config,
                kind,
                cli.common.run_name.as_deref(),
                cli.common.resume,
                cli.common.quiet,
            )?;
            // A bad data file leaves no empty run folder behind.
            let data = env.load(&data_dir).inspect_err(|_| run.abandon())?;
            let out = env.train(&mut run, kind, Objective::Supervised, &data)?;
            print_result(&out);
        }
        Command::Distill(_) => {
            let data_dir = env.data_dir()?;
            let teacher = env.teacher()?;
            // Record the teacher actually used in the run's config.toml, also when it was
            // picked automatically.
            let mut env = env;
            env.config.distill.teacher = teacher.1.display().to_string();
            let teacher = teacher.0;
            let mut run = Run::open(
                &env.config,
                RunKind::Distilled,
                cli.common.run_name.as_deref(),
                cli.common.resume,
                cli.common.quiet,
            )?;
            // A bad data file leaves no empty run folder behind.
            let data = env.load(&data_dir).inspect_err(|_| run.abandon())?;
            let out = env.train(
                &mut run,
                RunKind::Distilled,
                env.distill_objective(teacher),
                &data,
            )?;
            print_result(&out);
        }
        Command::Evaluate {
            checkpoint,
            teacher,
            json,
        } => evaluate(&env, checkpoint, teacher.as_deref(), *json)?,
        Command::Reproduce(_) => reproduce(&env)?,
    }
    Ok(())
}

/// The resolved settings every command starts from.
struct Env<'a> {
    config: Config,
    device: Device,
    threads: usize,
    cli: &'a Cli,
}

/// What one training run produced, for the results table and `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub model: &'static str,
    pub run_dir: PathBuf,
    pub params: i64,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub stopped_early: bool,
    /// Training-loop seconds of each epoch run in this process.
    pub epoch_seconds: Vec<f64>,
    pub median_epoch_seconds: f64,
    /// Seconds to evaluate the test set (forward passes and metrics).
    pub eval_test_seconds: f64,
    /// Seconds from process start to the first optimizer step.
    pub startup_seconds: f64,
    /// Seconds to read, validate and move the data to the device.
    pub data_load_seconds: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// Expected calibration error on the test set (15 bins).
    pub test_ece: f64,
    pub threads: usize,
    pub device: String,
    pub temperature: Option<f64>,
    pub alpha: Option<f64>,
    pub seed: u64,
    /// Validation accuracy per epoch (for the comparison plot).
    pub val_acc: Vec<f64>,
}

impl Env<'_> {
    /// The data folder, found (or downloaded with `--download`) before anything else runs.
    fn data_dir(&self) -> Result<PathBuf> {
        let named =
            (!self.config.data.dir.is_empty()).then(|| PathBuf::from(&self.config.data.dir));
        match data::locate(named.as_deref()) {
            Ok(d) => Ok(d),
            Err(e) if self.cli.common.download && named.is_none() => {
                let _ = e;
                if !self.cli.common.quiet {
                    crate::errln!(
                        "downloading Fashion-MNIST from {} into {}",
                        self.config.data.download_url,
                        data::DOWNLOAD_DIR
                    );
                }
                crate::download::download_all(
                    &self.config.data.download_url,
                    Path::new(data::DOWNLOAD_DIR),
                    self.cli.common.quiet,
                )
            }
            Err(e) => Err(e),
        }
    }

    fn load(&self, dir: &Path) -> Result<(Dataset, f64)> {
        let t0 = Instant::now();
        let raw = data::load_dir(dir)?;
        let val = match self.config.data.validation {
            Validation::Split => Some(self.config.data.validation_size),
            Validation::Test => None,
        };
        let ds = data::prepare(&raw, val, self.config.seed, self.device)?;
        let secs = t0.elapsed().as_secs_f64();
        if !self.cli.common.quiet {
            crate::errln!(
                "data: {} ({} train, {} validation, {} test) in {secs:.2} s; device {:?}, {} threads",
                dir.display(),
                ds.train.len(),
                ds.val.len(),
                ds.test.len(),
                self.device,
                self.threads
            );
        }
        Ok((ds, secs))
    }

    /// The teacher checkpoint for distillation, read and checked before training.
    fn teacher(&self) -> Result<(Mlp, PathBuf)> {
        let path = if self.config.distill.teacher.is_empty() {
            let out = Path::new(&self.config.runtime.out_dir);
            match crate::run::newest_model(out, RunKind::Teacher) {
                Some(p) => p,
                None => {
                    return usage(format!(
                        "no teacher checkpoint in {0}/teacher-*/model.safetensors or \
                         {0}/reproduce-*/teacher/model.safetensors; run `train teacher` first, \
                         or pass --teacher PATH",
                        out.display()
                    ));
                }
            }
        } else {
            PathBuf::from(&self.config.distill.teacher)
        };
        let ckpt = Checkpoint::read(&path).map_err(|e| match e.downcast_ref::<UsageError>() {
            Some(_) => UsageError(format!(
                "{e}; run `train teacher` first, or pass --teacher PATH"
            ))
            .into(),
            None => e,
        })?;
        // Shapes first: that message names the tensor and both shapes.
        let mut teacher = ckpt
            .model(Arch::Teacher, self.device)
            .map_err(|e| UsageError(format!("{e:#}")))?;
        if let Some(a) = ckpt.metadata.get(crate::checkpoint::META_ARCH)
            && a != "teacher"
        {
            return usage(format!(
                "{} is a {a} checkpoint (its config says so), not a teacher; pass a teacher's model.safetensors",
                path.display()
            ));
        }
        teacher.freeze();
        if !self.cli.common.quiet {
            crate::errln!("teacher: {}", path.display());
        }
        Ok((teacher, path))
    }

    fn distill_loss(&self) -> DistillLoss {
        let d = &self.config.distill;
        DistillLoss {
            temperature: d.temperature,
            alpha: d.alpha,
            t_squared_scaling: d.t_squared_scaling,
        }
    }

    fn distill_objective(&self, teacher: Mlp) -> Objective {
        Objective::Distill {
            teacher,
            loss: self.distill_loss(),
            cache: self.config.distill.teacher_cache,
        }
    }

    /// Trains one model in `run` and writes its final checkpoint and reports.
    fn train(
        &self,
        run: &mut Run,
        kind: RunKind,
        objective: Objective,
        data: &(Dataset, f64),
    ) -> Result<RunOutcome> {
        let (data, data_load_seconds) = (&data.0, data.1);
        let c = &self.config;
        let arch = kind.arch();
        tch::manual_seed(c.seed as i64);
        let model = Mlp::new(arch, self.device);
        let steps_per_epoch = (data.train.len() as usize).div_ceil(c.data.batch_size);
        let alpha = if kind == RunKind::Teacher {
            c.lr_schedule.teacher_alpha
        } else {
            c.lr_schedule.alpha
        };
        let loop_cfg = LoopConfig {
            epochs: c.train.epochs,
            batch_size: c.data.batch_size as i64,
            schedule: CosineDecay {
                initial_lr: c.lr_schedule.initial_lr,
                decay_steps: c.decay_steps(steps_per_epoch),
                alpha,
            },
            adam: AdamConfig {
                beta1: c.optimizer.beta1,
                beta2: c.optimizer.beta2,
                eps: c.optimizer.eps,
                amsgrad: c.optimizer.amsgrad,
                eps_placement: c.optimizer.epsilon_placement,
            },
            patience: c
                .early_stopping
                .enabled
                .then_some(c.early_stopping.patience),
            seed: c.seed,
        };
        run.say(&format!(
            "training {} ({} parameters) in {}: up to {} epochs of {steps_per_epoch} steps, LR {} cosine over {} steps",
            kind.name(),
            arch.num_params(),
            run.dir.display(),
            c.train.epochs,
            c.lr_schedule.initial_lr,
            loop_cfg.schedule.decay_steps
        ));
        let fit = train::fit(run, &model, &objective, data, &loop_cfg)?;
        run.finish(&model, fit.best_epoch)?;

        let t0 = Instant::now();
        let test_logits = eval::logits(&model, &data.test.images);
        let test = eval::report(&test_logits, &data.test.labels, None)?;
        let eval_test_seconds = t0.elapsed().as_secs_f64();
        let train_m: Metrics = eval::metrics(
            &eval::logits(&model, &data.train.images),
            &data.train.labels,
            None,
        );
        let history = run.history();
        let mut secs = fit.epoch_seconds.clone();
        secs.sort_by(f64::total_cmp);
        let distilled = kind == RunKind::Distilled;
        let out = RunOutcome {
            implementation: "kdtrain",
            model: kind.name(),
            run_dir: run.dir.clone(),
            params: arch.num_params(),
            epochs_run: fit.epochs_run,
            best_epoch: fit.best_epoch,
            stopped_early: fit.stopped_early,
            median_epoch_seconds: secs.get(secs.len() / 2).copied().unwrap_or(f64::NAN),
            epoch_seconds: fit.epoch_seconds,
            eval_test_seconds,
            startup_seconds: fit.startup_seconds,
            data_load_seconds,
            train_loss: train_m.loss,
            train_acc: train_m.acc,
            test_loss: test.loss,
            test_acc: test.acc,
            test_ece: test.ece,
            threads: self.threads,
            device: format!("{:?}", self.device),
            temperature: distilled.then_some(c.distill.temperature),
            alpha: distilled.then_some(c.distill.alpha),
            seed: c.seed,
            val_acc: history.iter().map(|r| r.val.acc).collect(),
        };
        crate::checkpoint::write_atomic(
            &run.dir.join("summary.json"),
            serde_json::to_string_pretty(&out)?.as_bytes(),
        )?;
        if c.logging.plots {
            let h = &history;
            let col =
                |f: fn(&crate::run::EpochRecord) -> f64| h.iter().map(f).collect::<Vec<f64>>();
            let title = match run.name() {
                n if n == kind.name() => n,
                n => format!("{} ({n})", kind.name()),
            };
            crate::plot::curves_png(
                &run.dir.join("curves.png"),
                &crate::plot::Curves {
                    title: &title,
                    train_loss: &col(|r| r.train.loss),
                    val_loss: &col(|r| r.val.loss),
                    train_acc: &col(|r| r.train.acc),
                    val_acc: &col(|r| r.val.acc),
                },
            )?;
        }
        Ok(out)
    }
}

fn print_result(o: &RunOutcome) {
    crate::outln!(
        "{}: train loss {:.4} acc {:.4} | test loss {:.4} acc {:.4} | {} epochs (best {}) at {:.2} s/epoch | {}",
        o.model,
        o.train_loss,
        o.train_acc,
        o.test_loss,
        o.test_acc,
        o.epochs_run,
        o.best_epoch,
        o.median_epoch_seconds,
        o.run_dir.join(crate::run::MODEL_FILE).display()
    );
}

/// `evaluate CHECKPOINT`: the full report on the train and test sets.
fn evaluate(env: &Env, path: &Path, teacher: Option<&Path>, json: bool) -> Result<()> {
    let ckpt = Checkpoint::read(path)?;
    let Some(arch) = ckpt.arch() else {
        return usage(format!(
            "{} holds neither a teacher nor a student (no fc*.weight tensors)",
            path.display()
        ));
    };
    let model = ckpt.model(arch, env.device)?;
    let teacher = match teacher {
        Some(p) => {
            let t = Checkpoint::read(p)?;
            Some(
                t.model(Arch::Teacher, env.device)
                    .map_err(|e| UsageError(format!("--teacher: {e:#}")))?,
            )
        }
        None => None,
    };
    let dir = env.data_dir()?;
    let raw = data::load_dir(&dir)?;
    let train = data::Examples::from_split(&raw.train, env.device);
    let test = data::Examples::from_split(&raw.test, env.device);
    let train_r = eval::model_report(&model, &train, teacher.as_ref())?;
    let test_r = eval::model_report(&model, &test, teacher.as_ref())?;
    let confusion_png = path.with_file_name("confusion.png");
    let title = format!(
        "{} on the test set: accuracy {:.4}",
        path.display(),
        test_r.acc
    );
    let names: Vec<&str> = data::CLASS_NAMES.to_vec();
    // The chart is a by-product: when it cannot be written (a read-only folder, say) the
    // report is still printed, with a warning.
    let chart = crate::plot::confusion_png(&confusion_png, &title, &names, &test_r.confusion);
    if let Err(e) = &chart {
        crate::errln!("warning: {e:#}; the report is complete without it");
    }
    let confusion_png = chart.is_ok().then_some(confusion_png);
    if json {
        let v = serde_json::json!({
            "checkpoint": path,
            "arch": arch.name(),
            "params": arch.num_params(),
            "train": train_r,
            "test": test_r,
            "confusion_png": confusion_png,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    crate::outln!(
        "{} ({}, {} parameters)",
        path.display(),
        arch,
        arch.num_params()
    );
    for (name, r) in [("train", &train_r), ("test", &test_r)] {
        crate::outln!(
            "{name:>5}: loss {:.4}  acc {:.4}  ECE {:.4}  ({} examples)",
            r.loss,
            r.acc,
            r.ece,
            r.examples
        );
        if let (Some(a), Some(k)) = (r.teacher_agreement, r.teacher_kl) {
            crate::outln!(
                "       teacher agreement {a:.4}  mean KL(teacher || model) at T=1 {k:.4}"
            );
        }
    }
    crate::outln!("\nper-class test accuracy:");
    for (name, acc, count) in &test_r.per_class {
        crate::outln!("  {name:<12} {acc:.4}  ({count})");
    }
    crate::outln!("\ntest confusion matrix (rows: true class, columns: predicted):");
    crate::out!("{:>12}", "");
    for i in 0..data::CLASS_NAMES.len() {
        crate::out!("{i:>6}");
    }
    crate::outln!();
    for (i, row) in test_r.confusion.iter().enumerate() {
        crate::out!("{:>9} {i:>2}", truncate(data::CLASS_NAMES[i], 9));
        for c in row {
            crate::out!("{c:>6}");
        }
        crate::outln!();
    }
    if let Some(p) = confusion_png {
        crate::outln!("\nwrote {}", p.display());
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `reproduce`: teacher, student, distilled student in one folder, then the table.
fn reproduce(env: &Env) -> Result<()> {
    let cli = env.cli;
    if cli.common.resume || cli.common.run_name.is_some() {
        return usage(
            "reproduce takes neither --resume nor --run-name; it makes a new reproduce-<time> folder",
        );
    }
    let data_dir = env.data_dir()?;
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let base = Path::new(&env.config.runtime.out_dir).join(format!("reproduce-{stamp}"));
    // Two reproduce runs started in the same second get their own folders: create_dir
    // is atomic, so only one of them can take a name.
    let _ = std::fs::create_dir_all(&env.config.runtime.out_dir);
    let mut root = base.clone();
    let mut i = 2;
    loop {
        match std::fs::create_dir(&root) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 1000 => {
                root = PathBuf::from(format!("{}-{i}", base.display()));
                i += 1;
            }
            Err(e) => {
                return usage(format!(
                    "cannot create {} ({e}); choose a writable --out-dir",
                    root.display()
                ));
            }
        }
    }
    let mut config = env.config.clone();
    config.runtime.out_dir = root.display().to_string();
    let sub = Env {
        config,
        device: env.device,
        threads: env.threads,
        cli,
    };
    let q = cli.common.quiet;
    let mut teacher_run = Run::open(&sub.config, RunKind::Teacher, Some("teacher"), false, q)?;
    let data = sub.load(&data_dir).inspect_err(|_| {
        teacher_run.abandon();
        let _ = std::fs::remove_dir(&root);
    })?;
    let teacher = sub.train(
        &mut teacher_run,
        RunKind::Teacher,
        Objective::Supervised,
        &data,
    )?;
    print_result(&teacher);
    drop(teacher_run);
    let mut student_run = Run::open(&sub.config, RunKind::Student, Some("student"), false, q)?;
    let student = sub.train(
        &mut student_run,
        RunKind::Student,
        Objective::Supervised,
        &data,
    )?;
    print_result(&student);
    let mut config = sub.config.clone();
    config.distill.teacher = teacher
        .run_dir
        .join(crate::run::MODEL_FILE)
        .display()
        .to_string();
    let dist_env = Env {
        config,
        device: env.device,
        threads: env.threads,
        cli,
    };
    let mut dist_run = Run::open(
        &dist_env.config,
        RunKind::Distilled,
        Some("distilled"),
        false,
        q,
    )?;
    let objective = dist_env.distill_objective(dist_env.teacher()?.0);
    let distilled = dist_env.train(&mut dist_run, RunKind::Distilled, objective, &data)?;
    print_result(&distilled);

    let rows = [&teacher, &student, &distilled];
    let table = results_table(&rows, &dist_env.config);
    crate::outln!("\n{table}");
    crate::checkpoint::write_atomic(&root.join("results.md"), table.as_bytes())?;
    let runs: Vec<(&str, &[f64])> = rows
        .iter()
        .map(|r| (r.model, r.val_acc.as_slice()))
        .collect();
    crate::plot::comparison_png(
        &root.join("comparison.png"),
        "Validation accuracy per epoch",
        &runs,
    )?;
    crate::outln!(
        "wrote {} and {}",
        root.join("results.md").display(),
        root.join("comparison.png").display()
    );
    Ok(())
}

/// The Markdown results table of a reproduce run.
pub fn results_table(rows: &[&RunOutcome], config: &Config) -> String {
    let d = &config.distill;
    let mut s = String::new();
    s.push_str(&format!(
        "Fashion-MNIST test set; T = {}, alpha = {}, KL scaling {}; seed {}; validation: {}.\n\n",
        d.temperature,
        d.alpha,
        if d.t_squared_scaling {
            "T^2"
        } else {
            "1 (Keras reference)"
        },
        config.seed,
        match config.data.validation {
            Validation::Split => format!(
                "{} images held out of the training set",
                config.data.validation_size
            ),
            Validation::Test => "the test set (as the Keras reference)".to_string(),
        }
    ));
    s.push_str(
        "| model | test acc | test loss | ECE | parameters | epochs run (best) | s/epoch |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let name = match r.model {
            "distilled" => format!("distilled student (T={}, alpha={})", d.temperature, d.alpha),
            m => m.to_string(),
        };
        s.push_str(&format!(
            "| {name} | {:.4} | {:.4} | {:.4} | {} | {} ({}) | {:.2} |\n",
            r.test_acc,
            r.test_loss,
            r.test_ece,
            r.params,
            r.epochs_run,
            r.best_epoch,
            r.median_epoch_seconds
        ));
    }
    s
}
