//! Seeded on-device augmentation: random shifts of a few pixels and horizontal flips.
//!
//! Every draw is a function of a key and the example's row in the training set alone
//! (counter-based, splitmix64), never of a generator's position: a resumed run draws
//! the same views as an uninterrupted one, and a batch's order does not matter.
//!
//! **Consistent teaching** (Beyer et al. 2022, "Knowledge distillation: a good teacher is
//! patient and consistent", section 3): when distilling with augmentation the teacher's
//! logits are those of the very view the student sees. Two ways to get them:
//! - run the teacher on every augmented batch (`--no-teacher-cache`): a teacher forward
//!   pass per step, every epoch;
//! - cache the teacher on `K` fixed views per example ([`ViewSet`]; `augment.views`) and
//!   let each epoch draw one of the K views per example: K teacher passes over the
//!   training set once, then a gather per step.
//!
//! Both give the same views and so the same logits (up to the order of floating-point
//! reductions in the teacher's batched forward pass); the cache is the default because
//! its cost does not grow with the epochs: K passes of the teacher over the training set
//! once, against one pass per epoch (the measured seconds, with the CNN teacher on 2
//! cores, are in `bench/AUG.md`).
//!
//! A view is stored as the index of its (dx, dy, flip) combination, and applied as one
//! gather through a small table of source pixels per combination (built once per run by
//! [`Augment::table`]). With K fixed views the gathers are done once per run instead of
//! at every step: [`ViewSet::store`] keeps the K views of every example as u8 pixels
//! (`K * n * C·H·W` bytes, 345 MB for K = 8 and 55,000 Fashion-MNIST examples), and a step reads its
//! batch's rows like unaugmented data ([`ViewSet::pixels`]), so that augmentation adds
//! little to the student's short epochs (`bench/AUG.md`). Fresh views every epoch
//! (`augment.views = 0`) gather at each step.

use tch::{Device, Tensor};

use crate::data::DataSpec;

/// What augmentation draws. `shift` is the largest shift in pixels along each axis
/// (uniform in `-shift..=shift`, zero padding); `flip` mirrors left-right with
/// probability 1/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    pub shift: i64,
    pub flip: bool,
}

/// One example's view: the source offset of every output pixel and whether it is
/// mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub dx: i64,
    pub dy: i64,
    pub flip: bool,
}

/// splitmix64's increment (the golden ratio in 64 bits).
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's finaliser alone: a bijective mix of 64 bits.
pub fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One splitmix64 step: the increment, then the finaliser.
pub fn mix(z: u64) -> u64 {
    finalise(z.wrapping_add(GOLDEN))
}

/// A key from two values (e.g. a seed and an epoch).
pub fn key(a: u64, b: u64) -> u64 {
    mix(mix(a) ^ b.rotate_left(17))
}

impl Augment {
    /// Parses `none`, or a comma list of `shiftN` (N = 1 to 8 pixels) and `flip`:
    /// `shift2,flip`.
    ///
    /// # Errors
    /// A message saying what the value looks like.
    pub fn parse(text: &str) -> Result<Augment, String> {
        let expected =
            "\"none\" or a comma list of shiftN (N = 1 to 8 pixels) and flip, e.g. \"shift2,flip\"";
        let mut a = Augment::default();
        if text.trim() == "none" {
            return Ok(a);
        }
        for part in text.split(',').map(str::trim) {
            if part == "flip" && !a.flip {
                a.flip = true;
            } else if let Some(n) = part.strip_prefix("shift")
                && a.shift == 0
            {
                match n.parse::<i64>() {
                    Ok(n) if (1..=8).contains(&n) => a.shift = n,
                    _ => return Err(expected.into()),
                }
            } else {
                return Err(expected.into());
            }
        }
        Ok(a)
    }

