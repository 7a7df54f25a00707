fn main() {
    std::process::exit(slayer::cli::main());
}
