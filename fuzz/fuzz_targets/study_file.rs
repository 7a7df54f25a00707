//! Any bytes as a study file, at the default scale and at `gpu`: no panic; a study that loads
//! saves (`resolved_text`) into a file that loads to the same grid, cell for cell.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_data::study::Study;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("study.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    for scale in [None, Some("gpu")] {
        let Ok(study) = Study::load_scaled(&path, scale) else { continue };
        let saved = dir.path().join("saved.toml");
        std::fs::write(&saved, study.resolved_text().unwrap()).unwrap();
        let again = Study::load(&saved).unwrap();
        assert_eq!(again.cells(), study.cells());
        for cell in study.cells() {
            assert_eq!(again.experiment_text(&cell), study.experiment_text(&cell));
        }
    }
});