    /// The text [`Augment::parse`] reads back.
    pub fn spec(&self) -> String {
        let mut parts = Vec::new();
        if self.shift > 0 {
            parts.push(format!("shift{}", self.shift));
        }
        if self.flip {
            parts.push("flip".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(",")
        }
    }

    /// Whether it draws anything at all.
    pub fn is_none(&self) -> bool {
        self.shift == 0 && !self.flip
    }

    /// The view of example `example` under `key`.
    pub fn view(&self, key: u64, example: u64) -> View {
        let h = mix(key ^ mix(example));
        let span = (2 * self.shift + 1) as u64;
        View {
            dx: (h % span) as i64 - self.shift,
            dy: ((h >> 20) % span) as i64 - self.shift,
            flip: self.flip && (h >> 63) == 1,
        }
    }

    /// The index of a view's combination: `((dy + s) * (2s + 1) + (dx + s)) * 2 + flip`,
    /// a row of [`Augment::table`].
    pub fn combo(&self, v: View) -> i64 {
        let span = 2 * self.shift + 1;
        ((v.dy + self.shift) * span + (v.dx + self.shift)) * 2 + v.flip as i64
    }

    /// The views of examples `0..n` under `key`, as combination indices `[n] i64` on
    /// `device` (see [`Augment::combo`]), to be gathered by row like the images.
    pub fn views(&self, key: u64, n: i64, device: Device) -> Tensor {
        let v: Vec<i64> = (0..n as u64)
            .map(|i| self.combo(self.view(key, i)))
            .collect();
        Tensor::from_slice(&v).to_device(device)
    }

    /// Per combination (row [`Augment::combo`]), the source of each output pixel
    /// (channel k, row r, column c) of an image of `spec` (`[C, H, W]` flattened): input
    /// pixel (k, r + dy, c' + dx), with c' = W - 1 - c when flipped and c otherwise, as an
    /// index into the image with one zero pixel appended (C·H·W where the source falls
    /// outside the image). Every channel moves alike. `[(2s + 1)^2 * 2, C·H·W] i64` on
    /// `device`.
    pub fn table(&self, spec: &DataSpec, device: Device) -> Tensor {
        let s = self.shift;
        let (channels, height, width) = (spec.channels, spec.height, spec.width);
        let outside = spec.inputs();
        let mut t = Vec::new();
        for dy in -s..=s {
            for dx in -s..=s {
                for flip in [false, true] {
                    for k in 0..channels {
                        for r in 0..height {
                            for c in 0..width {
                                let c = if flip { width - 1 - c } else { c };
                                let (sr, sc) = (r + dy, c + dx);
                                let inside = (0..height).contains(&sr) && (0..width).contains(&sc);
                                t.push(match inside {
                                    true => (k * height + sr) * width + sc,
                                    false => outside,
                                });
                            }
                        }
                    }
                }
            }
        }
        let rows = (2 * s + 1) * (2 * s + 1) * 2;
        Tensor::from_slice(&t)
            .view([rows, spec.inputs()])
            .to_device(device)
    }

    /// The augmented images.
    ///
    /// # Shapes
    /// `images: [b, C·H·W] f32`, `table` from [`Augment::table`] for the same spec,
    /// `views: [b] i64` (from [`Augment::views`]) -> `[b, C·H·W] f32`. Three ops on the
    /// images' device: append a
    /// zero pixel, pick each example's row of the table, gather.
    pub fn apply(&self, images: &Tensor, table: &Tensor, views: &Tensor) -> Tensor {
        if self.is_none() {
            return images.shallow_clone();
        }
        let b = images.size()[0];
        let zero = Tensor::zeros([b, 1], (images.kind(), images.device()));
        let extended = Tensor::cat(&[images, &zero], 1); // [b, C·H·W + 1]
        extended.gather(1, &table.index_select(0, views), false)
    }
}

/// `K` fixed views per example, for a teacher cache that stays consistent with what the
/// student sees: view k of example i is drawn with key `key(base, k)`; each epoch picks
/// view `mix(key(epoch_key, i)) mod K` for example i.
#[derive(Debug, Clone, Copy)]
pub struct ViewSet {
    pub augment: Augment,
    pub k: u64,
    pub base: u64,
}

impl ViewSet {
    /// View `k` of examples `0..n`: `[n] i64` combination indices.
    pub fn fixed(&self, k: u64, n: i64, device: Device) -> Tensor {
        self.augment.views(key(self.base, k), n, device)
    }

