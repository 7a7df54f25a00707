//! Training only the chosen blocks: AdamW with decoupled weight decay (none on norms by default),
//! linear warmup then cosine or constant learning rate, gradient accumulation, global-norm
//! clipping, per-block statistics, non-finite step skipping, and checkpoints that resume bit for
//! bit (weights, optimizer moments, step and data position; the data order is a pure function of
//! the seed and the epoch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::atomic::{sync_dir, write_json};
use crate::checkpoint::safetensors::{MappedSafetensors, write_file};
use crate::error::{Error, Result};
use crate::events::{BlockStats, EventKind, EventSink};
use crate::model::Llama;

/// Learning-rate shape after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Constant,
}

/// Optimisation settings (the `[train]` table of an experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub schedule: Schedule,
    /// Warmup as a fraction of `steps` (LLaMA Pro: 6%).
    pub warmup: f64,
    /// Final learning rate of the cosine as a fraction of `lr`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Apply weight decay to norm weights too.
    pub decay_norms: bool,
    /// Global gradient-norm clip; 0 disables.
    pub clip: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Seed of the data order.
    pub seed: u64,
    pub log_every: u64,
    /// Evaluate every N steps (0: only before and after).
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are deleted once a newer one is complete).
    pub keep_checkpoints: usize,
    /// Stop after this many non-finite steps in a row.
    pub max_nonfinite: u32,
    /// Per-block gradient norm, weight norm and update ratio on logging steps.
    pub block_stats: bool,
    /// Recompute frozen blocks above the first trainable one during backward instead of keeping
    /// their activations: much less memory for long sequences, for one more forward of them.
    pub recompute: bool,
    /// CPU threads for the run's numerics (default: the CPUs the worker may use); `--threads`
    /// overrides it for a run in the foreground.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 4,
            seq_len: 256,
            grad_accum: 1,
            lr: 2e-4,
            schedule: Schedule::Cosine,
            warmup: 0.06,
            min_lr_ratio: 0.0,
            weight_decay: 0.1,
            decay_norms: false,
            clip: 1.0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            seed: 0,
            log_every: 1,
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            max_nonfinite: 5,
            block_stats: true,
            recompute: false,
            threads: None,
        }
    }
}

/// Largest batch size and gradient accumulation accepted.
const MAX_BATCH: usize = 1 << 16;
/// Longest sequence accepted (longer than any model slayer loads can attend over).
const MAX_SEQ_LEN: usize = 1 << 20;
/// Most tokens in one micro-batch.
const MAX_STEP_TOKENS: usize = 1 << 26;

