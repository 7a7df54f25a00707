//! The console without a terminal: every screen, popup, empty and error state drawn into
//! ratatui's TestBackend at 80×24 and 160×48 and compared with insta snapshots (volatile text
//! redacted), and key sequences driven through the update function.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

mod common;

use std::fmt::Write as _;
use std::path::Path;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use slayer::core::events::{
    BlockStats, EvalRecord, EventKind, EventSink, PplRecord, RunStatus, TaskRecord,
};
use slayer::runner::EventLog;
use slayer::tui::app::{
    App, CancelFlag, ChatLine, ChatUpdate, Effect, Event, Input, JobId, Popup, Screen, Work,
};
use slayer::tui::keymap::{Context, Keymap};
use slayer::tui::theme::{self, ColorDepth};

/// A data directory with two experiments (one broken), a small model config, and two runs: one
/// finished with evaluations and per-block statistics, one that died mid-way.
fn fixture() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let d = home.path();
    std::fs::create_dir_all(d.join("experiments")).unwrap();
    std::fs::create_dir_all(d.join("models/tiny")).unwrap();
    std::fs::write(
        d.join("models/tiny/config.json"),
        serde_json::json!({
            "model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
            "tie_word_embeddings": false
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("experiments/facts.toml"),
        "name = \"facts\"\ndescription = \"Two new blocks in the shallow half.\"\n[model]\nbase = \"tiny\"\n[plan]\ninsert = [{ after = 1 }, { after = 3 }]\nprune = [7]\n[data.synth]\nentities = 3\n",
    )
    .unwrap();
    std::fs::write(
        d.join("experiments/broken.toml"),
        "name = \"broken\"\n[plan]\ninsert = \"x\"\n",
    )
    .unwrap();
    let spec =
        slayer::core::plan::parse("[plan]\ninsert = [{ after = 1 }, { after = 3 }]\nprune = [7]\n")
            .unwrap()
            .plan;
    let map = slayer::core::plan::resolve(&spec, 8).map.unwrap();
    for (id, steps, finished) in [
        ("20260101-000000-facts", 40u64, true),
        ("20260102-000000-facts", 12, false),
    ] {
        let run = d.join("runs").join(id);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("experiment.toml"),
            std::fs::read_to_string(d.join("experiments/facts.toml")).unwrap(),
        )
        .unwrap();
        let mut log = EventLog::open(&run.join("events.jsonl")).unwrap();
        log.emit(EventKind::RunStart {
            format: slayer::core::events::EVENT_FORMAT,
            run: id.into(),
            experiment: "name = \"facts\"\n".into(),
            plan: Some(map.clone()),
            config: None,
            trainable_params: 1000,
            total_steps: 40,
            resumed_from: None,
            environment: None,
        })
        .unwrap();
        let eval = |label: &str, step: u64, ppl: f64, acc: f64| {
            EventKind::Eval(EvalRecord {
                samples: vec![slayer::core::events::SampleRecord {
                    prompt: "Veloria was founded by".into(),
                    text: if label == "final" {
                        "Ada Marr in 1820."
                    } else {
                        "a king."
                    }
                    .into(),
                    expected: Some("Ada Marr".into()),
                }],
                label: label.into(),
                step,
                ppl: vec![PplRecord {
                    name: "general".into(),
                    tokens: 100,
                    perplexity: ppl,
                    bits_per_byte: 1.0,
                }],
                tasks: vec![TaskRecord {
                    name: "facts".into(),
                    items: 40,
                    acc,
                    acc_norm: acc,
                    acc_stderr: 0.05,
                }],
                quant: slayer::core::model::Quant::None,
            })
        };
        log.emit(eval("base", 0, 20.0, 0.25)).unwrap();
        log.emit(eval("expanded", 0, 20.0, 0.25)).unwrap();
        for s in 1..=steps {
            log.emit(EventKind::Step {
                step: s,
                loss: 4.0 / (1.0 + s as f64 / 10.0),
                lr: 1e-3,
                tokens: s * 256,
                tokens_per_sec: 1000.0,
                grad_norm: 1.0,
                clipped: false,
                blocks: [2usize, 5]
                    .iter()
                    .map(|&b| BlockStats {
                        block: b,
                        grad_norm: 0.1 * b as f64 + 1.0 / s as f64,
                        weight_norm: 5.0,
                        update_ratio: 1e-3,
                    })
                    .collect(),
            })
            .unwrap();
        }
        if finished {
            log.emit(EventKind::Warning {
                message: "loss spiked at step 30".into(),
            })
            .unwrap();
            log.emit(eval("final", 40, 24.5, 0.55)).unwrap();
            log.emit(EventKind::End {
                status: RunStatus::Finished,
                step: 40,
                message: String::new(),
            })
            .unwrap();
        }
        log.sync().unwrap();
        drop(log);
        // Fixed times (two seconds a step): rates and ETAs in the snapshots do not depend on
        // how fast the fixture was written.
        let path = run.join("events.jsonl");
        let fixed: String = slayer::runner::read_events(&path)
            .unwrap()
            .into_iter()
            .map(|mut e| {
                e.time = 1_767_225_600.0 + 2.0 * e.seq as f64;
                serde_json::to_string(&e).unwrap() + "\n"
            })
            .collect();
        std::fs::write(&path, fixed).unwrap();
    }
    home
}

fn app(home: &Path) -> App {
    let (themes, _) = theme::load_all(home, ColorDepth::Ansi256);
    let mut app = App::new(home, themes, Keymap::default(), false);
    // The plan editor's memory estimate counts per-thread scratch: pinned, so the screens do
    // not depend on the machine's CPUs.
    app.cpu_threads = Some(2);
    app.experiments = slayer::tui::load_experiments(home);
    let mut follower = slayer::runner::tail::Follower::all(home);
    app.update(Event::Follow(follower.poll_all()));
    give_series(&mut app, home);
    let mut runs = slayer::tui::load_runs(home);
    for r in &mut runs {
        r.age_secs = 3600.0;
    }
    app.update(Event::Runs(runs));
    app
}

/// Every run's step history from the store, as the follow thread sends it for the runs in view.
fn give_series(app: &mut App, home: &Path) {
    let store = slayer::store::Store::open(home, "test").unwrap();
    store.ingest_all(home, &[]).unwrap();
    for run in slayer::runner::list_runs(home) {
        let series = store.run_series(&run.id, 0).unwrap();
        // The console takes the history of runs in view only: each is in view (overlaid) for
        // the moment its history is given.
        app.overlay.push(run.id.clone());
        app.update(Event::Series {
            run: run.id.clone(),
            from: 0,
            series,
        });
        app.overlay.pop();
    }
}

fn app_with_keymap(home: &Path, keymap: Keymap) -> App {
    let mut a = app(home);
    a.keymap = keymap;
    a
}

/// The one job `effects` start: its id and what it does.
fn one_job(effects: &[Effect]) -> (JobId, Work) {
    match effects {
        [Effect::Job { id, work }] => (*id, work.clone()),
        other => panic!("expected one job, got {other:?}"),
    }
}

fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.update(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)))
}

fn ctrl(app: &mut App, c: char) -> Vec<Effect> {
    app.update(Event::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::CONTROL,
    )))
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn draw(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| f.render_widget(app, f.area())).unwrap();
    let buf = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// The screen as text, then each row's styles as runs of equal style
/// (`row: from..to fg bg modifiers`), so that a snapshot compares colours and modifiers too.
fn draw_styled(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| f.render_widget(app, f.area())).unwrap();
    let buf = terminal.backend().buffer().clone();
    let mut out = draw(app, w, h);
    out.push_str("-- styles (row: columns fg/bg modifiers)\n");
    for y in 0..h {
        let mut runs: Vec<(u16, u16, String)> = Vec::new();
        for x in 0..w {
            let cell = &buf[(x, y)];
            let style = format!("{:?}/{:?} {:?}", cell.fg, cell.bg, cell.modifier);
            match runs.last_mut() {
                Some((_, end, s)) if *s == style => *end = x + 1,
                _ => runs.push((x, x + 1, style)),
            }
        }
        // The default style is left out: a row of plain text lists nothing.
        let shown: Vec<String> = runs
            .into_iter()
            .filter(|(_, _, s)| s != "Reset/Reset NONE")
            .map(|(a, b, s)| format!("{a}..{b} {s}"))
            .collect();
        if !shown.is_empty() {
            writeln!(out, "{y}: {}", shown.join(", ")).unwrap();
        }
    }
    out
}

/// Snapshots `app` at both sizes, styled, with the temporary data directory redacted.
fn snap(name: &str, app: &App) {
    let data = app.data_dir.display().to_string();
    for (w, h) in [(80, 24), (160, 48)] {
        let screen = draw_styled(app, w, h).replace(&data, "<data>");
        // The path may be cut at the edge of a panel or of the screen: redact its random part
        // (`/tmp/.tmpXXXXXX`) wherever it starts.
        let screen = redact_temp_dirs(&screen);
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), screen);
    }
}

/// `/tmp/.tmp` followed by up to six letters or digits (a tempfile name, whole or cut) becomes
/// `<data>`.
fn redact_temp_dirs(screen: &str) -> String {
    let mut out = String::new();
    let mut rest = screen;
    while let Some(at) = rest.find("/tmp/.tmp") {
        out.push_str(&rest[..at]);
        out.push_str("<data>");
        let tail = &rest[at + "/tmp/.tmp".len()..];
        let random = tail
            .chars()
            .take(6)
            .take_while(char::is_ascii_alphanumeric)
            .count();
        rest = &tail[random..];
    }
    out.push_str(rest);
    out
}

#[test]
fn experiments_screens() {
    let home = fixture();
    let mut a = app(home.path());
    snap("experiments", &a);
    key(&mut a, KeyCode::Char('/'));
    typed(&mut a, "zzz");
    snap("experiments_filter_no_match", &a);
    let empty = tempfile::tempdir().unwrap();
    snap("experiments_empty", &app(empty.path()));
}

#[test]
fn filter_narrows_the_list_and_esc_clears_it() {
    let home = fixture();
    let mut a = app(home.path());
    assert_eq!(a.visible_experiments().len(), 2);
    key(&mut a, KeyCode::Char('/'));
    typed(&mut a, "fac");
    assert_eq!(a.input, Input::Filter);
    assert_eq!(a.visible_experiments().len(), 1);
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.visible_experiments().len(), 2);
    assert_eq!(a.input, Input::None);
}

#[test]
fn plan_editor_updates_the_layer_map_as_you_type_and_saves() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('j'));
    assert_eq!(a.current_experiment().unwrap().name, "facts");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Editor);
    let layers = |a: &App| {
        a.editor
            .as_ref()
            .unwrap()
            .analysis
            .map
            .as_ref()
            .map(|m| m.layers.len())
    };
    assert_eq!(layers(&a), Some(9));
    snap("editor", &a);
    // Remove the pruning: `prune = [7]` is line 7.
    for _ in 0..6 {
        key(&mut a, KeyCode::Down);
    }
    key(&mut a, KeyCode::End);
    key(&mut a, KeyCode::Backspace);
    key(&mut a, KeyCode::Backspace);
    assert_eq!(layers(&a), None, "`prune = [` does not parse");
    snap("editor_error", &a);
    typed(&mut a, "]");
    assert_eq!(layers(&a), Some(10));
    assert!(a.editor.as_ref().unwrap().dirty());
    ctrl(&mut a, 'o');
    snap("popup_diff", &a);
    key(&mut a, KeyCode::Esc);
    let effects = ctrl(&mut a, 's');
    assert!(
        matches!(&effects[..], [Effect::Job { work: Work::SaveFile { text, .. }, .. }] if text.contains("prune = []"))
    );
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.screen, Screen::Experiments);
}

#[test]
fn leaving_the_editor_with_edits_asks_and_external_changes_prompt() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Enter);
    typed(&mut a, "# note\n");
    key(&mut a, KeyCode::Esc);
    assert!(matches!(a.popup, Some(Popup::UnsavedLeave { .. })));
    snap("popup_unsaved", &a);
    key(&mut a, KeyCode::Right);
    key(&mut a, KeyCode::Right);
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Editor, "stay");
    // Another editor changes the file while ours has edits.
    let path = home.path().join("experiments/facts.toml");
    std::fs::write(
        &path,
        "name = \"facts\"\n[model]\nbase = \"tiny\"\n[plan]\npreset = \"llama-pro\"\n",
    )
    .unwrap();
    a.update(Event::Follow(vec![
        slayer::runner::tail::Update::Experiment(path),
    ]));
    snap("popup_external_change", &a);
    key(&mut a, KeyCode::Char('y'));
    assert!(a.editor.as_ref().unwrap().text().contains("llama-pro"));
    assert!(!a.editor.as_ref().unwrap().dirty());
}

#[test]
fn runs_monitor_and_their_actions() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('2'));
    snap("runs", &a);
    // Runs on Slurm show their job and node (or why they wait) where local runs say `local`.
    {
        use slayer::runner::slurm::{Job, JobState};
        let job = |id, state, reason: Option<&str>, node: Option<&str>| Job {
            id,
            state,
            reason: reason.map(str::to_string),
            node: node.map(str::to_string),
            restarts: 0,
        };
        let jobs = [
            Some(job(42, JobState::Running, None, Some("gpu-node-07"))),
            Some(job(43, JobState::Pending, Some("Resources"), None)),
            None,
        ];
        for (row, (id, j)) in a.runs.iter_mut().zip([42, 43, 44].into_iter().zip(jobs)) {
            row.slurm_job = Some(id);
            row.job = j;
        }
        snap("runs_slurm", &a);
        for row in &mut a.runs {
            row.slurm_job = None;
            row.job = None;
        }
    }
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Monitor);
    assert_eq!(a.monitored.as_deref(), Some("20260101-000000-facts"));
    snap("monitor", &a);
    key(&mut a, KeyCode::Char('l'));
    key(&mut a, KeyCode::Char('h'));
    assert!(a.monitor.log_y && a.monitor.update_ratio);
    key(&mut a, KeyCode::Esc);
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Char('o'));
    assert_eq!(a.overlay, vec!["20260102-000000-facts".to_string()]);
    assert!(matches!(
        &key(&mut a, KeyCode::Char('r'))[..],
        [Effect::Job { work: Work::ResumeRun(id), .. }] if id == "20260102-000000-facts"
    ));
    assert!(matches!(
        &key(&mut a, KeyCode::Char('K'))[..],
        [Effect::Job { work: Work::KillRun(id), .. }] if id == "20260102-000000-facts"
    ));
    let empty = tempfile::tempdir().unwrap();
    let mut e = app(empty.path());
    key(&mut e, KeyCode::Char('2'));
    snap("runs_empty", &e);
    key(&mut e, KeyCode::Char('3'));
    snap("monitor_empty", &e);
}

