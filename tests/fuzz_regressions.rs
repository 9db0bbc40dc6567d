//! Replays every input under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` through the
//! function its fuzz target drives: the seeds the fuzzers start from, and every input that once
//! made one fail (kept after the fix), so that CI runs them without a fuzzer.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("request", switchyard::fuzz::request),
    ("cache_key", switchyard::fuzz::cache_key),
    ("sse", switchyard::fuzz::sse),
    ("ollama", switchyard::fuzz::ollama),
    ("config", switchyard::fuzz::config),
];

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("directory entry").path();
                let data = std::fs::read(&path).expect("read input");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name} fails on {}", path.display());
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= 5,
        "the seeds are where they belong ({replayed} inputs)"
    );
}
