//! Writes the seed corpus of the `report_merge` fuzz target (`fuzz/corpus/report_merge`):
//! `report.json` documents of a two-shard run, alone and joined by a NUL byte (the target
//! splits its input at NUL bytes into the shards to merge).
//!
//! `cargo run -p iocane-certify --example fuzz_seeds -- fuzz/corpus/report_merge`
use iocane_certify::gate::{GateConfig, GateKind, GateOutcome, LevelCounts, SampleResult, SampleVerdict};
use iocane_certify::report::CertifyReport;

fn shard(index: usize) -> CertifyReport {
    let config = GateConfig {
        k: 4,
        sweep: vec![0, 2, 4],
        samples: 4,
        shard: (index, 2),
        seed: 7,
        pgd_steps: 10,
        pgd_restarts: 1,
        pgd_step_size: None,
        square_queries: 50,
        random_samples: 10,
        gate: GateKind::Certified,
        threshold: 0.5,
    };
    let verdicts = [SampleVerdict::Certified, SampleVerdict::Falsified];
    let samples = verdicts
        .iter()
        .enumerate()
        .map(|(j, &verdict)| SampleResult {
            index: index + 2 * j,
            label: j,
            predicted: j,
            verdict,
            broken_by: if verdict == SampleVerdict::Falsified { vec!["pgd".into()] } else { Vec::new() },
            counterexample: (verdict == SampleVerdict::Falsified).then(|| vec![9u8; 4]),
            bound_margin: Some(3 - 4 * j as i64),
        })
        .collect();
    let levels = [0u8, 2, 4]
        .iter()
        .map(|&k| LevelCounts {
            k,
            n: 2,
            clean: 2,
            certified: if k == 0 { 2 } else { 1 },
            empirical: if k == 0 { 2 } else { 1 },
            fgsm: 2,
            pgd: 1,
            square: 2,
            random: 2,
            square_not_pgd: 0,
            bound_seconds: 0.25,
            attack_seconds: 0.5,
        })
        .collect();
    let outcome = GateOutcome { samples, levels };
    CertifyReport::new("model.icn", &"ab".repeat(32), "idx:tiny/test", &"cd".repeat(32), config, outcome, 1.5)
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/report_merge".into());
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let json: Vec<String> = (0..2).map(|i| serde_json::to_string(&shard(i)).expect("report serialises")).collect();
    std::fs::write(format!("{dir}/shard0.json"), &json[0]).expect("write seed");
    std::fs::write(format!("{dir}/two_shards"), format!("{}\0{}", json[0], json[1])).expect("write seed");
}
