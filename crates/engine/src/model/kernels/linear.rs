//! Frozen linear layers prepared for training on the CPU: several weights that read the same
//! input multiplied as one (q, k and v; gate and up), each product in the layout gemm runs
//! fastest, and a backward that yields only the input's gradient.
//!
//! gemm multiplies by a row-major right-hand side faster than by a transposed view (two AVX-512
//! cores, SmolLM2's shapes at 256 rows: 180–290 GFLOP/s against 125–260; bench/RESULTS.md, "CPU
//! training: fused kernels"). The forward `x · Wᵀ` would read each `(out, in)` weight as a
//! transposed view, the backward `dY · W` reads it row-major; so a prepared group holds, beside
//! the weights, one contiguous `(in, Σ out)` copy of them side by side for the forward — the
//! weights' memory once more — and its backward adds the products of each weight into one
//! gradient, in place.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::{Float, Mat, Strides, matmul_threaded, slice_of, with_slice};

/// Frozen weights `(out_i, in)` that multiply the same input, prepared as described above.
#[derive(Clone, Debug)]
pub struct FrozenLinear {
    weights: Vec<Tensor>,
    /// `(in, Σ out_i)`, contiguous: the weights transposed, side by side.
    forward: Tensor,
    inputs: usize,
    outputs: usize,
}

impl FrozenLinear {
    /// Prepares `weights` (each `(out_i, in)`, one dtype, on the CPU).
    pub fn new(weights: &[&Tensor]) -> Result<Self> {
        let Some(first) = weights.first() else {
            candle_core::bail!("frozen linear: no weights");
        };
        let inputs = first.dim(1)?;
        for w in weights {
            if w.rank() != 2 || w.dim(1)? != inputs || w.dtype() != first.dtype() {
                candle_core::bail!(
                    "frozen linear: weights {:?} and {:?} do not share an input",
                    first.dims(),
                    w.dims()
                );
            }
        }
        let weights: Vec<Tensor> = weights
            .iter()
            .map(|w| w.contiguous())
            .collect::<Result<_>>()?;
        let forward = Tensor::cat(&weights, 0)?.t()?.contiguous()?;
        let outputs = forward.dim(1)?;
        Ok(Self {
            weights,
            forward,
            inputs,
            outputs,
        })
    }

    /// Elements held besides the weights themselves (the forward copy).
    #[must_use]
    pub fn extra_elements(&self) -> usize {
        self.forward.elem_count()
    }

    /// `x · [W_1; W_2; …]ᵀ` for `x` (…, in): (…, Σ out_i), the outputs side by side in the order
    /// of the weights; differentiable in `x` only.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_2d(x, |x2, _| x2.apply_op1(Product(self.clone())))
    }

    /// Checks `x` (…, in), flattens it to (rows, in) for `op`, and gives the result `x`'s
    /// leading dimensions back.
    fn forward_2d(
        &self,
        x: &Tensor,
        op: impl FnOnce(&Tensor, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&inputs, lead)) = dims.split_last() else {
            candle_core::bail!("frozen linear: scalar input");
        };
        if inputs != self.inputs {
            candle_core::bail!(
                "frozen linear: input has {inputs} features, the weights expect {}",
                self.inputs
            );
        }
        let rows: usize = lead.iter().product();
        let mut out_dims = lead.to_vec();
        out_dims.push(self.outputs);
        op(&x.reshape((rows, inputs))?.contiguous()?, rows)?.reshape(out_dims)
    }

    /// `residual + x · Wᵀ` (one weight: outputs and residual of one width), the product added
    /// onto a copy of the residual by gemm itself; differentiable in both (the residual's
    /// gradient is the output's).
    pub fn forward_onto(&self, residual: &Tensor, x: &Tensor) -> Result<Tensor> {
        if residual.dims().last() != Some(&self.outputs) {
            candle_core::bail!(
                "frozen linear: residual {:?} for {} outputs",
                residual.dims(),
                self.outputs
            );
        }
        let y = self.forward_2d(x, |x2, rows| {
            x2.apply_op2(
                &residual.reshape((rows, self.outputs))?.contiguous()?,
                Product(self.clone()),
            )
        })?;
        y.reshape(residual.dims())
    }

    fn forward_into<T: Float>(&self, x: &[T], rows: usize, onto: Option<&[T]>) -> Result<Vec<T>> {
        let mut out = match onto {
            Some(residual) => residual.to_vec(),
            None => vec![T::zero(); rows * self.outputs],
        };
        with_slice::<T, _>(&self.forward, |w| {
            matmul_threaded(
                &mut out,
                Strides::rows(rows, self.outputs, self.outputs),
                Mat(x, Strides::rows(rows, self.inputs, self.inputs)),
                Mat(w, Strides::rows(self.inputs, self.outputs, self.outputs)),
                T::one(),
                onto.is_some(),
            );
            Ok(())
        })?;
        Ok(out)
    }

    /// `dX = Σ_i dY_i · W_i`, where `dY_i` are the gradient's columns of weight `i`.
    fn input_gradient<T: Float>(&self, grad: &[T], rows: usize) -> Result<Vec<T>> {
        let mut dx = vec![T::zero(); rows * self.inputs];
        let mut column = 0;
        for (i, w) in self.weights.iter().enumerate() {
            let out = w.dim(0)?;
            with_slice::<T, _>(w, |w| {
                matmul_threaded(
                    &mut dx,
                    Strides::rows(rows, self.inputs, self.inputs),
                    Mat(&grad[column..], Strides::rows(rows, out, self.outputs)),
                    Mat(w, Strides::rows(out, self.inputs, self.inputs)),
                    T::one(),
                    i > 0,
                );
                Ok(())
            })?;
            column += out;
        }
        Ok(dx)
    }
}

