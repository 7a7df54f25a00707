use super::*;

fn resolve_str(toml_text: &str, layers: usize) -> Resolution {
    let file = parse(toml_text).unwrap();
    resolve(&file.plan, layers)
}

fn map(toml_text: &str, layers: usize) -> LayerMap {
    let r = resolve_str(toml_text, layers);
    assert!(!r.has_errors(), "{:?}", r.diagnostics);
    r.map.unwrap()
}

fn errors(toml_text: &str, layers: usize) -> Vec<String> {
    resolve_str(toml_text, layers)
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.render("plan.toml", toml_text))
        .collect()
}

/// The official S-strategy map for Llama-2-7B (txchen-USTC/Llama-Slayer): 32 → +8 → −2 = 38.
#[test]
fn slayer_preset_on_32_blocks_reproduces_the_official_map() {
    let m = map("[plan]\npreset = \"slayer\"\n", 32);
    assert_eq!(m.layers.len(), 38);
    assert_eq!(m.new_indices(), vec![2, 5, 8, 11, 14, 17, 20, 23]);
    assert_eq!(m.pruned, vec![30, 31]);
    assert_eq!(m.trainable_indices(), m.new_indices());
    let mut expected = Vec::new();
    for i in 0..30usize {
        expected.push(format!("orig {i}"));
        if i % 2 == 1 && i < 16 {
            expected.push(format!("new avg({i},{}) [train]", i + 1));
        }
    }
    let got: Vec<String> = m.layers.iter().map(diff::describe).collect();
    assert_eq!(got, expected);
    // Original i lands at i + (new blocks inserted after originals < i).
    for l in &m.layers {
        if let Origin::Original { index } = l.origin {
            let before = (0..index).filter(|j| j % 2 == 1 && *j < 16).count();
            assert_eq!(l.index, index + before);
        }
    }
    for l in m.layers.iter().filter(|l| l.is_new()) {
        let Origin::New { zero, .. } = &l.origin else {
            unreachable!()
        };
        assert_eq!(
            zero,
            &vec![
                "self_attn.o_proj.weight".to_string(),
                "mlp.down_proj.weight".to_string()
            ]
        );
    }
}

