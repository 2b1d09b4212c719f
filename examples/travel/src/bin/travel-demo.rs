//! `travel-demo`: the whole travel example in one command, on loopback (see
//! `concord_example_travel::cli::demo`).

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_travel::cli::demo::main())
}
