//! Every shipped experiment parses and resolves against SmolLM2's depth with the layout its
//! description promises.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::path::Path;

use slayer::core::plan::{self, Severity};

const SMOLLM2_LAYERS: usize = 30;

fn load(name: &str) -> (String, plan::Resolution) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("experiments")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let file = plan::parse(&text).unwrap_or_else(|d| panic!("{}", d.render(name, &text)));
    assert_eq!(
        file.model.as_ref().map(|m| m.base.as_str()),
        Some("smollm2"),
        "{name}"
    );
    (text, plan::resolve(&file.plan, SMOLLM2_LAYERS))
}

#[test]
fn every_shipped_experiment_resolves() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let (text, r) = load(&name);
            // The whole file, [data], [train] and [eval] included, is a runnable experiment.
            slayer::core::experiment::Experiment::parse(&path, &text)
                .unwrap_or_else(|d| panic!("{}", d.render(&name, &text)));
            let errors: Vec<String> = r
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| d.render(&name, &text))
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
            count += 1;
        }
    }
    assert_eq!(count, 8);
}

#[test]
fn shipped_layouts_are_the_described_ones() {
    let map = |n: &str| load(n).1.map.unwrap();
    let s = map("smollm2-slayer.toml");
    assert_eq!(
        (s.layers.len(), s.new_indices(), s.pruned.clone()),
        (35, vec![2, 5, 8, 11, 14, 17, 20], vec![28, 29])
    );
    let u = map("smollm2-slayer-updated.toml");
    assert_eq!(u.trainable_indices(), vec![2, 5, 8, 11, 14, 17, 20, 34]);
    let p = map("smollm2-llama-pro.toml");
    assert_eq!((p.layers.len(), p.new_indices().len()), (37, 7));
    let (_, prefix) = load("smollm2-prefix.toml");
    assert_eq!(
        prefix.map.as_ref().unwrap().new_indices(),
        (0..7).collect::<Vec<_>>()
    );
    assert!(
        prefix
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Warning)
    );
    assert_eq!(
        map("smollm2-suffix.toml").new_indices(),
        (30..37).collect::<Vec<_>>()
    );
    assert_eq!(
        map("smollm2-deep.toml").new_indices(),
        vec![16, 19, 22, 25, 28, 31, 34]
    );
    let facts = map("smollm2-facts.toml");
    assert_eq!((facts.layers.len(), facts.pruned.len()), (37, 0));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/smollm2-facts.toml");
    let exp = slayer::core::experiment::Experiment::load(&path).unwrap();
    assert_eq!(
        (exp.train.steps, exp.data.synth.as_ref().map(|s| s.entities)),
        (150, Some(30))
    );
    let none = map("smollm2-none.toml");
    assert_eq!(
        (none.layers.len(), none.trainable_indices()),
        (30, (0..7).collect::<Vec<_>>())
    );
}

/// The shipped studies parse, and every cell of their grids is a valid experiment.
#[test]
fn shipped_studies_parse_into_valid_grids() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/studies");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let default = slayer::study::Study::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
            let scaled = default.scales.iter().map(|s| {
                slayer::study::Study::load_scaled(&path, Some(s))
                    .unwrap_or_else(|e| panic!("{e:#}"))
            });
            for study in std::iter::once(default.clone()).chain(scaled) {
                assert_eq!(study.cells().len(), 5 * 2 * 3, "{}", path.display());
                for cell in study.cells() {
                    let text = study.experiment_text(&cell);
                    let exp = slayer::core::experiment::Experiment::parse(&path, &text).unwrap();
                    let map = plan::resolve(&exp.plan, SMOLLM2_LAYERS).map.unwrap();
                    assert_eq!(
                        map.trainable_indices().len(),
                        7,
                        "equal budgets: {}",
                        cell.key()
                    );
                    assert_eq!(exp.train.seed, cell.seed);
                }
            }
            count += 1;
        }
    }
    assert_eq!(count, 1);
}

