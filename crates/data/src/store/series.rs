//! Metric series in chunks: `run \0 metric \0 chunk(be)` → up to [`CHUNK`] points, each 16 bytes
//! (step, value; little-endian), sorted by step. One key per point made sled write ~20 keys per
//! step and read 100k keys to plot a curve; chunks make both a matter of a few hundred values.
//! [`Store::run_series`] joins them back into the step history the console plots, read from a
//! step on so that a reader carries on without reading what it has.

use std::collections::BTreeMap;

use super::{Result, Store, key, prefix};
use crate::runner::series::{BlockPoint, RunSeries, StepPoint};

/// Steps per chunk.
pub const CHUNK: u64 = 1024;

type Points = Vec<(u64, f64)>;

fn decode(bytes: &[u8]) -> Points {
    bytes
        .chunks_exact(16)
        .filter_map(|p| {
            let step = u64::from_le_bytes(p[..8].try_into().ok()?);
            let value = f64::from_le_bytes(p[8..].try_into().ok()?);
            Some((step, value))
        })
        .collect()
}

fn encode(points: &Points) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * 16);
    for (step, value) in points {
        out.extend_from_slice(&step.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

fn chunk_key(run: &str, metric: &str, chunk: u64) -> Vec<u8> {
    key(&[run.as_bytes(), metric.as_bytes(), &chunk.to_be_bytes()])
}

/// Buffers a run's series changes; [`SeriesWriter::commit`] writes the touched chunks at once.
pub(super) struct SeriesWriter<'a> {
    store: &'a Store,
    run: &'a str,
    chunks: BTreeMap<(String, u64), Points>,
}

impl<'a> SeriesWriter<'a> {
    pub(super) fn new(store: &'a Store, run: &'a str) -> Self {
        Self {
            store,
            run,
            chunks: BTreeMap::new(),
        }
    }

    fn chunk(&mut self, metric: &str, chunk: u64) -> Result<&mut Points> {
        let k = (metric.to_string(), chunk);
        if !self.chunks.contains_key(&k) {
            let stored = self
                .store
                .series
                .get(chunk_key(self.run, metric, chunk))
                .map_err(|e| self.store.db_err(e))?
                .map(|v| decode(&v))
                .unwrap_or_default();
            self.chunks.insert(k.clone(), stored);
        }
        Ok(self.chunks.entry(k).or_default())
    }

    /// Sets the value of `metric` at `step` (a step logged again replaces the old value).
    pub(super) fn put(&mut self, metric: &str, step: u64, value: f64) -> Result<()> {
        let points = self.chunk(metric, step / CHUNK)?;
        match points.binary_search_by_key(&step, |p| p.0) {
            Ok(i) => points[i].1 = value,
            Err(i) => points.insert(i, (step, value)),
        }
        Ok(())
    }

    /// Drops every point after `step`, in every metric of the run.
    pub(super) fn truncate_after(&mut self, step: u64) -> Result<()> {
        let first = step / CHUNK;
        let p = prefix(self.run);
        let mut stored = Vec::new();
        for item in self.store.series.scan_prefix(&p) {
            let (k, _) = item.map_err(|e| self.store.db_err(e))?;
            let rest = &k[p.len()..];
            let Some(split) = rest.len().checked_sub(9) else {
                continue;
            };
            let Ok(chunk) = <[u8; 8]>::try_from(&rest[split + 1..]).map(u64::from_be_bytes) else {
                continue;
            };
            if chunk >= first {
                stored.push((String::from_utf8_lossy(&rest[..split]).into_owned(), chunk));
            }
        }
        for (metric, chunk) in stored {
            self.chunk(&metric, chunk)?;
        }
        for ((_, chunk), points) in &mut self.chunks {
            if *chunk >= first {
                points.retain(|p| p.0 <= step);
            }
        }
        Ok(())
    }

    /// Writes every touched chunk (empty ones are removed).
    pub(super) fn commit(self) -> Result<()> {
        let mut batch = sled::Batch::default();
        for ((metric, chunk), points) in &self.chunks {
            let k = chunk_key(self.run, metric, *chunk);
            if points.is_empty() {
                batch.remove(k);
            } else {
                batch.insert(k, encode(points));
            }
        }
        self.store
            .series
            .apply_batch(batch)
            .map_err(|e| self.store.db_err(e))
    }
}

impl Store {
    /// A metric of a run as (step, value), in step order.
    pub fn series(&self, run: &str, metric: &str) -> Result<Vec<(u64, f64)>> {
        self.series_from(run, metric, 0)
    }

    /// A metric of a run from step `from` on, in step order: only the chunks that can hold such
    /// steps are read.
    pub fn series_from(&self, run: &str, metric: &str, from: u64) -> Result<Vec<(u64, f64)>> {
        let p = key(&[run.as_bytes(), metric.as_bytes(), &[]]);
        let mut out = Vec::new();
        for item in self.series.range(chunk_key(run, metric, from / CHUNK)..) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(&p) {
                break;
            }
            // Another metric whose name extends this one (`loss` vs `loss/x`) is not ours.
            if k.len() != p.len() + 8 {
                continue;
            }
            out.extend(decode(&v).into_iter().filter(|(step, _)| *step >= from));
        }
        Ok(out)
    }

    /// A run's step history from step `from` on, as the monitor plots it: the metric series
    /// joined by step (every step logs all four; per-block statistics are keyed by block).
    pub fn run_series(&self, run: &str, from: u64) -> Result<RunSeries> {
        let by_step = |metric: &str| -> Result<BTreeMap<u64, f64>> {
            Ok(self.series_from(run, metric, from)?.into_iter().collect())
        };
        let (lr, rate, time) = (by_step("lr")?, by_step("tokens_per_sec")?, by_step("time")?);
        let steps = self
            .series_from(run, "loss", from)?
            .into_iter()
            .map(|(step, loss)| StepPoint {
                step,
                loss,
                lr: lr.get(&step).copied().unwrap_or(f64::NAN),
                tokens_per_sec: rate.get(&step).copied().unwrap_or(f64::NAN),
                time: time.get(&step).copied().unwrap_or(f64::NAN),
            })
            .collect();
        let mut blocks = BTreeMap::new();
        for metric in self.metrics(run)? {
            let Some(block) = metric
                .strip_prefix("grad_norm/")
                .and_then(|b| b.parse::<usize>().ok())
            else {
                continue;
            };
            let ratio = by_step(&format!("update_ratio/{block:03}"))?;
            let points: Vec<BlockPoint> = self
                .series_from(run, &metric, from)?
                .into_iter()
                .map(|(step, norm)| (step, norm, ratio.get(&step).copied().unwrap_or(f64::NAN)))
                .collect();
            if !points.is_empty() {
                blocks.insert(block, points);
            }
        }
        Ok(RunSeries { steps, blocks })
    }

    /// The metric names a run has series for.
    pub fn metrics(&self, run: &str) -> Result<Vec<String>> {
        let p = prefix(run);
        let mut out: Vec<String> = Vec::new();
        let mut from = p.clone();
        // Skip from one metric to the next instead of reading every chunk.
        while let Some(item) = self.series.range(from.clone()..).next() {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(&p) {
                break;
            }
            let rest = &k[p.len()..];
            let Some(split) = rest.len().checked_sub(9) else {
                break;
            };
            let metric = &rest[..split];
            out.push(String::from_utf8_lossy(metric).into_owned());
            from = key(&[run.as_bytes(), metric, &[0xff; 9]]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn points_land_in_order_replace_and_truncate_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test").unwrap();
        let mut w = SeriesWriter::new(&store, "r");
        for step in (1..=3000).rev() {
            w.put("loss", step, step as f64).unwrap();
            w.put("loss/x", step, 0.0).unwrap();
        }
        w.commit().unwrap();
        let loss = store.series("r", "loss").unwrap();
        assert_eq!(loss.len(), 3000);
        assert!(loss.windows(2).all(|w| w[0].0 < w[1].0));
        let mut w = SeriesWriter::new(&store, "r");
        w.truncate_after(1500).unwrap();
        w.put("loss", 1501, -1.0).unwrap();
        w.commit().unwrap();
        let loss = store.series("r", "loss").unwrap();
        assert_eq!(loss.len(), 1501);
        assert_eq!(loss.last(), Some(&(1501, -1.0)));
        assert_eq!(store.series("r", "loss/x").unwrap().len(), 1500);
        assert_eq!(store.metrics("r").unwrap(), vec!["loss", "loss/x"]);
    }

    /// A run's history across chunks and a resume that cuts back into an earlier chunk: read
    /// whole, or from a step inside a chunk, it is the fold of the events.
    #[test]
    fn a_run_series_is_the_fold_of_its_events_from_any_step() {
        use crate::runner::test_events::{ev, start, step};
        use slayer_engine::events::Event;
        // Logged every half second; two blocks with statistics.
        let step_at = |seq: u64, s: u64| Event {
            time: 0.5 * seq as f64,
            ..ev(
                seq,
                step(
                    s,
                    1.0 / s as f64,
                    &[1, 12].map(|b: u64| (b as usize, (s * b) as f64, 1.0 / (s + b) as f64)),
                ),
            )
        };
        let mut events = vec![ev(0, start(None))];
        events.extend((1..=2500).map(|s| step_at(s, s)));
        events.push(ev(2501, start(Some(1100))));
        events.extend((1101..=3000).map(|s| step_at(s + 1500, s)));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "test").unwrap();
        // In the pieces a follower delivers.
        for batch in events.chunks(333) {
            store.apply("r", false, batch, None).unwrap();
        }
        let folded = RunSeries::of(&events);
        assert_eq!(folded.steps.len(), 3000);
        assert_eq!(store.run_series("r", 0).unwrap(), folded);
        for from in [1, 1023, 1024, 1101, 2049, 3000, 3001] {
            assert_eq!(
                store.run_series("r", from).unwrap(),
                folded.tail_from(from),
                "from {from}"
            );
        }
        assert!(store.run_series("nobody", 0).unwrap().is_empty());
    }
}
