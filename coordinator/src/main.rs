//! `concord`: the coordinator's command line (see `concord_coordinator::cli`).

/// mimalloc rather than the system allocator: a transaction's life is many
/// small short-lived buffers (HTTP/2 frames, protobuf messages, records),
/// and glibc's malloc spent 15% of the CPU of a `concord bench` run on them
/// (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_coordinator::cli::main())
}
