//! The validation split, in a test binary of its own: the split is drawn from libtorch's
//! global CPU generator, which every test that builds a model or draws a tensor also
//! uses, so beside them (the unit tests run in parallel threads of one process) another
//! thread's draw could fall between the split's seeding and its permutation.

use std::path::PathBuf;

use kdtrain::data::{
    DataSpec, Normalize, NormalizeKind, RawData, Source, Split, SplitInfo, prepare,
};
use tch::{Device, Tensor};

fn raw(n: usize) -> RawData {
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

/// The split depends on `split_seed` alone: whatever training seed comes before,
/// no image a teacher trained on is in a student's validation set.
#[test]
fn validation_split_is_disjoint_from_training_and_independent_of_the_seed() {
    let raw = raw(600);
    tch::manual_seed(7); // a "training seed" drawn before, as a run does
    let teacher = prepare(&raw, Some(100), 5, NormalizeKind::Unit, Device::Cpu).unwrap();
    tch::manual_seed(42);
    let student = prepare(&raw, Some(100), 5, NormalizeKind::Unit, Device::Cpu).unwrap();
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
    let other = prepare(&raw, Some(100), 6, NormalizeKind::Unit, Device::Cpu).unwrap();
    assert_ne!(other.val_index, student.val_index);
    assert!(!other.split.same_as(&student.split));
    // Round trip through checkpoint metadata.
    let meta: std::collections::HashMap<String, String> =
        student.split.to_metadata().into_iter().collect();
    assert_eq!(SplitInfo::from_metadata(&meta), Some(student.split.clone()));
    // Validating on the test set: no held-out images, the whole training set.
    let t = prepare(&raw, None, 5, NormalizeKind::Unit, Device::Cpu).unwrap();
    assert_eq!(t.split, SplitInfo::test_set(50));
    assert_eq!(t.train.len(), 600);
}

/// `data.normalize = "standardize"`: the mean and sd are those of the training images
/// left after the validation split, per channel, and the same shift and scale reach the
/// validation and test images; `"unit"` leaves pixels / 255.
#[test]
fn standardize_takes_its_statistics_from_the_training_images_only() {
    let mut raw = raw(300);
    // Two channels of 2x2 so that per-channel statistics differ.
    raw.spec = DataSpec {
        channels: 2,
        height: 2,
        width: 2,
        class_names: (0..10).map(|i| i.to_string()).collect(),
    };
    let img = |n: usize, k: u8| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let a = (i % 200) as u8;
                [a, a, a, a, k, k.wrapping_add(a), k, k]
            })
            .collect()
    };
    raw.train.pixels = img(300, 40);
    raw.test.pixels = img(50, 40);
    let unit = prepare(&raw, Some(100), 5, NormalizeKind::Unit, Device::Cpu).unwrap();
    assert_eq!(unit.normalize, Normalize::Unit);
    let st = prepare(&raw, Some(100), 5, NormalizeKind::Standardize, Device::Cpu).unwrap();
    let Normalize::Standardize { mean, sd } = &st.normalize else {
        panic!("{:?}", st.normalize)
    };
    // Recomputed here from the training images of the unit run.
    let x = unit
        .train
        .images
        .view([200, 2, 4])
        .to_kind(tch::Kind::Double);
    for c in 0..2 {
        let xc = x.select(1, c);
        let m = xc.mean(tch::Kind::Double).double_value(&[]);
        let v = (&xc - m).square().mean(tch::Kind::Double).double_value(&[]);
        assert!(
            (mean[c as usize] - m).abs() < 1e-9,
            "mean {c}: {mean:?} vs {m}"
        );
        assert!(
            (sd[c as usize] - v.sqrt()).abs() < 1e-9,
            "sd {c}: {sd:?} vs {}",
            v.sqrt()
        );
    }
    assert!(mean[0] != mean[1]);
    // The training images have mean 0 and sd 1 per channel; validation and test images
    // get the same affine map as the unit run's.
    let z = st.train.images.view([200, 2, 4]);
    for c in 0..2 {
        let zc = z.select(1, c);
        assert!(zc.mean(tch::Kind::Double).double_value(&[]).abs() < 1e-5);
    }
    for (u, s) in [(&unit.val, &st.val), (&unit.test, &st.test)] {
        let want = (u.images.view([-1, 2, 4])
            - Tensor::from_slice(mean)
                .to_kind(tch::Kind::Float)
                .view([1, 2, 1]))
            / Tensor::from_slice(sd)
                .to_kind(tch::Kind::Float)
                .view([1, 2, 1]);
        let diff = (want.view([-1, 8]) - &s.images)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }
}

/// A data set that brings its own validation split (an image folder's `val/`) validates
/// on it: nothing is held out of the training images, and the split is recorded as such.
#[test]
fn a_data_sets_own_validation_split_is_used_instead_of_holding_out() {
    let mut raw = raw(300);
    raw.val = Some(Split {
        pixels: vec![3; 20 * 784],
        labels: vec![1; 20],
    });
    let d = prepare(&raw, Some(100), 5, NormalizeKind::Unit, Device::Cpu).unwrap();
    assert_eq!((d.train.len(), d.val.len(), d.test.len()), (300, 20, 50));
    assert_eq!(d.split.validation, "folder");
    assert_eq!(d.split.validation_size, 20);
    assert!(
        d.split.describe().contains("val/"),
        "{}",
        d.split.describe()
    );
    assert_eq!(d.val.labels, Tensor::from_slice(&[1i64; 20]));
}