    /// The epoch of `epoch_key` for examples `0..n`: which of the K views each takes
    /// (`[n] i64` in `0..K`), and that view (`[n] i64`, entry i equal to entry i of
    /// `fixed(choice[i])`).
    pub fn epoch(&self, epoch_key: u64, n: i64, device: Device) -> (Tensor, Tensor) {
        let (choice, views): (Vec<i64>, Vec<i64>) = (0..n as u64)
            .map(|i| {
                let k = mix(key(epoch_key, i)) % self.k;
                let view = self.augment.view(key(self.base, k), i);
                (k as i64, self.augment.combo(view))
            })
            .unzip();
        (
            Tensor::from_slice(&choice).to_device(device),
            Tensor::from_slice(&views).to_device(device),
        )
    }
}

impl ViewSet {
    /// Rows at a time when [`ViewSet::store`] augments the training set.
    const STORE_CHUNK: i64 = 4096;

    /// The K fixed views of every example, built once: `[k * n, C·H·W] u8` on the images'
    /// device, row `k * n + i` holding view `k` of example `i` (the same rows as the
    /// teacher cache), as pixel values 0..=255.
    ///
    /// # Shapes
    /// `images: [n, C·H·W] f32`, pixels / 255 as [`crate::data::Examples`] builds them;
    /// `table` from [`Augment::table`]. Every augmented pixel is a copy of a source pixel
    /// or 0, so `round(x * 255)` recovers its byte exactly and [`ViewSet::pixels`] gives
    /// back the very f32 values that [`Augment::apply`] on the batch would.
    ///
    /// # Errors
    /// The allocation's failure (out of memory), as libtorch reports it.
    pub fn store(&self, images: &Tensor, table: &Tensor) -> Result<Tensor, tch::TchError> {
        let (n, inputs) = (images.size()[0], images.size()[1]);
        let device = images.device();
        let out = Tensor::f_empty([self.k as i64 * n, inputs], (tch::Kind::Uint8, device))?;
        for k in 0..self.k {
            let v = self.fixed(k, n, device);
            let mut start = 0;
            while start < n {
                let len = Self::STORE_CHUNK.min(n - start);
                let x = self.augment.apply(
                    &images.narrow(0, start, len),
                    table,
                    &v.narrow(0, start, len),
                );
                let bytes = (x * 255.0).round().to_kind(tch::Kind::Uint8);
                out.narrow(0, k as i64 * n + start, len).copy_(&bytes);
                start += len;
            }
        }
        Ok(out)
    }

    /// The bytes a [`ViewSet::store`] of `n` examples of `inputs` (C·H·W) pixels takes:
    /// `K * n * inputs`.
    pub fn store_bytes(&self, n: i64, inputs: i64) -> u64 {
        self.k * n.max(0) as u64 * inputs.max(0) as u64
    }

