//! The validation split and the transfer set. Both draw from generators of their own
//! (the split libtorch's `randperm` algorithm, `tests/split_generator.rs`), so these tests
//! may seed libtorch's global generator in parallel threads without changing them; until
//! the split had its own generator, a seeding between its `manual_seed` and `randperm`
//! made the transfer-set test fail now and then.

mod split_data;

use kdtrain::data::{DataSpec, Normalize, NormalizeKind, Split, SplitInfo, prepare};
use split_data::raw;
use tch::{Device, Tensor};

/// The split depends on `split_seed` alone: whatever training seed comes before,
/// no image a teacher trained on is in a student's validation set.
#[test]
fn validation_split_is_disjoint_from_training_and_independent_of_the_seed() {
    let raw = raw(600);
    tch::manual_seed(7); // a "training seed" drawn before, as a run does
    let teacher = prepare(
        &raw,
        Some(100),
        5,
        NormalizeKind::Unit,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
    tch::manual_seed(42);
    let student = prepare(
        &raw,
        Some(100),
        5,
        NormalizeKind::Unit,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
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
    let other = prepare(
        &raw,
        Some(100),
        6,
        NormalizeKind::Unit,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
    assert_ne!(other.val_index, student.val_index);
    assert!(!other.split.same_as(&student.split));
    // Round trip through checkpoint metadata.
    let meta: std::collections::HashMap<String, String> =
        student.split.to_metadata().into_iter().collect();
    assert_eq!(SplitInfo::from_metadata(&meta), Some(student.split.clone()));
    // Validating on the test set: no held-out images, the whole training set.
    let t = prepare(
        &raw,
        None,
        5,
        NormalizeKind::Unit,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
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
    let unit = prepare(
        &raw,
        Some(100),
        5,
        NormalizeKind::Unit,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(unit.normalize, Normalize::Unit);
    let st = prepare(
        &raw,
        Some(100),
        5,
        NormalizeKind::Standardize,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
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
    let d = prepare(
        &raw,
        Some(100),
        5,
        NormalizeKind::Unit,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
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

/// The transfer set: drawn by `subset_seed` alone (not libtorch's generator, not the
/// training seed), a subset of the training split and so disjoint from validation, and
/// without the omitted classes, which stay in validation and test.
#[test]
fn transfer_set_is_seeded_disjoint_from_validation_and_omits_classes() {
    use kdtrain::data::TransferSpec;
    let raw = raw(600);
    let spec = |fraction: f64, subset_seed: u64, omit: &[&str]| TransferSpec {
        fraction,
        subset_seed,
        omit: omit.iter().map(|s| s.to_string()).collect(),
    };
    let prep = |t: &TransferSpec, training_seed: i64| {
        tch::manual_seed(training_seed);
        prepare(&raw, Some(100), 5, NormalizeKind::Unit, t, Device::Cpu).unwrap()
    };
    let full = prep(&TransferSpec::default(), 1);
    let a = prep(&spec(0.3, 7, &[]), 1);
    let b = prep(&spec(0.3, 7, &[]), 2);
    let c = prep(&spec(0.3, 8, &[]), 1);
    assert_eq!(a.train_index.len(), 150);
    assert_eq!(a.train_index, b.train_index);
    assert_ne!(a.train_index, c.train_index);
    assert_eq!(a.val_index, full.val_index);
    assert!(a.train_index.windows(2).all(|w| w[0] < w[1]));
    assert!(a.train_index.iter().all(|i| full.train_index.contains(i)));
    assert!(a.train_index.iter().all(|i| !a.val_index.contains(i)));
    assert_eq!(a.transfer.examples, 150);
    assert_eq!(
        a.transfer.hash,
        kdtrain::data::transfer::hash(&a.train_index)
    );
    assert_ne!(a.transfer.hash, c.transfer.hash);
    // `train` holds exactly the images at train_index.
    let labels: Vec<i64> = Vec::try_from(&a.train.labels).unwrap();
    let want: Vec<i64> = a
        .train_index
        .iter()
        .map(|&i| raw.train.labels[i as usize])
        .collect();
    assert_eq!(labels, want);
    let images = Tensor::from_slice(&raw.train.pixels)
        .view([600, 784])
        .to_kind(tch::Kind::Float)
        / 255.0;
    let idx = Tensor::from_slice(&a.train_index);
    assert!(a.train.images.equal(&images.index_select(0, &idx)));

    // Omitted: by name or index; gone from training only.
    let o = prep(&spec(1.0, 7, &["Trouser", "3"]), 1);
    assert_eq!(o.transfer.omitted, vec![1, 3]);
    assert_eq!(o.transfer.omitted_names, vec!["Trouser", "Dress"]);
    assert!(
        o.train_index
            .iter()
            .all(|&i| !matches!(raw.train.labels[i as usize], 1 | 3))
    );
    let kept = full
        .train_index
        .iter()
        .filter(|&&i| !matches!(raw.train.labels[i as usize], 1 | 3))
        .count();
    assert_eq!(o.train_index.len(), kept);
    let val: Vec<i64> = Vec::try_from(&o.val.labels).unwrap();
    let test: Vec<i64> = Vec::try_from(&o.test.labels).unwrap();
    assert!(val.contains(&1) && val.contains(&3) && test.contains(&1) && test.contains(&3));
    // With a fraction: that fraction's images less the omitted classes.
    let oa = prep(&spec(0.3, 7, &["Trouser"]), 1);
    let want: Vec<i64> = a
        .train_index
        .iter()
        .copied()
        .filter(|&i| raw.train.labels[i as usize] != 1)
        .collect();
    assert_eq!(oa.train_index, want);
    // The defaults change nothing.
    assert_eq!(full.transfer.examples, 500);
    assert_eq!(full.transfer.fraction, 1.0);
}
