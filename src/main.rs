// glibc's allocator hands the tensors of a training step (a few MiB each, hundreds a step) back
// to the kernel and faults fresh zeroed pages in for the next: 21,500 page faults a CPU training
// step on SmolLM2 at 1 × 256, against none with mimalloc, which keeps freed memory for reuse
// (for a minute: src/allocator.rs; bench/RESULTS.md, "CPU training: fused kernels").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(slayer::cli::main());
}