/// LLaMA Pro (TencentARC/LLaMA-Pro block_expansion.py), 32 → 40 with 8 groups.
#[test]
fn llama_pro_preset_on_32_blocks_reproduces_block_expansion() {
    let m = map("[plan]\npreset = \"llama-pro\"\n", 32);
    assert_eq!(m.layers.len(), 40);
    assert!(m.pruned.is_empty());
    assert_eq!(m.new_indices(), vec![4, 9, 14, 19, 24, 29, 34, 39]);
    let mut expected = Vec::new();
    for i in 0..32usize {
        expected.push(format!("orig {i}"));
        if i % 4 == 3 {
            expected.push(format!("new copy {i} [train]"));
        }
    }
    assert_eq!(
        m.layers.iter().map(diff::describe).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn other_presets_on_32_blocks() {
    let prefix = resolve_str("[plan]\npreset = \"prefix\"\n", 32);
    let pm = prefix.map.clone().unwrap();
    assert_eq!(pm.new_indices(), (0..8).collect::<Vec<_>>());
    assert!(prefix.diagnostics.iter().any(|d| d.severity == Severity::Warning && d.message.contains("stacked at the bottom")));
    let suffix = map("[plan]\npreset = \"suffix\"\n", 32);
    assert_eq!(suffix.new_indices(), (32..40).collect::<Vec<_>>());
    let deep = map("[plan]\npreset = \"deep\"\n", 32);
    assert_eq!(deep.new_indices(), vec![17, 20, 23, 26, 29, 32, 35, 38]);
    assert!(deep.pruned.is_empty());
    let none = resolve_str("[plan]\npreset = \"none\"\n", 32);
    assert!(
        none.diagnostics
            .iter()
            .any(|d| d.message.contains("nothing is trainable"))
    );
    let none_trained = map(
        "[plan]\npreset = \"none\"\ntrain = { original = [29] }\n",
        32,
    );
    assert_eq!(none_trained.trainable_indices(), vec![29]);
}

#[test]
fn presets_scale_with_depth_smollm2() {
    let m = map("[plan]\npreset = \"slayer\"\n", 30);
    assert_eq!(m.new_indices(), vec![2, 5, 8, 11, 14, 17, 20]);
    assert_eq!(m.pruned, vec![28, 29]);
    assert_eq!(m.layers.len(), 35);
    let pro = map("[plan]\npreset = \"llama-pro\"\n", 30);
    assert_eq!(pro.new_blocks_count(), 7);
}

impl LayerMap {
    fn new_blocks_count(&self) -> usize {
        self.new_indices().len()
    }
}

#[test]
fn fields_override_the_preset() {
    let m = map(
        "[plan]\npreset = \"slayer\"\nnew_blocks = 2\nprune_last = 0\ntrain = { new = true, original = [29] }\n",
        32,
    );
    assert_eq!(m.new_indices(), vec![2, 5]);
    assert!(m.pruned.is_empty());
    assert_eq!(m.trainable_indices(), vec![2, 5, 31]);
    let m = map("[plan]\npreset = \"slayer\"\ninit = \"copy\"\n", 32);
    assert!(matches!(
        m.layers[2].origin,
        Origin::New {
            init: Init::Copy { source: 1 },
            ..
        }
    ));
    let m = map("[plan]\npreset = \"slayer\"\nprune = [0]\n", 32);
    assert_eq!(m.pruned, vec![0]);
    // Both ways of choosing pruned blocks at once: refused, not one silently preferred.
    let e = errors(
        "[plan]\npreset = \"slayer\"\nprune = [0]\nprune_last = 2\n",
        32,
    );
    assert!(
        e.iter().any(|m| m.contains("`prune` and `prune_last`")),
        "{e:?}"
    );
}

#[test]
fn explicit_insertions_with_scale_count_and_prefix() {
    let m = map(
        "[plan]\ninsert = [\n  { after = -1, init = \"copy\", source = 0 },\n  { after = 2, init = \"average\", sources = [2, 3], scale = { up_proj = 0.5 }, count = 2 },\n]\nprune = [1]\n",
        4,
    );
    let got: Vec<String> = m.layers.iter().map(diff::describe).collect();
    assert_eq!(
        got,
        vec![
            "new copy 0 [train]",
            "orig 0",
            "orig 2",
            "new avg(2,3) [train]",
            "new avg(2,3) [train]",
            "orig 3"
        ]
    );
    let Origin::New { scale, .. } = &m.layers[3].origin else {
        unreachable!()
    };
    assert_eq!(scale.get("mlp.up_proj.weight"), Some(&0.5));
}

#[test]
fn without_pruning_restores_every_original() {
    let m = map("[plan]\npreset = \"slayer\"\n", 32);
    let full = m.without_pruning();
    assert_eq!(full.layers.len(), 40);
    assert_eq!(full.new_indices(), m.new_indices());
}

/// Every error class, with the position it points at.
#[test]
fn validation_messages_point_into_the_file() {
    let cases: &[(&str, &str)] = &[
        (
            "[plan]\ninsert = [{ after = 40 }]\n",
            "plan.toml:2:21: error: insert after 40 is out of range: use -1 (before block 0) to 31",
        ),
        (
            "[plan]\npreset = \"slayer\"\nprune = [3, 3]\n",
            "plan.toml:3:13: error: block 3 is pruned twice",
        ),
        (
            "[plan]\npreset = \"slayer\"\nprune = [32]\n",
            "plan.toml:3:10: error: prune index 32 is out of range: the base model has blocks 0..=31",
        ),
        (
            "[plan]\npreset = \"slayer\"\nprune = [1]\n",
            "plan.toml:3:10: error: block 1 is pruned but a new block is initialised from it",
        ),
        (
            "[plan]\npreset = \"slayer\"\ntrain = [50]\n",
            "plan.toml:3:9: error: train index 50 is out of range: the resolved model has blocks 0..=37",
        ),
        (
            "[plan]\npreset = \"slayer\"\ntrain = { original = [31] }\n",
            "plan.toml:3:9: error: original block 31 is pruned, so it cannot train",
        ),
        (
            "[plan]\npreset = \"none\"\n",
            "plan.toml:2:10: error: nothing is trainable: insert blocks or say what trains with `train`",
        ),
        (
            "[plan]\npreset = \"slayr\"\n",
            "plan.toml:2:10: error: unknown preset `slayr` (known: slayer, llama-pro, prefix, suffix, deep, none)",
        ),
        (
            "[plan]\ninsert = [{ after = 31, init = \"average\" }]\n",
            "plan.toml:2:11: error: average init after the last block 31 needs block 32, which does not exist; use init = \"copy\" or give `sources`",
        ),
        (
            "[plan]\ninsert = [{ after = 1, zero = [\"q_prj\"] }]\n",
            "plan.toml:2:31: error: unknown block tensor `q_prj` (one of: input_layernorm, self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj, post_attention_layernorm, mlp.gate_proj, mlp.up_proj, mlp.down_proj)",
        ),
        (
            "[plan]\npreset = \"none\"\nprune = [0, 1, 2, 3]\ntrain = \"all\"\n",
            "plan.toml:3:9: error: the plan leaves no blocks at all",
        ),
    ];
    for (text, expected) in cases {
        let layers = if text.contains("[0, 1, 2, 3]") { 4 } else { 32 };
        let errs = errors(text, layers);
        assert!(
            errs.iter().any(|e| e == expected),
            "for {text:?}\nexpected {expected}\ngot {errs:#?}"
        );
    }
}

#[test]
fn syntax_and_unknown_fields_are_diagnostics_with_positions() {
    let err = parse("[plan]\npreset = \"slayer\"\nnew_blocs = 3\n").unwrap_err();
    assert_eq!(
        err.position("[plan]\npreset = \"slayer\"\nnew_blocs = 3\n"),
        Some((3, 1))
    );
    assert!(err.message.contains("new_blocs"), "{}", err.message);
    let text = "[plan\npreset = 1\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.position(text).map(|p| p.0), Some(1));
    let err = parse("[plna]\n").unwrap_err();
    assert!(err.message.contains("plna"));
}

#[test]
fn mergekit_round_trip_for_copy_plans() {
    let m = map("[plan]\npreset = \"llama-pro\"\nprune = [30]\n", 32);
    let exported = interchange::to_mergekit(&m, "base-model", "bfloat16");
    assert!(exported.warnings.is_empty());
    assert!(exported.text.contains("filter: o_proj"));
    let imported = interchange::from_mergekit(&exported.text, Some(32)).unwrap();
    let back = map(&imported.text, 32);
    assert_eq!(back.layers, m.layers);
    assert_eq!(back.pruned, m.pruned);
}

#[test]
fn mergekit_export_of_averaged_init_says_what_is_lost() {
    let m = map("[plan]\npreset = \"slayer\"\n", 32);
    let exported = interchange::to_mergekit(&m, "base", "bfloat16");
    assert_eq!(exported.warnings.len(), 8);
    assert!(exported.warnings[0].contains("cannot average"));
    let back = map(
        &interchange::from_mergekit(&exported.text, Some(32))
            .unwrap()
            .text,
        32,
    );
    assert_eq!(back.new_indices(), m.new_indices());
    assert_eq!(back.pruned, vec![30, 31]);
    assert!(matches!(
        back.layers[2].origin,
        Origin::New {
            init: Init::Copy { source: 1 },
            ..
        }
    ));
}

#[test]
fn mergekit_import_refuses_real_merges() {
    let yaml = "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 4]\n      - model: b\n        layer_range: [0, 4]\nmerge_method: slerp\n";
    assert!(
        interchange::from_mergekit(yaml, None)
            .unwrap_err()
            .contains("slerp")
    );
}

#[test]
fn llamafactory_export_expresses_only_what_it_can() {
    let pro = map("[plan]\npreset = \"llama-pro\"\n", 32);
    let out = interchange::to_llamafactory(&pro, "out/expanded").unwrap();
    assert!(
        out.text.contains("freeze_trainable_layers: 8") && out.text.contains("use_llama_pro: true")
    );
    let suffix = map("[plan]\npreset = \"suffix\"\n", 32);
    assert!(
        interchange::to_llamafactory(&suffix, "x")
            .unwrap()
            .text
            .contains("freeze_trainable_layers: 8\n")
    );
    let slayer = map("[plan]\npreset = \"slayer\"\n", 32);
    let err = interchange::to_llamafactory(&slayer, "x").unwrap_err();
    assert!(err.contains("[2, 5, 8, 11, 14, 17, 20, 23]"), "{err}");
}

#[test]
fn diff_marks_changed_rows() {
    let a = map("[plan]\npreset = \"slayer\"\n", 32);
    let b = map("[plan]\npreset = \"llama-pro\"\n", 32);
    let rows = diff::diff(&a, &b);
    // 32 originals, and the union of the new blocks' places: SLayer's after 1, 3, … and
    // LLaMA Pro's after 3, 7, … (after 3 and 7 both insert: one shared row each).
    let originals: Vec<&diff::DiffRow> = rows.iter().filter(|r| r.original.is_some()).collect();
    assert_eq!(originals.len(), 32);
    // Original blocks are aligned, whatever their final index: block 10 is unchanged although
    // the plans put it at different final indices; SLayer prunes the deepest blocks.
    let ten = originals[10];
    assert!(!ten.changed());
    assert_ne!(ten.a.as_ref().unwrap().index, ten.b.as_ref().unwrap().index);
    assert!(originals[31].a.is_none() && originals[31].b.is_some() && originals[31].changed());
    // A new block in only one plan is a changed row with one side empty.
    let only_a = rows
        .iter()
        .find(|r| r.original.is_none() && r.b.is_none())
        .unwrap();
    assert!(only_a.changed());
    let unchanged = rows.iter().filter(|r| !r.changed()).count();
    assert!(unchanged > 10, "{unchanged} aligned rows agree");
}

#[test]
fn totals_for_the_paper_layout() {
    // Llama-2-7B: 6.74B parameters; S strategy → 7.95B ("8B"), 25% trainable.
    let config = crate::config::LlamaConfig {
        vocab_size: 32_000,
        hidden_size: 4096,
        intermediate_size: 11_008,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 32,
        head_dim: 128,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        ..crate::model::random::tiny_config()
    };
    let m = map("[plan]\npreset = \"slayer\"\n", 32);
    let t = Totals::compute(&m, &config, MemoryParams::default());
    assert_eq!(t.base_params, 6_738_415_616);
    assert!((t.params as f64 / 1e9 - 7.95).abs() < 0.01, "{}", t.params);
    assert!(
        (t.trainable_share - 0.24).abs() < 0.01,
        "{}",
        t.trainable_share
    );
    assert_eq!(t.memory.weights, t.params * 2);
    assert_eq!(t.memory.optimizer, t.trainable_params * 12);
    // Chunked attention: kept activations grow with the sequence, not its square (the transient
    // chunk of scores grows linearly too), and recomputation keeps only the frozen blocks'
    // inputs and outputs.
    let at = |seq_len, recompute| {
        Totals::compute(
            &m,
            &config,
            MemoryParams {
                seq_len,
                recompute,
                ..MemoryParams::default()
            },
        )
        .memory
        .activations
    };
    let (short, long) = (at(2048, false), at(4096, false));
    assert!(long < short * 21 / 10, "{short} → {long}");
    assert!(at(2048, true) < short / 2, "{} vs {short}", at(2048, true));
    // f32 on the CPU: fewer activations kept, scratch growing with the threads.
    let cpu = |threads| {
        Totals::compute(
            &m,
            &config,
            MemoryParams {
                element_bytes: 4,
                cpu_threads: Some(threads),
                ..MemoryParams::default()
            },
        )
        .memory
    };
    let gpu_f32 = Totals::compute(
        &m,
        &config,
        MemoryParams {
            element_bytes: 4,
            ..MemoryParams::default()
        },
    )
    .memory;
    assert_eq!(cpu(2).weights, gpu_f32.weights);
    assert!(cpu(2).activations < gpu_f32.activations);
    assert!(cpu(16).activations > cpu(2).activations);
}

#[test]
fn absurd_counts_are_errors_not_allocations() {
    assert!(
        errors(
            "[plan]\npreset = \"suffix\"\nnew_blocks = 1000000000000\n",
            32
        )[0]
        .contains("exceeds the limit")
    );
    assert!(
        errors(
            "[plan]\ninsert = [{ after = 1, count = 1000000000000 }]\n",
            32
        )[0]
        .contains("more than 4096")
    );
}

/// A run's `run_start` records the resolved map as JSON and every reader reads it back typed:
/// each preset, and a map with zeroed and scaled tensors, come back equal.
#[test]
fn resolved_maps_read_back_from_their_json() {
    let mut texts: Vec<String> = PRESETS
        .iter()
        .filter(|p| **p != "none")
        .map(|p| format!("[plan]\npreset = \"{p}\"\n"))
        .collect();
    texts.push(
        "[plan]\nzero = [\"mlp.down_proj.weight\"]\ninsert = [\n  { after = 1, init = \"copy\", \
         source = 1, scale = { up_proj = 0.5 } },\n  { after = 3, init = \"average\", \
         sources = [3, 4] },\n]\nprune = [2]\n"
            .into(),
    );
    for text in texts {
        let m = map(&text, 12);
        let json = serde_json::to_string(&m).unwrap();
        let back: LayerMap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m, "{text}");
    }
}

/// The emitters are serde's, so any model name survives them: a name with quotes, a colon, a
/// `#` and a newline comes back from the exported YAML and the converted TOML as it went in.
#[test]
fn exported_files_quote_any_model_name() {
    let name = "odd: \"name\" # not a comment\nsecond line";
    let m = map("[plan]\npreset = \"slayer\"\n", 12);
    let yaml = interchange::to_mergekit(&m, name, "bfloat16").text;
    let back = interchange::from_mergekit(&yaml, Some(12)).unwrap();
    let table: toml::Table = toml::from_str(&back.text).unwrap();
    assert_eq!(table["model"]["base"].as_str(), Some(name));
    let suggestion =
        crate::importance::suggestion_toml(name, crate::importance::Metric::Bi, &[1, 3], &[10]);
    let file = parse(&suggestion).unwrap();
    assert_eq!(file.model.unwrap().base, name);
    let resolved = resolve(&file.plan, 12);
    assert!(!resolved.has_errors(), "{:?}", resolved.diagnostics);
}