impl TrainConfig {
    /// Checks ranges; messages name the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("steps", self.steps as f64),
            ("batch_size", self.batch_size as f64),
            ("seq_len", self.seq_len as f64),
            ("grad_accum", self.grad_accum as f64),
        ];
        for (name, v) in positive {
            if v < 1.0 {
                return Err(format!("train.{name} must be at least 1"));
            }
        }
        // Upper bounds before anything is sized from them: a typo of a few digits must be an
        // error, not an allocation of terabytes.
        for (name, v, max) in [
            ("batch_size", self.batch_size, MAX_BATCH),
            ("grad_accum", self.grad_accum, MAX_BATCH),
            ("seq_len", self.seq_len, MAX_SEQ_LEN),
        ] {
            if v > max {
                return Err(format!("train.{name} = {v} exceeds the limit of {max}"));
            }
        }
        if self.batch_size * (self.seq_len + 1) > MAX_STEP_TOKENS {
            return Err(format!(
                "train.batch_size × (seq_len + 1) = {} tokens in one micro-batch exceeds the limit of {MAX_STEP_TOKENS}",
                self.batch_size * (self.seq_len + 1)
            ));
        }
        if let Some(t) = self.threads
            && self.thread_count().is_none()
        {
            return Err(format!(
                "train.threads = {t} must be from 1 to {}",
                crate::threads::MAX_THREADS
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("train.lr = {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return Err(format!(
                "train.warmup = {} must be a fraction in [0, 1)",
                self.warmup
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) || self.weight_decay < 0.0 || self.clip < 0.0 {
            return Err(
                "train.min_lr_ratio must be in [0, 1]; weight_decay and clip must be ≥ 0".into(),
            );
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) || self.eps <= 0.0
        {
            return Err("train.beta1 and beta2 must be in [0, 1); eps positive".into());
        }
        Ok(())
    }

    /// `threads` as a count, when it is one (1 ..= [`crate::threads::MAX_THREADS`]).
    #[must_use]
    pub fn thread_count(&self) -> Option<std::num::NonZeroUsize> {
        self.threads
            .and_then(std::num::NonZeroUsize::new)
            .filter(|n| n.get() <= crate::threads::MAX_THREADS)
    }

    /// Warmup length in steps.
    #[must_use]
    pub fn warmup_steps(&self) -> u64 {
        (self.warmup * self.steps as f64).round() as u64
    }

    /// The learning rate of optimizer step `step` (0-based).
    #[must_use]
    pub fn lr_at(&self, step: u64) -> f64 {
        let warmup = self.warmup_steps();
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = (self.steps - warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                let min = self.lr * self.min_lr_ratio;
                min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// AdamW over named variables, with decoupled weight decay and f32 moments. Variables held in
/// 16 bits (bf16 training) get an f32 master copy: updates accumulate there and are rounded into
/// the variable after each step, so small updates are not lost to bf16 rounding.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    master: Vec<Option<Tensor>>,
    decay: Vec<bool>,
    t: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, decay_norms: bool) -> Result<Self> {
        let m = params
            .iter()
            .map(|(_, v)| v.as_tensor().to_dtype(DType::F32)?.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let decay = params
            .iter()
            .map(|(n, _)| decay_norms || !n.contains("norm"))
            .collect();
        let master = params
            .iter()
            .map(|(_, v)| {
                if v.dtype() == DType::F32 {
                    Ok(None)
                } else {
                    v.as_tensor().to_dtype(DType::F32).map(Some)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Each moment its own storage: the CPU updates them in place.
        let v = m
            .iter()
            .map(Tensor::zeros_like)
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            v,
            m,
            master,
            decay,
            params,
            t: 0,
        })
    }

    #[must_use]
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with gradients `grads` (aligned with `params`; `None` = no gradient) scaled by
    /// `grad_scale`. Returns ‖Δw‖² per parameter when `update_norms` (else zeros).
    pub fn step(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f64,
        cfg: &TrainConfig,
        update_norms: bool,
    ) -> Result<Vec<f64>> {
        self.t += 1;
        let t = self.t as i32;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let mut sq_updates = Vec::with_capacity(self.params.len());
        for (i, ((_, var), g)) in self.params.iter().zip(grads).enumerate() {
            let Some(g) = g else {
                sq_updates.push(0.0);
                continue;
            };
            let wd = if self.decay[i] { cfg.weight_decay } else { 0.0 };
            if self.master[i].is_none()
                && var.dtype() == DType::F32
                && crate::model::kernels::fused_dtype(var.as_tensor())
            {
                // f32 on the CPU: in place, three passes (see the kernel).
                let coefficients = crate::model::kernels::adamw::Coefficients {
                    beta1: b1,
                    grad1: (1.0 - b1) * grad_scale,
                    beta2: b2,
                    grad2: (1.0 - b2) * grad_scale * grad_scale,
                    step: lr * c2.sqrt() / c1,
                    eps: cfg.eps * c2.sqrt(),
                    keep: 1.0 - lr * wd,
                };
                sq_updates.push(crate::model::kernels::adamw::step(
                    var.as_tensor(),
                    (&self.m[i], &self.v[i]),
                    g,
                    coefficients,
                    update_norms,
                )?);
                continue;
            }
            // Each operation below is a pass over the tensor (memory-bound on a GPU), so the
            // gradient scale is folded into the moments' coefficients and the bias corrections
            // into one factor, as PyTorch arranges it:
            // lr·m̂/(√v̂ + ε) = m·(lr·√c2/c1) / (√v + ε·√c2).
            let g = g.to_dtype(DType::F32)?;
            self.m[i] = ((&self.m[i] * b1)? + (&g * ((1.0 - b1) * grad_scale))?)?;
            self.v[i] =
                ((&self.v[i] * b2)? + (g.sqr()? * ((1.0 - b2) * grad_scale * grad_scale))?)?;
            let denominator = (self.v[i].sqrt()? + cfg.eps * c2.sqrt())?;
            let step = ((&self.m[i] * (lr * c2.sqrt() / c1))? / denominator)?;
            let w = match &self.master[i] {
                Some(master) => master.clone(),
                None => var.as_tensor().to_dtype(DType::F32)?,
            };
            let decayed = if wd > 0.0 {
                (&w * (1.0 - lr * wd))?
            } else {
                w.clone()
            };
            let new_w = (decayed - step)?;
            sq_updates.push(if update_norms {
                f64::from((&new_w - &w)?.sqr()?.sum_all()?.to_scalar::<f32>()?)
            } else {
                0.0
            });
            var.set(&new_w.to_dtype(var.dtype())?)?;
            if self.master[i].is_some() {
                self.master[i] = Some(new_w);
            }
        }
        Ok(sq_updates)
    }
}

/// Where training stands; saved in every checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TrainState {
    /// Optimizer steps taken (or skipped).
    pub step: u64,
    pub epoch: u64,
    /// Next sequence within the epoch's order.
    pub cursor: usize,
    pub nonfinite_streak: u32,
    pub tokens: u64,
}

/// How a training loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// Stopped on request after checkpointing.
    Stopped,
}

/// The order of sequences in `epoch`: a function of the seed and the epoch only.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch,
    ));
    order
}