#[test]
fn a_study_with_a_path_for_a_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "name = \"../escape\"\n[base.model]\nbase = \"m\"\n[[strategy]]\nname = \"a\"\nplan = { preset = \"slayer\" }\n",
    )
    .unwrap();
    let err = slayer::study::Study::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("s.toml") && err.contains("\"../escape\""),
        "{err}"
    );
}

/// `--scale gpu` overlays the default study: longer runs, bigger corpora, its own name.
#[test]
fn the_gpu_scale_overlays_the_default_study() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/studies/smollm2.toml");
    let cpu = slayer::study::Study::load(&path).unwrap();
    let gpu = slayer::study::Study::load_scaled(&path, Some("gpu")).unwrap();
    assert_eq!(
        (cpu.name.as_str(), gpu.name.as_str()),
        ("smollm2-study", "smollm2-study-gpu")
    );
    let cell = |s: &slayer::study::Study, corpus: &str| {
        let c = s.cells().into_iter().find(|c| c.corpus == corpus).unwrap();
        slayer::core::experiment::Experiment::parse(&path, &s.experiment_text(&c)).unwrap()
    };
    let (small, big) = (cell(&cpu, "code"), cell(&gpu, "code"));
    assert_eq!((small.train.steps, big.train.steps), (32, 600));
    assert!(small.data.train[0].ends_with("corpora/requests"));
    assert!(big.data.train[0].ends_with("corpora/django"));
    // What the scale leaves alone stays: the forgetting sets, the control questions.
    assert_eq!(small.eval.ppl, big.eval.ppl);
    assert_eq!(small.eval.tasks, big.eval.tasks);
    assert_eq!(
        cell(&gpu, "facts").data.synth.map(|s| s.entities),
        Some(200)
    );
    let err = slayer::study::Study::load_scaled(&path, Some("tpu"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("smollm2.toml") && err.contains("scales: gpu"),
        "{err}"
    );
}

/// A scale that names a corpus the study lacks is refused when the file is loaded.
#[test]
fn a_scale_naming_a_missing_corpus_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "name = \"s\"\n[base.model]\nbase = \"m\"\n[[strategy]]\nname = \"a\"\nplan = { preset = \"slayer\" }\n\
         [[corpus]]\nname = \"facts\"\ndata = { synth = { entities = 5 } }\n\
         [scale.gpu]\ncorpus.code.data = { train = \"x\" }\n",
    )
    .unwrap();
    let err = slayer::study::Study::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("s.toml") && err.contains("scale.gpu.corpus.code"),
        "{err}"
    );
}

/// The control questions shipped for the code corpus are the synth-facts control set.
#[test]
fn the_shipped_control_set_is_the_synth_facts_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/studies/control.jsonl");
    let shipped = slayer::core::eval::read_task(&path, "control").unwrap();
    let items: Vec<_> = shipped.items.into_iter().map(|(_, item)| item).collect();
    assert_eq!(items, slayer::core::synth::generate(30, 0).control);
}

/// The study `study run` saves beside its cells (scale applied, paths absolute) is the same
/// grid: the console and `study show NAME` read that copy.
#[test]
fn a_saved_study_is_the_same_grid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/studies/smollm2.toml");
    let dir = tempfile::tempdir().unwrap();
    for scale in [None, Some("gpu")] {
        let study = slayer::study::Study::load_scaled(&path, scale).unwrap();
        let saved = dir.path().join("study.toml");
        std::fs::write(&saved, study.resolved_text().unwrap()).unwrap();
        let again = slayer::study::Study::load(&saved).unwrap();
        assert_eq!(again.name, study.name);
        assert_eq!(again.cells(), study.cells());
        for cell in study.cells() {
            assert_eq!(again.experiment_text(&cell), study.experiment_text(&cell));
        }
    }
}
