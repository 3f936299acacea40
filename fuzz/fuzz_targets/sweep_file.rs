//! The sweep-file parser and resolver on any text: an error or a spec, never a panic; a spec's
//! grid expands to cells with 16-hex-digit ids.
#![no_main]

use etagrid_spec::SweepSpec;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SweepSpec::parse(Path::new("/fuzz/sweeps/fuzz.toml"), text) {
        Err(e) => {
            // Every error renders (file, key, line) without panicking.
            let _ = e.to_string();
        }
        Ok(spec) => {
            // Large grids are valid but slow to hash: expand the small ones.
            if spec.points.len().saturating_mul(spec.seeds.len()) <= 4096 {
                for c in spec.cells() {
                    assert_eq!(c.id.0.len(), 16);
                    assert!(c.id.0.bytes().all(|b| b.is_ascii_hexdigit()));
                }
            }
        }
    }
});
