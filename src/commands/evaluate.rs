//! `evaluate CHECKPOINT`: the full report of a checkpoint on the training images and the
//! test set; with `--teacher`, agreement with it and an objective's terms against it.

use std::path::Path;

use anyhow::Result;

use super::data_dir;
use crate::checkpoint::Checkpoint;
use crate::cli::EvaluateArgs;
use crate::config::settings::Settings;
use crate::data;
use crate::error::UsageError;
use crate::eval::{self, Report};
use crate::model::Network;

/// Evaluates `args.checkpoint` and prints the report (or JSON with `--json`).
pub fn run(s: &Settings, args: &EvaluateArgs) -> Result<()> {
    let path = args.checkpoint.as_path();
    let mut ckpt = Checkpoint::read(path)?;
    // --bias replaces the stored shift of the classes it names, before the network is
    // built (which folds the shifts into its output bias).
    let stored = ckpt.logit_bias()?;
    let given = parse_bias(&args.bias, &ckpt.data_spec()?)?;
    let mut bias = stored.clone();
    bias.0.extend(given.0.iter().map(|(c, v)| (*c, *v)));
    ckpt.metadata
        .insert(crate::bias::META_LOGIT_BIAS.to_string(), bias.to_json());
    let model = ckpt.network(s.device)?;
    let arch = model.arch().clone();
    let spec = model.data_spec().clone();
    let normalize = ckpt.normalize()?;
    let mut teachers: Vec<(std::path::PathBuf, Box<dyn Network>, String)> = Vec::new();
    for p in &args.teacher {
        let (mut n, _, tn) = super::open_teacher(p, s, "--teacher", &spec).map_err(|e| {
            let msg = format!("{e:#}");
            match msg.starts_with("--teacher") {
                true => UsageError(msg),
                false => UsageError(format!("--teacher: {msg}")),
            }
        })?;
        n.freeze();
        if let Some(tn) = &tn {
            crate::teacher::check_same_normalize(
                &format!("--teacher {}", p.display()),
                tn,
                &normalize,
            )?;
        }
        let sha = crate::checkpoint::file_sha256(p)?;
        if let Some((same, _, _)) = teachers.iter().find(|(_, _, s)| *s == sha) {
            return Err(UsageError(format!(
                "--teacher {} and --teacher {} are the same file (SHA-256 {}): pass each \
                 teacher once",
                same.display(),
                p.display(),
                &sha[..16]
            ))
            .into());
        }
        teachers.push((p.clone(), n, sha));
    }
    let objective = s.config.distill.build_chosen()?;
    let dir = data_dir(s)?;
    let (raw, _) = super::load_raw(s, &dir)?;
    if let Some(e) = super::spec_mismatch(&path.display().to_string(), &spec, &raw.spec) {
        return Err(UsageError(e).into());
    }
    // The checkpoint's normalisation, as in training (the teacher's is the same).
    let examples =
        |split: &data::Split| data::Examples::from_split(split, s.device).normalized(&normalize);
    let train = examples(&raw.train);
    let test = examples(&raw.test);
    let combine = s.config.distill.ensemble;
    let t_combine = s.config.distill.ensemble_temperature(objective.name());
    // Each member's accuracy on each set, in order ("train", "test").
    let member_acc = std::cell::RefCell::new(vec![Vec::new(); teachers.len()]);
    let report = |set: &data::Examples| -> Result<Report> {
        let z = eval::logits(model.as_ref(), &set.images);
        let mut each = Vec::new();
        for (i, (_, t, _)) in teachers.iter().enumerate() {
            let l = eval::try_logits(t.as_ref() as &dyn Network, &set.images)
                .map_err(crate::teacher::teacher_failed)?;
            member_acc.borrow_mut()[i].push(eval::metrics(&l, &set.labels, None).acc);
            each.push(l);
        }
        let t = (!each.is_empty()).then(|| crate::ensemble::combine(&each, combine, t_combine));
        let mut r = eval::report(&z, &set.labels, &spec, t.as_ref())?;
        if let Some(t) = &t {
            // Warm-ups complete: the terms are reported unscaled anyway.
            let terms = objective.loss(&z, &set.labels, Some(t), usize::MAX);
            r.terms = terms
                .parts
                .iter()
                .map(|(n, v)| (n.to_string(), v.double_value(&[])))
                .collect();
        }
        Ok(r)
    };
    let train_r = report(&train)?;
    let test_r = report(&test)?;
    let train_set = format!(
        "all {} training images (the validation split included)",
        train_r.examples
    );
    let confusion_png = path.with_file_name("confusion.png");
    let title = format!(
        "{} on the test set: accuracy {:.4}",
        path.display(),
        test_r.acc
    );
    let names: Vec<&str> = spec.class_names.iter().map(String::as_str).collect();
    // The chart is a by-product: when it cannot be written (a read-only folder, say) the
    // report is still printed, with a warning.
    let chart = crate::plot::confusion_png(&confusion_png, &title, &names, &test_r.confusion);
    if let Err(e) = &chart {
        crate::errln!("warning: {e:#}; the report is complete without it");
    }
    let confusion_png = chart.is_ok().then_some(confusion_png);
    let has_teacher = !teachers.is_empty();
    let member_acc = member_acc.into_inner();
    // With several teachers, each member's accuracy (train, test) beside the
    // ensemble's (the report's teacher figures).
    let members: Vec<serde_json::Value> = teachers
        .iter()
        .zip(&member_acc)
        .map(|((p, n, sha), acc)| {
            serde_json::json!({
                "teacher": p.display().to_string(),
                "teacher_arch": n.arch().spec(),
                "teacher_sha256": sha,
                "train_acc": acc.first(),
                "test_acc": acc.get(1),
            })
        })
        .collect();
    let ensemble = (teachers.len() > 1).then(|| combine.describe(t_combine));
    if args.json {
        let v = serde_json::json!({
            "checkpoint": path.display().to_string(),
            "arch": arch.spec(),
            "params": arch.num_params(&spec),
            "objective": has_teacher.then(|| objective.describe()),
            "teachers": members,
            "ensemble": ensemble,
            "train_set": train_set,
            "train": train_r,
            "test": test_r,
            "confusion_png": confusion_png.as_ref().map(|p| p.display().to_string()),
            "logit_bias": bias.0.iter().map(|(c, v)| serde_json::json!({
                "class": c,
                "name": spec.class_name(*c),
                "shift": v,
                "from": if given.0.contains_key(c) { "--bias" } else { "checkpoint" },
            })).collect::<Vec<_>>(),
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if !bias.is_empty() {
        let from = |c: &i64| match given.0.contains_key(c) {
            true => "--bias",
            false => "stored",
        };
        let parts: Vec<String> = bias
            .0
            .iter()
            .map(|(c, v)| format!("{} {v:+.4} ({})", spec.class_name(*c), from(c)))
            .collect();
        crate::outln!("logit bias added: {}", parts.join(", "));
    }
    print_report(
        path,
        &arch,
        &spec,
        &train_set,
        &train_r,
        &test_r,
        has_teacher.then(|| objective.describe()),
    );
    if let Some(e) = &ensemble {
        crate::outln!(
            "\nteacher ensemble of {} ({e}); its accuracy is the teacher acc above",
            teachers.len()
        );
        for ((p, _, _), acc) in teachers.iter().zip(&member_acc) {
            crate::outln!(
                "  {}: train acc {:.4}  test acc {:.4}",
                p.display(),
                acc.first().copied().unwrap_or(f64::NAN),
                acc.get(1).copied().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(p) = confusion_png {
        crate::outln!("\nwrote {}", p.display());
    }
    Ok(())
}

fn print_report(
    path: &Path,
    arch: &crate::model::Arch,
    spec: &data::DataSpec,
    train_set: &str,
    train_r: &Report,
    test_r: &Report,
    objective: Option<String>,
) {
    crate::outln!(
        "{} ({}, {} parameters)",
        path.display(),
        arch.describe(spec),
        arch.num_params(spec)
    );
    crate::outln!("train: {train_set}");
    for (name, r) in [("train", train_r), ("test", test_r)] {
        crate::outln!(
            "{name:>5}: loss {:.4}  acc {:.4}  ECE {:.4}  ({} examples)",
            r.loss,
            r.acc,
            r.ece,
            r.examples
        );
        if let (Some(a), Some(k), Some(ta)) = (r.teacher_agreement, r.teacher_kl, r.teacher_acc) {
            crate::outln!(
                "       teacher agreement {a:.4}  mean KL(teacher || model) at T=1 {k:.4}  teacher acc {ta:.4}"
            );
        }
        if !r.terms.is_empty() {
            let terms: Vec<String> = r.terms.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
            crate::outln!(
                "       {}: {}",
                objective.as_deref().unwrap_or(""),
                terms.join("  ")
            );
        }
    }
    crate::outln!("\nper-class test accuracy:");
    for (name, acc, count) in &test_r.per_class {
        crate::outln!("  {name:<12} {acc:.4}  ({count})");
    }
    crate::outln!("\ntest confusion matrix (rows: true class, columns: predicted):");
    crate::out!("{:>14}", "");
    for i in 0..spec.class_names.len() {
        crate::out!("{i:>6}");
    }
    crate::outln!();
    for (i, row) in test_r.confusion.iter().enumerate() {
        // The longest class name of Fashion-MNIST, "T-shirt/top", has 11 characters.
        crate::out!("{:>11} {i:>2}", spec.class_name(i as i64));
        for c in row {
            crate::out!("{c:>6}");
        }
        crate::outln!();
    }
}

/// `--bias CLASS=VALUE` flags: CLASS a class name of `spec` (else an index), VALUE a
/// number within ±[`crate::bias::LogitBias::MAX_SHIFT`]; each class at most once.
///
/// # Errors
/// A [`UsageError`] naming `--bias`: no `=`, an unknown class (listing the names), a
/// value that is not a number in range, a class named twice.
pub fn parse_bias(flags: &[String], spec: &data::DataSpec) -> Result<crate::bias::LogitBias> {
    let mut out = crate::bias::LogitBias::default();
    for f in flags {
        let Some((class, value)) = f.rsplit_once('=') else {
            return Err(UsageError(format!(
                "--bias {f:?}: expected CLASS=VALUE, a class name or index and the shift added \
                 to its logit (--bias Trouser=3.5)"
            ))
            .into());
        };
        let Some(label) = spec.label_of(class) else {
            return Err(UsageError(format!(
                "--bias {f:?}: {class:?} is not a class of the checkpoint; expected one of {} \
                 or an index from 0 to {}",
                spec.quoted_names(),
                spec.classes() - 1
            ))
            .into());
        };
        let max = crate::bias::LogitBias::MAX_SHIFT;
        match value.trim().parse::<f64>() {
            Ok(v) if v.abs() <= max => {
                if out.0.insert(label, v).is_some() {
                    return Err(UsageError(format!(
                        "--bias {f:?}: class {class:?} is given a shift twice; give each \
                         class one --bias"
                    ))
                    .into());
                }
            }
            _ => {
                return Err(UsageError(format!(
                    "--bias {f:?}: {value:?} is not a number from -{max} to {max}; expected \
                     CLASS=VALUE, the shift added to the class's logit (--bias Trouser=3.5)"
                ))
                .into());
            }
        }
    }
    Ok(out)
}
