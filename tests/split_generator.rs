//! The validation split's generator, in a test binary with this one test: it seeds and
//! draws from libtorch's global CPU generator, which any other test running in a
//! parallel thread of the same process could seed or draw from in between.

mod split_data;

use kdtrain::data::transfer::libtorch_randperm;
use kdtrain::data::{NormalizeKind, prepare};
use split_data::raw;
use tch::{Device, Kind, Tensor};

/// `libtorch_randperm(n, seed)` is the permutation `manual_seed(seed); randperm(n)`
/// gives, for sizes from 0 to Fashion-MNIST's 60,000 and seeds whose high 32 bits are
/// set (libtorch keeps the low 32), including the split's default seed as mixed; so
/// splits drawn before it had a generator of its own are drawn again the same. And
/// `prepare` leaves the caller's generator where it was.
#[test]
fn the_split_is_libtorchs_randperm_from_a_generator_of_its_own() {
    let seeds = [
        0u64,
        1,
        5,
        20150309 ^ 0x5eed_5b1d,
        0xffff_ffff,
        0x1_0000_0007,
        u64::MAX,
    ];
    let sizes = [0usize, 1, 2, 3, 10, 100, 1797, 12345, 60000];
    for &seed in &seeds {
        for &n in &sizes {
            tch::manual_seed(seed as i64);
            let want: Vec<i64> =
                Vec::try_from(&Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu))).unwrap();
            let got = libtorch_randperm(n, seed);
            assert!(
                got == want,
                "seed {seed}, n {n}: {:?} vs {:?}",
                &got[..n.min(8)],
                &want[..n.min(8)]
            );
        }
    }

    // The held-out split neither seeds nor draws from the global generator.
    let raw = raw(300);
    let draw = || Vec::<f32>::try_from(&Tensor::rand([4], (Kind::Float, Device::Cpu))).unwrap();
    tch::manual_seed(42);
    let _ = draw();
    let want = draw();
    tch::manual_seed(42);
    let _ = draw();
    let d = prepare(
        &raw,
        Some(100),
        5,
        NormalizeKind::Unit,
        &Default::default(),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(draw(), want);
    let mut held = d.val_index.clone();
    held.sort_unstable();
    assert_eq!(d.val_index, libtorch_randperm(300, 5 ^ 0x5eed_5b1d)[..100]);
    assert!(held.windows(2).all(|w| w[0] < w[1]));
}
