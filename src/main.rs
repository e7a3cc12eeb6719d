use std::process::ExitCode;

use vehicle_state::cli::{self, Cli};
use vehicle_state::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse_settings() {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    telemetry::init(cli.log_format, cli.log_filter);
    match cli.command.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` puts the whole cause chain on one line.
            eprintln!("vehicle-state: {error:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