#[test]
fn chat_streams_side_by_side_and_ctrl_c_cancels() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('4'));
    snap("chat_empty", &a);
    let effects = a.run_command("chat run-a run-b");
    assert_eq!(
        effects,
        vec![Effect::ChatLoad(vec!["run-a".into(), "run-b".into()])]
    );
    snap("chat_loading", &a);
    a.update(Event::Chat(ChatUpdate::Loaded(vec![
        "run-a@40".into(),
        "run-b@12".into(),
    ])));
    // The sampling settings in effect are always shown (they were silent).
    a.update(Event::Chat(ChatUpdate::Settings(
        slayer::core::generate::SamplingParams::default().describe(),
    )));
    assert_eq!(a.input, Input::Chat);
    typed(&mut a, "Who founded Veloria?");
    let effects = key(&mut a, KeyCode::Enter);
    assert_eq!(
        effects,
        vec![Effect::ChatSend("Who founded Veloria?".into())]
    );
    for (m, t) in [
        (0, "Veloria was founded "),
        (0, "by Ada Marr."),
        (1, "I do not know."),
    ] {
        a.update(Event::Chat(ChatUpdate::Token {
            model: m,
            text: t.into(),
        }));
    }
    assert!(a.chat.generating);
    assert_eq!(ctrl(&mut a, 'c'), vec![Effect::ChatCancel]);
    a.update(Event::Chat(ChatUpdate::Done {
        model: 0,
        tokens: 7,
        tokens_per_sec: 15.5,
        stopped: false,
    }));
    a.update(Event::Chat(ChatUpdate::Done {
        model: 1,
        tokens: 5,
        tokens_per_sec: 14.0,
        stopped: true,
    }));
    assert!(!a.chat.generating);
    snap("chat_ab", &a);
    a.update(Event::Chat(ChatUpdate::Error(
        "run-c: run has no checkpoint yet".into(),
    )));
    assert!(matches!(a.chat.lines.last(), Some(ChatLine::Info(t)) if t.contains("no checkpoint")));
}

/// Keys typed while the chat models load go to the chat input, and a message entered then is
/// sent once they are loaded (it used to go to the screen's keymap and be lost).
#[test]
fn a_message_typed_while_the_model_loads_is_sent_once_it_has_loaded() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('4'));
    a.run_command("chat run-a");
    assert_eq!(a.input, Input::Chat, "typing starts at once");
    typed(&mut a, "qj:Who founded Veloria?");
    assert_eq!(a.screen, Screen::Chat, "q, j and : are text here");
    assert_eq!(key(&mut a, KeyCode::Enter), Vec::<Effect>::new());
    assert!(
        matches!(a.chat.lines.last(), Some(ChatLine::Info(t)) if t.contains("once the model has loaded"))
    );
    let effects = a.update(Event::Chat(ChatUpdate::Loaded(vec!["run-a@40".into()])));
    assert_eq!(
        effects,
        vec![Effect::ChatSend("qj:Who founded Veloria?".into())]
    );
    assert!(a.chat.generating);
    assert!(
        matches!(a.chat.lines.last(), Some(ChatLine::User(t)) if t == "qj:Who founded Veloria?")
    );
}

/// Jobs have identities: an end names its job, so stopping a run while an expansion runs ends
/// the stop, not the expansion; `C` cancels the newest job that has a process, and says so when
/// there is none.
#[test]
fn jobs_end_by_identity() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('j'));
    let [Effect::Job { id: expand, .. }] = key(&mut a, KeyCode::Char('E'))[..] else {
        panic!("no expand job");
    };
    key(&mut a, KeyCode::Char('2'));
    let [
        Effect::Job {
            id: stop,
            work: Work::StopRun(_),
        },
    ] = key(&mut a, KeyCode::Char('s'))[..]
    else {
        panic!("no stop job");
    };
    assert_ne!(expand, stop);
    assert_eq!(a.jobs.len(), 2);
    let (expand_flag, stop_flag) = (CancelFlag::default(), CancelFlag::default());
    a.update(Event::JobStarted {
        id: expand,
        cancel: expand_flag.clone(),
    });
    a.update(Event::JobStarted {
        id: stop,
        cancel: stop_flag,
    });
    a.update(Event::JobDone {
        id: stop,
        ok: true,
        message: "run stopped".into(),
    });
    let labels: Vec<&str> = a.jobs.iter().map(|j| j.label.as_str()).collect();
    assert_eq!(labels.len(), 1);
    assert!(labels[0].starts_with("expanding"), "{labels:?}");
    assert_eq!(
        key(&mut a, KeyCode::Char('C')),
        vec![Effect::CancelJob {
            id: expand,
            cancel: expand_flag
        }]
    );
    // An end for a job the console does not know changes nothing.
    a.update(Event::JobDone {
        id: JobId(999),
        ok: true,
        message: "stray".into(),
    });
    assert_eq!(a.jobs.len(), 1);
    a.update(Event::JobDone {
        id: expand,
        ok: false,
        message: "interrupted".into(),
    });
    assert!(a.jobs.is_empty());
    key(&mut a, KeyCode::Char('C'));
    assert!(matches!(&a.status, Some((false, m)) if m == "no job is running"));
}

