//! The command line: which command runs, and the settings each one reads.

use clap::{Parser, Subcommand};

use crate::config::{DatabaseSettings, Dataset, LogFormat, ServeSettings};
use crate::{db, healthcheck, openapi, startup, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "vehicle-state",
    version,
    about = "Which state was vehicle N in at instant T? Served over HTTP, cached in Redis."
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: LogFormat,

    /// Which log lines to write, as a tracing filter (e.g. `info`, `vehicle_state=debug,info`).
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true, value_parser = telemetry::parse_filter)]
    pub log_filter: tracing_subscriber::EnvFilter,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeSettings>),
    /// Create the database if absent, apply pending migrations, and exit.
    Migrate(DatabaseSettings),
    /// Load a data set (after applying migrations); running it twice changes nothing.
    Seed {
        dataset: Dataset,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Print the OpenAPI document as YAML (this is `openapi.yaml`).
    Openapi,
    /// Exit 0 if the server at ADDR answers `/readyz` with 200, 1 otherwise (for container health checks).
    Healthcheck {
        /// Address of the server to ask.
        #[arg(long, env = "HEALTHCHECK_ADDR", default_value = "127.0.0.1:8080")]
        addr: String,
        /// How long to wait for the answer.
        #[arg(long, env = "HEALTHCHECK_TIMEOUT_MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
}

impl Command {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(settings) => {
                let app = startup::Application::build(*settings).await?;
                app.run_until_stopped(telemetry::shutdown_signal()).await?;
            }
            Command::Migrate(database) => db::prepare(&database).await?,
            Command::Seed { dataset, database } => {
                db::prepare(&database).await?;
                db::seed(&db::connect(&database), dataset).await?;
            }
            Command::Openapi => print!("{}", openapi::yaml()?),
            Command::Healthcheck { addr, timeout_ms } => {
                healthcheck::check(&addr, std::time::Duration::from_millis(timeout_ms)).await?
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_malformed_setting_is_refused_with_its_name() {
        let error = Cli::try_parse_from(["vehicle-state", "serve", "--cache-ttl-secs", "soon"])
            .expect_err("refused");
        assert!(error.to_string().contains("CACHE_TTL_SECS"), "{error}");
        let error = Cli::try_parse_from(["vehicle-state", "serve", "--database-url", "mysql://x"])
            .expect_err("refused");
        assert!(error.to_string().contains("DATABASE_URL"), "{error}");
    }
}
