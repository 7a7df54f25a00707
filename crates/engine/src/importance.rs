//! Layer importance on a calibration corpus, per block (h_l = residual stream entering block l):
//!
//! - **Block Influence** (ShortGPT, arXiv 2403.03853): BI_l = 1 − mean_t cos(h_l,t, h_l+1,t).
//! - **Angular distance** (Gromov et al., arXiv 2403.17887), n = 1:
//!   arccos(cos(h_l,T, h_l+1,T)) / π on the last token, averaged over samples.
//! - **Perplexity without the block** (Shortened LLaMA, arXiv 2402.02834): exp(mean CE) of the
//!   model with block l removed. Below block l that model is this one, so its loss runs only the
//!   blocks above l, from the stream the metrics' one forward already has
//!   ([`Llama::loss_from`]): about half the work of running each pruned model whole.
//! - **Taylor**: Σ over the block's seven matrices of |Σ_samples W ⊙ ∂L/∂W|.
//!
//! The last block's output is taken before the final norm. For every metric, larger means more
//! important.

use std::sync::atomic::AtomicBool;

use candle_core::{D, DType, Tensor};
use serde::Serialize;

use crate::checkpoint::check_cancel;
use crate::error::{Error, Result};
use crate::model::{BlockTensor, Llama};

/// An importance metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Bi,
    Angular,
    Ppl,
    Taylor,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::Bi, Metric::Angular, Metric::Ppl, Metric::Taylor];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Bi => "bi",
            Self::Angular => "angular",
            Self::Ppl => "ppl",
            Self::Taylor => "taylor",
        }
    }

    /// A column heading.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Bi => "block influence",
            Self::Angular => "angular distance",
            Self::Ppl => "ppl without block",
            Self::Taylor => "taylor",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown metric `{s}` (bi, angular, ppl, taylor, all)"))
    }
}

/// Per-block scores of one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricScores {
    pub metric: Metric,
    pub scores: Vec<f64>,
}

/// The result of an importance run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportanceReport {
    pub blocks: usize,
    pub samples: usize,
    pub seq_len: usize,
    /// Perplexity of the intact model on the same samples (the baseline of `ppl`).
    pub base_perplexity: f64,
    pub metrics: Vec<MetricScores>,
}

impl ImportanceReport {
    /// Scores of one metric, if computed.
    #[must_use]
    pub fn scores(&self, metric: Metric) -> Option<&[f64]> {
        self.metrics
            .iter()
            .find(|m| m.metric == metric)
            .map(|m| m.scores.as_slice())
    }
}

fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let dot = (&a * &b)?.sum(D::Minus1)?;
    let norms = (a.sqr()?.sum(D::Minus1)?.sqrt()? * b.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    Ok(dot.broadcast_div(&norms.clamp(1e-12, f64::MAX)?)?)
}

/// Computes `metrics` over `samples` (each a token window). `progress(done, total)` counts model
/// passes; `cancel` stops between passes.
pub fn compute(
    model: &Llama,
    samples: &[Vec<u32>],
    metrics: &[Metric],
    mut progress: impl FnMut(usize, usize),
    cancel: Option<&AtomicBool>,
) -> Result<ImportanceReport> {
    let n = model.blocks.len();
    if samples.is_empty() {
        return Err(Error::Invalid("no samples".into()));
    }
    let seq_len = samples[0].len();
    let want = |m| metrics.contains(&m);
    let passes = samples.len() * (1 + usize::from(want(Metric::Taylor)))
        + if want(Metric::Ppl) {
            n * samples.len()
        } else {
            0
        };
    let mut done = 0;
    let mut tick = |progress: &mut dyn FnMut(usize, usize)| {
        done += 1;
        progress(done, passes);
    };

    let (mut bi_sum, mut bi_count) = (vec![0.0f64; n], 0usize);
    let mut angular = vec![0.0f64; n];
    let mut base_loss = 0.0;
    // Loss without each block, summed over the samples (in sample order, as a pruned model run
    // sample by sample would sum it).
    let mut without = vec![0.0f64; n];
    // The forwards run on the blocks prepared for the CPU's fused kernels (sharing the weights;
    // nothing on other devices): ppl alone is blocks × samples passes.
    let full = model;
    let mut prepared = model.clone();
    prepared.prepare_frozen_linears()?;
    let model = &prepared;
    for s in samples {
        check_cancel(cancel)?;
        let x = Tensor::new(s.as_slice(), model.device())?.unsqueeze(0)?;
        let states = model.residual_states(&x)?;
        let t = s.len();
        if want(Metric::Ppl) {
            // Without block l the stream below it is this model's: run only the blocks above,
            // from the stream entering l (at the positions that predict the next token).
            let targets = x.narrow(1, 1, t - 1)?.flatten_all()?;
            for (l, total) in without.iter_mut().enumerate() {
                check_cancel(cancel)?;
                let entering = states[l].narrow(1, 0, t - 1)?.contiguous()?;
                let loss = model.loss_from(&entering, l, Some(l), &targets)?;
                *total += f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
                tick(&mut progress);
            }
        }
        for l in 0..n {
            let cos = cosine(&states[l], &states[l + 1])?.flatten_all()?;
            let values: Vec<f32> = cos.to_vec1()?;
            bi_sum[l] += values.iter().map(|&c| 1.0 - f64::from(c)).sum::<f64>();
            let last = f64::from(values[t - 1]).clamp(-1.0, 1.0);
            angular[l] += last.acos() / std::f64::consts::PI;
        }
        bi_count += t;
        let logits = model.logits(&states[n].narrow(1, 0, t - 1)?)?;
        let targets = x.narrow(1, 1, t - 1)?.flatten_all()?;
        let loss =
            candle_nn::loss::cross_entropy(&logits.squeeze(0)?.to_dtype(DType::F32)?, &targets)?;
        base_loss += f64::from(loss.to_scalar::<f32>()?);
        tick(&mut progress);
    }
    let base_perplexity = (base_loss / samples.len() as f64).exp();
    let mut out = Vec::new();
    if want(Metric::Bi) {
        out.push(MetricScores {
            metric: Metric::Bi,
            scores: bi_sum.iter().map(|s| s / bi_count as f64).collect(),
        });
    }
    if want(Metric::Angular) {
        out.push(MetricScores {
            metric: Metric::Angular,
            scores: angular.iter().map(|a| a / samples.len() as f64).collect(),
        });
    }
    if want(Metric::Ppl) {
        out.push(MetricScores {
            metric: Metric::Ppl,
            scores: without
                .iter()
                .map(|total| (total / samples.len() as f64).exp())
                .collect(),
        });
    }
    if want(Metric::Taylor) {
        out.push(MetricScores {
            metric: Metric::Taylor,
            scores: taylor(full, samples, cancel, &mut || tick(&mut progress))?,
        });
    }
    Ok(ImportanceReport {
        blocks: n,
        samples: samples.len(),
        seq_len,
        base_perplexity,
        metrics: out,
    })
}

