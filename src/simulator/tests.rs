//! The simulator's state without a server: latency's shape, scripts stepping and repeating,
//! per-token counting switched off, and a scenario's scripts and rates loaded. Each supplier's
//! wire format is tested through HTTP in tests/it/.

use super::*;

#[test]
fn latency_is_log_normal_around_the_mean_with_a_tail() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let shape = LatencyShape { spread_ms: 100, tail_share: 0.01, tail_ms: 5000 };
    let draws: Vec<u64> = (0..20_000).map(|_| shape.sample(300, &mut rng)).collect();
    let (tail, body): (Vec<u64>, Vec<u64>) = draws.iter().partition(|&&ms| ms == 5000);
    let share = tail.len() as f64 / draws.len() as f64;
    assert!((0.007..0.013).contains(&share), "tail share {share}");
    let mean = body.iter().sum::<u64>() as f64 / body.len() as f64;
    let sd = (body.iter().map(|&ms| (ms as f64 - mean).powi(2)).sum::<f64>() / body.len() as f64).sqrt();
    assert!((290.0..310.0).contains(&mean), "mean {mean}");
    assert!((90.0..110.0).contains(&sd), "sd {sd}");
    assert!(body.iter().all(|&ms| ms > 0 && ms < 5000), "log-normal: positive, and no tail among them");
    // Without a spread every answer waits exactly the mean; with no mean, nothing.
    let flat = LatencyShape::default();
    assert_eq!(flat.sample(250, &mut rng), 250);
    assert_eq!(LatencyShape { spread_ms: 100, ..flat }.sample(0, &mut rng), 0);
}

#[test]
fn scripts_step_through_and_repeat_the_last() {
    let sim = Simulator::default();
    sim.script("t", vec![Step::new(Behaviour::Unavailable), Step::new(Behaviour::Valid)]);
    let got: Vec<Behaviour> = (0..4).map(|_| sim.next_step("t").behaviour).collect();
    assert_eq!(got, [Behaviour::Unavailable, Behaviour::Valid, Behaviour::Valid, Behaviour::Valid]);
    assert_eq!(sim.next_step("other").behaviour, Behaviour::Valid);
    sim.set_default(Behaviour::Garbage);
    assert_eq!(sim.next_step("other").behaviour, Behaviour::Garbage);
    sim.script("t", vec![]);
    assert_eq!(sim.next_step("t").behaviour, Behaviour::Garbage);
}

#[test]
fn token_counting_can_be_off() {
    let sim = Simulator::new(Scenario { count_by_token: false, ..Scenario::default() });
    sim.count_token("t");
    assert_eq!(sim.token_calls("t"), 0);
    let sim = Simulator::default();
    sim.count_token("t");
    sim.count_token("t");
    assert_eq!(sim.token_calls("t"), 2);
    sim.reset();
    assert_eq!(sim.token_calls("t"), 0);
}

#[test]
fn scenario_scripts_and_rates_are_loaded() {
    let scenario = Scenario::from_json(r#"{"error_rate": 1.0, "tokens": {"a": ["not_registered"]}}"#).unwrap();
    let sim = Simulator::new(scenario);
    assert!(sim.inject_error());
    assert_eq!(sim.next_step("a").behaviour, Behaviour::NotRegistered);
    let sim = Simulator::new(Scenario { error_rate: f64::NAN, ..Scenario::default() });
    assert!(!sim.inject_error());
}