    /// The batch's views from a [`ViewSet::store`]: `rows: [b] i64` (`k * n + i`) ->
    /// `[b, C·H·W] f32 in [0, 1]`, converted as [`crate::data::Examples`] converts pixels.
    pub fn pixels(store: &Tensor, rows: &Tensor) -> Tensor {
        store.index_select(0, rows).to_kind(tch::Kind::Float) / 255.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn image(seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::rand([1, 784], (Kind::Float, Device::Cpu))
    }

    /// `a` applied to `x` with the listed views (dx, dy, flip).
    fn apply(a: &Augment, x: &Tensor, list: &[(i64, i64, bool)]) -> Tensor {
        let v: Vec<i64> = list
            .iter()
            .map(|&(dx, dy, flip)| a.combo(View { dx, dy, flip }))
            .collect();
        a.apply(
            x,
            &a.table(&DataSpec::fashion_mnist(), Device::Cpu),
            &Tensor::from_slice(&v),
        )
    }

    /// Decodes combination indices back into (dx, dy, flip) columns `[n, 3]`.
    fn decode(a: &Augment, combos: &Tensor) -> Tensor {
        let span = 2 * a.shift + 1;
        let flip = combos.remainder(2);
        let rest = combos.floor_divide_scalar(2);
        let dx = rest.remainder(span) - a.shift;
        let dy = rest.floor_divide_scalar(span) - a.shift;
        Tensor::stack(&[dx, dy, flip], 1)
    }

    #[test]
    fn parse_and_spec_round_trip() {
        for t in ["none", "flip", "shift2", "shift2,flip"] {
            assert_eq!(Augment::parse(t).unwrap().spec(), t);
        }
        assert_eq!(
            Augment::parse("flip, shift3").unwrap(),
            Augment {
                shift: 3,
                flip: true
            }
        );
        for bad in [
            "",
            "shift0",
            "shift9",
            "flip,flip",
            "rotate",
            "shift",
            "shift2,shift1",
        ] {
            assert!(Augment::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_flip_is_a_flip_and_a_shift_is_a_shift() {
        let a = Augment {
            shift: 2,
            flip: true,
        };
        let x = image(3);
        let grid = x.view([28, 28]);
        let flipped = apply(&a, &x, &[(0, 0, true)]).view([28, 28]);
        assert!(flipped.equal(&grid.flip([1])));
        assert!(apply(&a, &x, &[(0, 0, false)]).equal(&x));
        // dx = 2: output column c is input column c + 2; the last two columns are zero.
        let shifted = apply(&a, &x, &[(2, 0, false)]).view([28, 28]);
        assert!(shifted.narrow(1, 0, 26).equal(&grid.narrow(1, 2, 26)));
        assert_eq!(
            shifted
                .narrow(1, 26, 2)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        // dy = -1: output row r is input row r - 1; the first row is zero.
        let down = apply(&a, &x, &[(0, -1, false)]).view([28, 28]);
        assert!(down.narrow(0, 1, 27).equal(&grid.narrow(0, 0, 27)));
        assert_eq!(down.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        // Per example: a batch of two with different views.
        let two = Tensor::cat(&[&x, &x], 0);
        let out = apply(&a, &two, &[(0, 0, true), (2, 0, false)]);
        // A flip and a shift at once: the source column is (27 - c) + dx, so output column
        // c is the mirrored image's column c - dx.
        let both = apply(&a, &x, &[(1, 0, true)]).view([28, 28]);
        let mirrored = grid.flip([1]);
        assert!(both.narrow(1, 1, 27).equal(&mirrored.narrow(1, 0, 27)));
        assert!(out.get(0).view([28, 28]).equal(&flipped));
        assert!(out.get(1).view([28, 28]).equal(&shifted));
        assert_eq!(out.size(), vec![2, 784]);
    }

    /// Any C x H x W: every combination of the table moves each channel as zero-padded
    /// slicing of the (mirrored) image does.
    #[test]
    fn shifts_and_flips_follow_the_spec() {
        let spec = DataSpec {
            channels: 3,
            height: 5,
            width: 7,
            class_names: vec!["a".into(), "b".into()],
        };
        let a = Augment {
            shift: 2,
            flip: true,
        };
        let s = a.shift;
        let table = a.table(&spec, Device::Cpu);
        assert_eq!(table.size(), vec![(2 * s + 1) * (2 * s + 1) * 2, 3 * 5 * 7]);
        tch::manual_seed(5);
        let x = Tensor::rand([1, 3 * 5 * 7], (Kind::Float, Device::Cpu)) + 0.5;
        let img = x.view([3, 5, 7]);
        for dy in -s..=s {
            for dx in -s..=s {
                for flip in [false, true] {
                    let v = Tensor::from_slice(&[a.combo(View { dx, dy, flip })]);
                    let got = a.apply(&x, &table, &v).view([3, 5, 7]);
                    let (src, ddx) = if flip {
                        (img.flip([2]), -dx)
                    } else {
                        (img.copy(), dx)
                    };
                    let want = src
                        .constant_pad_nd([s, s, s, s])
                        .narrow(1, s + dy, 5)
                        .narrow(2, s + ddx, 7);
                    assert!(got.equal(&want), "dx {dx} dy {dy} flip {flip}");
                }
            }
        }
    }

    #[test]
    fn draws_are_seeded_deterministic_and_cover_the_range() {
        let a = Augment {
            shift: 2,
            flip: true,
        };
        let v1 = decode(&a, &a.views(key(7, 3), 5000, Device::Cpu));
        let v2 = decode(&a, &a.views(key(7, 3), 5000, Device::Cpu));
        assert!(v1.equal(&v2));
        assert!(!v1.equal(&decode(&a, &a.views(key(7, 4), 5000, Device::Cpu))));
        assert!(!v1.equal(&decode(&a, &a.views(key(8, 3), 5000, Device::Cpu))));
        for col in 0..2 {
            let c = v1.select(1, col);
            assert_eq!(c.min().int64_value(&[]), -2);
            assert_eq!(c.max().int64_value(&[]), 2);
        }
        let flips = v1.select(1, 2).sum(Kind::Int64).int64_value(&[]);
        assert!((2300..2700).contains(&flips), "{flips} flips of 5000");
        // Without flip, nothing is flipped.
        let nf = Augment {
            shift: 1,
            flip: false,
        };
        let noflip = decode(&nf, &nf.views(1, 1000, Device::Cpu));
        assert_eq!(noflip.select(1, 2).sum(Kind::Int64).int64_value(&[]), 0);
    }

    #[test]
    fn stored_views_equal_views_applied_per_batch() {
        let set = ViewSet {
            augment: Augment {
                shift: 2,
                flip: true,
            },
            k: 3,
            base: 7,
        };
        // Pixels / 255 as the data loader builds them; more rows than one store chunk.
        let n = ViewSet::STORE_CHUNK + 100;
        tch::manual_seed(3);
        let images =
            Tensor::randint(256, [n, 784], (Kind::Uint8, Device::Cpu)).to_kind(Kind::Float) / 255.0;
        let table = set.augment.table(&DataSpec::fashion_mnist(), Device::Cpu);
        let store = set.store(&images, &table).unwrap();
        assert_eq!(store.size(), [3 * n, 784]);
        let (choice, views) = set.epoch(key(2, 9), n, Device::Cpu);
        let idx = Tensor::randperm(n, (Kind::Int64, Device::Cpu)).narrow(0, 0, 500);
        let rows = choice.index_select(0, &idx) * n + &idx;
        let from_store = ViewSet::pixels(&store, &rows);
        let applied = set.augment.apply(
            &images.index_select(0, &idx),
            &table,
            &views.index_select(0, &idx),
        );
        assert!(
            from_store.equal(&applied),
            "the stored views differ from apply's"
        );
    }

    #[test]
    fn epoch_views_are_the_chosen_fixed_views() {
        let set = ViewSet {
            augment: Augment {
                shift: 2,
                flip: true,
            },
            k: 4,
            base: 99,
        };
        let n = 300;
        let (choice, ev) = set.epoch(key(1, 5), n, Device::Cpu);
        let fixed: Vec<Tensor> = (0..4).map(|k| set.fixed(k, n, Device::Cpu)).collect();
        for i in 0..n {
            let k = choice.int64_value(&[i]);
            assert!(ev.get(i).equal(&fixed[k as usize].get(i)), "example {i}");
        }
        // Every view is used.
        assert!(choice.bincount::<Tensor>(None, 4).min().int64_value(&[]) > 0);
    }
}
