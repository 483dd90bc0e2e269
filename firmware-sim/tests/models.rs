//! Sensor models are deterministic for a seed and stay in range.

use firmware_sim::runner::models::{Model, ModelSpec};
use firmware_sim::runner::rng::Rng;

const SPECS: [&str; 6] = [
    "sine",
    "sine:offset=-10:amplitude=100:period=0.5:noise=3",
    "walk:start=5:step=2:drift=0.3:min=0:max=10",
    "walk:start=0:step=50:drift=-1:min=-1:max=1",
    "step:low=3:high=-3:period=0.1",
    "counter:start=10:increment=7:wrap=100",
];

fn run(spec: &str, seed: u64) -> Vec<f32> {
    let spec: ModelSpec = spec.parse().unwrap();
    let mut rng = Rng::new(seed, 0);
    let mut model = Model::new(spec, &mut rng);
    (0..5_000)
        .map(|i| model.sample(f64::from(i) * 0.013, &mut rng))
        .collect()
}

#[test]
fn every_model_gives_the_same_samples_for_the_same_seed() {
    for spec in SPECS {
        assert_eq!(run(spec, 42), run(spec, 42), "{spec}");
    }
    assert_ne!(run("sine", 1), run("sine", 2));
    assert_ne!(run("walk", 1), run("walk", 2));
}

#[test]
fn every_model_stays_inside_its_range() {
    for spec_text in SPECS {
        let spec: ModelSpec = spec_text.parse().unwrap();
        let (lo, hi) = spec.range();
        for seed in 0..20 {
            for v in run(spec_text, seed) {
                assert!(
                    v.is_finite() && f64::from(v) >= lo && f64::from(v) <= hi,
                    "{spec_text}: {v} outside [{lo}, {hi}]"
                );
            }
        }
    }
}

#[test]
fn counter_counts_and_wraps() {
    let values = run("counter:start=0:increment=1:wrap=3", 0);
    assert_eq!(&values[..7], &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]);
}

#[test]
fn step_alternates_between_low_and_high() {
    let spec: ModelSpec = "step:low=1:high=2:period=10".parse().unwrap();
    let mut rng = Rng::new(0, 0);
    let mut m = Model::new(spec, &mut rng);
    assert_eq!(m.sample(1.0, &mut rng), 1.0);
    assert_eq!(m.sample(6.0, &mut rng), 2.0);
    assert_eq!(m.sample(11.0, &mut rng), 1.0);
}

#[test]
fn model_specs_print_back_to_themselves() {
    for spec_text in SPECS {
        let spec: ModelSpec = spec_text.parse().unwrap();
        let again: ModelSpec = spec.to_string().parse().unwrap();
        assert_eq!(spec, again);
    }
}

#[test]
fn bad_model_specs_are_refused_with_the_reason() {
    assert!("triangle".parse::<ModelSpec>().is_err());
    assert!("sine:colour=3".parse::<ModelSpec>().is_err());
    assert!("sine:period=0".parse::<ModelSpec>().is_err());
    assert!("sine:period=abc".parse::<ModelSpec>().is_err());
    assert!("sine:noise=NaN".parse::<ModelSpec>().is_err());
    assert!("walk:min=5:max=1".parse::<ModelSpec>().is_err());
    assert!("counter:wrap=-1".parse::<ModelSpec>().is_err());
}
