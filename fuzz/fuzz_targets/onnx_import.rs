//! Import arbitrary bytes as an ONNX classifier (without the tract-onnx cross-check: tract is
//! not the code under test). Nothing may panic or allocate from a declared shape; an imported
//! network must export back to ONNX that imports to the same architecture.
#![no_main]
use iocane_trainer::onnx::{export_onnx, import_onnx_with, ImportOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = ImportOptions { skip_verify: true, ..ImportOptions::default() };
    let Ok(imported) = import_onnx_with(data, &opts) else { return };
    let net = &imported.network;
    let bytes = export_onnx(net).expect("an imported network exports");
    let back = import_onnx_with(&bytes, &opts).expect("an exported network imports");
    assert_eq!(back.network.spec(), net.spec());
});
