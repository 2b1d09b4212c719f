//! The `book-trip` program built with the SDK's fail points on, for the tests
//! that run the README's commands: the same `concord_example_travel::cli::book_trip::main`.

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_travel::cli::book_trip::main())
}
