//! Choosing the compute device.

use candle_core::Device;

use crate::error::{Error, Result};

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA when built with it and a GPU is present, else the CPU.
    #[default]
    Auto,
}

impl DeviceChoice {
    /// The name `--device` takes, which [`str::parse`] reads back.
    #[must_use]
    pub const fn as_arg(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Auto => "auto",
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_arg())
    }
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

/// The dtype training will use with `choice`, known without opening a device (for memory
/// estimates): [`default_dtype`] of the device `choice` would open; `Auto` counts as CUDA only
/// in a CUDA build.
#[must_use]
pub fn expected_dtype(choice: DeviceChoice) -> candle_core::DType {
    match choice {
        DeviceChoice::Cuda => candle_core::DType::BF16,
        DeviceChoice::Auto if cfg!(feature = "cuda") => candle_core::DType::BF16,
        DeviceChoice::Cpu | DeviceChoice::Auto => candle_core::DType::F32,
    }
}

/// Whether `choice` trains on the CPU, known without opening a device (as [`expected_dtype`]
/// counts `Auto`).
#[must_use]
pub fn expects_cpu(choice: DeviceChoice) -> bool {
    match choice {
        DeviceChoice::Cpu => true,
        DeviceChoice::Auto => !cfg!(feature = "cuda"),
        DeviceChoice::Cuda => false,
    }
}

/// Peak memory since the last [`reset_peak_memory`]: on CUDA, the high-water mark of memory in
/// use in the device's default pool (where candle allocates; the analogue of PyTorch's
/// `max_memory_allocated`); on the CPU, the process's peak resident set. `None` where it cannot
/// be read.
#[must_use]
pub fn peak_memory(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => cpu_peak_rss(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda_pool::used_high(d),
        _ => None,
    }
}

/// Starts a new peak-memory window (best effort: where it cannot be reset, the peak keeps
/// counting from the process's start).
pub fn reset_peak_memory(device: &Device) {
    match device {
        // Writing 5 to clear_refs resets VmHWM (Linux 4.0+).
        Device::Cpu => {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda_pool::reset_used_high(d),
        _ => {}
    }
}

fn cpu_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default memory pool's counters (cudarc allocates stream-ordered from it).
#[cfg(feature = "cuda")]
#[expect(unsafe_code, reason = "CUDA driver calls on the device's own context")]
mod cuda_pool {
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::cuda_backend::cudarc::driver::sys;

    fn pool(device: &CudaDevice) -> Option<sys::CUmemoryPool> {
        let stream = device.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().ok()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: the context is current on this thread and `pool` is a valid out-pointer.
        let r = unsafe { sys::cuDeviceGetDefaultMemPool(&raw mut pool, ctx.cu_device()) };
        (r == sys::CUresult::CUDA_SUCCESS).then_some(pool)
    }

    pub fn used_high(device: &CudaDevice) -> Option<u64> {
        let pool = pool(device)?;
        device.cuda_stream().synchronize().ok()?;
        let mut value: u64 = 0;
        // SAFETY: the attribute is a cuuint64_t, written through a valid pointer.
        let r = unsafe {
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&raw mut value).cast(),
            )
        };
        (r == sys::CUresult::CUDA_SUCCESS).then_some(value)
    }

    pub fn reset_used_high(device: &CudaDevice) {
        let Some(pool) = pool(device) else { return };
        let mut zero: u64 = 0;
        // SAFETY: as above; the driver accepts only zero for the high-water marks.
        let _ = unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&raw mut zero).cast(),
            )
        };
    }
}
