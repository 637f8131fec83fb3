//! Synthetic data for the split test binaries (`tests/split.rs`,
//! `tests/split_generator.rs`): Fashion-MNIST's shape, pixels `i % 251`, labels `i % 10`.

use std::path::PathBuf;

use kdtrain::data::{DataSpec, RawData, Source, Split};

/// `n` training images and 50 test images.
pub fn raw(n: usize) -> RawData {
    let split = |n: usize| Split {
        pixels: (0..n * 784).map(|i| (i % 251) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as i64).collect(),
    };
    RawData {
        path: PathBuf::from("."),
        source: Source::Idx,
        spec: DataSpec::fashion_mnist(),
        train: split(n),
        test: split(50),
        val: None,
        note: None,
    }
}
