//! The checks of every value's range ([`Config::validate`]), run after the flags are
//! merged and before anything is loaded; each error names the key, the flag that sets it,
//! the value found and what is allowed.

use std::fmt;

use anyhow::Result;

use super::{Config, DecaySteps, Validation, check_objective};
use crate::error::{UsageError, usage};

impl Config {
    /// Checks every value's range. The error names the key (`section.key`), the value
    /// found and what is allowed.
    pub fn validate(&self) -> Result<()> {
        self.validate_data()?;
        self.validate_training()?;
        self.validate_distill()?;
        self.validate_models()?;
        self.validate_reproduce()?;
        self.validate_runtime()
    }

    /// `[data]`.
    fn validate_data(&self) -> Result<()> {
        // Upper bounds keep step and schedule arithmetic far from overflow.
        if !(1..=1 << 24).contains(&self.data.batch_size) {
            return bad(
                "data.batch_size",
                self.data.batch_size,
                "an integer from 1 to 16777216",
            );
        }
        // The data's own shape is known once they are read (commands::load_raw).
        let d = &self.data.data_shape;
        if !d.is_empty() && (d.len() != 3 || d.contains(&0) || !matches!(d[2], 1 | 3)) {
            return bad(
                "data.data_shape",
                format!("{d:?}"),
                "[] (the data's) or [height, width, channels] with channels 1 or 3",
            );
        }
        let r = &self.data.resize;
        if !r.is_empty() && (r.len() != 2 || r.iter().any(|&x| !(1..=4096).contains(&x))) {
            return bad(
                "data.resize",
                format!("{r:?}"),
                "[] (no resize) or [height, width], each 1 to 4096",
            );
        }
        if self.data.classes > 1_000_000 {
            return bad(
                "data.classes",
                self.data.classes,
                "0 (from the data) to 1000000",
            );
        }
        let f = self.data.train_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return bad(
                "data.train_fraction",
                f,
                "a fraction of the training split in (0, 1] (1 = all of it)",
            );
        }
        let omit = &self.data.omit_classes;
        if let Some(twice) = omit
            .iter()
            .enumerate()
            .find(|(i, c)| omit[..*i].contains(c))
        {
            return bad(
                "data.omit_classes",
                format!("{omit:?}"),
                &format!("each class once ({:?} is named twice)", twice.1),
            );
        }
        if self.data.validation == Validation::Split && self.data.validation_size == 0 {
            return bad(
                "data.validation_size",
                0,
                "an integer >= 1 (or set data.validation = \"test\")",
            );
        }
        Ok(())
    }

    /// `train.epochs`, `[lr_schedule]`, `[optimizer]`, `[early_stopping]`.
    fn validate_training(&self) -> Result<()> {
        let positive = "a finite number > 0";
        if !(1..=1_000_000).contains(&self.train.epochs) {
            return bad(
                "train.epochs",
                self.train.epochs,
                "an integer from 1 to 1000000",
            );
        }
        let lr = &self.lr_schedule;
        if !(lr.initial_lr.is_finite() && lr.initial_lr > 0.0) {
            return bad("lr_schedule.initial_lr", lr.initial_lr, positive);
        }
        match &lr.decay_steps {
            DecaySteps::Steps(n) if *n <= 0 => {
                return bad("lr_schedule.decay_steps", n, "an integer >= 1 or \"auto\"");
            }
            DecaySteps::Named(s) if s != "auto" => {
                return bad(
                    "lr_schedule.decay_steps",
                    format!("{s:?}"),
                    "an integer >= 1 or \"auto\"",
                );
            }
            _ => {}
        }
        for (key, a) in [
            ("lr_schedule.alpha", lr.alpha),
            ("lr_schedule.teacher_alpha", lr.teacher_alpha),
        ] {
            if !(0.0..=1.0).contains(&a) {
                return bad(key, a, "a number in [0, 1]");
            }
        }
        let o = &self.optimizer;
        for (key, b) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(key, b, "a number in [0, 1)");
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return bad("optimizer.eps", o.eps, positive);
        }
        if self.early_stopping.enabled && self.early_stopping.patience == 0 {
            return bad(
                "early_stopping.patience",
                0,
                "an integer >= 1 (or enabled = false)",
            );
        }
        Ok(())
    }

    /// `distill.objective` and every objective's table, by its registry spec.
    fn validate_distill(&self) -> Result<()> {
        let d = &self.distill;
        check_objective(&d.objective, "config key `distill.objective`")?;
        // Each objective's table, by the ranges of its registry spec.
        for spec in crate::objective::SPECS {
            let table = d.table(spec.name);
            for param in spec.params {
                let value = table.as_ref().and_then(|t| t.get(param.key));
                if let Err((found, expected)) = param.check(value) {
                    return bad(
                        &format!("distill.{}.{}", spec.name, param.key),
                        found,
                        expected,
                    );
                }
            }
        }
        Ok(())
    }

    /// The architecture and augmentation specs, the teacher's input and epochs.
    fn validate_models(&self) -> Result<()> {
        for (key, spec) in [
            ("model.teacher", &self.model.teacher),
            ("model.student", &self.model.student),
        ] {
            if let Err(e) = crate::model::Arch::parse(spec) {
                return bad(key, format!("{spec:?}"), &e);
            }
        }
        if !self.reproduce.teacher.is_empty()
            && let Err(e) = crate::model::Arch::parse(&self.reproduce.teacher)
        {
            return bad(
                "reproduce.teacher",
                format!("{:?}", self.reproduce.teacher),
                &format!("\"\" (model.teacher) or {e}"),
            );
        }
        if !self.reproduce.teacher_augment.is_empty()
            && let Err(e) = crate::augment::Augment::parse(&self.reproduce.teacher_augment)
        {
            return bad(
                "reproduce.teacher_augment",
                format!("{:?}", self.reproduce.teacher_augment),
                &format!("\"\" (augment.teacher) or {e}"),
            );
        }
        if self.reproduce.teacher_epochs > 1_000_000 {
            return bad(
                "reproduce.teacher_epochs",
                self.reproduce.teacher_epochs,
                "0 (= train.teacher_epochs) to 1000000",
            );
        }
        for (key, text) in [
            ("augment.teacher", &self.augment.teacher),
            ("augment.student", &self.augment.student),
        ] {
            if let Err(e) = crate::augment::Augment::parse(text) {
                return bad(key, format!("{text:?}"), &e);
            }
        }
        if self.augment.views > 1024 {
            return bad(
                "augment.views",
                self.augment.views,
                "0 (a fresh view every epoch) to 1024",
            );
        }
        if self.train.teacher_epochs > 1_000_000 {
            return bad(
                "train.teacher_epochs",
                self.train.teacher_epochs,
                "0 (= train.epochs) to 1000000",
            );
        }
        if !matches!(self.model.teacher_input.as_str(), "image" | "flat") {
            return bad(
                "model.teacher_input",
                format!("{:?}", self.model.teacher_input),
                "\"image\" ([batch, channels, height, width]) or \"flat\" ([batch, C·H·W])",
            );
        }
        Ok(())
    }

    /// `reproduce.seeds` and `reproduce.objectives`.
    fn validate_reproduce(&self) -> Result<()> {
        let r = &self.reproduce;
        if r.seeds.is_empty() || r.seeds.len() > 1000 {
            return bad(
                "reproduce.seeds",
                format!("{:?}", r.seeds),
                "from 1 to 1000 seeds",
            );
        }
        let mut uniq = r.seeds.clone();
        uniq.sort_unstable();
        uniq.dedup();
        if uniq.len() != r.seeds.len() {
            return bad(
                "reproduce.seeds",
                format!("{:?}", r.seeds),
                "distinct seeds",
            );
        }
        for name in &r.objectives {
            check_objective(name, "config key `reproduce.objectives`")?;
        }
        if r.teachers == 0 || r.teachers > 100 {
            return bad("reproduce.teachers", r.teachers, "1 to 100 teachers");
        }
        if !(r.fraction > 0.0 && r.fraction <= 1.0) {
            return bad("reproduce.fraction", r.fraction, "a fraction in (0, 1]");
        }
        if r.omit_classes.is_empty() {
            return bad(
                "reproduce.omit_classes",
                "[]",
                "at least one class name or index",
            );
        }
        if r.teacher_file.to_str().is_none() {
            return bad(
                "reproduce.teacher_file",
                format!("{:?}", r.teacher_file),
                "a path in UTF-8",
            );
        }
        let hex64 =
            r.teacher_sha256.len() == 64 && r.teacher_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !r.teacher_sha256.is_empty() && !hex64 {
            return bad(
                "reproduce.teacher_sha256",
                format!("{:?}", r.teacher_sha256),
                "64 hex digits, or \"\" for none",
            );
        }
        let mut objectives = r.objectives.clone();
        objectives.sort();
        objectives.dedup();
        if objectives.len() != r.objectives.len() {
            return usage(format!(
                "config key `reproduce.objectives` (--objective) = {:?}: expected distinct objectives",
                r.objectives
            ));
        }
        Ok(())
    }

    /// `[runtime]`.
    fn validate_runtime(&self) -> Result<()> {
        crate::device::parse(&self.runtime.device)
            .map_err(|e| UsageError(format!("config key `runtime.device`: {e}")))?;
        if self.runtime.threads > 1024 {
            return bad(
                "runtime.threads",
                self.runtime.threads,
                "0 (physical cores) to 1024",
            );
        }
        if self.runtime.out_dir.as_os_str().is_empty() {
            return bad("runtime.out_dir", "\"\"", "a folder path");
        }
        // Every run writes its resolved config, paths included, as TOML (UTF-8): a path
        // that is not UTF-8 is refused here, before any folder is made, rather than
        // renamed lossily or refused after the run folder exists.
        if !self.distill.teachers.is_empty() && !self.distill.teacher.as_os_str().is_empty() {
            return bad(
                "distill.teachers",
                format!("{} files", self.distill.teachers.len()),
                "one of distill.teacher (one teacher) and distill.teachers (an ensemble), \
                 not both; move distill.teacher into the list",
            );
        }
        let paths = [
            ("data.dir", &self.data.dir),
            ("distill.teacher", &self.distill.teacher),
            ("runtime.out_dir", &self.runtime.out_dir),
        ];
        let teachers = self
            .distill
            .teachers
            .iter()
            .map(|p| ("distill.teachers", p));
        for (key, path) in paths.into_iter().chain(teachers) {
            if path.to_str().is_none() {
                return bad(
                    key,
                    format!("{path:?}"),
                    "a path in UTF-8 (each run records it in its config.toml); rename it, or \
                     reach it through a link whose name is UTF-8",
                );
            }
        }
        Ok(())
    }
}