/// Final block index of a parameter name.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// A training run in progress: its settings, optimizer, position, and where checkpoints go.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub optimizer: AdamW,
    pub state: TrainState,
    pub checkpoints: PathBuf,
}

impl Trainer {
    /// A fresh run over `model`'s trainable variables.
    pub fn new(model: &Llama, cfg: TrainConfig, checkpoints: &Path) -> Result<Self> {
        Ok(Self {
            optimizer: AdamW::new(model.trainable_vars(), cfg.decay_norms)?,
            cfg,
            state: TrainState::default(),
            checkpoints: checkpoints.to_path_buf(),
        })
    }

    /// Continues from a checkpoint: weights, optimizer moments, step and data position.
    pub fn resume_from(&mut self, checkpoint: &Path) -> Result<()> {
        self.state = load_checkpoint(checkpoint, &mut self.optimizer)?.state;
        Ok(())
    }

    /// Writes a checkpoint of the current state.
    pub fn checkpoint(&self, sink: &mut dyn EventSink) -> Result<PathBuf> {
        save_checkpoint(
            &self.checkpoints,
            &self.optimizer,
            &self.state,
            &self.cfg,
            sink,
        )
    }

    /// Runs the loop to `cfg.steps`. `data` holds sequences of `seq_len + 1` tokens;
    /// `evaluate(model, step, sink)` runs every `eval_every` steps. With `cancel` set, the loop
    /// finishes the step in hand, checkpoints and returns [`Outcome::Stopped`].
    pub fn run(
        &mut self,
        model: &Llama,
        data: &[Vec<u32>],
        sink: &mut dyn EventSink,
        cancel: &AtomicBool,
        evaluate: &mut dyn FnMut(&Llama, u64, &mut dyn EventSink) -> Result<()>,
    ) -> Result<Outcome> {
        let Self {
            cfg,
            optimizer,
            state,
            checkpoints,
        } = self;
        train_loop(
            model,
            data,
            cfg,
            optimizer,
            state,
            checkpoints,
            sink,
            cancel,
            evaluate,
        )
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the destructured Trainer; only Trainer::run calls it"
)]
fn train_loop(
    model: &Llama,
    data: &[Vec<u32>],
    cfg: &TrainConfig,
    optimizer: &mut AdamW,
    state: &mut TrainState,
    checkpoints: &Path,
    sink: &mut dyn EventSink,
    cancel: &AtomicBool,
    evaluate: &mut dyn FnMut(&Llama, u64, &mut dyn EventSink) -> Result<()>,
) -> Result<Outcome> {
    if data.is_empty() {
        return Err(Error::Invalid("no training sequences".into()));
    }
    let device = model.device().clone();
    let mut order = epoch_order(data.len(), cfg.seed, state.epoch);
    while state.step < cfg.steps {
        if cancel.load(Ordering::Relaxed) {
            save_checkpoint(checkpoints, optimizer, state, cfg, sink)?;
            return Ok(Outcome::Stopped);
        }
        let started = Instant::now();
        let lr = cfg.lr_at(state.step);
        let mut batches = Vec::with_capacity(cfg.grad_accum);
        for _ in 0..cfg.grad_accum {
            let mut rows = Vec::with_capacity(cfg.batch_size * (cfg.seq_len + 1));
            for _ in 0..cfg.batch_size {
                if state.cursor >= order.len() {
                    state.epoch += 1;
                    state.cursor = 0;
                    order = epoch_order(data.len(), cfg.seed, state.epoch);
                }
                rows.extend_from_slice(&data[order[state.cursor]]);
                state.cursor += 1;
            }
            batches.push(Tensor::from_vec(
                rows,
                (cfg.batch_size, cfg.seq_len + 1),
                &device,
            )?);
        }
        let logging =
            (state.step + 1).is_multiple_of(cfg.log_every.max(1)) || state.step + 1 == cfg.steps;
        let report = optimizer_step(
            model,
            optimizer,
            cfg,
            &batches,
            lr,
            StepOptions {
                update_norms: logging && cfg.block_stats,
                profile: false,
            },
        )?;
        let (loss, grad_norm) = (report.loss, report.grad_norm);
        state.tokens += (cfg.batch_size * cfg.grad_accum * cfg.seq_len) as u64;
        let Some(sq_updates) = report.sq_updates else {
            state.step += 1;
            state.nonfinite_streak += 1;
            sink.emit(EventKind::SkippedStep {
                step: state.step,
                reason: format!("non-finite loss ({loss}) or gradient norm ({grad_norm})"),
            })?;
            if state.nonfinite_streak >= cfg.max_nonfinite {
                return Err(Error::Invalid(format!(
                    "{} non-finite steps in a row (last at step {}): lower the learning rate or check the data",
                    state.nonfinite_streak, state.step
                )));
            }
            continue;
        };
        state.nonfinite_streak = 0;
        let with_stats = logging && cfg.block_stats;
        state.step += 1;
        if logging {
            let blocks = if with_stats {
                block_stats(optimizer, &report.sq_grads, &sq_updates)?
            } else {
                Vec::new()
            };
            let elapsed = started.elapsed().as_secs_f64();
            sink.emit(EventKind::Step {
                step: state.step,
                loss,
                lr,
                tokens: state.tokens,
                tokens_per_sec: (cfg.batch_size * cfg.grad_accum * cfg.seq_len) as f64 / elapsed,
                grad_norm,
                clipped: report.clipped,
                blocks,
            })?;
        }
        if cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every) && state.step < cfg.steps
        {
            evaluate(model, state.step, sink)?;
        }
        if cfg.checkpoint_every > 0
            && state.step.is_multiple_of(cfg.checkpoint_every)
            && state.step < cfg.steps
        {
            save_checkpoint(checkpoints, optimizer, state, cfg, sink)?;
        }
    }
    save_checkpoint(checkpoints, optimizer, state, cfg, sink)?;
    Ok(Outcome::Finished)
}

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Mean loss over the micro-batches.
    pub loss: f64,
    /// Global norm of the averaged gradient (before clipping).
    pub grad_norm: f64,
    /// Squared norm of each parameter's averaged gradient, aligned with the optimizer's params.
    pub sq_grads: Vec<f64>,
    /// ‖Δw‖² per parameter (zeros unless asked for); `None` when the loss or gradient was not
    /// finite and the weights were left as they were.
    pub sq_updates: Option<Vec<f64>>,
    pub clipped: bool,
    /// Seconds in forward, backward (with gradient collection and norms) and the optimizer; the
    /// device is synchronised between phases only when profiling, so otherwise the split is
    /// approximate on a GPU (the total is not).
    pub phase_secs: [f64; 3],
}

