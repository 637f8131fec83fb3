//! The transfer set (Hinton, Vinyals & Dean 2015, sections 3 and 6): the images a
//! student (alone or distilled) trains on, taken from the training split after the
//! validation images are held out. `data.train_fraction` keeps a subset drawn by
//! `data.subset_seed` alone (never the training seed, and never libtorch's generator),
//! so a student trained alone and a distilled one see the same images whatever their
//! seeds; `data.omit_classes` then removes whole classes from it. Validation and test
//! sets are never touched here.
//!
//! The draw is one seeded Fisher-Yates shuffle of the training split's positions; the
//! first `max(1, round(F·n))` are kept, in file order. A smaller fraction with the same
//! seed keeps a prefix of the same shuffle, so its images are a subset of a larger
//! fraction's. Omitting classes afterwards only removes images: `--train-fraction 0.1
//! --omit-class 3` trains on `--train-fraction 0.1`'s images less those of class 3.

use serde::{Deserialize, Serialize};

use crate::data::DataSpec;
use crate::error::UsageError;

/// What the transfer set is to be (`data.train_fraction`, `data.subset_seed`,
/// `data.omit_classes`), before the data are read.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferSpec {
    /// In (0, 1]; 1 keeps every image of the training split.
    pub fraction: f64,
    pub subset_seed: u64,
    /// Class names or indices as given (`--omit-class`).
    pub omit: Vec<String>,
}

impl Default for TransferSpec {
    fn default() -> Self {
        TransferSpec {
            fraction: 1.0,
            subset_seed: crate::config::DEFAULT_SUBSET_SEED,
            omit: Vec::new(),
        }
    }
}

/// The transfer set a run trained on, as `meta.json` and `summary.json` record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferSet {
    /// `data.train_fraction`.
    pub fraction: f64,
    /// `data.subset_seed`.
    pub subset_seed: u64,
    /// The omitted classes' labels, ascending (`data.omit_classes`).
    pub omitted: Vec<i64>,
    /// Their names.
    pub omitted_names: Vec<String>,
    /// Images in the transfer set (the run's `train_examples`).
    pub examples: usize,
    /// SHA-256 of the transfer set's indices into the original training images
    /// (`Dataset::train_index`, little-endian i64, in order), first 16 hex digits.
    pub hash: String,
}

impl TransferSet {
    /// The record of a transfer set of the images at `train_index`.
    pub fn new(spec: &TransferSpec, omitted: Vec<i64>, names: &DataSpec, index: &[i64]) -> Self {
        TransferSet {
            fraction: spec.fraction,
            subset_seed: spec.subset_seed,
            omitted_names: omitted.iter().map(|&c| names.class_name(c)).collect(),
            omitted,
            examples: index.len(),
            hash: hash(index),
        }
    }

    /// One line for messages: `all 55000 images` or `6% (3300 images, subset_seed 7,
    /// hash ..), omitting Trouser`.
    pub fn describe(&self) -> String {
        let mut s = match self.fraction {
            f if f >= 1.0 => format!("{} images", self.examples),
            f => format!(
                "fraction {f} drawn by subset_seed {}: {} images",
                self.subset_seed, self.examples
            ),
        };
        if !self.omitted.is_empty() {
            s.push_str(&format!(
                ", without class(es) {}",
                self.omitted_names.join(", ")
            ));
        }
        format!("{s} (hash {})", self.hash)
    }
}

/// First 16 hex digits of the SHA-256 of `index` as little-endian i64.
pub fn hash(index: &[i64]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for i in index {
        h.update(i.to_le_bytes());
    }
    crate::hex(&h.finalize()[..8])
}

