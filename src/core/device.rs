//! Choosing the compute device.

use candle_core::Device;

use crate::core::error::{Error, Result};

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA when built with it and a GPU is present, else the CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown device `{other}` (cpu, cuda, auto)")),
        }
    }
}

/// Opens the chosen device.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Invalid(
                    "this slayer was built without CUDA: rebuild with `--features cuda` (see scripts/cuda-env.sh)".into(),
                ));
            }
            Device::new_cuda(0)
                .map_err(|e| Error::Invalid(format!("cannot open CUDA device 0: {e}")))
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available()
                && let Ok(d) = Device::new_cuda(0)
            {
                return Ok(d);
            }
            Ok(Device::Cpu)
        }
    }
}

/// The dtype to compute in on a device when the user does not say: f32 on the CPU (bf16 matmul
/// there is slow), bf16 on CUDA.
#[must_use]
pub fn default_dtype(device: &Device) -> candle_core::DType {
    if device.is_cuda() {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    }
}
