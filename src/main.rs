// glibc's allocator hands the tensors of a training step (a few MiB each, thousands a step) back
// to the kernel and faults fresh zeroed pages in for the next: 13% of a CPU step's samples were
// the kernel clearing pages. mimalloc keeps freed pages for reuse (bench/RESULTS.md, "allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(slayer::cli::main());
}