/// The candle op of [`FrozenLinear::forward`] (one input) and [`FrozenLinear::forward_onto`]
/// (input and residual), on 2-D tensors.
struct Product(FrozenLinear);

impl Product {
    fn run(
        &self,
        (storage, layout): (&CpuStorage, &Layout),
        onto: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, _) = layout.shape().dims2()?;
        let shape = Shape::from((rows, self.0.outputs));
        let out = match storage {
            CpuStorage::F32(_) => {
                let onto = onto.map(|(s, l)| slice_of::<f32>(s, l)).transpose()?;
                CpuStorage::F32(
                    self.0
                        .forward_into(slice_of(storage, layout)?, rows, onto)?,
                )
            }
            CpuStorage::F64(_) => {
                let onto = onto.map(|(s, l)| slice_of::<f64>(s, l)).transpose()?;
                CpuStorage::F64(
                    self.0
                        .forward_into(slice_of(storage, layout)?, rows, onto)?,
                )
            }
            other => candle_core::bail!("frozen linear takes f32 or f64, not {:?}", other.dtype()),
        };
        Ok((out, shape))
    }

    fn input_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        match grad.dtype() {
            DType::F32 => {
                let dx = with_slice::<f32, _>(grad, |g| self.0.input_gradient(g, rows))?;
                Tensor::from_vec(dx, x.shape(), x.device())
            }
            DType::F64 => {
                let dx = with_slice::<f64, _>(grad, |g| self.0.input_gradient(g, rows))?;
                Tensor::from_vec(dx, x.shape(), x.device())
            }
            other => candle_core::bail!("frozen linear takes f32 or f64, not {other:?}"),
        }
    }
}

impl CustomOp1 for Product {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((storage, layout), None)
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        self.input_gradient(x, grad).map(Some)
    }
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "frozen-linear-onto"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), Some((s2, l2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _residual: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.input_gradient(x, grad)?), Some(grad.clone())))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Against candle's matmul of the concatenated weights and its autograd: output and input
    /// gradient, f32 within 1e-5 relative, f64 within 1e-12.
    #[test]
    fn a_group_matches_the_plain_products() {
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let randn = |shape: &[usize]| {
                Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (a, b) = (randn(&[7, 12]), randn(&[5, 12]));
            let group = FrozenLinear::new(&[&a, &b]).unwrap();
            let x0 = randn(&[2, 9, 12]);
            let g = randn(&[2, 9, 12]);
            let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                let x = Var::from_tensor(&x0).unwrap();
                let y = f(x.as_tensor()).unwrap();
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                (y, grads.get(x.as_tensor()).unwrap().clone())
            };
            let ours = run(&|x| group.forward(x));
            let w = Tensor::cat(&[&a, &b], 0).unwrap();
            let theirs = run(&|x| x.broadcast_matmul(&w.t()?));
            for (a, b) in [(&ours.0, &theirs.0), (&ours.1, &theirs.1)] {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let scale = b.abs().unwrap().max_all().unwrap();
                let rel = (diff / scale).unwrap().to_dtype(DType::F64).unwrap();
                assert!(rel.to_scalar::<f64>().unwrap() <= tolerance, "{dtype:?}");
            }
        }
    }

    /// `forward_onto` is the residual plus the product, with both gradients.
    #[test]
    fn a_product_onto_a_residual_adds_it() {
        let w = Tensor::randn(0f64, 1.0, (6, 4), &Device::Cpu).unwrap();
        let group = FrozenLinear::new(&[&w]).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 4), &Device::Cpu).unwrap()).unwrap();
        let r = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 6), &Device::Cpu).unwrap()).unwrap();
        let y = group.forward_onto(r.as_tensor(), x.as_tensor()).unwrap();
        let expected = (r.as_tensor() + x.as_tensor().matmul(&w.t().unwrap()).unwrap()).unwrap();
        let diff = (&y - &expected).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        let g = Tensor::randn(0f64, 1.0, (3, 6), &Device::Cpu).unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dr = grads.get(r.as_tensor()).unwrap();
        assert!(
            (dr - &g)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
                == 0.0
        );
        let dx = grads.get(x.as_tensor()).unwrap();
        let want = g.matmul(&w).unwrap();
        let diff = (dx - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
    }

    #[test]
    fn weights_with_different_inputs_are_refused() {
        let a = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(FrozenLinear::new(&[&a, &b]).is_err());
        let group = FrozenLinear::new(&[&a]).unwrap();
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(
            group
                .forward(&x)
                .unwrap_err()
                .to_string()
                .contains("5 features")
        );
    }
}
