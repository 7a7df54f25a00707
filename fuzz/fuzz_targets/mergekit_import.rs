//! Any text given to the mergekit passthrough reader yields a converted plan or an error, in
//! memory bounded by the text (a `layer_range` of 10^11 layers is refused before it is walked):
//! no panic, and a converted plan parses as a slayer plan. Run with `-rss_limit_mb`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_engine::plan::{self, interchange};

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else { return };
    for layers in [None, Some(4), Some(32)] {
        if let Ok(converted) = interchange::from_mergekit(yaml, layers) {
            let file = plan::parse(&converted.text).expect("a converted plan parses");
            if let Some(n) = layers {
                let _ = plan::resolve(&file.plan, n);
            }
        }
    }
});
