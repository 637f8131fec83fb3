//! The merge of the command-line flags over the config file: [`Overrides`] (what the
//! flags say), [`Config::apply`], and [`Config::with_overrides`], which also decides
//! whether a bad value is the file's or the flag's, so that the error names the right one.

use std::path::PathBuf;

use anyhow::Result;

use super::{Config, DistillConfig};
use crate::error::{UsageError, usage};

/// Values given on the command line; `None` leaves the config file's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub lr: Option<f64>,
    /// `train --arch`: the architecture of the role trained (teacher or student).
    pub arch: Option<(crate::model::RunKind, String)>,
    /// `train --augment`: the augmentation of the role trained.
    pub augment: Option<(crate::model::RunKind, String)>,
    /// `--objective`: one name, or (reproduce) several.
    pub objectives: Vec<String>,
    /// Whether several objectives may be given (reproduce).
    pub many_objectives: bool,
    /// `--seeds` (reproduce).
    pub seeds: Option<Vec<u64>>,
    /// `--teacher-epochs` (reproduce): its teacher's epochs, applied after `--epochs`.
    pub teacher_epochs: Option<usize>,
    pub params: ObjectiveFlags,
    pub no_teacher_cache: bool,
    /// `reproduce --experiment`.
    pub experiment: Option<crate::config::Experiment>,
    /// `reproduce --train-teacher`.
    pub train_teacher: bool,
    /// `reproduce --teachers K`.
    pub teachers: Option<usize>,
    /// `--teacher`, once or more (an ensemble).
    pub teacher: Vec<PathBuf>,
    /// `--train-fraction`.
    pub train_fraction: Option<f64>,
    /// `--omit-class`, repeated; replaces `data.omit_classes` when given.
    pub omit_classes: Option<Vec<String>>,
}

/// The objectives' hyper-parameter flags given (see [`crate::objective::FLAGS`]), as
/// the TOML values they put in an objective's table; each applies to the chosen
/// objective(s) that have the parameter, and is an error for an objective without it.
#[derive(Debug, Clone, Default)]
pub struct ObjectiveFlags(std::collections::BTreeMap<&'static str, toml::Value>);

impl ObjectiveFlags {
    /// Records `--<flag> value`: a number for a number flag, a whole number of epochs for
    /// a count (`--warmup`), and for a switch (`--no-t-squared`) `false`, the value it
    /// gives its key. Flags not in [`crate::objective::FLAGS`] are ignored.
    pub fn set(&mut self, flag: &str, value: f64) {
        use crate::objective::FlagKind;
        if let Some(f) = crate::objective::flag(flag) {
            let v = match f.kind {
                FlagKind::Number => toml::Value::Float(value),
                FlagKind::Count => toml::Value::Integer(value as i64),
                FlagKind::Switch => toml::Value::Boolean(false),
            };
            self.0.insert(f.name, v);
        }
    }

    /// The value given for `flag` (`--t`, `--alpha`, ...) as its table's TOML value;
    /// `None` when not given.
    fn value(&self, flag: &str) -> Option<toml::Value> {
        self.0.get(flag).cloned()
    }

    /// The objective flags given (`--t`, `--alpha`, ...), in the order `--help` lists
    /// them.
    pub fn given(&self) -> Vec<&'static str> {
        crate::objective::FLAGS
            .iter()
            .map(|f| f.name)
            .filter(|f| self.0.contains_key(f))
            .collect()
    }
}

/// The flags each objective takes, by objective name (from its
/// [`crate::objective::Spec`]); none for a name not in the registry.
pub fn objective_flags(name: &str) -> Vec<&'static str> {
    crate::objective::spec(name).map_or_else(Vec::new, |s| s.flags())
}

/// Writes the hyper-parameter flags that objective `name` takes (those of its
/// [`crate::objective::Spec`]) into its table of `d`.
fn set_objective_flags(name: &str, d: &mut DistillConfig, p: &ObjectiveFlags) -> Result<()> {
    let (Some(spec), Some(mut table)) = (crate::objective::spec(name), d.table(name)) else {
        return Ok(());
    };
    let mut changed = false;
    for param in spec.params {
        if let (Some(v), Some(t)) = (p.value(param.flag), table.as_table_mut()) {
            t.insert(param.key.to_string(), v);
            changed = true;
        }
    }
    if changed {
        d.set_table(name, table).map_err(UsageError)?;
    }
    Ok(())
}

/// Checks an objective name against [`crate::objective::NAMES`].
pub fn check_objective(name: &str, key: &str) -> Result<()> {
    if crate::objective::NAMES.contains(&name) {
        Ok(())
    } else {
        usage(format!(
            "{key} = {name:?}: expected one of {}",
            crate::objective::NAMES.join(", ")
        ))
    }
}

