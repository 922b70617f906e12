//! Split arbitrary bytes at NUL bytes into up to four `report.json` documents, parse them
//! as certify reports and merge them as `iocane certify merge` does; render every output
//! of the merged report. Nothing may panic, and the merged report must survive a JSON
//! round trip.
#![no_main]
use iocane_certify::gate;
use iocane_certify::report::CertifyReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).take(4).collect();
    let Ok(reports) = parts.iter().map(|p| serde_json::from_slice::<CertifyReport>(p)).collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    for r in &reports {
        let _ = (r.junit(), r.markdown(), r.svg());
    }
    let first = &reports[0];
    let outcome = gate::merge(&reports.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>());
    let merged = CertifyReport::new(
        &first.model_file,
        &first.model_sha256,
        &first.dataset,
        &first.dataset_sha256,
        first.config.clone(),
        outcome,
        reports.iter().map(|r| r.seconds).sum(),
    );
    let _ = (merged.junit(), merged.markdown(), merged.svg());
    if let Ok(json) = serde_json::to_string(&merged) {
        let back: CertifyReport = serde_json::from_str(&json).expect("a merged report parses back");
        assert_eq!((back.outcome.samples, back.outcome.levels), (merged.outcome.samples, merged.outcome.levels));
    }
});
