//! `account-service`: one bank of the bank example (see
//! `concord_example_bank::cli`).

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_bank::cli::main())
}
