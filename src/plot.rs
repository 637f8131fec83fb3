//! TEMPORARY placeholder until the plotters module lands.
use std::path::Path;
pub struct Curves<'a> { pub title: &'a str, pub train_loss: &'a [f64], pub val_loss: &'a [f64], pub train_acc: &'a [f64], pub val_acc: &'a [f64] }
pub fn curves_png(_path: &Path, _c: &Curves) -> anyhow::Result<()> { Ok(()) }
pub fn comparison_png(_path: &Path, _title: &str, _runs: &[(&str, &[f64])]) -> anyhow::Result<()> { Ok(()) }
pub fn confusion_png(_path: &Path, _title: &str, _class_names: &[&str], _counts: &[Vec<u64>]) -> anyhow::Result<()> { Ok(()) }
