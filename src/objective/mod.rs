//! Training objectives: what the loop minimises, as a value plus its named terms.
//!
//! Every objective is one file with its formula, its source and a test whose expected
//! values come from the authors' code run in PyTorch (`scripts/objective_reference.py`).
//! The loop knows only the [`Objective`] trait: it hands over the student's logits, the
//! labels and, for distillation, the teacher's logits (from the cache or a `no_grad`
//! forward pass), and records whatever terms come back by name.
//!
//! This module owns the formulas and the registry ([`with_objectives`], [`SPECS`],
//! [`build`]); the hyper-parameters come from the objective's own table,
//! `[distill.<name>]`, already validated against its [`Spec`].

use tch::{Kind, Tensor};

/// The registry: every distillation objective, as `name: module::Table` (its config
/// table `[distill.<name>]` and the module that defines it, its formula and its
/// [`Spec`]). Adding an objective is its file and one line here; the config section,
/// the flags' checks, the results tables and the sweeps all read this list.
///
/// It calls `$callback! { kd: kd::KdConfig, ... }`, so that each reader (the objectives'
/// module declarations below, the config's `[distill]` section, [`SPECS`]) is generated
/// from the one list.
#[macro_export]
macro_rules! with_objectives {
    ($callback:ident) => {
        $callback! {
            kd: kd::KdConfig,
            dkd: dkd::DkdConfig,
            lskd: lskd::LskdConfig,
            dist: dist::DistConfig,
            mse: mse::MseConfig,
        }
    };
}

/// What values a hyper-parameter takes; [`Param::check`] says why one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// A temperature: a number from 0.001 to 1000. Below 1e-3 the logits / T overflow
    /// f32; above 1e3 the soft targets are uniform to f32 precision and T^2 overflows the
    /// loss. The paper uses T from 1 to 20.
    Temperature,
    /// A mixing weight in [0, 1] (kd's and mse's alpha).
    Unit,
    /// A non-negative weight up to 10000.
    Weight,
    /// A number of epochs from 0 to 1,000,000.
    Epochs,
    /// A boolean key that its flag turns off (`--no-t-squared`).
    SwitchOff,
}

/// What a hyper-parameter flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// A number (f64).
    Number,
    /// A whole number of epochs (usize).
    Count,
    /// No value: giving the flag turns its key off.
    Switch,
}

/// A hyper-parameter flag, shared by every objective whose [`Param`]s name it; the
/// command line, the config merge and the sweeps read these.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// With its dashes: `--t`.
    pub name: &'static str,
    /// A visible alias (`--temperature` for `--t`).
    pub alias: Option<&'static str>,
    pub value_name: &'static str,
    pub kind: FlagKind,
    /// The `[sweep]` key that lists its values (`t`, `ce_weight`); `""` for a switch,
    /// which is not swept.
    pub sweep_key: &'static str,
}

