//! Store benchmarks: ingestion rate of a run's event log into the index (events/s), the time
//! to load a 100k-point loss series for plotting, and the monitor's step history (whole, and
//! the newest steps a live sync adds) against parsing and folding the log.
//!
//!     cargo run --release --example bench-store -- [STEPS] [BLOCKS]
//!
//! Writes a synthetic run of STEPS step events (each with BLOCKS per-block statistics, as a
//! SLayer plan's new blocks report) plus an evaluation every 1000 steps, through the same event
//! log the trainer uses.

#![allow(clippy::unwrap_used, reason = "a benchmark: a panic is the report")]

use std::time::Instant;

use slayer::core::events::{BlockStats, EvalRecord, EventKind, EventSink};
use slayer::runner::{EventLog, RunDir};
use slayer::store::Store;

fn main() {
    let mut args = std::env::args().skip(1);
    let steps: u64 = args.next().map_or(100_000, |a| a.parse().unwrap());
    let blocks: usize = args.next().map_or(7, |a| a.parse().unwrap());
    let home = tempfile::tempdir().unwrap();
    let run = RunDir::create(home.path(), "bench").unwrap();
    std::fs::write(run.experiment_path(), "name = \"bench\"\n").unwrap();
    let started = Instant::now();
    let mut log = EventLog::open(&run.events_path()).unwrap();
    log.emit(EventKind::RunStart {
        format: slayer::core::events::EVENT_FORMAT,
        run: run.id.clone(),
        experiment: "name = \"bench\"\n".into(),
        plan: None,
        config: None,
        trainable_params: 0,
        total_steps: steps,
        resumed_from: None,
        environment: None,
    })
    .unwrap();
    for step in 1..=steps {
        let x = step as f64;
        log.emit(EventKind::Step {
            step,
            loss: 3.0 / x.sqrt(),
            lr: 1e-4,
            tokens: step * 4096,
            tokens_per_sec: 5000.0,
            grad_norm: 0.5,
            clipped: false,
            blocks: (0..blocks)
                .map(|b| BlockStats {
                    block: 2 + 3 * b,
                    grad_norm: 0.1 * (b + 1) as f64,
                    weight_norm: 10.0,
                    update_ratio: 1e-3,
                })
                .collect(),
        })
        .unwrap();
        if step % 1000 == 0 {
            log.emit(EventKind::Eval(EvalRecord {
                samples: Vec::new(),
                label: "step".into(),
                step,
                ppl: vec![],
                tasks: vec![],
                quant: slayer::core::model::Quant::None,
            }))
            .unwrap();
        }
    }
    log.sync().unwrap();
    drop(log);
    let events = steps + steps / 1000 + 1;
    let bytes = std::fs::metadata(run.events_path()).unwrap().len();
    println!(
        "wrote {events} events ({:.1} MiB) in {:.2} s",
        bytes as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64()
    );

    let store = Store::open(home.path(), "bench").unwrap();
    let t = Instant::now();
    let n = store.ingest_run(&run).unwrap();
    store.flush().unwrap();
    let ingest = t.elapsed().as_secs_f64();
    assert_eq!(n as u64, events);
    println!(
        "ingest: {n} events in {ingest:.2} s = {:.0} events/s ({:.1} MiB/s of log)",
        n as f64 / ingest,
        bytes as f64 / 1_048_576.0 / ingest
    );
    let t = Instant::now();
    assert_eq!(store.ingest_run(&run).unwrap(), 0);
    println!(
        "re-ingest with nothing new: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(store);

    // A fresh process would open the store and load the series: reopen, then time it. The
    // console holds the store only while it syncs, so the open is paid on every sync.
    let t = Instant::now();
    let store = Store::open(home.path(), "bench").unwrap();
    println!(
        "open the store (sled recovery of {:.1} MiB): {:.1} ms",
        dir_size(&home.path().join("store")) as f64 / 1_048_576.0,
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let loss = store.series(&run.id, "loss").unwrap();
    let cold = t.elapsed().as_secs_f64();
    assert_eq!(loss.len() as u64, steps);
    let t = Instant::now();
    let loss = store.series(&run.id, "loss").unwrap();
    let warm = t.elapsed().as_secs_f64();
    println!(
        "load {}-point loss series: {:.1} ms after reopening, {:.1} ms again",
        loss.len(),
        cold * 1e3,
        warm * 1e3
    );
    let t = Instant::now();
    let metrics = store.metrics(&run.id).unwrap();
    println!(
        "list {} metrics: {:.2} ms",
        metrics.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    // The monitor's read model: a run's whole step history when it comes into view, then
    // what a sync of a live run adds (the last ten steps).
    let t = Instant::now();
    let history = store.run_series(&run.id, 0).unwrap();
    let whole = t.elapsed().as_secs_f64();
    assert_eq!(history.steps.len() as u64, steps);
    let t = Instant::now();
    let newest = store.run_series(&run.id, steps - 9).unwrap();
    let tail = t.elapsed().as_secs_f64();
    assert_eq!(newest.steps.len(), 10);
    let held = history.steps.len() * std::mem::size_of::<slayer::runner::series::StepPoint>()
        + history.blocks.values().map(Vec::len).sum::<usize>()
            * std::mem::size_of::<slayer::runner::series::BlockPoint>();
    println!(
        "the monitor's history ({} steps, {} blocks, {:.1} MiB in memory): whole {:.1} ms, \
         the newest 10 steps {:.2} ms",
        history.steps.len(),
        history.blocks.len(),
        held as f64 / 1_048_576.0,
        whole * 1e3,
        tail * 1e3
    );
    let t = Instant::now();
    let direct = slayer::runner::read_events(&run.events_path()).unwrap();
    let parse = t.elapsed().as_secs_f64();
    println!(
        "for comparison, parsing the whole log: {} events in {parse:.2} s",
        direct.len(),
    );
    let t = Instant::now();
    let folded = slayer::runner::series::RunSeries::of(&direct);
    println!(
        "and folding it into the history: {:.1} ms more ({:.2} s from the log in all)",
        t.elapsed().as_secs_f64() * 1e3,
        parse + t.elapsed().as_secs_f64()
    );
    assert_eq!(folded, history);
    let size: u64 = walk(&home.path().join("store"));
    println!("store size: {:.1} MiB", size as f64 / 1_048_576.0);

    // Live following delivers a few events at a time: ingest the same log 10 events per call.
    let t = Instant::now();
    let live = "live-run";
    for batch in direct.chunks(10) {
        store.apply(live, false, batch, None).unwrap();
    }
    store.flush().unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "live ingest, 10 events per call: {:.0} events/s",
        direct.len() as f64 / secs
    );
    assert_eq!(store.series(live, "loss").unwrap().len() as u64, steps);
    let size: u64 = walk(&home.path().join("store"));
    println!(
        "store size with both copies: {:.1} MiB",
        size as f64 / 1_048_576.0
    );
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    e.metadata().map_or(0, |m| m.len())
                }
            })
            .sum()
    })
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_size(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}
