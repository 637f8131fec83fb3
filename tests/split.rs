//! The validation split, in a test binary of its own: the split is drawn from libtorch's
//! global CPU generator, which every test that builds a model or draws a tensor also
//! uses, so beside them (the unit tests run in parallel threads of one process) another
//! thread's draw could fall between the split's seeding and its permutation.

use std::path::PathBuf;

use kdtrain::data::{DataSpec, RawData, Split, SplitInfo, prepare};
use tch::Device;

fn raw(n: usize) -> RawData {
    let split = |n: usize| Split {
        pixels: (0..n * 784).map(|i| (i % 251) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    };
    RawData {
        dir: PathBuf::from("."),
        spec: DataSpec::fashion_mnist(),
        train: split(n),
        test: split(50),
    }
}

/// The split depends on `split_seed` alone: whatever training seed comes before,
/// no image a teacher trained on is in a student's validation set.
#[test]
fn validation_split_is_disjoint_from_training_and_independent_of_the_seed() {
    let raw = raw(600);
    tch::manual_seed(7); // a "training seed" drawn before, as a run does
    let teacher = prepare(&raw, Some(100), 5, Device::Cpu).unwrap();
    tch::manual_seed(42);
    let student = prepare(&raw, Some(100), 5, Device::Cpu).unwrap();
    assert_eq!(student.val_index.len(), 100);
    assert_eq!(student.train_index.len(), 500);
    let train: std::collections::HashSet<i64> = teacher.train_index.iter().copied().collect();
    let overlap = student
        .val_index
        .iter()
        .filter(|i| train.contains(i))
        .count();
    assert_eq!(overlap, 0);
    assert_eq!(teacher.split, student.split);
    // Another split seed draws other images, and the hash says so.
    let other = prepare(&raw, Some(100), 6, Device::Cpu).unwrap();
    assert_ne!(other.val_index, student.val_index);
    assert!(!other.split.same_as(&student.split));
    // Round trip through checkpoint metadata.
    let meta: std::collections::HashMap<String, String> =
        student.split.to_metadata().into_iter().collect();
    assert_eq!(SplitInfo::from_metadata(&meta), Some(student.split.clone()));
    // Validating on the test set: no held-out images, the whole training set.
    let t = prepare(&raw, None, 5, Device::Cpu).unwrap();
    assert_eq!(t.split, SplitInfo::test_set(50));
    assert_eq!(t.train.len(), 600);
}