impl Flag {
    /// The flag's name without its dashes (clap's id for it).
    pub fn id(&self) -> &'static str {
        self.name.trim_start_matches('-')
    }

    /// `--help`'s text: what the flag sets in each objective that has it, with that
    /// objective's default, e.g. `kd: weight of the hard-label cross-entropy ... [0.5]`.
    pub fn help(&self) -> String {
        let parts: Vec<String> = SPECS
            .iter()
            .filter_map(|s| {
                let p = s.param_of_flag(self.name)?;
                let default = (s.defaults)()
                    .get(p.key)
                    .map(|v| match v {
                        toml::Value::Float(f) => f.to_string(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default();
                Some(match p.range {
                    Range::SwitchOff => format!("{}: {}", s.name, p.help),
                    _ => format!("{}: {} [{default}]", s.name, p.help),
                })
            })
            .collect();
        parts.join("; ")
    }
}

/// Every objective hyper-parameter flag, in the order `--help` lists them and a sweep
/// takes its axes. An objective's [`Param`]s name one of these; an objective with a new
/// kind of parameter adds its flag here.
pub const FLAGS: &[Flag] = &[
    Flag::new("--t", Some("temperature"), "T", FlagKind::Number, "t"),
    Flag::new("--alpha", None, "ALPHA", FlagKind::Number, "alpha"),
    Flag::new("--beta", None, "BETA", FlagKind::Number, "beta"),
    Flag::new("--gamma", None, "GAMMA", FlagKind::Number, "gamma"),
    Flag::new(
        "--ce-weight",
        None,
        "CE_WEIGHT",
        FlagKind::Number,
        "ce_weight",
    ),
    Flag::new(
        "--kd-weight",
        None,
        "KD_WEIGHT",
        FlagKind::Number,
        "kd_weight",
    ),
    Flag::new("--warmup", None, "EPOCHS", FlagKind::Count, "warmup"),
    Flag::new("--no-t-squared", None, "", FlagKind::Switch, ""),
];

impl Flag {
    const fn new(
        name: &'static str,
        alias: Option<&'static str>,
        value_name: &'static str,
        kind: FlagKind,
        sweep_key: &'static str,
    ) -> Flag {
        Flag {
            name,
            alias,
            value_name,
            kind,
            sweep_key,
        }
    }
}

/// The flag called `name` (`--t`).
pub fn flag(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// One hyper-parameter of an objective: its key in `[distill.<name>]`, the flag that
/// sets it (one of [`FLAGS`]), its range, and what it is in a few words for `--help`.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub key: &'static str,
    /// The command-line flag, with its dashes (`--t`).
    pub flag: &'static str,
    pub range: Range,
    pub help: &'static str,
}

impl Param {
    pub const fn new(
        key: &'static str,
        flag: &'static str,
        range: Range,
        help: &'static str,
    ) -> Param {
        Param {
            key,
            flag,
            range,
            help,
        }
    }

    /// Checks `value` (this key's value in the table) against the range: `Err((found,
    /// expected))` in words when it is outside.
    pub fn check(&self, value: Option<&toml::Value>) -> Result<(), (String, &'static str)> {
        let num = value.and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)));
        let found = || match value {
            Some(toml::Value::Integer(i)) => i.to_string(),
            _ => num.map_or_else(|| format!("{value:?}"), |x| x.to_string()),
        };
        let ok = match (self.range, num) {
            (Range::SwitchOff, _) => return Ok(()),
            (Range::Temperature, Some(t)) => t.is_finite() && (1e-3..=1e3).contains(&t),
            (Range::Unit, Some(a)) => (0.0..=1.0).contains(&a),
            (Range::Weight, Some(w)) => w.is_finite() && (0.0..=1e4).contains(&w),
            (Range::Epochs, Some(n)) => (0.0..=1e6).contains(&n),
            (_, None) => false,
        };
        let expected = match self.range {
            Range::Temperature => "a number from 0.001 to 1000 (> 0)",
            Range::Unit => "a number in [0, 1]",
            Range::Weight => "a weight from 0 to 10000",
            Range::Epochs => "an integer from 0 to 1000000",
            Range::SwitchOff => "true or false",
        };
        if ok { Ok(()) } else { Err((found(), expected)) }
    }
}

/// What the registry knows of an objective besides its formula: its name, its
/// hyper-parameters (key, flag, range) and how to build it from its config table.
pub struct Spec {
    /// The registry name, also its table `[distill.<name>]` and `--objective` value.
    pub name: &'static str,
    pub params: &'static [Param],
    /// The key reported as the temperature T in results tables and sweeps, if any.
    pub temperature: Option<&'static str>,
    /// The key reported as alpha in results tables and sweeps, if any.
    pub alpha: Option<&'static str>,
    /// The objective with the hyper-parameters of its table (validated first).
    pub build: fn(&toml::Value) -> Result<Box<dyn Objective>, toml::de::Error>,
    /// Its table's defaults (for `--help`).
    pub defaults: fn() -> toml::Value,
}

