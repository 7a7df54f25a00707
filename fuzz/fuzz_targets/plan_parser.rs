//! Any text given to the plan parser and resolver yields a layer map or diagnostics: no panic,
//! and every diagnostic's span lies inside the text. Resolves against a few depths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_engine::plan;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match plan::parse(text) {
        Err(d) => {
            let _ = d.render("fuzz.toml", text);
        }
        Ok(file) => {
            for layers in [1, 4, 30, 32] {
                let r = plan::resolve(&file.plan, layers);
                for d in &r.diagnostics {
                    if let Some(span) = &d.span {
                        assert!(span.end <= text.len());
                    }
                    let _ = d.render("fuzz.toml", text);
                }
                if let Some(map) = r.map {
                    assert!(!map.layers.is_empty());
                    assert!(map.layers.iter().any(|l| l.trainable));
                    let _ = plan::interchange::to_mergekit(&map, "m", "bfloat16");
                }
            }
        }
    }
});
