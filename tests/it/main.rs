//! The integration tests, one binary (as ripgrep's `tests/tests.rs`): each module runs
//! the real `kdtrain` binary on small synthetic data or the real Fashion-MNIST, through
//! the helpers in [`common`]. One binary links libtorch once instead of twelve times.
//!
//! `tests/split.rs` stays a binary of its own: the validation split is drawn from
//! libtorch's global generator, which in-process tests beside it would also draw from.

mod common;

mod cli;
mod cnn_augment;
mod docs;
mod ensemble;
mod experiments;
mod faults;
mod objectives;
mod own_data;
mod predict_export;
mod shipped_teacher;
mod sweep;
mod tensorboard;
mod torchscript_teacher;
mod transfer;
mod trust;
mod trust_loop;
