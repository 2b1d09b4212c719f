//! `transfer`: move money between two banks in one Concord transaction (see
//! `concord_example_bank::cli::transfer`).

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_bank::cli::transfer::main())
}