/// A [`UsageError`] for `key`: the flag that sets it (if any, so a bad flag value is
/// recognisable), the value found and what is allowed.
fn bad<T>(key: &str, found: impl fmt::Display, expected: &str) -> Result<T> {
    // The flag that sets the key, if any, so a bad flag value is recognisable.
    // An objective's key: the flag of its registry spec (a switch's flag turns it
    // off, so it is not named).
    let objective_flag = key
        .strip_prefix("distill.")
        .and_then(|k| k.split_once('.'))
        .and_then(|(name, k)| {
            crate::objective::spec(name)?
                .params
                .iter()
                .find(|p| p.key == k)
        })
        .filter(|p| p.range != crate::objective::Range::SwitchOff)
        .map(|p| format!(" ({})", p.flag));
    let flag = match key {
        "data.batch_size" => " (--batch-size)",
        "train.epochs" => " (--epochs)",
        "lr_schedule.initial_lr" => " (--lr)",
        "reproduce.seeds" => " (--seeds)",
        "runtime.threads" => " (--threads)",
        "runtime.out_dir" => " (--out-dir)",
        "data.dir" => " (--data-dir)",
        "distill.teacher" | "distill.teachers" => " (--teacher)",
        "data.train_fraction" => " (--train-fraction)",
        "data.omit_classes" => " (--omit-class)",
        _ => "",
    };
    let flag = objective_flag.as_deref().unwrap_or(flag);
    usage(format!(
        "config key `{key}`{flag} = {found}: expected {expected}"
    ))
}