impl Spec {
    /// The flags this objective takes, in the order of its parameters.
    pub fn flags(&self) -> Vec<&'static str> {
        self.params.iter().map(|p| p.flag).collect()
    }

    /// The parameter that `flag` sets, if this objective has it.
    pub fn param_of_flag(&self, flag: &str) -> Option<&'static Param> {
        self.params.iter().find(|p| p.flag == flag)
    }

    /// The temperature and alpha in force in `table` (for tables and the heatmap).
    pub fn t_alpha(&self, table: &toml::Value) -> (Option<f64>, Option<f64>) {
        let get = |key: Option<&str>| {
            let v = table.get(key?)?;
            v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
        };
        (get(self.temperature), get(self.alpha))
    }
}

/// Declares each objective's module (`pub mod kd;`, ...), from the registry.
macro_rules! modules {
    ($($name:ident: $module:ident::$table:ident),* $(,)?) => {
        $(pub mod $module;)*
    };
}
with_objectives!(modules);

macro_rules! specs {
    ($($name:ident: $module:ident::$table:ident),* $(,)?) => {
        /// Every objective's [`Spec`], in the registry's order.
        pub const SPECS: &[&Spec] = &[$(&$module::SPEC),*];
        /// The distillation objectives, by name, in the order the documentation lists them.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}
with_objectives!(specs);

/// A config table as TOML (an empty table if it cannot be written as one, which a
/// struct of numbers and booleans always can).
pub fn table_of<T: serde::Serialize>(table: &T) -> toml::Value {
    toml::Value::try_from(table).unwrap_or_else(|_| toml::Value::Table(Default::default()))
}

/// The [`Spec`] of objective `name`; `None` for a name not in the registry.
pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().copied().find(|s| s.name == name)
}

/// One evaluation of an objective: the value minimised and its named parts.
pub struct Terms {
    /// The value minimised: a scalar f32 tensor (with a graph when the inputs have one).
    pub total: Tensor,
    /// The objective's own terms, each unscaled (no weights, no T^2), scalar f32, in
    /// the order of [`Objective::term_names`]. Distillation objectives start with `ce`,
    /// the cross-entropy on the hard labels.
    pub parts: Vec<(&'static str, Tensor)>,
}

/// A training objective.
pub trait Objective: Send + Sync {
    /// The registry name (`ce`, `kd`, `dkd`, `lskd`, `dist`, `mse`).
    fn name(&self) -> &'static str;

    /// The names of [`Terms::parts`], fixed for the objective (they name the columns of
    /// `metrics.csv`, the TensorBoard tags and the `evaluate --json` keys).
    fn term_names(&self) -> &'static [&'static str];

    /// Whether [`Objective::loss`] needs the teacher's logits.
    fn needs_teacher(&self) -> bool {
        true
    }

    /// The objective and its hyper-parameters in one line, e.g. `kd (T=2, alpha=0.9, T^2)`.
    fn describe(&self) -> String;

    /// The loss of one batch.
    ///
    /// # Shapes
    /// `student`: logits `[batch, classes] f32`; `labels`: `[batch] i64 in [0, classes)`;
    /// `teacher`: logits `[batch, classes] f32`, detached (`None` only when
    /// [`Objective::needs_teacher`] is false); `epoch`: the 1-based epoch (for warm-ups).
    fn loss(
        &self,
        student: &Tensor,
        labels: &Tensor,
        teacher: Option<&Tensor>,
        epoch: usize,
    ) -> Terms;
}

/// Objective `name` with the hyper-parameters of its config `table`.
///
/// # Errors
/// A message naming the objective when the name is not in the registry or the table
/// does not fit its config (validation checks both first).
pub fn build(name: &str, table: &toml::Value) -> Result<Box<dyn Objective>, String> {
    let spec = spec(name).ok_or_else(|| {
        format!(
            "no objective {name:?}; expected one of {}",
            NAMES.join(", ")
        )
    })?;
    (spec.build)(table).map_err(|e| format!("[distill.{name}]: {e}"))
}

/// Cross-entropy on the hard labels alone: the teacher, and the student trained alone.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn name(&self) -> &'static str {
        "ce"
    }
    fn term_names(&self) -> &'static [&'static str] {
        &[]
    }
    fn needs_teacher(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        "cross-entropy on the labels".into()
    }
    fn loss(&self, student: &Tensor, labels: &Tensor, _: Option<&Tensor>, _: usize) -> Terms {
        Terms {
            total: cross_entropy(student, labels),
            parts: Vec::new(),
        }
    }
}