/// Parses `--seeds`: a comma list (`0,1,2`; one seed as `7,`) or a count N (seeds 0 to
/// N-1).
pub fn parse_seeds(s: &str) -> std::result::Result<Vec<u64>, String> {
    let s = s.trim();
    let expected =
        "expected a comma list of seeds (0,1,2; one seed as 7,) or a count from 1 to 1000";
    if !s.contains(',') {
        return match s.parse::<u64>() {
            Ok(n) if (1..=1000).contains(&n) => Ok((0..n).collect()),
            // A count of 0 seeds is nothing to run; seed 0 alone is a one-item list.
            Ok(0) => Err(format!(
                "--seeds {s:?}: {expected}; for seed 0 alone, write --seeds 0,"
            )),
            _ => Err(format!("--seeds {s:?}: {expected}")),
        };
    }
    // One trailing comma marks a one-seed list (`7,`); an empty item anywhere else
    // (`0,,1`, `,1`) is a typo, not a seed.
    let body = s.strip_suffix(',').unwrap_or(s);
    if body.split(',').any(|p| p.trim().is_empty()) {
        return Err(format!("--seeds {s:?}: an empty item; {expected}"));
    }
    let seeds: Vec<u64> = body
        .split(',')
        .map(str::trim)
        .map(|p| p.parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("--seeds {s:?}: {expected}"))?;
    if seeds.is_empty() {
        return Err(format!("--seeds {s:?}: {expected}"));
    }
    Ok(seeds)
}