#[test]
fn popups_and_the_status_line() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('?'));
    snap("popup_help", &a);
    key(&mut a, KeyCode::Esc);
    key(&mut a, KeyCode::Char('n'));
    snap("popup_templates", &a);
    key(&mut a, KeyCode::Enter);
    typed(&mut a, "mine");
    snap("popup_name", &a);
    let effects = key(&mut a, KeyCode::Enter);
    let [
        Effect::Job {
            id: create,
            work: Work::CreateExperiment { name, template },
        },
    ] = &effects[..]
    else {
        panic!("{effects:?}");
    };
    assert!(name == "mine" && template == "smollm2-slayer");
    a.update(Event::JobDone {
        id: *create,
        ok: true,
        message: "created mine".into(),
    });
    key(&mut a, KeyCode::Char('D'));
    snap("popup_delete", &a);
    let effects = key(&mut a, KeyCode::Char('y'));
    let [
        Effect::Job {
            id: delete,
            work: Work::DeleteExperiment(p),
        },
    ] = &effects[..]
    else {
        panic!("{effects:?}");
    };
    assert!(p.ends_with("broken.toml"));
    a.update(Event::JobDone {
        id: *delete,
        ok: true,
        message: "deleted broken".into(),
    });
    a.popup = Some(Popup::Error {
        title: "cannot load".into(),
        message: "runs/x/events.jsonl line 3: not a slayer event".into(),
    });
    snap("popup_error", &a);
    a.popup = None;
    a.update(Event::Status(
        false,
        "the store <data>/store is in use by pid 42 (slayer console) (retrying)".into(),
    ));
    snap("status_error", &a);
    // Quitting with a running run asks; the default leaves it running.
    a.runs[0].status = slayer::runner::RunState::Running;
    key(&mut a, KeyCode::Char('q'));
    snap("popup_quit", &a);
    assert_eq!(
        key(&mut a, KeyCode::Enter),
        vec![Effect::Quit { stop_runs: false }]
    );
}

/// The help screen lists every binding of the keymap, so the two cannot drift.
#[test]
fn help_is_generated_from_the_keymap() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('?'));
    let mut screen = String::new();
    for scroll in 0..200 {
        a.popup = Some(Popup::Help { scroll });
        screen.push_str(&draw(&a, 160, 48));
    }
    for context in slayer::tui::keymap::Context::ALL {
        assert!(screen.contains(context.title()), "help lacks {context:?}");
        if let Some(note) = context.unbound_keys() {
            assert!(screen.contains(note), "help lacks {note:?}");
        }
    }
    for b in &Keymap::default().bindings {
        assert!(
            screen.contains(b.description),
            "help lacks {:?}",
            b.description
        );
        for k in &b.keys {
            assert!(screen.contains(&k.label()), "help lacks key {}", k.label());
        }
    }
}

/// Escape sequences in file names, experiment text and model output reach the screen as inert
/// text: no ESC or other control character is ever put in a cell.
#[test]
fn escape_payloads_render_inert() {
    let home = fixture();
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred";
    std::fs::write(
        home.path().join("experiments/evil.toml"),
        format!(
            "name = \"{}\"\ndescription = \"{}\"\n",
            evil.replace('\u{1b}', "\\u001b")
                .replace('\u{7}', "\\u0007"),
            evil.replace('\u{1b}', "\\u001b")
                .replace('\u{7}', "\\u0007")
        ),
    )
    .unwrap();
    let mut a = app(home.path());
    assert!(a.experiments.iter().any(|e| e.name.contains('\u{1b}')));
    a.update(Event::Chat(ChatUpdate::Loaded(vec![evil.into()])));
    a.update(Event::Chat(ChatUpdate::Token {
        model: 0,
        text: evil.into(),
    }));
    for screen in [Screen::Experiments, Screen::Chat] {
        a.screen = screen;
        for (i, _) in a.experiments.clone().iter().enumerate() {
            a.selected_experiment = i;
            let out = draw(&a, 160, 48);
            assert!(
                !out.chars().any(|c| c.is_control() && c != '\n'),
                "{screen:?}: {out:?}"
            );
        }
    }
}

#[test]
fn every_shipped_theme_and_the_no_colour_mode_render() {
    let home = fixture();
    for depth in [ColorDepth::None, ColorDepth::Ansi16, ColorDepth::TrueColor] {
        let (themes, problems) = theme::load_all(home.path(), depth);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(themes.len(), 3);
        let mut a = app(home.path());
        a.themes = themes;
        for t in 0..3 {
            a.theme = t;
            key(&mut a, KeyCode::Char('2'));
            key(&mut a, KeyCode::Enter);
            draw(&a, 80, 24);
        }
    }
    // A broken user theme is reported with its file and skipped.
    std::fs::create_dir_all(home.path().join("themes")).unwrap();
    std::fs::write(
        home.path().join("themes/bad.toml"),
        "name = \"bad\"\n[colors]\ntext = \"#12\"\n",
    )
    .unwrap();
    let (themes, problems) = theme::load_all(home.path(), ColorDepth::Ansi256);
    assert_eq!(themes.len(), 3);
    assert!(
        problems[0].contains("themes/bad.toml") && problems[0].contains("#rrggbb"),
        "{problems:?}"
    );
}

#[test]
fn jobs_diff_against_another_experiment_and_live_theme_reload() {
    let home = fixture();
    let mut a = app(home.path());
    // Expand the selected experiment as a cancellable job.
    key(&mut a, KeyCode::Char('j'));
    let effects = key(&mut a, KeyCode::Char('E'));
    let [
        Effect::Job {
            id: expand,
            work: Work::Expand { out, .. },
        },
    ] = &effects[..]
    else {
        panic!("{effects:?}");
    };
    assert!(out.ends_with("expanded/facts"));
    let expand = *expand;
    snap("job_running", &a);
    let flag = CancelFlag::default();
    a.update(Event::JobStarted {
        id: expand,
        cancel: flag.clone(),
    });
    assert_eq!(
        key(&mut a, KeyCode::Char('C')),
        vec![Effect::CancelJob {
            id: expand,
            cancel: flag
        }]
    );
    a.update(Event::JobDone {
        id: expand,
        ok: false,
        message: "expanding facts (with verification): interrupted".into(),
    });
    assert!(a.jobs.is_empty());
    assert!(matches!(&a.status, Some((false, m)) if m.starts_with("cancelled")));
    // Export a run.
    key(&mut a, KeyCode::Char('2'));
    let effects = key(&mut a, KeyCode::Char('X'));
    assert!(
        matches!(&effects[..], [Effect::Job { work: Work::ExportRun { run, out }, .. }]
            if out.ends_with(format!("exports/{run}"))),
        "{effects:?}"
    );
    // :diff compares the editor with another experiment.
    key(&mut a, KeyCode::Char('1'));
    key(&mut a, KeyCode::Enter);
    a.run_command("diff broken");
    assert!(
        matches!(&a.popup, Some(Popup::Diff { lines, .. }) if lines.iter().any(|l| l.starts_with("+ prune")))
    );
    key(&mut a, KeyCode::Esc);
    // A theme edited on disk is reloaded live, the current one kept.
    a.run_command("theme light");
    assert_eq!(a.theme().name, "light");
    let user = home.path().join("themes");
    std::fs::create_dir_all(&user).unwrap();
    let mine = theme::built_in_sources()[1]
        .1
        .replace("name = \"light\"", "name = \"mine\"");
    std::fs::write(user.join("mine.toml"), mine).unwrap();
    a.update(Event::Follow(vec![
        slayer::runner::tail::Update::Experiment(user.join("mine.toml")),
    ]));
    assert_eq!(a.themes.len(), 4);
    assert_eq!(a.theme().name, "light");
    a.run_command("theme mine");
    assert_eq!(a.theme().name, "mine");
}