/// Mean cross-entropy of `logits` against `labels`, from log-softmax.
///
/// # Shapes
/// `logits: [batch, classes] f32`, `labels: [batch] i64 in [0, classes)`; returns a
/// scalar f32 (mean over the batch, nats).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.log_softmax(-1, Kind::Float).nll_loss(labels)
}

/// KL(softmax(t/T) || softmax(z/T)), summed over classes and averaged over the batch
/// (PyTorch's `F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")`),
/// computed from log-softmax, so a teacher probability that underflows to 0 contributes
/// exactly 0, never `0 * log 0 = NaN`.
///
/// # Shapes
/// `teacher` t, `student` z: `[batch, classes] f32`; returns a scalar f32 (nats).
pub fn kl_divergence(teacher: &Tensor, student: &Tensor, temperature: f64) -> Tensor {
    let log_p = (teacher / temperature).log_softmax(-1, Kind::Float); // [batch, classes]
    kl_from_log_probs(
        &log_p,
        &(student / temperature).log_softmax(-1, Kind::Float),
    )
}

/// sum_c p_c (log p_c - log q_c), averaged over the batch, from log-probabilities.
///
/// # Shapes
/// `log_p` (target, detached), `log_q`: `[batch, k] f32`; returns a scalar f32.
pub fn kl_from_log_probs(log_p: &Tensor, log_q: &Tensor) -> Tensor {
    let batch = log_p.size()[0].max(1) as f64;
    (log_p.exp() * (log_p - log_q)).sum(Kind::Float) / batch
}

#[cfg(test)]
pub(crate) mod testing {
    //! The tensors of `scripts/objective_reference.py` and the checks every objective runs.
    use super::*;

    /// Student logits z `[3, 4]`.
    pub fn z() -> Tensor {
        Tensor::from_slice(&[
            1.0f32, 2.0, 0.5, -1.0, 0.3, -1.2, 2.2, 0.0, -0.5, 0.4, 0.1, 1.5,
        ])
        .view([3, 4])
    }

    /// Teacher logits t `[3, 4]`.
    pub fn t() -> Tensor {
        Tensor::from_slice(&[
            3.0f32, -1.0, 0.5, 2.0, 0.0, 1.0, 4.0, -2.0, 1.0, 1.0, -1.0, 2.5,
        ])
        .view([3, 4])
    }

    /// Labels y `[3]`.
    pub fn y() -> Tensor {
        Tensor::from_slice(&[0i64, 2, 3])
    }

    pub fn scalar(x: &Tensor) -> f64 {
        x.double_value(&[])
    }

