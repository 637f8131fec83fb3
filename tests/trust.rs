//! Trust: what a run writes can be read back exactly.

use kdtrain::eval::Metrics;
use kdtrain::run::{EpochRecord, TrainState};

/// Every f64 of a state, in a fixed order.
fn floats(s: &TrainState) -> Vec<f64> {
    let mut out = vec![s.best_metric];
    for r in &s.history {
        out.extend([r.lr, r.seconds]);
        for m in [&r.train, &r.val] {
            out.extend([m.loss, m.clf_loss, m.kd_loss, m.acc]);
        }
    }
    out
}

/// f64 values that a parser without correct rounding reads back one ULP off
/// (serde_json without `float_roundtrip` missed about 1 in 10 random f64s in [0, 1)),
/// next to values that are awkward in other ways: subnormal, tiny, the largest, sums
/// that are not what they look like, and a cosine-decay LR as the schedule computes it.
#[test]
fn state_survives_json_with_every_float_exact() {
    let lr = |k: f64| 1e-3 * (0.9 * 0.5 * (1.0 + (std::f64::consts::PI * k / 2000.0).cos()) + 0.1);
    let awkward = [
        0.1 + 0.2,
        1e-300,
        5e-324,
        f64::MIN_POSITIVE,
        f64::MAX,
        0.001 * 0.869,
        1.0 - 0.999f64.powi(3),
        0.9238829120510785,
        0.20599677708342345,
        0.43463921546936035, // an f32 value widened to f64, as the losses are
        lr(1.0),             // 0.0009999994448348665
        lr(5.0),
        lr(10.0),
        1.0 / 3.0,
    ];
    let m = |i: usize| Metrics {
        loss: awkward[i % awkward.len()],
        clf_loss: awkward[(i + 1) % awkward.len()],
        kd_loss: awkward[(i + 2) % awkward.len()],
        acc: awkward[(i + 3) % awkward.len()],
    };
    let state = TrainState {
        epoch: awkward.len(),
        step: 17,
        best_metric: lr(18.0),
        best_epoch: 3,
        bad_epochs: 1,
        history: (0..awkward.len())
            .map(|i| EpochRecord {
                epoch: i + 1,
                lr: awkward[(i + 4) % awkward.len()],
                seconds: awkward[(i + 5) % awkward.len()],
                train: m(i),
                val: m(i + 6),
            })
            .collect(),
        finished: false,
    };
    let text = serde_json::to_string(&state).unwrap();
    let back: TrainState = serde_json::from_str(&text).unwrap();
    let (a, b) = (floats(&state), floats(&back));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y, "{x:e} came back as {y:e}");
    }
    assert_eq!(back.history, state.history);
}