/// The labels that `omit` names (a class name of `spec`, else an index in range),
/// ascending.
///
/// # Errors
/// A [`UsageError`] naming `--omit-class` / `data.omit_classes`: a class the data lack
/// (listing their names), the same class twice, or every class omitted.
pub fn resolve_omitted(omit: &[String], spec: &DataSpec) -> anyhow::Result<Vec<i64>> {
    let key = "--omit-class / data.omit_classes";
    let mut out: Vec<i64> = Vec::new();
    for given in omit {
        let Some(label) = spec.label_of(given) else {
            return Err(UsageError(format!(
                "{key}: {given:?} is not a class of the data; expected one of the names {} or \
                 an index from 0 to {}",
                spec.quoted_names(),
                spec.classes() - 1
            ))
            .into());
        };
        if out.contains(&label) {
            return Err(UsageError(format!(
                "{key}: class {label} ({}) is named twice ({given:?}); name each class once",
                spec.class_name(label)
            ))
            .into());
        }
        out.push(label);
    }
    out.sort_unstable();
    if out.len() as i64 >= spec.classes() {
        return Err(UsageError(format!(
            "{key} omits all {} classes; at least one class must remain in the training set",
            spec.classes()
        ))
        .into());
    }
    Ok(out)
}

/// A splitmix64 generator (Steele et al. 2014) seeded by `seed`: the subset's shuffle,
/// independent of libtorch's global generator.
fn splitmix64(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `0..n` shuffled by `seed` (Fisher-Yates).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut next = splitmix64(seed ^ 0x7ea5_fe25_e75e_ed00);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Lemire's multiply-shift: uniform in 0..=i without a modulo's bias worth naming.
        let j = ((next() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// `0..n` permuted exactly as libtorch's CPU `randperm(n)` does after
/// `manual_seed(seed)`, but from a generator of its own, so that neither another thread's
/// draws nor the caller's generator state can change it, and the caller's is untouched.
///
/// libtorch (`aten/src/ATen/native/TensorFactories.cpp`, `randperm_cpu`) seeds a
/// 32-bit Mersenne Twister (mt19937) with the seed's low 32 bits and swaps position `i`
/// with `i + random() % (n - i)` for `i` in `0..n-1`; from `n >= u32::MAX / 20` it
/// draws 64 bits (`random64()`, the first draw high) per swap.
/// `tests/split_generator.rs` compares this with `Tensor::randperm` over many seeds and
/// sizes up to 60,000; the 64-bit branch (214 million images and more) is not tested.
pub fn libtorch_randperm(n: usize, seed: u64) -> Vec<i64> {
    let mut mt = rand_mt::Mt::new(seed as u32);
    let mut order: Vec<i64> = (0..n as i64).collect();
    let small = (n as u64) < u64::from(u32::MAX / 20);
    for i in 0..n.saturating_sub(1) {
        let r = if small {
            u64::from(mt.next_u32())
        } else {
            let hi = u64::from(mt.next_u32());
            (hi << 32) | u64::from(mt.next_u32())
        };
        let z = (r % (n - i) as u64) as usize;
        order.swap(i, i + z);
    }
    order
}

/// The positions (into the training split, whose labels are `labels`) of the transfer
/// set, ascending: a fraction drawn by the seed, less the `omitted` classes.
///
/// # Errors
/// A [`UsageError`] naming `--train-fraction` when a class that is not omitted has no
/// image in the subset, with the smallest fraction that keeps one of each.
pub fn select(
    labels: &[i64],
    spec: &TransferSpec,
    omitted: &[i64],
    names: &DataSpec,
) -> anyhow::Result<Vec<usize>> {
    let n = labels.len();
    let keep = ((spec.fraction * n as f64).round() as usize).clamp(1.min(n), n);
    let order = shuffled(n, spec.subset_seed);
    let mut positions: Vec<usize> = order[..keep].to_vec();
    positions.sort_unstable();
    // Classes of the split that are not omitted must each keep an image.
    let classes = names.classes().max(0) as usize;
    let mut in_split = vec![false; classes];
    let mut in_subset = vec![false; classes];
    for &l in labels {
        if let Some(c) = in_split.get_mut(l as usize) {
            *c = true;
        }
    }
    for &p in &positions {
        if let Some(c) = in_subset.get_mut(labels[p] as usize) {
            *c = true;
        }
    }
    let missing: Vec<i64> = (0..classes as i64)
        .filter(|c| in_split[*c as usize] && !in_subset[*c as usize] && !omitted.contains(c))
        .collect();
    if !missing.is_empty() {
        // The shortest prefix of the shuffle that holds one image of every such class.
        let mut seen = vec![false; classes];
        let mut need = 0;
        for (k, &p) in order.iter().enumerate() {
            let c = labels[p];
            if (0..classes as i64).contains(&c) && !omitted.contains(&c) && !seen[c as usize] {
                seen[c as usize] = true;
                need = k + 1;
            }
        }
        let smallest = (need as f64 / n as f64 * 1e4).ceil() / 1e4;
        return Err(UsageError(format!(
            "--train-fraction / data.train_fraction = {}: the {keep} images drawn by \
             data.subset_seed {} hold no image of class(es) {}; expected a fraction that \
             keeps every class that is not omitted ({smallest} or more does with this seed), \
             or omit those classes",
            spec.fraction,
            spec.subset_seed,
            missing
                .iter()
                .map(|&c| names.class_name(c))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    positions.retain(|&p| !omitted.contains(&labels[p]));
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec3() -> DataSpec {
        DataSpec {
            channels: 1,
            height: 1,
            width: 1,
            class_names: ["a", "b", "c"].map(String::from).to_vec(),
        }
    }

    #[test]
    fn the_shuffle_is_seeded_and_a_smaller_fraction_is_a_prefix() {
        assert_eq!(shuffled(100, 1), shuffled(100, 1));
        assert_ne!(shuffled(100, 1), shuffled(100, 2));
        let mut s = shuffled(100, 1);
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        let labels: Vec<i64> = (0..300).map(|i| i % 3).collect();
        let t = |f: f64| TransferSpec {
            fraction: f,
            subset_seed: 5,
            omit: vec![],
        };
        let small = select(&labels, &t(0.1), &[], &spec3()).unwrap();
        let big = select(&labels, &t(0.5), &[], &spec3()).unwrap();
        assert_eq!((small.len(), big.len()), (30, 150));
        assert!(small.iter().all(|p| big.contains(p)));
        assert!(small.windows(2).all(|w| w[0] < w[1]));
        let all = select(&labels, &t(1.0), &[], &spec3()).unwrap();
        assert_eq!(all, (0..300).collect::<Vec<_>>());
        // At least one image is kept.
        assert_eq!(
            select(&labels[..1], &t(1e-9), &[], &spec3()).unwrap().len(),
            1
        );
    }

    #[test]
    fn omitted_classes_leave_and_a_too_small_fraction_names_the_classes() {
        let labels: Vec<i64> = (0..300).map(|i| i % 3).collect();
        let t = |f: f64| TransferSpec {
            fraction: f,
            subset_seed: 5,
            omit: vec![],
        };
        let kept = select(&labels, &t(0.5), &[1], &spec3()).unwrap();
        assert!(kept.iter().all(|&p| labels[p] != 1));
        assert!(kept.len() > 80 && kept.len() < 120, "{}", kept.len());
        let e = select(&labels, &t(0.001), &[], &spec3()).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        let msg = e.to_string();
        assert!(
            msg.contains("--train-fraction") && msg.contains("or more"),
            "{msg}"
        );
        // The suggested fraction works; omitting the missing classes works too.
        let smallest: f64 = msg
            .split(" or more")
            .next()
            .unwrap()
            .rsplit('(')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        select(&labels, &t(smallest), &[], &spec3()).unwrap();
        let one = select(&labels, &t(0.001), &[], &spec3());
        assert!(one.is_err());
        let only = labels[shuffled(300, 5)[0]];
        let others: Vec<i64> = (0..3).filter(|&c| c != only).collect();
        assert_eq!(
            select(&labels, &t(0.001), &others, &spec3()).unwrap().len(),
            1
        );
    }

    #[test]
    fn omitted_names_and_indices_resolve_or_are_refused() {
        let s = spec3();
        let r =
            |v: &[&str]| resolve_omitted(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>(), &s);
        assert_eq!(r(&["c", "0"]).unwrap(), vec![0, 2]);
        for (bad, needle) in [
            (&["d"][..], "\"a\", \"b\", \"c\""),
            (&["3"], "index from 0 to 2"),
            (&["b", "1"], "named twice"),
            (&["a", "b", "c"], "at least one class must remain"),
        ] {
            let e = r(bad).unwrap_err();
            assert!(e.downcast_ref::<UsageError>().is_some());
            let e = e.to_string();
            assert!(e.contains("--omit-class") && e.contains(needle), "{e}");
        }
    }
}
