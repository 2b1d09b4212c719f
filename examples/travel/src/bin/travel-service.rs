//! `travel-service`: one service of the travel example (see
//! `concord_example_travel::cli::travel_service`).

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_travel::cli::travel_service::main())
}