#[test]
fn importance_bars_and_a_plan_from_them() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('j'));
    let effects = key(&mut a, KeyCode::Char('i'));
    let [
        Effect::Job {
            id,
            work: Work::Importance { name, base, .. },
        },
    ] = &effects[..]
    else {
        panic!("{effects:?}");
    };
    assert!(name == "facts" && base == "tiny");
    let id = *id;
    let view = slayer::tui::app::ImportanceView {
        experiment: "facts".into(),
        experiment_path: home.path().join("experiments/facts.toml"),
        metrics: vec![
            (
                "bi".into(),
                vec![1.0, 0.17, 0.03, 0.04, 0.05, 0.02, 0.03, 0.15],
            ),
            (
                "angular".into(),
                vec![0.5, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3],
            ),
        ],
        suggestion: home.path().join("importance/facts-suggested.toml"),
    };
    a.update(Event::Importance { id, view });
    assert!(a.jobs.is_empty());
    snap("popup_importance", &a);
    key(&mut a, KeyCode::Tab);
    assert_eq!(
        a.popup,
        Some(Popup::Importance {
            metric: 1,
            scroll: 0
        })
    );
    let effects = key(&mut a, KeyCode::Char('p'));
    assert!(
        matches!(&effects[..], [Effect::Job { work: Work::PlanFromSuggestion { name, .. }, .. }] if name == "facts-importance")
    );
    // Sampling settings go to the chat worker, with a note in the conversation.
    a.update(Event::Chat(ChatUpdate::Loaded(vec!["m".into()])));
    typed(&mut a, "/temperature 0");
    assert_eq!(
        key(&mut a, KeyCode::Enter),
        vec![Effect::ChatSend("/temperature 0".into())]
    );
    assert!(matches!(a.chat.lines.last(), Some(ChatLine::Info(t)) if t.contains("temperature 0")));
}

/// Writes the study `tiny` into the fixture as `study run` would: two layouts on two corpora, the
/// facts cells mapped to the fixture's runs (one finished, one that died), the words cells not
/// started.
fn tiny_study(home: &Path) {
    let dir = home.join("studies/tiny");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("study.toml"),
        "name = \"tiny\"\ndescription = \"two layouts\"\nseeds = [0]\n[base.model]\nbase = \"tiny\"\n\
         [[strategy]]\nname = \"shallow\"\nplan = { insert = [{ after = 1 }] }\n\
         [[strategy]]\nname = \"deep\"\nplan = { insert = [{ after = 6 }] }\n\
         [[corpus]]\nname = \"facts\"\ndata = { synth = { entities = 3 } }\n\
         [[corpus]]\nname = \"words\"\ndata = { train = \"/nonexistent/words.txt\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cells.json"),
        r#"{"facts-shallow-s0": "20260101-000000-facts", "facts-deep-s0": "20260102-000000-facts"}"#,
    )
    .unwrap();
}

/// `:study NAME` opens the study screen: the comparison table of each corpus (the base model,
/// then each strategy) and the strategies' loss curves; enter overlays a strategy's seeds in the
/// monitor; a change in the run table reads the study again.
#[test]
fn a_study_is_compared_on_its_screen() {
    let home = fixture();
    tiny_study(home.path());
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('5'));
    assert_eq!(a.screen, Screen::Study);
    snap("study_none", &a);
    assert_eq!(
        a.run_command("study tiny"),
        vec![Effect::LoadStudy {
            name: "tiny".into(),
            open: true
        }]
    );
    let view = slayer::tui::load_study(home.path(), "tiny").unwrap();
    assert_eq!((view.runs.len(), view.cells), (2, 4));
    let facts = &view.tables[0].1;
    assert_eq!(facts.rows[0][0], "base model");
    let row = |name: &str| facts.rows.iter().find(|r| r[0] == name).unwrap().clone();
    // The finished run's final evaluation; the dead run has none yet.
    assert!(
        row("shallow").contains(&"0.550".to_string()),
        "{:?}",
        row("shallow")
    );
    assert_eq!(row("shallow").last().unwrap(), "1/1");
    assert_eq!(row("deep").last().unwrap(), "0/1");
    a.update(Event::Study {
        view: view.clone(),
        open: true,
    });
    assert_eq!(a.screen, Screen::Study);
    snap("study", &a);
    key(&mut a, KeyCode::Char('c'));
    assert_eq!(a.study_corpus, 1);
    snap("study_corpus_not_started", &a);
    key(&mut a, KeyCode::Char('c'));
    assert_eq!(a.study_corpus, 0);
    // Enter on `deep`: its seeds in the monitor.
    key(&mut a, KeyCode::Down);
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Monitor);
    assert_eq!(a.overlay, vec!["20260102-000000-facts".to_string()]);
    // Back on the study screen, a run that moved reads the study again; an unchanged table
    // does not.
    key(&mut a, KeyCode::Char('5'));
    let mut runs = slayer::tui::load_runs(home.path());
    let row = runs
        .iter_mut()
        .find(|r| r.id == "20260102-000000-facts")
        .unwrap();
    row.step += 1;
    assert_eq!(
        a.update(Event::Runs(runs.clone())),
        vec![Effect::LoadStudy {
            name: "tiny".into(),
            open: false
        }]
    );
    assert!(a.update(Event::Runs(runs)).is_empty());
    // A refresh keeps the screen and the selection.
    a.update(Event::Study { view, open: false });
    assert_eq!((a.screen, a.study_row), (Screen::Study, 1));
    // A study that was never run is an error on the status line, naming where it looked.
    let err = slayer::tui::load_study(home.path(), "nope")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("no study \"nope\"") && err.contains("studies/nope/study.toml"),
        "{err}"
    );
    a.update(Event::Status(false, format!("study nope: {err}")));
    snap("study_error", &a);
}

