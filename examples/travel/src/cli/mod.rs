//! The travel example's programs, each a `main` here and a five-line file
//! in `src/bin`: they live in the library so that the tests build the very
//! same programs (with the SDK's fail points on) and run them as the README
//! prints them.

pub mod book_trip;
pub mod demo;
pub mod travel_service;

use concord_participant::CoordinatorClient;

/// Prints each step of saga `id` as its coordinator has it (name, state,
/// attempts), `indent` spaces in: what book-trip and travel-demo show.
async fn print_steps(client: &CoordinatorClient, id: &str, indent: usize) -> anyhow::Result<()> {
    for step in client.transaction(id).await?.steps {
        let state = concord_proto::v1::StepState::try_from(step.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("STEP_STATE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "{:indent$}{:<8} {:<12} attempts {}",
            "", step.name, state, step.attempts
        );
    }
    Ok(())
}