/// What [`optimizer_step`] does besides the step itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOptions {
    /// Also return ‖Δw‖² per parameter (per-block statistics).
    pub update_norms: bool,
    /// Wait for the device at each phase boundary, so `phase_secs` is exact.
    pub profile: bool,
}

/// One optimizer step over `batches` (micro-batches of `seq_len + 1` tokens per row): forward
/// and backward of each, gradients accumulated in f32 and averaged, global-norm clipping, then
/// AdamW at `lr` unless the loss or gradient is not finite. The training loop and `slayer bench
/// train` both take their steps here.
pub fn optimizer_step(
    model: &Llama,
    optimizer: &mut AdamW,
    cfg: &TrainConfig,
    batches: &[Tensor],
    lr: f64,
    opts: StepOptions,
) -> Result<StepReport> {
    let mut grads: Vec<Option<Tensor>> = vec![None; optimizer.params().len()];
    let mut loss_sum = 0.0;
    let mut phase_secs = [0.0; 3];
    let mut clock = Instant::now();
    let mut lap = |phase: usize| -> Result<()> {
        if opts.profile {
            model.device().synchronize()?;
        }
        phase_secs[phase] += clock.elapsed().as_secs_f64();
        clock = Instant::now();
        Ok(())
    };
    for batch in batches {
        let loss = model.loss(batch)?;
        // Reading the loss waits for the forward.
        loss_sum += f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        lap(0)?;
        let mut store = loss.backward()?;
        for (slot, (_, var)) in grads.iter_mut().zip(optimizer.params()) {
            // Taken out of the store, so each 16-bit gradient is freed once its f32 copy exists.
            // A single micro-batch keeps its gradients as they are: AdamW widens each tensor in
            // turn, and an f32 copy of every gradient at once would cost twice their memory.
            if let Some(g) = store.remove(var) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g.to_dtype(DType::F32)?)?,
                    None if batches.len() == 1 => g,
                    None => g.to_dtype(DType::F32)?,
                });
            }
        }
        lap(1)?;
    }
    let accum = batches.len().max(1) as f64;
    let loss = loss_sum / accum;
    let mut sq_grads: Vec<f64> = Vec::with_capacity(grads.len());
    for g in &grads {
        sq_grads.push(match g {
            Some(g) => {
                f64::from(
                    g.to_dtype(DType::F32)?
                        .sqr()?
                        .sum_all()?
                        .to_scalar::<f32>()?,
                ) / (accum * accum)
            }
            None => 0.0,
        });
    }
    let grad_norm = sq_grads.iter().sum::<f64>().sqrt();
    lap(1)?;
    if !(loss.is_finite() && grad_norm.is_finite()) {
        return Ok(StepReport {
            loss,
            grad_norm,
            sq_grads,
            sq_updates: None,
            clipped: false,
            phase_secs,
        });
    }
    let clip_scale = if cfg.clip > 0.0 && grad_norm > cfg.clip {
        cfg.clip / grad_norm
    } else {
        1.0
    };
    let sq_updates = optimizer.step(&grads, lr, clip_scale / accum, cfg, opts.update_norms)?;
    lap(2)?;
    Ok(StepReport {
        loss,
        grad_norm,
        sq_grads,
        sq_updates: Some(sq_updates),
        clipped: clip_scale < 1.0,
        phase_secs,
    })
}

