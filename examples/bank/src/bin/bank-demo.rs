//! `bank-demo`: the whole bank example in one command, on loopback (see
//! `concord_example_bank::cli::demo`).

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_bank::cli::demo::main())
}
