//! The `vfiovm` command: see `vfiovm --help`.

fn main() {
    let status = vfiovm::run_main(std::env::args().skip(1));
    std::process::exit(status);
}
