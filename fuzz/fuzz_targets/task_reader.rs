//! Any text given to the multiple-choice task reader yields items whose gold index is in range,
//! or an error naming a line inside the text: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_engine::eval::parse_task;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_task(text) {
        Ok(items) => {
            for (_, item) in items {
                assert!(item.gold < item.choices.len());
                assert!(item.choices.len() >= 2);
            }
        }
        Err((line, _)) => assert!(line >= 1 && line <= text.lines().count().max(1)),
    }
});