/// Every key is looked up in one context (popup, text field, editor, screen): what the help
/// lists is what keys do there.
#[test]
fn keys_act_in_their_context() {
    let home = fixture();
    let mut a = app(home.path());
    // `G` goes to the end of the help (it used to close it); an unbound key leaves it open.
    key(&mut a, KeyCode::Char('?'));
    key(&mut a, KeyCode::Char('G'));
    let end = match a.popup {
        Some(Popup::Help { scroll }) => scroll,
        ref other => panic!("help closed: {other:?}"),
    };
    assert!(end > 10, "scrolled to {end}");
    key(&mut a, KeyCode::Char('G'));
    assert!(
        matches!(a.popup, Some(Popup::Help { scroll }) if scroll == end),
        "bounded"
    );
    key(&mut a, KeyCode::Char('x'));
    assert!(a.popup.is_some());
    snap("help_at_the_end", &a);
    key(&mut a, KeyCode::Esc);
    assert!(a.popup.is_none());
    // Tab moves between screens; shift-tab back.
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.screen, Screen::Runs);
    key(&mut a, KeyCode::BackTab);
    assert_eq!(a.screen, Screen::Experiments);
    // In the plan editor tab indents the text, `q` is a letter, and ctrl-g opens the `:` line,
    // where `:diff NAME` compares the editor with another experiment.
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Editor);
    let before = a.editor.as_ref().unwrap().text();
    key(&mut a, KeyCode::Tab);
    key(&mut a, KeyCode::Char('q'));
    let after = a.editor.as_ref().unwrap().text();
    assert_eq!(a.screen, Screen::Editor);
    assert!(
        after.starts_with(' ') && after.trim_start().starts_with('q'),
        "{after:?}"
    );
    assert_eq!(after.len(), before.len() + after.find('q').unwrap() + 1);
    ctrl(&mut a, 'g');
    assert_eq!(a.input, Input::Command);
    typed(&mut a, "diff broken");
    snap("editor_command_line", &a);
    key(&mut a, KeyCode::Enter);
    assert!(
        matches!(a.popup, Some(Popup::Diff { .. })),
        "{:?}",
        a.status
    );
    assert_eq!(a.screen, Screen::Editor);
    key(&mut a, KeyCode::Esc);
    // The `:` line: backspace on an empty line closes it, ctrl-u clears it.
    ctrl(&mut a, 'g');
    typed(&mut a, "runs");
    ctrl(&mut a, 'u');
    assert_eq!(a.command, "");
    key(&mut a, KeyCode::Backspace);
    assert_eq!(a.input, Input::None);
    // Leaving with edits asks (right, right: "stay"; left: "discard").
    key(&mut a, KeyCode::Esc);
    assert!(matches!(a.popup, Some(Popup::UnsavedLeave { choice: 0 })));
    key(&mut a, KeyCode::Right);
    key(&mut a, KeyCode::Right);
    key(&mut a, KeyCode::Left);
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.screen, Screen::Experiments);
    // A name prompt takes letters, digits, - and _ only.
    key(&mut a, KeyCode::Char('y'));
    ctrl(&mut a, 'u');
    typed(&mut a, "a b/c");
    assert!(matches!(&a.popup, Some(Popup::Name { input, .. }) if input == "abc"));
    key(&mut a, KeyCode::Backspace);
    assert!(matches!(
        key(&mut a, KeyCode::Enter).as_slice(),
        [Effect::Job { work: Work::DuplicateExperiment { name, .. }, .. }] if name == "ab"
    ));
    assert!(a.popup.is_none());
}

/// A key rebound in keymap.toml changes what it does in that context, and only there; `none`
/// unbinds a key; an action bound where it means nothing is refused with the section named.
#[test]
fn rebinding_a_key_changes_what_it_does_in_its_context() {
    let keymap = Keymap::with_overrides(
        r#"
[keys]
"x" = "quit"
[runs]
"S" = "stop"
"s" = "none"
[editor]
"ctrl-w" = "save"
[chat]
"ctrl-x" = "cancel"
[input]
"ctrl-j" = "send"
"enter" = "none"
[popup]
"x" = "back"
"#,
    )
    .unwrap();
    let home = fixture();
    let mut a = app_with_keymap(home.path(), keymap);
    // [popup]: x closes a popup; on a screen it quits ([keys]).
    key(&mut a, KeyCode::Char('?'));
    assert!(key(&mut a, KeyCode::Char('x')).is_empty());
    assert!(a.popup.is_none());
    // [runs]: s no longer stops, S does.
    key(&mut a, KeyCode::Char('2'));
    assert!(!a.runs.is_empty());
    assert!(key(&mut a, KeyCode::Char('s')).is_empty());
    assert!(matches!(
        key(&mut a, KeyCode::Char('S')).as_slice(),
        [Effect::Job {
            work: Work::StopRun(_),
            ..
        }]
    ));
    // [editor]: ctrl-w saves (and ctrl-s still does).
    key(&mut a, KeyCode::Char('1'));
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Enter);
    typed(&mut a, "# edit\n");
    assert!(matches!(
        ctrl(&mut a, 'w').as_slice(),
        [Effect::Job {
            work: Work::SaveFile { .. },
            ..
        }]
    ));
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.screen, Screen::Experiments);
    // [input]: in the chat input enter no longer sends, ctrl-j does; [chat]: ctrl-x cancels.
    a.run_command("chat run-a");
    a.update(Event::Chat(ChatUpdate::Loaded(vec!["run-a@40".into()])));
    assert_eq!(a.input, Input::Chat);
    typed(&mut a, "hello");
    assert!(key(&mut a, KeyCode::Enter).is_empty());
    assert_eq!(a.chat.input, "hello");
    assert_eq!(ctrl(&mut a, 'j'), vec![Effect::ChatSend("hello".into())]);
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.input, Input::None);
    assert_eq!(ctrl(&mut a, 'x'), vec![Effect::ChatCancel]);
    // The help shows the keys as rebound.
    key(&mut a, KeyCode::Char('?'));
    let help = draw(&a, 160, 48);
    assert!(help.contains("x/esc/q closes"), "{help}");
    key(&mut a, KeyCode::Char('x'));
    assert_eq!(
        key(&mut a, KeyCode::Char('x')),
        vec![Effect::Quit { stop_runs: false }]
    );
    assert_eq!(
        a.keymap
            .keys_of(Context::Input, slayer::tui::keymap::Action::Send, "-"),
        "ctrl-j"
    );
}

/// The monitor's log pane keeps its newest line in view when lines wrap (it once dropped the
/// newest events as soon as one wrapped), scrolls back and forward, and searches.
#[test]
fn the_log_pane_keeps_the_newest_line_scrolls_and_searches() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('2'));
    key(&mut a, KeyCode::Enter);
    let id = a.monitored.clone().unwrap();
    // A long warning that wraps several times, then one more event.
    let event = |seq: u64, kind: EventKind| slayer::core::events::Event {
        seq,
        time: 1.0,
        kind,
    };
    a.update(Event::Follow(vec![slayer::runner::tail::Update::Events {
        run: id.clone(),
        reset: false,
        events: vec![
            event(
                1000,
                EventKind::Warning {
                    message: format!("a long warning {}", "that wraps ".repeat(30)),
                },
            ),
            event(
                1001,
                EventKind::Warning {
                    message: "the newest line".into(),
                },
            ),
        ],
    }]));
    for (w, h) in [(80, 24), (160, 48)] {
        let screen = draw(&a, w, h);
        assert!(screen.contains("the newest line"), "{w}x{h}:\n{screen}");
    }
    // Back a line, a page, to the oldest; G follows again.
    key(&mut a, KeyCode::Char('k'));
    assert_eq!(a.log_view.scroll, 1);
    assert!(draw(&a, 160, 48).contains("1 newer lines below"));
    ctrl(&mut a, 'u');
    assert_eq!(a.log_view.scroll, 11);
    key(&mut a, KeyCode::Char('g'));
    let len = a.run_data[&id].log.len();
    assert_eq!(a.log_view.scroll, len - 1);
    // New lines while scrolled back leave the view where it is.
    a.update(Event::Follow(vec![slayer::runner::tail::Update::Events {
        run: id.clone(),
        reset: false,
        events: vec![event(
            1002,
            EventKind::Warning {
                message: "later".into(),
            },
        )],
    }]));
    assert_eq!(a.log_view.scroll, len);
    key(&mut a, KeyCode::Char('G'));
    assert_eq!(a.log_view.scroll, 0);
    // Search: the newest match comes to the bottom; n goes to older ones, N back.
    key(&mut a, KeyCode::Char('/'));
    assert_eq!(a.input, Input::LogSearch);
    typed(&mut a, "step 3");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.input, Input::None);
    let newest_match = a.log_view.scroll;
    let log = &a.run_data[&id].log;
    assert!(log[log.len() - 1 - newest_match].contains("step 3"));
    key(&mut a, KeyCode::Char('n'));
    assert!(a.log_view.scroll > newest_match);
    key(&mut a, KeyCode::Char('N'));
    assert_eq!(a.log_view.scroll, newest_match);
    snap("monitor_log_search", &a);
    key(&mut a, KeyCode::Char('N'));
    assert!(matches!(&a.status, Some((false, m)) if m.contains("no newer log line")));
}

