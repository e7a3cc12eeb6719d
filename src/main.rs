use std::process::ExitCode;

use clap::Parser;
use vehicle_state::cli::Cli;
use vehicle_state::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    // clap prints a bad or missing setting as one line naming it, and exits 2.
    let cli = Cli::parse();
    telemetry::init(cli.log_format, cli.log_filter);
    match cli.command.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` puts the whole cause chain on one line.
            eprintln!("vehicle-state: {error:#}");
            ExitCode::FAILURE
        }
    }
}
