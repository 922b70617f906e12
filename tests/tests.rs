//! End-to-end tests of the `iocane` binary: train -> export -> inspect -> certify, the
//! documented exit codes, and shard/merge consistency.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iocane"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run iocane")
}

fn assert_exit_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small trained and exported model shared by the tests (trained once).
fn exported() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("iocane-e2e-{}", std::process::id()));
        let run_dir = dir.join("run");
        let out = run(&[
            "train",
            "--dataset",
            "mnist-small",
            "--arch",
            "cnn-s",
            "--method",
            "fgsm-rs",
            "--eps",
            "0.05",
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--ramp-epochs",
            "1",
            "--train-samples",
            "3000",
            "--eval-samples",
            "100",
            "--eval-steps",
            "5",
            "--lr",
            "3e-3",
            "--quiet",
            "--out",
            run_dir.to_str().unwrap(),
        ]);
        assert_exit_code(&out, 0);
        assert!(run_dir.join("model.ckpt").exists() && run_dir.join("metrics.json").exists());
        let out = run(&[
            "export",
            run_dir.to_str().unwrap(),
            "--out",
            dir.join("export").to_str().unwrap(),
            "--calib",
            "300",
        ]);
        assert_exit_code(&out, 0);
        dir.join("export")
    })
}

fn model() -> String {
    exported().join("model.icn").to_str().unwrap().to_string()
}

