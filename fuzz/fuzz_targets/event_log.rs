//! Any bytes as an event log, read whole and then appended in two pieces: no panic; the pieces
//! deliver the same events as the whole (a line split across reads is read once, complete);
//! bad lines are numbered inside the file; the run's projection folded piece by piece is that of
//! the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slayer_data::runner::RunProjection;
use slayer_data::runner::tail::LogTail;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("events.jsonl");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(whole) = LogTail::new(&path).poll() else { return };
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    for bad in &whole.bad_lines {
        assert!(bad.line >= 1 && bad.line <= lines);
    }
    let cut = data.len() / 2;
    let _ = std::fs::write(&path, &data[..cut]);
    let mut tail = LogTail::new(&path);
    let Ok(first) = tail.poll() else { return };
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut file, &data[cut..]).unwrap();
    let Ok(second) = tail.poll() else { return };
    let seqs = |b: &[slayer_engine::events::Event]| b.iter().map(|e| e.seq).collect::<Vec<_>>();
    let mut pieces = seqs(&first.events);
    pieces.extend(seqs(&second.events));
    assert_eq!(pieces, seqs(&whole.events));
    // The projection folded piece by piece is the projection of the whole (compared as text:
    // a NaN loss is not equal to itself).
    let mut folded = RunProjection::default();
    for e in first.events.iter().chain(&second.events) {
        folded.apply(e);
    }
    assert_eq!(
        format!("{folded:?}"),
        format!("{:?}", RunProjection::of(&whole.events))
    );
});
