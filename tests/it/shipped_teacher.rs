//! The teacher shipped in `teachers/` is what its recorded command makes (real data):
//! the file is the one `reproduce` checks for, its metadata holds the recipe of
//! `teachers/fashion-mnist-cnn.toml`, and that command, shortened to one epoch, gives the
//! weights recorded in `teachers/fashion-mnist-cnn.epoch1.sha256` (the full 60 epochs
//! take about 27 minutes: `scripts/shipped_teacher.sh` runs them).

use std::path::{Path, PathBuf};

use kdtrain::checkpoint::{Checkpoint, file_sha256, weights_sha256};
use kdtrain::config::{Config, SHIPPED_TEACHER, SHIPPED_TEACHER_SHA256};

use crate::common::*;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn the_shipped_teacher_is_its_recorded_recipe() {
    let file = repo(SHIPPED_TEACHER);
    assert_eq!(file_sha256(&file).unwrap(), SHIPPED_TEACHER_SHA256);
    assert_eq!(
        Config::default().reproduce.teacher_sha256,
        SHIPPED_TEACHER_SHA256
    );
    let recorded = Config::load(&repo("teachers/fashion-mnist-cnn.toml"), true).unwrap();
    let ckpt = Checkpoint::read(&file).unwrap();
    let made = Config::parse(&ckpt.metadata["kdtrain.config"]).unwrap();
    assert_eq!(made.seed, recorded.seed);
    assert_eq!(made.model.teacher, recorded.model.teacher);
    assert_eq!(made.augment.teacher, recorded.augment.teacher);
    assert_eq!(made.train.teacher_epochs, recorded.train.teacher_epochs);
    assert_eq!(made.runtime.threads, recorded.runtime.threads);
    assert_eq!(made.data.split_seed, recorded.data.split_seed);
    assert_eq!(ckpt.metadata["kdtrain.role"], "teacher");
    // The reproduce recipe that --train-teacher uses is the shipped teacher's.
    let r = Config::default().reproduce;
    assert_eq!(r.teacher, recorded.model.teacher);
    assert_eq!(r.teacher_augment, recorded.augment.teacher);
    assert_eq!(r.teacher_epochs, recorded.train.teacher_epochs);
}

/// The recorded command, shortened to one epoch, on the real data.
#[test]
fn the_recorded_command_shortened_gives_the_recorded_weights() {
    let s = Sandbox::new();
    let data = kdtrain::data::locate(None).expect("Fashion-MNIST: run scripts/setup.sh");
    let config = repo("teachers/fashion-mnist-cnn.toml");
    let o = s.raw(&[
        "train",
        "teacher",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--out-dir",
        s.runs().to_str().unwrap(),
        "--run-name",
        "short",
        "-q",
    ]);
    assert_ok(&o);
    let want = std::fs::read_to_string(repo("teachers/fashion-mnist-cnn.epoch1.sha256")).unwrap();
    let got = weights_sha256(&s.runs().join("short/model.safetensors")).unwrap();
    assert_eq!(got, want.trim(), "the shortened recipe's weights changed");
}