    /// Checks the total and each named term against PyTorch's values (`expected`: total
    /// then the parts in order) and the gradient of the total for row 0 of z.
    pub fn check(o: &dyn Objective, epoch: usize, expected: &[f64], grad_row0: [f64; 4]) {
        let z = z().set_requires_grad(true);
        let terms = o.loss(&z, &y(), Some(&t()), epoch);
        let names: Vec<&str> = terms.parts.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, o.term_names(), "{}", o.name());
        let got: Vec<f64> = std::iter::once(scalar(&terms.total))
            .chain(terms.parts.iter().map(|(_, v)| scalar(v)))
            .collect();
        assert_eq!(got.len(), expected.len(), "{}: {got:?}", o.name());
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (g - e).abs() < 2e-5 * e.abs().max(1.0),
                "{} value {i}: got {g}, PyTorch {e} (all: {got:?})",
                o.name()
            );
        }
        terms.total.backward();
        let g: Vec<f32> = Vec::try_from(z.grad().get(0)).unwrap();
        for (i, (a, b)) in g.iter().zip(grad_row0).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 2e-5 * b.abs().max(1.0),
                "{} d/dz[0][{i}]: got {a}, PyTorch {b} (all: {g:?})",
                o.name()
            );
        }
    }

    /// A large logit gap (teacher and student saturated in opposite directions): the
    /// value and every gradient stay finite.
    pub fn check_large_gap(o: &dyn Objective) {
        let z = Tensor::from_slice(&[-400.0f32, 600.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
            .view([2, 4])
            .set_requires_grad(true);
        let t = Tensor::from_slice(&[500.0f32, -500.0, 0.0, 0.0, 1000.0, 0.0, -1000.0, 3.0])
            .view([2, 4]);
        let y = Tensor::from_slice(&[0i64, 2]);
        let terms = o.loss(&z, &y, Some(&t), 100);
        assert!(scalar(&terms.total).is_finite(), "{}", o.name());
        for (n, v) in &terms.parts {
            assert!(scalar(v).is_finite(), "{} term {n}", o.name());
        }
        terms.total.backward();
        assert!(
            bool::try_from(z.grad().isfinite().all()).unwrap(),
            "{}: non-finite gradient {:?}",
            o.name(),
            z.grad()
        );
    }

    /// The gradient of the objective equals autograd's gradient of `direct`, a plain
    /// transcription of the formula, on random logits.
    pub fn check_against_direct(
        o: &dyn Objective,
        epoch: usize,
        direct: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    ) {
        tch::manual_seed(3);
        let t = Tensor::randn([6, 10], (Kind::Float, tch::Device::Cpu)) * 3.0;
        let y = Tensor::from_slice(&[0i64, 3, 9, 2, 2, 7]);
        let z1 =
            (Tensor::randn([6, 10], (Kind::Float, tch::Device::Cpu)) * 2.0).set_requires_grad(true);
        let z2 = z1.detach().copy().set_requires_grad(true);
        let a = o.loss(&z1, &y, Some(&t), epoch).total;
        let b = direct(&z2, &y, &t);
        assert!(
            (scalar(&a) - scalar(&b)).abs() < 1e-4 * scalar(&b).abs().max(1.0),
            "{}: {} vs direct {}",
            o.name(),
            scalar(&a),
            scalar(&b)
        );
        a.backward();
        b.backward();
        let diff = (z1.grad() - z2.grad()).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{}: gradients differ by {diff}", o.name());
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn kl_hand_checked_value() {
        // t = [2 ln 3, 0] at T=2 -> p = [3/4, 1/4]; z = [0, 0] -> q = [1/2, 1/2].
        // KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812
        // torch: F.kl_div(F.log_softmax(z/2,1), F.log_softmax(t/2,1), log_target=True, reduction="batchmean")
        let ln3 = 3f32.ln();
        let teacher = Tensor::from_slice(&[2.0 * ln3, 0.0]).view([1, 2]);
        let student = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
        assert!((scalar(&kl_divergence(&teacher, &student, 2.0)) - 0.130812).abs() < 1e-6);
        // batchmean: two identical rows give the same value, not twice it.
        let teacher2 = teacher.repeat([2, 1]);
        let student2 = student.repeat([2, 1]);
        assert!((scalar(&kl_divergence(&teacher2, &student2, 2.0)) - 0.130812).abs() < 1e-6);
    }

    #[test]
    fn kl_is_finite_for_a_zero_teacher_probability() {
        // p = [1, e^-200] ~ [1, 0]; q = [1/2, 1/2]; KL = ln 2, with no 0 * log 0 = NaN.
        let t = Tensor::from_slice(&[0.0f32, -200.0]).view([1, 2]);
        let z = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
        let kl = scalar(&kl_divergence(&t, &z, 1.0));
        assert!((kl - std::f64::consts::LN_2).abs() < 1e-6, "{kl}");
    }

    #[test]
    fn kl_is_zero_when_student_matches_teacher() {
        let x = t();
        assert!(scalar(&kl_divergence(&x, &x, 4.0)).abs() < 1e-7);
    }

    #[test]
    fn registry_builds_every_name() {
        let cfg = crate::config::DistillConfig::default();
        for &name in NAMES {
            let o = cfg.build(name).unwrap();
            assert_eq!(o.name(), name);
            assert_eq!(o.term_names()[0], "ce", "{name}");
            assert!(o.needs_teacher());
        }
        assert!(!CrossEntropy.needs_teacher());
    }
}
