//! Writes the seed corpus of the `report_merge` fuzz target (`fuzz/corpus/report_merge`):
//! the two consistent `report.json` documents of a two-shard run, alone and joined by a NUL
//! byte (the target splits its input at NUL bytes into the shards to merge).
//!
//! `cargo run -p iocane-certify --example certify_fuzz_seeds -- fuzz/corpus/report_merge`
use iocane_certify::gate::{
    counterexample_file, BoundMethod, GateConfig, GateOutcome, LevelCounts, Radius, SampleResult, SampleVerdict,
    Threshold,
};
use iocane_certify::report::{merge_reports, CertifyReport, RunIdentity};

/// Shard `index` of 2 over a 4-image split: one certified and one falsified sample.
fn shard(index: usize) -> CertifyReport {
    let config = GateConfig {
        k: 4,
        sweep: vec![0, 2],
        samples: 0,
        shard: (index, 2),
        seed: 7,
        pgd_steps: 10,
        pgd_restarts: 1,
        square_queries: 50,
        random_samples: 10,
        threshold: Threshold::new(1, 2).expect("1/2 is a threshold"),
        ..GateConfig::default()
    };
    let verdicts = [SampleVerdict::Certified, SampleVerdict::Falsified];
    let samples = verdicts
        .iter()
        .enumerate()
        .map(|(j, &verdict)| {
            let falsified = verdict == SampleVerdict::Falsified;
            SampleResult {
                index: index + 2 * j,
                label: j,
                predicted: j,
                verdict,
                broken_by: if falsified { vec!["pgd".into()] } else { Vec::new() },
                counterexample: None,
                counterexample_file: falsified.then(|| counterexample_file(index + 2 * j)),
                adversarial_class: falsified.then_some(j + 1),
                clean: None,
                bound_margin: Some(3 - 4 * j as i64),
                certified_by: (!falsified).then_some(BoundMethod::Ibp),
                seconds: 0.0,
            }
        })
        .collect();
    let levels = [0u8, 2, 4]
        .iter()
        .map(|&k| {
            let survivors = if k == 4 { 1 } else { 2 };
            LevelCounts {
                k,
                n: 2,
                clean: 2,
                certified: survivors,
                certified_crown: 0,
                certified_bab: 0,
                empirical: survivors,
                fgsm: 2,
                pgd: survivors,
                square: 2,
                random: 2,
                square_not_pgd: 0,
                bound_seconds: 0.25,
                attack_seconds: 0.5,
                ..LevelCounts::default()
            }
        })
        .collect();
    let id = RunIdentity {
        model_file: "model.icn".into(),
        model_sha256: "ab".repeat(32),
        dataset: "idx:tiny".into(),
        dataset_sha256: "cd".repeat(32),
        split_len: 4,
        input_shape: [2, 2, 1],
        classes: 2,
        radius: Radius::levels(4),
    };
    CertifyReport::new(id, config, GateOutcome { samples, levels }, 1.5)
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/report_merge".into());
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let shards = [shard(0), shard(1)];
    let json: Vec<String> = shards.iter().map(|r| serde_json::to_string(r).expect("report serialises")).collect();
    std::fs::write(format!("{dir}/shard0.json"), &json[0]).expect("write seed");
    std::fs::write(format!("{dir}/two_shards"), format!("{}\0{}", json[0], json[1])).expect("write seed");
    // The merged report is the single shard 0/1 of the same run.
    let whole = merge_reports(&shards).expect("the seed shards are one run");
    std::fs::write(format!("{dir}/merged.json"), serde_json::to_string(&whole).expect("report serialises"))
        .expect("write seed");
}
