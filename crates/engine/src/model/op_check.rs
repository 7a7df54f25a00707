//! The GPU check of the hand-written backward passes ([`super::autograd`]): each op on a device
//! in a dtype against the CPU in f32, on the same host-drawn random inputs (`slayer bench ops`).

use candle_core::{DType, Result, Tensor};

use super::autograd::{
    ATTENTION_CHUNK, CE_CHUNK_ROWS, attention_probs, causal_attention, cross_entropy_frozen_head,
    rms_norm_frozen,
};
use super::random::normal;

/// One hand-written op checked on a device against the CPU.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpCheck {
    pub op: &'static str,
    pub dtype: String,
    /// Largest absolute difference over the largest reference magnitude: forward output.
    pub forward_error: f32,
    /// The same for the input gradient under a random output gradient.
    pub gradient_error: f32,
    pub tolerance: f32,
    /// Every output and gradient element finite (the device's buffers are poisoned with NaN
    /// before each op, so an element a kernel never wrote shows up here).
    pub finite: bool,
}

impl OpCheck {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.finite && self.forward_error <= self.tolerance && self.gradient_error <= self.tolerance
    }
}

/// Relative error allowed between `dtype` on a device and f32 on the CPU: summation order for
/// f32, the mantissa for 16-bit types (bf16's 8 bits over a few roundings).
fn device_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 1e-2,
        _ => 4e-2,
    }
}

/// Runs every hand-written op of this module (and the rotary embedding) on `device` in `dtype`
/// and on the CPU in f32 with the same fresh random inputs, comparing outputs and input
/// gradients. For the GPU check (`slayer bench ops`).
pub fn check_ops(device: &candle_core::Device, dtype: DType) -> Result<Vec<OpCheck>> {
    use candle_core::{Device, Var};
    type Op = Box<dyn Fn(&Tensor) -> Result<Tensor>>;
    type MakeOp = Box<dyn Fn(&Device, DType) -> Result<Op>>;
    let cpu = Device::Cpu;
    let config = crate::model::random::tiny_config();
    let mut checks = Vec::new();
    // (name, input shape, the op given a device and dtype)
    let cases: Vec<(&'static str, Vec<usize>, MakeOp)> = vec![
        (
            "attention probabilities",
            vec![2, 4, 48, 48],
            Box::new(|dev, dt| {
                let mask = super::attention::causal_mask(48, 0, dt, dev)?;
                Ok(Box::new(move |x: &Tensor| attention_probs(x, 0.125, Some(&mask))) as Op)
            }),
        ),
        (
            "causal attention (3 chunks)",
            vec![1, 2, 4, 2 * ATTENTION_CHUNK + 40, 32],
            Box::new(|dev, dt| {
                let mask = super::attention::causal_mask(2 * ATTENTION_CHUNK + 40, 0, dt, dev)?;
                Ok(Box::new(move |qkv: &Tensor| {
                    let (b, kvh, _, t, d) = qkv.dims5()?;
                    let q = qkv.narrow(2, 0, 2)?.reshape((b, kvh * 2, t, d))?;
                    let k = qkv.narrow(2, 2, 1)?.squeeze(2)?;
                    let v = qkv.narrow(2, 3, 1)?.squeeze(2)?;
                    causal_attention(&q, &k, &v, 0.177, &mask)
                }) as Op)
            }),
        ),
        (
            "rms norm (frozen weight)",
            vec![2, 37, 320],
            Box::new(|dev, dt| {
                let w = (normal(&[320], 1, 0.1)? + 1.0)?
                    .to_dtype(dt)?
                    .to_device(dev)?;
                Ok(Box::new(move |x: &Tensor| rms_norm_frozen(x, &w, 1e-5)) as Op)
            }),
        ),
        (
            "rotary embedding",
            vec![2, 4, 40, config.head_dim],
            Box::new(move |dev, dt| {
                let rotary = super::Rotary::new(&crate::model::random::tiny_config(), dt, dev)?;
                Ok(Box::new(move |x: &Tensor| rotary.apply(x, 9)) as Op)
            }),
        ),
        (
            "cross-entropy (chunked)",
            vec![2 * CE_CHUNK_ROWS + 21, 64],
            Box::new(|dev, dt| {
                let head = normal(&[777, 64], 2, 0.5)?.to_dtype(dt)?.to_device(dev)?;
                let targets: Vec<u32> = (0..(2 * CE_CHUNK_ROWS + 21) as u32)
                    .map(|i| (i * 13 + 5) % 777)
                    .collect();
                let targets = Tensor::new(targets, dev)?;
                Ok(Box::new(move |h: &Tensor| cross_entropy_frozen_head(h, &head, &targets)) as Op)
            }),
        ),
    ];
    for (name, shape, make) in cases {
        let input = normal(&shape, 3, 1.0)?;
        let run = |dev: &Device, dt: DType| -> Result<(Tensor, Tensor)> {
            let op = make(dev, dt)?;
            // Poison: fill the device's pool with NaN first, so unwritten output shows.
            drop(Tensor::full(f32::NAN, (1 << 20,), dev)?.to_dtype(dt)?);
            let x = Var::from_tensor(&input.to_dtype(dt)?.to_device(dev)?)?;
            let y = op(x.as_tensor())?;
            let g = normal(y.dims(), 4, 1.0)?;
            let surrogate = (y.to_dtype(DType::F32)? * g.to_device(dev)?)?.sum_all()?;
            let grads = surrogate.backward()?;
            let dx = grads
                .get(x.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))?;
            Ok((
                y.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                dx.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ))
        };
        let (y_ref, dx_ref) = run(&cpu, DType::F32)?;
        let (y, dx) = run(device, dtype)?;
        let error = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
            Ok(diff / scale)
        };
        let finite = |t: &Tensor| -> Result<bool> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite()))
        };
        checks.push(OpCheck {
            op: name,
            dtype: format!("{dtype:?}").to_lowercase(),
            forward_error: error(&y, &y_ref)?,
            gradient_error: error(&dx, &dx_ref)?,
            tolerance: device_tolerance(dtype),
            finite: finite(&y)? && finite(&dx)?,
        });
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The device check on the CPU: f32 against f32 is summation order only, and bf16 and f16
    /// on the CPU stay within the tolerances the GPU is held to.
    #[test]
    fn the_device_check_passes_on_the_cpu_in_every_dtype() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let checks = check_ops(&Device::Cpu, dtype).unwrap();
            assert_eq!(checks.len(), 5);
            for c in &checks {
                assert!(c.passed(), "{c:?}");
            }
            if dtype == DType::F32 {
                assert!(checks.iter().all(|c| c.forward_error <= 1e-6), "{checks:?}");
            }
        }
    }
}