/// Status messages clear once shown long enough, so the line never reports a state that is
/// over (it kept "resumed in the background" on a run stopped since); a problem stays longer.
#[test]
fn status_messages_expire() {
    let home = fixture();
    let mut a = app(home.path());
    a.now = 1000.0;
    a.update(Event::Status(true, "resumed in the background".into()));
    a.now = 1005.0;
    a.update(Event::Tick);
    assert!(a.status.is_some());
    a.now = 1011.0;
    a.dirty = false;
    a.update(Event::Tick);
    assert!(a.status.is_none());
    assert!(a.dirty, "the cleared line is redrawn");
    a.update(Event::Status(false, "cannot stop: no worker".into()));
    a.now = 1030.0;
    a.update(Event::Tick);
    assert!(a.status.is_some(), "a problem stays 30 s");
    a.now = 1042.0;
    a.update(Event::Tick);
    assert!(a.status.is_none());
    // A tick that changes nothing shown does not redraw.
    a.dirty = false;
    a.update(Event::Tick);
    assert!(!a.dirty);
}

/// `E` and `v` are typed jobs whose results come back and are shown: the verification of an
/// expansion, the evaluation of a run's checkpoint.
#[test]
fn expansion_and_evaluation_results_are_shown() {
    use slayer::core::surgery::{ExpandSummary, Verification};
    use slayer::tui::app::JobOutcome;
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('j'));
    let (id, work) = one_job(&key(&mut a, KeyCode::Char('E')));
    assert!(matches!(&work, Work::Expand { experiment, .. } if experiment == "facts"));
    a.update(Event::JobOutcome {
        id,
        outcome: JobOutcome::Expanded {
            experiment: "facts".into(),
            summary: ExpandSummary {
                out: home.path().join("expanded/facts"),
                blocks: 10,
                tensors: 93,
                pruned: vec![7],
                verification: Some(Verification {
                    sample_tokens: 120,
                    identity_max_abs_diff: 0.0,
                    written_max_abs_diff: 0.0,
                    written_exact: true,
                    base_perplexity: 12.5,
                    expanded_perplexity: 14.0,
                }),
            },
        },
    });
    assert!(a.jobs.is_empty());
    assert!(matches!(a.popup, Some(Popup::Outcome { .. })));
    snap("popup_expanded", &a);
    key(&mut a, KeyCode::Esc);
    key(&mut a, KeyCode::Char('2'));
    let (id, work) = one_job(&key(&mut a, KeyCode::Char('v')));
    let Work::EvaluateRun(run) = work else {
        panic!("{work:?}");
    };
    a.update(Event::JobOutcome {
        id,
        outcome: JobOutcome::Evaluated {
            run,
            record: EvalRecord {
                samples: Vec::new(),
                label: "checkpoint".into(),
                step: 40,
                ppl: vec![PplRecord {
                    name: "general".into(),
                    tokens: 100,
                    perplexity: 21.5,
                    bits_per_byte: 1.1,
                }],
                tasks: vec![TaskRecord {
                    name: "facts".into(),
                    items: 40,
                    acc: 0.55,
                    acc_norm: 0.5,
                    acc_stderr: 0.05,
                }],
                quant: slayer::core::model::Quant::None,
            },
        },
    });
    snap("popup_evaluated", &a);
    let screen = draw(&a, 160, 48);
    assert!(
        screen.contains("21.500") && screen.contains("acc 0.550"),
        "{screen}"
    );
}

/// Alerts raised by events that arrive while the console is open are told wherever the user
/// is (the status line, the bell with `--bell`); `!` lists every alert of every run, the
/// history's included.
#[test]
fn alerts_are_told_wherever_the_user_is() {
    let home = fixture();
    let mut a = app(home.path());
    a.bell = true;
    // The fixture's history already holds one (the finished run's end): listed, not told.
    assert!(a.status.is_none());
    assert!(!a.alerts.is_empty());
    let id = "20260102-000000-facts".to_string();
    let step = |s: u64, loss: f64| slayer::core::events::Event {
        seq: 100 + s,
        time: 1.0,
        kind: EventKind::Step {
            step: s,
            loss,
            lr: 1e-3,
            tokens: 0,
            tokens_per_sec: 1000.0,
            grad_norm: if loss.is_finite() { 1.0 } else { f64::NAN },
            clipped: false,
            blocks: Vec::new(),
        },
    };
    // On the chat screen: a non-finite step of a run that is not shown.
    key(&mut a, KeyCode::Char('4'));
    let effects = a.update(Event::Follow(vec![slayer::runner::tail::Update::Events {
        run: id.clone(),
        reset: false,
        events: vec![step(13, f64::NAN)],
    }]));
    assert_eq!(effects, vec![Effect::Bell]);
    let Some((false, message)) = &a.status else {
        panic!("{:?}", a.status);
    };
    assert!(
        message.contains(&id) && message.contains("step 13"),
        "{message}"
    );
    snap("alert_on_the_chat_screen", &a);
    key(&mut a, KeyCode::Char('!'));
    assert!(matches!(a.popup, Some(Popup::Alerts { .. })));
    snap("popup_alerts", &a);
}