impl Config {
    /// Applies command-line overrides (flags win over the file).
    ///
    /// # Errors
    /// [`UsageError`] for an unknown objective, several objectives where one is taken,
    /// or a hyper-parameter flag that the chosen objective does not have.
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        if let Some(d) = &o.data_dir {
            self.data.dir = d.clone();
        }
        if let Some(d) = &o.out_dir {
            self.runtime.out_dir = d.clone();
        }
        if let Some(v) = o.epochs {
            self.train.epochs = v;
            self.train.teacher_epochs = 0;
            self.reproduce.teacher_epochs = 0;
        }
        if let Some((kind, a)) = &o.arch {
            let spec = match a.as_str() {
                "mlp" if *kind == crate::model::RunKind::Teacher => {
                    crate::model::Arch::teacher().spec()
                }
                "mlp" => crate::model::Arch::student().spec(),
                other => other.to_string(),
            };
            // Saved as the canonical spec, so `cnn` and its full spec resume each other.
            let spec = match crate::model::Arch::parse(&spec) {
                Ok(arch) => arch.spec(),
                Err(e) => return usage(format!("--arch {a:?}: expected mlp, cnn or {e}")),
            };
            match kind {
                crate::model::RunKind::Teacher => self.model.teacher = spec,
                _ => self.model.student = spec,
            }
        }
        if let Some((kind, a)) = &o.augment {
            let a = match crate::augment::Augment::parse(a) {
                Ok(aug) => aug.spec(),
                Err(e) => return usage(format!("--augment {a:?}: expected {e}")),
            };
            match kind {
                crate::model::RunKind::Teacher => self.augment.teacher = a,
                _ => self.augment.student = a,
            }
        }
        if let Some(v) = o.train_fraction {
            self.data.train_fraction = v;
        }
        if let Some(v) = &o.omit_classes {
            self.data.omit_classes = v.clone();
        }
        if let Some(v) = o.batch_size {
            self.data.batch_size = v;
        }
        if let Some(v) = o.seed {
            self.seed = v;
        }
        if let Some(v) = &o.device {
            self.runtime.device = v.clone();
        }
        if let Some(v) = o.threads {
            self.runtime.threads = v;
        }
        if let Some(v) = o.lr {
            self.lr_schedule.initial_lr = v;
        }
        if o.no_teacher_cache {
            self.distill.teacher_cache = false;
        }
        match o.teacher.as_slice() {
            [] => {}
            [one] => {
                self.distill.teacher = one.clone();
                self.distill.teachers.clear();
            }
            many => {
                self.distill.teacher = PathBuf::new();
                self.distill.teachers = many.to_vec();
            }
        }
        if let Some(s) = &o.seeds {
            self.reproduce.seeds = s.clone();
        }
        if let Some(v) = o.teacher_epochs {
            if v == 0 || v > 1_000_000 {
                return usage(format!(
                    "--teacher-epochs {v}: expected 1 to 1000000 epochs for reproduce's teacher"
                ));
            }
            self.reproduce.teacher_epochs = v;
            // Epochs for a teacher mean training one.
            self.reproduce.teacher_file = PathBuf::new();
        }
        if o.train_teacher {
            self.reproduce.teacher_file = PathBuf::new();
        }
        if let Some(e) = o.experiment {
            self.reproduce.experiment = e;
        }
        if let Some(k) = o.teachers {
            if k == 0 || k > 100 {
                return usage(format!("--teachers {k}: expected 1 to 100 teachers"));
            }
            self.reproduce.teachers = k;
        }
        if o.objectives.len() > 1 && !o.many_objectives {
            return usage(format!(
                "--objective {}: this command takes one objective (reproduce takes several)",
                o.objectives.join(",")
            ));
        }
        for name in &o.objectives {
            check_objective(name, "--objective")?;
        }
        if let Some(first) = o.objectives.first() {
            self.distill.objective = first.clone();
            if o.many_objectives {
                self.reproduce.objectives = o.objectives.clone();
            }
        }
        let (active, key) = if o.many_objectives && !self.reproduce.objectives.is_empty() {
            (self.reproduce.objectives.clone(), "reproduce.objectives")
        } else {
            (vec![self.distill.objective.clone()], "distill.objective")
        };
        for name in &active {
            check_objective(name, &format!("config key `{key}`"))?;
        }
        let p = &o.params;
        for flag in p.given() {
            if !active.iter().any(|n| objective_flags(n).contains(&flag)) {
                let takes: Vec<String> = active
                    .iter()
                    .map(|n| format!("{n} takes {}", objective_flags(n).join(", ")))
                    .collect();
                return usage(format!(
                    "{flag} is not a parameter of objective {}; {}",
                    active.join(", "),
                    takes.join("; ")
                ));
            }
        }
        for name in &active {
            set_objective_flags(name, &mut self.distill, p)?;
        }
        Ok(())
    }

    /// Rewrites the architecture and augmentation specs (`model.*`, `augment.*`,
    /// `reproduce.teacher`, `reproduce.teacher_augment`) in their canonical form, as
    /// `--arch` and `--augment` are saved: `"mlp: 128, dropout=0.10"` becomes
    /// `"mlp:128,dropout=0.1"` and `"cnn"` its full spec, so the same model written
    /// differently resumes the same run and gets the same sweep job id. Specs that do not
    /// parse are left for [`Config::validate`] to report.
    pub fn canonicalize(&mut self) {
        for spec in [
            &mut self.model.teacher,
            &mut self.model.student,
            &mut self.reproduce.teacher,
        ] {
            if let Ok(arch) = crate::model::Arch::parse(spec) {
                *spec = arch.spec();
            }
        }
        for spec in [
            &mut self.augment.teacher,
            &mut self.augment.student,
            &mut self.reproduce.teacher_augment,
        ] {
            if !spec.is_empty()
                && let Ok(aug) = crate::augment::Augment::parse(spec)
            {
                *spec = aug.spec();
            }
        }
    }

    /// Whether `e`, the error of [`Config::apply`] then [`Config::validate`] on `loaded`
    /// with `overrides`, is the file's: the file alone gives the same error, and the
    /// flags alone (on the built-in defaults with the file's objective, which validate)
    /// do not, since a flag's value replaces the file's.
    fn file_is_to_blame(loaded: &Config, overrides: &Overrides, e: &anyhow::Error) -> bool {
        let same = |c: &Config, o: &Overrides| {
            let mut c = c.clone();
            let err = c.apply(o).and_then(|()| c.validate()).err();
            err.map(|f| f.to_string()) == Some(e.to_string())
        };
        // The flags alone, read as they are with this file: `--t` and `--alpha` set the
        // keys of the file's objective (when it is a valid one), not the default's.
        let mut flags_only = Config::default();
        flags_only.distill.objective = loaded.distill.objective.clone();
        let mut check = flags_only.clone();
        if check
            .apply(&Overrides::default())
            .and_then(|()| check.validate())
            .is_err()
        {
            flags_only = Config::default();
        }
        same(loaded, &Overrides::default()) && !same(&flags_only, overrides)
    }

    /// `self`, a config as loaded from a file, with `overrides` (the flags) applied and
    /// then validated.
    ///
    /// # Errors
    /// [`Config::apply`]'s and [`Config::validate`]'s. When the bad value is the file's
    /// own (the file alone gives the same error and the flags alone do not), the error
    /// goes through `in_file`, which names the file; a flag's bad value is never blamed
    /// on the file, even when the file's value is bad too.
    pub fn with_overrides(
        &self,
        overrides: &Overrides,
        in_file: impl FnOnce(anyhow::Error) -> anyhow::Error,
    ) -> Result<Config> {
        let mut c = self.clone();
        match c.apply(overrides).and_then(|()| c.validate()) {
            Ok(()) => Ok(c),
            Err(e) if Config::file_is_to_blame(self, overrides, &e) => Err(in_file(e)),
            Err(e) => Err(e),
        }
    }
}
