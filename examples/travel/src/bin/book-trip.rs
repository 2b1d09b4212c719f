//! `book-trip`: book a trip as one Concord saga (see
//! `concord_example_travel::cli::book_trip`).

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_travel::cli::book_trip::main())
}