fn certify(extra: &[&str], report: &Path) -> Output {
    let m = model();
    let mut args = vec![
        "certify",
        m.as_str(),
        "--samples",
        "60",
        "--steps",
        "10",
        "--square-queries",
        "100",
        "--random",
        "20",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--report", report.to_str().unwrap()]);
    run(&args)
}

mod export_and_inspect {
    use super::*;

    #[test]
    fn export_writes_firmware_files_and_inspect_describes_them() {
        let dir = exported();
        for f in ["model.icn", "model.rs", "model.h"] {
            assert!(dir.join(f).exists(), "{f} missing");
        }
        let rs = std::fs::read_to_string(dir.join("model.rs")).unwrap();
        assert!(rs.contains("pub const ARENA_SIZE: usize = 2352;"), "{rs}");
        assert!(rs.contains("align(4)") && rs.contains("include_bytes!(\"model.icn\")"));
        let h = std::fs::read_to_string(dir.join("model.h")).unwrap();
        assert!(h.contains("#define IOCANE_ARENA_SIZE 2352u"));
        let out = run(&["inspect", &model()]);
        assert_exit_code(&out, 0);
        let text = String::from_utf8_lossy(&out.stdout);
        for needle in
            ["Conv2d", "Dense", "int32 logits", "arena       2352 bytes", "method             fgsm-rs", "sha256"]
        {
            assert!(text.contains(needle), "inspect output lacks {needle:?}:\n{text}");
        }
    }

    #[test]
    fn inspect_rejects_corrupted_blobs_with_exit_2() {
        let mut bytes = std::fs::read(model()).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x10;
        let p = std::env::temp_dir().join(format!("iocane-corrupt-{}.icn", std::process::id()));
        std::fs::write(&p, &bytes).unwrap();
        let out = run(&["inspect", p.to_str().unwrap()]);
        assert_exit_code(&out, 2);
        assert!(String::from_utf8_lossy(&out.stderr).contains("CRC mismatch"));
        std::fs::write(&p, &bytes[..100]).unwrap();
        let out = run(&["inspect", p.to_str().unwrap()]);
        assert_exit_code(&out, 2);
    }
}

mod certify_gate {
    use super::*;
    use iocane_certify::report::CertifyReport;

    #[test]
    fn gate_passes_with_exit_0_and_fails_with_exit_1() {
        let tmp = tempfile::tempdir().unwrap();
        let pass = certify(&["--eps", "1/255", "--gate", "empirical", "--threshold", "0.5"], &tmp.path().join("pass"));
        assert_exit_code(&pass, 0);
        let fail = certify(&["--eps", "8/255", "--gate", "certified", "--threshold", "1.0"], &tmp.path().join("fail"));
        assert_exit_code(&fail, 1);
        let r = CertifyReport::read(&tmp.path().join("fail/report.json")).unwrap();
        assert!(!r.passed && r.config.k == 8);
        let junit = std::fs::read_to_string(tmp.path().join("fail/junit.xml")).unwrap();
        assert!(junit.contains("<failure"));
        for f in ["summary.md", "curve.svg"] {
            assert!(tmp.path().join("fail").join(f).exists());
        }
        // No sample is both certified and falsified, and the bounds order the figures.
        for l in &r.curve {
            assert!(l.certified_acc <= l.empirical_acc && l.empirical_acc <= l.clean_acc, "{l:?}");
        }
        for s in &r.outcome.samples {
            assert!(
                !(s.bound_margin.unwrap_or(-1) >= 0 && s.counterexample.is_some()),
                "sample {} certified and falsified",
                s.index
            );
        }
    }

    #[test]
    fn counterexamples_replay_on_the_runtime() {
        let tmp = tempfile::tempdir().unwrap();
        let out = certify(&["--eps", "0.1", "--gate", "empirical"], &tmp.path().join("r"));
        assert_exit_code(&out, 0);
        let r = CertifyReport::read(&tmp.path().join("r/report.json")).unwrap();
        let bytes = std::fs::read(model()).unwrap();
        let m = iocane_runtime::Model::parse(&bytes).unwrap();
        let test = iocane_trainer::data::load(&iocane_trainer::data::DatasetSpec::MnistSmall).unwrap().test;
        let mut arena = vec![0u8; m.arena_size()];
        let mut logits = vec![0i32; 10];
        let mut replayed = 0;
        for s in r.outcome.samples.iter().filter(|s| s.counterexample.is_some()) {
            let cx = std::fs::read(tmp.path().join(format!("r/counterexamples/sample_{}.bin", s.index))).unwrap();
            let clean = test.image(s.index);
            assert!(
                cx.iter().zip(clean).all(|(&a, &b)| (a as i32 - b as i32).abs() <= r.config.k as i32),
                "outside the ball"
            );
            assert_ne!(m.run(&cx, &mut arena, &mut logits).unwrap(), s.label, "counterexample does not fool the model");
            replayed += 1;
        }
        assert!(replayed > 0, "eps 0.1 should break some samples of a weakly trained model");
    }

    #[test]
    fn usage_and_input_errors_exit_2() {
        let tmp = tempfile::tempdir().unwrap();
        let junk = tmp.path().join("junk.icn");
        std::fs::write(&junk, b"not a model at all, definitely not").unwrap();
        let out = run(&["certify", junk.to_str().unwrap(), "--report", tmp.path().join("x").to_str().unwrap()]);
        assert_exit_code(&out, 2);
        let out = run(&["certify", &model(), "--eps", "banana"]);
        assert_exit_code(&out, 2);
        let out = run(&["certify", &model(), "--shard", "3/2"]);
        assert_exit_code(&out, 2);
        let out = run(&["certify", "/nonexistent/model.icn"]);
        assert_exit_code(&out, 2);
        let out = run(&["certify", &model(), "--dataset", "fashion-mnist", "--data-dir", "/nonexistent"]);
        assert_exit_code(&out, 2);
        assert!(String::from_utf8_lossy(&out.stderr).contains("apt-get install dataset-fashion-mnist"));
    }

    #[test]
    fn shards_merge_into_the_unsharded_report() {
        let tmp = tempfile::tempdir().unwrap();
        let args = ["--eps", "4/255", "--gate", "empirical", "--threshold", "0.0"];
        assert_exit_code(&certify(&args, &tmp.path().join("all")), 0);
        for i in 0..3 {
            let shard = format!("{i}/3");
            let mut a = args.to_vec();
            a.extend_from_slice(&["--shard", &shard]);
            assert_exit_code(&certify(&a, &tmp.path().join(format!("s{i}"))), 0);
        }
        let dirs: Vec<String> =
            (0..3).map(|i| tmp.path().join(format!("s{i}")).to_str().unwrap().to_string()).collect();
        let merged = tmp.path().join("merged");
        let out = run(&["certify", "merge", &dirs[0], &dirs[1], &dirs[2], "--report", merged.to_str().unwrap()]);
        assert_exit_code(&out, 0);
        let a = CertifyReport::read(&tmp.path().join("all/report.json")).unwrap();
        let b = CertifyReport::read(&merged.join("report.json")).unwrap();
        assert_eq!(a.outcome.samples, b.outcome.samples);
        for (x, y) in a.outcome.levels.iter().zip(&b.outcome.levels) {
            assert_eq!(
                (x.n, x.clean, x.certified, x.empirical, x.pgd, x.square),
                (y.n, y.clean, y.certified, y.empirical, y.pgd, y.square)
            );
        }
    }
}

mod onnx_cli {
    use super::*;

    #[test]
    fn exported_onnx_imports_and_re_exports() {
        let dir = exported();
        assert!(dir.join("model.onnx").exists());
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("imported");
        let out = run(&["import", dir.join("model.onnx").to_str().unwrap(), "--out", run_dir.to_str().unwrap()]);
        assert_exit_code(&out, 0);
        let out = run(&[
            "export",
            run_dir.to_str().unwrap(),
            "--out",
            tmp.path().join("e").to_str().unwrap(),
            "--calib",
            "300",
        ]);
        assert_exit_code(&out, 0);
        // Same float weights and same calibration data give the same int8 blob, except metadata.
        let a = iocane_runtime::emit::ModelRepr::from_model(
            &iocane_runtime::Model::parse(&std::fs::read(dir.join("model.icn")).unwrap()).unwrap(),
        );
        let b = iocane_runtime::emit::ModelRepr::from_model(
            &iocane_runtime::Model::parse(&std::fs::read(tmp.path().join("e/model.icn")).unwrap()).unwrap(),
        );
        assert_eq!(a.layers, b.layers);
        let bad = tmp.path().join("bad.onnx");
        std::fs::write(&bad, b"\x08\x07garbage").unwrap();
        assert_exit_code(&run(&["import", bad.to_str().unwrap(), "--out", tmp.path().join("x").to_str().unwrap()]), 2);
    }
}

mod snapshots {
    use super::*;

    /// Replaces run-dependent text (paths, timings) so reports compare byte for byte.
    fn normalize(s: &str, model_path: &str) -> String {
        let s = s.replace(model_path, "MODEL");
        s.lines()
            .map(|l| match l.find(" time=\"") {
                Some(i) => {
                    let rest = &l[i + 7..];
                    let end = rest.find('"').map_or(rest.len(), |e| e + 1);
                    format!("{} time=\"T{}", &l[..i], &rest[end - 1..])
                }
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Compares with `tests/snapshots/NAME`; `IOCANE_BLESS=1` rewrites the snapshot.
    fn check(name: &str, got: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
        if std::env::var_os("IOCANE_BLESS").is_some() {
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("missing snapshot {} (run with IOCANE_BLESS=1)", path.display()));
        assert_eq!(got, want, "report {name} differs from its snapshot");
    }

    #[test]
    fn reports_match_snapshots_on_a_fixed_seed() {
        // A fixed model (random weights from a fixed seed) so the snapshot does not depend on training.
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model.icn");
        std::fs::write(&model, iocane_runtime::emit::random_cnn_s(42).emit()).unwrap();
        let m = model.to_str().unwrap();
        let report = tmp.path().join("r");
        let out = run(&[
            "certify",
            m,
            "--samples",
            "30",
            "--eps",
            "2/255",
            "--eps-sweep",
            "0,1,2,4",
            "--steps",
            "5",
            "--restarts",
            "1",
            "--square-queries",
            "50",
            "--random",
            "10",
            "--seed",
            "7",
            "--gate",
            "empirical",
            "--threshold",
            "0.05",
            "--quiet",
            "--report",
            report.to_str().unwrap(),
        ]);
        assert!(out.status.code() == Some(0) || out.status.code() == Some(1), "{out:?}");
        for name in ["summary.md", "junit.xml", "curve.svg"] {
            let text = std::fs::read_to_string(report.join(name)).unwrap();
            check(name, &normalize(&text, m));
        }
        let r = iocane_certify::report::CertifyReport::read(&report.join("report.json")).unwrap();
        let verdicts: Vec<String> = r
            .outcome
            .samples
            .iter()
            .map(|s| format!("{} {} {:?} {:?} {:?}", s.index, s.label, s.verdict, s.broken_by, s.bound_margin))
            .collect();
        check("verdicts.txt", &verdicts.join("\n"));
    }
}
