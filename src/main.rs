use std::process::ExitCode;

use vehicle_state::cli::{self, Cli};
use vehicle_state::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    // Settings from `.env` in the working directory, when there is one: variables already in
    // the environment win over it (dotenvy never overrides them).
    match dotenvy::from_path(".env") {
        Ok(()) => {}
        Err(error) if error.not_found() => {}
        Err(error) => {
            eprintln!("error: cannot read .env: {error}");
            return ExitCode::from(cli::EXIT_BAD_SETTING);
        }
    }
    let cli = match Cli::try_parse_settings() {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    let tracing = match telemetry::init(cli.log_format, cli.log_filter, cli.command.traces()) {
        Ok(tracing) => tracing,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(cli::EXIT_BAD_SETTING);
        }
    };
    let result = cli.command.run().await;
    if let Some(tracing) = tracing {
        // The last spans go out (or time out) before the process ends; the SDK's shutdown
        // blocks, so it runs off the runtime's threads.
        let _flushed = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole cause chain on one line, each cause once.
            eprintln!("vehicle-state: {}", telemetry::chain(error.as_ref()));
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
