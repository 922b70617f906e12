//! Split arbitrary bytes at NUL bytes into up to four `report.json` documents, parse them
//! as certify reports (`CertifyReport::from_json`) and merge them with the validating
//! `merge_reports`, as `iocane certify merge` does. Nothing may panic or allocate from a
//! count field; a merged report must render (JUnit, Markdown, SVG) and survive a JSON round
//! trip, and merging it alone again must give the same outcome.
#![no_main]
use iocane_certify::report::{merge_reports, CertifyReport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).take(4).collect();
    let Ok(reports) = parts.iter().map(|p| CertifyReport::from_json(p)).collect::<Result<Vec<_>, _>>() else {
        return;
    };
    let Ok(merged) = merge_reports(&reports) else { return };
    let _ = (merged.junit(), merged.markdown(), merged.svg());
    let json = serde_json::to_string(&merged).expect("a report serialises");
    let back = CertifyReport::from_json(json.as_bytes()).expect("a merged report parses back");
    assert_eq!(back.outcome, merged.outcome);
    let again = merge_reports(std::slice::from_ref(&back)).expect("a merged report merges alone");
    assert_eq!(again.outcome, merged.outcome);
    assert_eq!(again.passed, merged.passed);
});