fn block_stats(optimizer: &AdamW, sq_grads: &[f64], sq_updates: &[f64]) -> Result<Vec<BlockStats>> {
    let mut per_block: BTreeMap<usize, (f64, f64, f64)> = BTreeMap::new();
    for (i, (name, var)) in optimizer.params().iter().enumerate() {
        let Some(b) = block_of(name) else { continue };
        let w = f64::from(
            var.as_tensor()
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?,
        );
        let e = per_block.entry(b).or_default();
        e.0 += sq_grads[i];
        e.1 += w;
        e.2 += sq_updates[i];
    }
    Ok(per_block
        .into_iter()
        .map(|(block, (g, w, u))| BlockStats {
            block,
            grad_norm: g.sqrt(),
            weight_norm: w.sqrt(),
            update_ratio: if w > 0.0 { (u / w).sqrt() } else { 0.0 },
        })
        .collect())
}

/// The contents of a checkpoint directory's `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub state: TrainState,
    pub optimizer_t: u64,
    pub config: TrainConfig,
}

/// Writes `step-N/` (trainable weights, optimizer moments, state) via a temporary directory that
/// is fsynced and renamed; then drops checkpoints beyond `keep_checkpoints`. A failure (full
/// disk) leaves the previous checkpoint intact and removes the partial one.
pub fn save_checkpoint(
    dir: &Path,
    optimizer: &AdamW,
    state: &TrainState,
    cfg: &TrainConfig,
    sink: &mut dyn EventSink,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Every step up to this one must be in the event log before the checkpoint exists: a worker
    // killed after the rename resumes from here, and the steps it logged would otherwise be lost.
    sink.sync()?;
    let final_dir = dir.join(format!("step-{}", state.step));
    let tmp = dir.join(format!(".step-{}.partial", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> Result<()> {
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        // The f32 master weights when training in 16 bits: resuming continues exactly.
        let weights: Vec<(String, Tensor)> = optimizer
            .params()
            .iter()
            .zip(&optimizer.master)
            .map(|((n, v), master)| {
                (
                    n.clone(),
                    master.clone().unwrap_or_else(|| v.as_tensor().clone()),
                )
            })
            .collect();
        write_file(&tmp.join("trainable.safetensors"), &weights)?;
        let mut moments = Vec::with_capacity(2 * weights.len());
        for (i, (n, _)) in optimizer.params().iter().enumerate() {
            moments.push((format!("m.{n}"), optimizer.m[i].clone()));
            moments.push((format!("v.{n}"), optimizer.v[i].clone()));
        }
        write_file(&tmp.join("optimizer.safetensors"), &moments)?;
        let record = CheckpointState {
            state: *state,
            optimizer_t: optimizer.t,
            config: cfg.clone(),
        };
        write_json(
            &tmp.join("state.json"),
            &serde_json::to_value(&record).map_err(|e| Error::Invalid(e.to_string()))?,
        )?;
        sync_dir(&tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sink.emit(EventKind::Checkpoint {
        step: state.step,
        path: final_dir.display().to_string(),
    })?;
    sink.sync()?;
    let mut all = list_checkpoints(dir)?;
    while all.len() > cfg.keep_checkpoints.max(1) {
        let (_, old) = all.remove(0);
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(final_dir)
}

/// Removes checkpoints a killed worker left half-written (`.step-N.partial`).
pub fn remove_partial_checkpoints(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(std::result::Result::ok) {
        if e.file_name().to_string_lossy().ends_with(".partial") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Complete checkpoints (`step-N` with a `state.json`), oldest first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(std::result::Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Reads a checkpoint through without loading it into a model: `state.json` parses, both
/// safetensors files have valid headers covering their data, and every tensor is finite.
pub fn verify_checkpoint(path: &Path) -> Result<CheckpointState> {
    let state_path = path.join("state.json");
    let text = crate::corpus::read_settings(&state_path, "checkpoint state")?;
    let record: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::format(&state_path, e.to_string()))?;
    for file in ["trainable.safetensors", "optimizer.safetensors"] {
        let tensors = MappedSafetensors::open(&path.join(file))?;
        for name in tensors.header().tensors.keys() {
            let t = tensors.tensor(name, &candle_core::Device::Cpu)?;
            crate::checkpoint::check_finite(&t, tensors.path(), name)?;
        }
    }
    Ok(record)
}

/// The checkpoint a resumed run continues from, and what was wrong with newer ones.
#[derive(Debug, Default)]
pub struct ResumePoint {
    /// The newest intact checkpoint (step, directory); `None` when there is none.
    pub checkpoint: Option<(u64, PathBuf)>,
    /// One message per damaged checkpoint newer than it (left in place, not used).
    pub damaged: Vec<String>,
}

/// The newest checkpoint that passes [`verify_checkpoint`], newest first: a damaged newest
/// checkpoint (a bad disk, a copy cut short) falls back to the one before instead of failing
/// the resume, and is named in [`ResumePoint::damaged`].
pub fn newest_intact_checkpoint(dir: &Path) -> Result<ResumePoint> {
    let mut point = ResumePoint::default();
    for (step, path) in list_checkpoints(dir)?.into_iter().rev() {
        match verify_checkpoint(&path) {
            Ok(_) => {
                point.checkpoint = Some((step, path));
                break;
            }
            Err(e) => point
                .damaged
                .push(format!("checkpoint step-{step} is damaged: {e}")),
        }
    }
    Ok(point)
}

/// Loads a checkpoint's trainable weights into the optimizer's variables and its moments and
/// state; returns the state to continue from.
pub fn load_checkpoint(path: &Path, optimizer: &mut AdamW) -> Result<CheckpointState> {
    let state_path = path.join("state.json");
    let text = crate::corpus::read_settings(&state_path, "checkpoint state")?;
    let record: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::format(&state_path, e.to_string()))?;
    let weights = MappedSafetensors::open(&path.join("trainable.safetensors"))?;
    let moments = MappedSafetensors::open(&path.join("optimizer.safetensors"))?;
    let device = optimizer
        .params()
        .first()
        .map_or(candle_core::Device::Cpu, |(_, v)| v.device().clone());
    for i in 0..optimizer.params.len() {
        let (name, var) = &optimizer.params[i];
        let w = weights.tensor(name, &device)?;
        crate::checkpoint::check_finite(&w, weights.path(), name)?;
        if w.dims() != var.dims() {
            return Err(Error::tensor(
                weights.path(),
                name,
                format!("shape {:?}, the model has {:?}", w.dims(), var.dims()),
            ));
        }
        var.set(&w.to_dtype(var.dtype())?)?;
        if optimizer.master[i].is_some() {
            optimizer.master[i] = Some(w.to_dtype(DType::F32)?);
        }
        optimizer.m[i] = moments.tensor(&format!("m.{name}"), &device)?;
        optimizer.v[i] = moments.tensor(&format!("v.{name}"), &device)?;
    }
    optimizer.t = record.optimizer_t;
    Ok(record)
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values are the point")]
mod tests {
    use super::*;

    /// Three AdamW steps against the algorithm as PyTorch documents it (`torch.optim.AdamW`:
    /// decoupled decay, bias-corrected moments, ε added to √v̂), computed element by element in
    /// f64, with a gradient scale (clipping × averaging) and decay on one tensor only. Tolerance
    /// 1e-6 relative (f32 arithmetic).
    #[test]
    fn adamw_follows_the_documented_algorithm() {
        let cfg = TrainConfig {
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            ..TrainConfig::default()
        };
        let w0 = [0.5f32, -1.25, 2.0, 0.001];
        let decayed = Var::from_slice(&w0, 4, &candle_core::Device::Cpu).unwrap();
        let norm = Var::from_slice(&w0, 4, &candle_core::Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![
                ("model.layers.0.mlp.up_proj.weight".into(), decayed.clone()),
                ("model.layers.0.input_layernorm.weight".into(), norm.clone()),
            ],
            false,
        )
        .unwrap();
        let grads = [
            [0.3f32, -0.2, 0.05, 4.0],
            [-0.1, 0.6, 0.0, -2.0],
            [0.2, 0.2, -0.3, 1.0],
        ];
        let (lr, scale) = (1e-2, 0.5);
        // (w, m, v) per element, for the decayed tensor and the norm.
        let mut reference = w0.map(|w| [f64::from(w), 0.0, 0.0]);
        let mut reference_norm = reference;
        for (t, g) in grads.iter().enumerate() {
            let gt = Tensor::new(g, &candle_core::Device::Cpu).unwrap();
            opt.step(&[Some(gt.clone()), Some(gt)], lr, scale, &cfg, false)
                .unwrap();
            let t = i32::try_from(t + 1).unwrap();
            for (state, wd) in [(&mut reference, 0.1), (&mut reference_norm, 0.0)] {
                for (e, &gi) in state.iter_mut().zip(g) {
                    let gi = f64::from(gi) * scale;
                    e[0] *= 1.0 - lr * wd;
                    e[1] = 0.9 * e[1] + 0.1 * gi;
                    e[2] = 0.95 * e[2] + 0.05 * gi * gi;
                    let m_hat = e[1] / (1.0 - 0.9f64.powi(t));
                    let v_hat = e[2] / (1.0 - 0.95f64.powi(t));
                    e[0] -= lr * m_hat / (v_hat.sqrt() + 1e-8);
                }
            }
        }
        for (var, state) in [(&decayed, &reference), (&norm, &reference_norm)] {
            let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
            for (g, e) in got.iter().zip(state.iter()) {
                let rel = (f64::from(*g) - e[0]).abs() / e[0].abs();
                assert!(rel < 1e-6, "{got:?} vs {state:?}");
            }
        }
    }

    #[test]
    fn schedule_values_at_chosen_steps() {
        let cfg = TrainConfig {
            steps: 100,
            lr: 1e-3,
            warmup: 0.1,
            ..TrainConfig::default()
        };
        assert_eq!(cfg.warmup_steps(), 10);
        assert!((cfg.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((cfg.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((cfg.lr_at(10) - 1e-3).abs() < 1e-12);
        // Halfway through the cosine: half the peak.
        assert!((cfg.lr_at(55) - 5e-4).abs() < 1e-12);
        assert!(cfg.lr_at(99) < 1e-6);
        let constant = TrainConfig {
            schedule: Schedule::Constant,
            ..cfg.clone()
        };
        assert_eq!(constant.lr_at(80), 1e-3);
        let floor = TrainConfig {
            min_lr_ratio: 0.1,
            ..cfg
        };
        assert!((floor.lr_at(100) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn epoch_order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(50, 3, 1), epoch_order(50, 3, 1));
        assert_ne!(epoch_order(50, 3, 1), epoch_order(50, 3, 2));
        let mut sorted = epoch_order(50, 3, 1);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(
            TrainConfig {
                lr: 0.0,
                ..TrainConfig::default()
            }
            .validate()
            .unwrap_err()
            .contains("train.lr")
        );
        assert!(
            TrainConfig {
                batch_size: 0,
                ..TrainConfig::default()
            }
            .validate()
            .unwrap_err()
            .contains("batch_size")
        );
    }
}
