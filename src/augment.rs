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
//! its cost does not grow with the epochs: with the CNN teacher on 2 cores, one pass over
//! the 55,000 training images costs a few seconds while a long student schedule runs
//! 60 epochs (the measured figures are in `bench/AUGMENT.md`).

use tch::{Device, Kind, Tensor};

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

/// splitmix64's finaliser: a bijective mix of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

    /// The views of examples `0..n` under `key`, as `[n, 3] i64` (dx, dy, flip) on
    /// `device`, to be gathered by row like the images.
    pub fn views(&self, key: u64, n: i64, device: Device) -> Tensor {
        let v: Vec<i64> = (0..n as u64)
            .flat_map(|i| {
                let v = self.view(key, i);
                [v.dx, v.dy, v.flip as i64]
            })
            .collect();
        Tensor::from_slice(&v).view([n, 3]).to_device(device)
    }

    /// The augmented images: output pixel (r, c) is input pixel (r + dy, c' + dx), with
    /// c' = 27 - c when flipped and c otherwise, and 0 outside the image.
    ///
    /// # Shapes
    /// `images: [b, 784] f32`, `views: [b, 3] i64` (from [`Augment::views`]) ->
    /// `[b, 784] f32`. One pad and one gather on the images' device.
    pub fn apply(&self, images: &Tensor, views: &Tensor) -> Tensor {
        if self.is_none() {
            return images.shallow_clone();
        }
        let s = self.shift;
        let side = 28i64;
        let padded_side = side + 2 * s;
        let b = images.size()[0];
        let dev = images.device();
        let opts = (Kind::Int64, dev);
        let dx = views.select(1, 0).view([b, 1, 1]);
        let dy = views.select(1, 1).view([b, 1, 1]);
        let flip = views.select(1, 2).view([b, 1, 1]);
        let r = Tensor::arange(side, opts).view([1, side, 1]);
        let c = Tensor::arange(side, opts).view([1, 1, side]);
        // c' = c + flip * (27 - 2c)
        let c = &c + &flip * (-&c * 2 + (side - 1));
        let idx = (r + &dy + s) * padded_side + (c + &dx + s); // [b, 28, 28]
        let padded = images
            .view([b, side, side])
            .constant_pad_nd([s, s, s, s])
            .view([b, padded_side * padded_side]);
        padded.gather(1, &idx.view([b, side * side]), false)
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
    /// View `k` of examples `0..n`: `[n, 3] i64`.
    pub fn fixed(&self, k: u64, n: i64, device: Device) -> Tensor {
        self.augment.views(key(self.base, k), n, device)
    }

    /// Which of the K views each example `0..n` takes in the epoch of `epoch_key`:
    /// `[n] i64` in `0..K`.
    pub fn choice(&self, epoch_key: u64, n: i64, device: Device) -> Tensor {
        let v: Vec<i64> = (0..n as u64)
            .map(|i| (mix(key(epoch_key, i)) % self.k) as i64)
            .collect();
        Tensor::from_slice(&v).to_device(device)
    }

    /// The views of examples `0..n` in the epoch of `epoch_key`: `[n, 3] i64`, row i
    /// equal to row i of `fixed(choice[i])`.
    pub fn epoch_views(&self, epoch_key: u64, n: i64, device: Device) -> Tensor {
        let v: Vec<i64> = (0..n as u64)
            .flat_map(|i| {
                let k = mix(key(epoch_key, i)) % self.k;
                let v = self.augment.view(key(self.base, k), i);
                [v.dx, v.dy, v.flip as i64]
            })
            .collect();
        Tensor::from_slice(&v).view([n, 3]).to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::rand([1, 784], (Kind::Float, Device::Cpu))
    }

    fn views(list: &[(i64, i64, bool)]) -> Tensor {
        let v: Vec<i64> = list
            .iter()
            .flat_map(|&(dx, dy, f)| [dx, dy, f as i64])
            .collect();
        Tensor::from_slice(&v).view([list.len() as i64, 3])
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
        let flipped = a.apply(&x, &views(&[(0, 0, true)])).view([28, 28]);
        assert!(flipped.equal(&grid.flip([1])));
        assert!(a.apply(&x, &views(&[(0, 0, false)])).equal(&x));
        // dx = 2: output column c is input column c + 2; the last two columns are zero.
        let shifted = a.apply(&x, &views(&[(2, 0, false)])).view([28, 28]);
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
        let down = a.apply(&x, &views(&[(0, -1, false)])).view([28, 28]);
        assert!(down.narrow(0, 1, 27).equal(&grid.narrow(0, 0, 27)));
        assert_eq!(down.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        // Per example: a batch of two with different views.
        let two = Tensor::cat(&[&x, &x], 0);
        let out = a.apply(&two, &views(&[(0, 0, true), (2, 0, false)]));
        assert!(out.get(0).view([28, 28]).equal(&flipped));
        assert!(out.get(1).view([28, 28]).equal(&shifted));
        assert_eq!(out.size(), vec![2, 784]);
    }

    #[test]
    fn draws_are_seeded_deterministic_and_cover_the_range() {
        let a = Augment {
            shift: 2,
            flip: true,
        };
        let v1 = a.views(key(7, 3), 5000, Device::Cpu);
        let v2 = a.views(key(7, 3), 5000, Device::Cpu);
        assert!(v1.equal(&v2));
        assert!(!v1.equal(&a.views(key(7, 4), 5000, Device::Cpu)));
        assert!(!v1.equal(&a.views(key(8, 3), 5000, Device::Cpu)));
        for col in 0..2 {
            let c = v1.select(1, col);
            assert_eq!(c.min().int64_value(&[]), -2);
            assert_eq!(c.max().int64_value(&[]), 2);
        }
        let flips = v1.select(1, 2).sum(Kind::Int64).int64_value(&[]);
        assert!((2300..2700).contains(&flips), "{flips} flips of 5000");
        // Without flip, nothing is flipped.
        let noflip = Augment {
            shift: 1,
            flip: false,
        }
        .views(1, 1000, Device::Cpu);
        assert_eq!(noflip.select(1, 2).sum(Kind::Int64).int64_value(&[]), 0);
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
        let choice = set.choice(key(1, 5), n, Device::Cpu);
        let fixed: Vec<Tensor> = (0..4).map(|k| set.fixed(k, n, Device::Cpu)).collect();
        let ev = set.epoch_views(key(1, 5), n, Device::Cpu);
        for i in 0..n {
            let k = choice.int64_value(&[i]);
            assert!(ev.get(i).equal(&fixed[k as usize].get(i)), "example {i}");
        }
        // Every view is used.
        assert!(choice.bincount::<Tensor>(None, 4).min().int64_value(&[]) > 0);
    }
}
