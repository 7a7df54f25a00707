//! Frozen linear layers for the CPU's kernels: several weights that read the same input (q, k
//! and v; gate and up) multiplied into one output, side by side, with a backward that yields
//! only the input's gradient.
//!
//! The weights are read as stored, `(out, in)`: the forward multiplies by their transposed view.
//! A contiguous `(in, out)` copy would be faster on one thread (up to 1.2×), but shared by the
//! pool's threads by columns the view is within 2–10% of it (bench/RESULTS.md, "CPU training:
//! fused kernels"), not worth the weights' memory a second time.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::{Float, Mat, Strides, matmul_threaded, slice_of, with_slice};

/// Frozen weights `(out_i, in)` that multiply the same input, prepared as described above.
#[derive(Clone, Debug)]
pub struct FrozenLinear {
    weights: Vec<Tensor>,
    inputs: usize,
    /// Σ out_i.
    outputs: usize,
}

impl FrozenLinear {
    /// Groups `weights` (each `(out_i, in)`, one dtype, on the CPU; shared, not copied).
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
        let outputs = weights.iter().map(|w| w.dim(0)).sum::<Result<usize>>()?;
        Ok(Self {
            weights,
            inputs,
            outputs,
        })
    }

    /// `(in, Σ out)`.
    #[must_use]
    pub fn sizes(&self) -> (usize, usize) {
        (self.inputs, self.outputs)
    }

    /// `x · [W_1; W_2; …]ᵀ` for `x` (…, in): (…, Σ out_i), the outputs side by side in the order
    /// of the weights; differentiable in `x` only.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
        x.reshape((rows, inputs))?
            .contiguous()?
            .apply_op1(Product(self.clone()))?
            .reshape(out_dims)
    }

    /// `onto + x · Wᵀ` (or without `onto`) on `rows` rows.
    pub(super) fn forward_into<T: Float>(
        &self,
        x: &[T],
        rows: usize,
        onto: Option<&[T]>,
    ) -> Result<Vec<T>> {
        let mut out = match onto {
            Some(residual) => residual.to_vec(),
            None => vec![T::zero(); rows * self.outputs],
        };
        let mut column = 0;
        for w in &self.weights {
            let n = w.dim(0)?;
            with_slice::<T, _>(w, |w| {
                matmul_threaded(
                    &mut out[column..],
                    Strides {
                        rows,
                        cols: n,
                        row_stride: self.outputs,
                        col_stride: 1,
                    },
                    Mat(x, Strides::rows(rows, self.inputs, self.inputs)),
                    Mat(w, Strides::transposed(n, self.inputs, self.inputs)),
                    T::one(),
                    onto.is_some(),
                );
                Ok(())
            })?;
            column += n;
        }
        Ok(out)
    }

    /// `dX = Σ_i dY_i · W_i`, where `dY_i` are the gradient's columns of weight `i`.
    pub(super) fn input_gradient<T: Float>(&self, grad: &[T], rows: usize) -> Result<Vec<T>> {
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

/// The candle op of [`FrozenLinear::forward`], on 2-D tensors.
struct Product(FrozenLinear);

impl CustomOp1 for Product {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, _) = layout.shape().dims2()?;
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(self.0.forward_into(
                slice_of(storage, layout)?,
                rows,
                None,
            )?),
            CpuStorage::F64(_) => CpuStorage::F64(self.0.forward_into(
                slice_of(storage, layout)?,
                rows,
                None,
            )?),
            other => candle_core::bail!("frozen linear takes f32 or f64, not {:?}", other.dtype()),
        };
        Ok((out, Shape::from((rows, self.0.outputs))))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let rows = x.dim(0)?;
        let dx = match grad.dtype() {
            DType::F32 => {
                let dx = with_slice::<f32, _>(grad, |g| self.0.input_gradient(g, rows))?;
                Tensor::from_vec(dx, x.shape(), x.device())?
            }
            DType::F64 => {
                let dx = with_slice::<f64, _>(grad, |g| self.0.input_gradient(g, rows))?;
                Tensor::from_vec(dx, x.shape(), x.device())?
            }
            other => candle_core::bail!("frozen linear takes f32 or f64, not {other:?}"),
        };
        Ok(Some(dx))
    }
}

/// `x · wᵀ` for `x` (…, in) and a weight `w` (out, in) as stored — a trainable one, or a frozen
/// one not prepared — on candle's pool ([`super::matmul_threaded`]); f32 or f64 on the CPU.
/// Backward gives `x` its gradient when `x` is tracked and `w` its own when `w` is: nothing for
/// what needs none (candle's matmul computes both always).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out, inputs) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&inputs) {
        candle_core::bail!("linear: input {dims:?} for a weight {:?}", w.dims());
    }
    let rows = x.elem_count() / inputs.max(1);
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out;
    }
    x.reshape((rows, inputs))?
        .contiguous()?
        .apply_op2(&w.contiguous()?, Linear)?
        .reshape(out_dims)
}