/// Σ over each block's matrices of |W ⊙ Σ_samples ∂L/∂W|.
fn taylor(
    model: &Llama,
    samples: &[Vec<u32>],
    cancel: Option<&std::sync::atomic::AtomicBool>,
    tick: &mut dyn FnMut(),
) -> Result<Vec<f64>> {
    let mut m = model.clone();
    for i in 0..m.blocks.len() {
        m.set_block_trainable(i, true)?;
    }
    let matrices: Vec<Vec<(String, candle_core::Var)>> = (0..m.blocks.len())
        .map(|i| {
            m.blocks[i]
                .params()
                .into_iter()
                .filter(|(t, _)| {
                    !matches!(t, BlockTensor::InputNorm | BlockTensor::PostAttentionNorm)
                })
                .filter_map(|(t, p)| p.var().map(|v| (t.name().to_string(), v.clone())))
                .collect()
        })
        .collect();
    let mut grad_sums: Vec<Vec<Option<Tensor>>> =
        matrices.iter().map(|b| vec![None; b.len()]).collect();
    for s in samples {
        check_cancel(cancel)?;
        let x = Tensor::new(s.as_slice(), m.device())?.unsqueeze(0)?;
        let grads = m.loss(&x)?.backward()?;
        for (block, sums) in matrices.iter().zip(grad_sums.iter_mut()) {
            for ((_, var), sum) in block.iter().zip(sums.iter_mut()) {
                if let Some(g) = grads.get(var) {
                    let g = g.to_dtype(DType::F32)?;
                    *sum = Some(match sum.take() {
                        Some(acc) => (acc + g)?,
                        None => g,
                    });
                }
            }
        }
        tick();
    }
    let mut scores = Vec::with_capacity(matrices.len());
    for (block, sums) in matrices.iter().zip(&grad_sums) {
        let mut total = 0.0;
        for ((_, var), sum) in block.iter().zip(sums) {
            if let Some(g) = sum {
                let w = var.as_tensor().to_dtype(DType::F32)?;
                total += f64::from((w * g)?.abs()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        scores.push(total);
    }
    Ok(scores)
}

/// A plan suggestion: insert after the `n_new` most important blocks of the shallow half
/// (averaged init), prune the `n_prune` least important blocks of the deep half that no
/// insertion reads. Returns (insert-after indices, pruned indices), both ascending.
#[must_use]
pub fn suggest(scores: &[f64], n_new: usize, n_prune: usize) -> (Vec<usize>, Vec<usize>) {
    let n = scores.len();
    let half = n / 2;
    let mut shallow: Vec<usize> = (0..half).collect();
    shallow.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut insert: Vec<usize> = shallow.into_iter().take(n_new).collect();
    insert.sort_unstable();
    let sources: std::collections::BTreeSet<usize> =
        insert.iter().flat_map(|&i| [i, i + 1]).collect();
    let mut deep: Vec<usize> = (half..n).filter(|i| !sources.contains(i)).collect();
    deep.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
    let mut prune: Vec<usize> = deep.into_iter().take(n_prune).collect();
    prune.sort_unstable();
    (insert, prune)
}

/// The suggestion as an experiment file.
#[must_use]
pub fn suggestion_toml(
    base_model: &str,
    metric: Metric,
    insert: &[usize],
    prune: &[usize],
) -> String {
    use crate::plan::interchange::{InsertOut, ModelOut, PlanFileOut, PlanOut};
    let file = PlanFileOut {
        model: Some(ModelOut {
            base: base_model.to_string(),
        }),
        plan: PlanOut {
            insert: insert
                .iter()
                .map(|&i| InsertOut {
                    after: i as i64,
                    init: "average",
                    source: None,
                    zero: None,
                })
                .collect(),
            prune: prune.iter().map(|&p| p as i64).collect(),
            train: "new",
        },
    };
    format!(
        "# Suggested by `slayer importance --suggest` from {} scores: new blocks after the most\n# important shallow blocks, the least important deep blocks pruned.\n{}",
        metric.label(),
        toml::to_string(&file).unwrap_or_default()
    )
}