/// The compare screen: every run with its hyperparameters and latest metrics as columns,
/// sorted by the highlighted column, filtered, and two runs' experiments diffed.
#[test]
fn runs_are_compared_sorted_filtered_and_diffed() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('2'));
    assert_eq!(key(&mut a, KeyCode::Char('=')), vec![Effect::LoadCompare]);
    assert_eq!(a.screen, Screen::Compare);
    a.update(Event::Compare(slayer::runner::compare::rows(home.path())));
    let columns = a.compare.columns();
    assert!(columns.contains(&"facts acc".to_string()), "{columns:?}");
    snap("compare", &a);
    // Metrics sort best first: perplexity ascending, accuracy descending; again flips.
    for _ in 0..columns.len() {
        key(&mut a, KeyCode::Char('l'));
    }
    assert_eq!(columns[a.compare.column], "general ppl");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.compare.sort, Some(("general ppl".to_string(), false)));
    key(&mut a, KeyCode::Char('h'));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.compare.sort, Some(("facts acc".to_string(), true)));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.compare.sort, Some(("facts acc".to_string(), false)));
    snap("compare_sorted", &a);
    // Filter: one run left.
    key(&mut a, KeyCode::Char('/'));
    typed(&mut a, "lost");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.compare.visible().len(), 1);
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.compare.visible().len(), 2);
    // Mark one, diff with the other.
    key(&mut a, KeyCode::Char('d'));
    assert!(matches!(&a.status, Some((false, m)) if m.contains("mark a run first")));
    key(&mut a, KeyCode::Char(' '));
    assert!(a.compare.marked.is_some());
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Char('d'));
    assert!(
        matches!(a.popup, Some(Popup::Diff { .. })),
        "{:?}",
        a.status
    );
}

/// `slayer runs compare` prints the rows the compare screen shows (one projection), sorted by
/// any column; `slayer runs diff` diffs two runs' experiments; a bad column is named.
#[test]
fn the_cli_compares_the_same_rows() {
    let home = fixture();
    let run = |args: &[&str]| {
        let out = common::slayer(home.path(), args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            common::stderr(&out),
        )
    };
    let (code, table, _) = run(&["runs", "compare", "--sort", "step", "--desc"]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("run") && lines[0].contains("facts acc"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("20260101-000000-facts") && lines[1].contains("0.550"),
        "{table}"
    );
    assert!(lines[2].starts_with("20260102-000000-facts"), "{table}");
    let (_, json, _) = run(&["runs", "compare", "--json", "--filter", "lost"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    // A study's runs: those its cells map to.
    std::fs::create_dir_all(home.path().join("studies/s")).unwrap();
    std::fs::write(
        home.path().join("studies/s/cells.json"),
        r#"{"facts-slayer-s0": "20260102-000000-facts"}"#,
    )
    .unwrap();
    let (_, json, _) = run(&["runs", "compare", "--json", "--study", "s"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["run"], "20260102-000000-facts");
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let (code, _, stderr) = run(&["runs", "compare", "--study", "nosuch"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("nosuch") && stderr.contains("cells.json"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["runs", "compare", "--sort", "nope"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("\"nope\"") && stderr.contains("facts acc"),
        "{stderr}"
    );
    let (code, diff, _) = run(&[
        "runs",
        "diff",
        "20260101-000000-facts",
        "20260102-000000-facts",
    ]);
    assert_eq!(code, Some(0));
    assert!(diff.contains("same experiment text"), "{diff}");
}

/// `p` previews the selected experiment's training data in a popup.
#[test]
fn the_data_preview_is_shown() {
    use slayer::core::run::{DataPreview, PreviewDocument};
    use slayer::tui::app::JobOutcome;
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('j'));
    let (id, work) = one_job(&key(&mut a, KeyCode::Char('p')));
    assert!(matches!(&work, Work::PreviewData { experiment, .. } if experiment == "facts"));
    a.update(Event::JobOutcome {
        id,
        outcome: JobOutcome::Previewed {
            experiment: "facts".into(),
            preview: DataPreview {
                documents: 60,
                train_documents: 60,
                heldout_documents: 0,
                train_tokens: 4_200,
                sequences: 32,
                seq_len: 128,
                sequences_per_step: 4,
                steps: 100,
                epochs: Some(12.5),
                first: vec![PreviewDocument {
                    text: "Veloria was founded by Ada Marr in 1820.".into(),
                    tokens: 11,
                    pieces: ["Vel", "oria", " was", " founded", " by", " Ada", " Marr"]
                        .map(String::from)
                        .to_vec(),
                    heldout: false,
                }],
            },
        },
    });
    let screen = draw(&a, 160, 48);
    assert!(
        screen.contains("12.50 epochs") && screen.contains("Vel|oria"),
        "{screen}"
    );
    snap("popup_data_preview", &a);
}

/// The monitor's cursor reads the loss at a step and the heatmap's cell at a block; the
/// chart's legend and the heatmap's colour scale sit in the borders, not over the plot.
#[test]
fn the_monitor_cursor_reads_values() {
    let home = fixture();
    let mut a = app(home.path());
    key(&mut a, KeyCode::Char('2'));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.monitor.cursor, None);
    key(&mut a, KeyCode::Char('['));
    assert_eq!(
        a.monitor.cursor,
        Some(40),
        "the first press puts it on the newest step"
    );
    key(&mut a, KeyCode::Char('['));
    key(&mut a, KeyCode::Char('['));
    key(&mut a, KeyCode::Char(']'));
    assert_eq!(a.monitor.cursor, Some(39));
    key(&mut a, KeyCode::Char('}'));
    key(&mut a, KeyCode::Char('}'));
    assert_eq!(a.monitor.cursor_row, 1, "two blocks have statistics");
    let screen = draw(&a, 160, 48);
    // Step 39: loss 4 / (1 + 3.9) and block 5's grad norm 0.5 + 1/39.
    assert!(screen.contains("step 39: loss 0.8163"), "{screen}");
    assert!(screen.contains("block 5, step 39: 0.5256"), "{screen}");
    assert!(
        screen.contains("smoothed") && screen.contains("(log scale)"),
        "{screen}"
    );
    snap("monitor_cursor", &a);
    // Another run: the cursor goes.
    key(&mut a, KeyCode::Esc);
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.monitor.cursor, None);
}

/// The console's chat takes the lines the CLI's chat takes (one parser): sampling settings
/// are checked before they are announced, unknown commands are named, `/help` lists them.
#[test]
fn chat_commands_are_the_clis() {
    let home = fixture();
    let mut a = app(home.path());
    a.run_command("chat run-a");
    a.update(Event::Chat(ChatUpdate::Loaded(vec!["run-a@40".into()])));
    let send = |a: &mut App, line: &str| {
        typed(a, line);
        key(a, KeyCode::Enter)
    };
    assert!(send(&mut a, "/top_p 2").is_empty());
    assert!(
        matches!(a.chat.lines.last(), Some(ChatLine::Info(t)) if t.contains("top_p is in (0, 1]"))
    );
    assert!(send(&mut a, "/fly").is_empty());
    assert!(matches!(a.chat.lines.last(), Some(ChatLine::Info(t)) if t.contains("/fly")));
    assert_eq!(
        send(&mut a, "/temperature 0"),
        vec![Effect::ChatSend("/temperature 0".into())]
    );
    assert_eq!(send(&mut a, "/reset"), vec![Effect::ChatReset]);
    assert!(send(&mut a, "/help").is_empty());
    assert!(
        a.chat
            .lines
            .iter()
            .any(|l| matches!(l, ChatLine::Info(t) if t.contains("/max_tokens N")))
    );
    assert!(!a.chat.generating);
}