/// The candle op of [`linear`], on 2-D tensors.
struct Linear;

fn linear_forward<T: Float>(
    x: &[T],
    w: &[T],
    (rows, inputs, out): (usize, usize, usize),
) -> Vec<T> {
    let mut y = vec![T::zero(); rows * out];
    matmul_threaded(
        &mut y,
        Strides::rows(rows, out, out),
        Mat(x, Strides::rows(rows, inputs, inputs)),
        Mat(w, Strides::transposed(out, inputs, inputs)),
        T::one(),
        false,
    );
    y
}

/// `(dX, dW)`, each only when asked for.
fn linear_backward<T: Float>(
    x: &[T],
    w: &[T],
    grad: &[T],
    (rows, inputs, out): (usize, usize, usize),
    (want_x, want_w): (bool, bool),
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let dx = want_x.then(|| {
        let mut dx = vec![T::zero(); rows * inputs];
        matmul_threaded(
            &mut dx,
            Strides::rows(rows, inputs, inputs),
            Mat(grad, Strides::rows(rows, out, out)),
            Mat(w, Strides::rows(out, inputs, inputs)),
            T::one(),
            false,
        );
        dx
    });
    let dw = want_w.then(|| {
        let mut dw = vec![T::zero(); out * inputs];
        matmul_threaded(
            &mut dw,
            Strides::rows(out, inputs, inputs),
            Mat(grad, Strides::transposed(rows, out, out)),
            Mat(x, Strides::rows(rows, inputs, inputs)),
            T::one(),
            false,
        );
        dw
    });
    (dx, dw)
}

/// [`linear_backward`] on tensors.
fn linear_gradients<T: Float>(
    [x, w, grad]: [&Tensor; 3],
    sizes: (usize, usize, usize),
    wanted: (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (dx, dw) = with_slice::<T, _>(x, |xs| {
        with_slice::<T, _>(w, |ws| {
            with_slice::<T, _>(grad, |g| Ok(linear_backward(xs, ws, g, sizes, wanted)))
        })
    })?;
    Ok((
        dx.map(|d| Tensor::from_vec(d, x.shape(), x.device()))
            .transpose()?,
        dw.map(|d| Tensor::from_vec(d, w.shape(), w.device()))
            .transpose()?,
    ))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inputs) = l1.shape().dims2()?;
        let (out, _) = l2.shape().dims2()?;
        let sizes = (rows, inputs, out);
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(linear_forward(slice_of(s1, l1)?, slice_of(s2, l2)?, sizes))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(linear_forward(slice_of(s1, l1)?, slice_of(s2, l2)?, sizes))
            }
            _ => candle_core::bail!(
                "linear takes f32 or f64 of one dtype, not {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((y, Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, inputs) = x.dims2()?;
        let sizes = (rows, inputs, w.dim(0)?);
        let wanted = (x.track_op(), w.track_op());
        match x.dtype() {
            DType::F32 => linear_gradients::<f32>([x, w, grad], sizes, wanted),
            DType::F64 => linear_gradients::<f64>([x, w, grad], sizes, wanted),
            other => candle_core::bail!("linear takes f32 or f64, not {other:?}"),
        }
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

    /// The general product against candle's matmul and its autograd, both operands trainable.
    #[test]
    fn the_linear_op_gives_both_gradients() {
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let randn = |shape: &[usize]| {
                Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (x0, w0, g) = (randn(&[2, 37, 12]), randn(&[9, 12]), randn(&[2, 37, 9]));
            let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
                let (x, w) = (
                    Var::from_tensor(&x0).unwrap(),
                    Var::from_tensor(&w0).unwrap(),
                );
                let y = f(x.as_tensor(), w.as_tensor()).unwrap();
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                [
                    y,
                    grads.get(x.as_tensor()).unwrap().clone(),
                    grads.get(w.as_tensor()).unwrap().clone(),
                ]
            };
            let ours = run(&|x, w| linear(x, w));
            let theirs = run(&|x, w| x.broadcast_matmul(&w.t()?));
            for (a, b) in ours.iter().zip(&theirs) {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let scale = b.abs().unwrap().max_all().unwrap();
                let rel = (diff / scale).unwrap().to_dtype(DType::F64).unwrap();
                assert!(rel.to_scalar::<f64>().unwrap() <= tolerance, "{dtype:?}");
            }
        }
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
