//! The command line: which command runs, and the settings each one reads.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{
    DatabaseSettings, IngestSettings, LogFormat, PublishSettings, SeedData, ServeSettings,
    TraceSettings,
};
use crate::{db, healthcheck, openapi, startup, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "vehicle-state",
    version,
    about = "Which state was vehicle N in at instant T? Served over HTTP, cached in Redis."
)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "pretty",
        global = true,
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    /// Which log lines to write, as a tracing filter (e.g. `info`, `vehicle_state=debug,info`).
    // The default leaves out the HTTP server's and the NATS client's own start-up and connect
    // lines, which repeat what the service says itself (`listening`, `NATS connection
    // (re)established`); their warnings still show. `--log-filter` is its former name, kept as
    // a hidden alias; docs/configuration.md says both, so `--help` stays one line a setting.
    #[arg(long = "rust-log", alias = "log-filter", env = "RUST_LOG", value_name = "RUST_LOG", default_value = telemetry::DEFAULT_FILTER, global = true, help_heading = "Logging", value_parser = telemetry::parse_filter)]
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
    /// Apply migrations, then load a data set.
    Seed {
        #[command(subcommand)]
        data: SeedData,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Apply migrations, then build the fleet's sums (`fleet_sums`) anew from "stateLogs": after
    /// a write to "stateLogs" by anything but `ingest` or `seed`, counts are read from the table
    /// itself (exact, slower) until this runs. Writers wait while it runs; readers do not.
    RebuildFleet(DatabaseSettings),
    /// Apply vehicle events from NATS JetStream to PostgreSQL (the write side: run any number of
    /// these beside the read-only `serve` replicas).
    Ingest(Box<IngestSettings>),
    /// Publish events to NATS JetStream.
    Publish {
        #[command(subcommand)]
        events: PublishEvents,
    },
    /// Print the OpenAPI document as YAML (this is `openapi.yaml`).
    Openapi,
    /// Exit 0 if the server at ADDR answers `/readyz` with 200, 1 otherwise (for container health checks).
    Healthcheck {
        /// Address of the server to ask.
        #[arg(
            long = "healthcheck-addr",
            visible_alias = "addr",
            env = "HEALTHCHECK_ADDR",
            value_name = "HEALTHCHECK_ADDR",
            default_value = "127.0.0.1:8080",
            help_heading = "Healthcheck"
        )]
        addr: String,
        /// How long to wait for the answer.
        #[arg(
            long = "healthcheck-timeout-ms",
            visible_alias = "timeout-ms",
            env = "HEALTHCHECK_TIMEOUT_MS",
            value_name = "HEALTHCHECK_TIMEOUT_MS",
            default_value_t = 2000,
            help_heading = "Healthcheck"
        )]
        timeout_ms: u64,
    },
}

/// What `publish` sends.
#[derive(Debug, Subcommand)]
pub enum PublishEvents {
    /// The histories `seed synthetic` generates, as `registered` and `state_changed` events:
    /// applying them gives the same tables as `seed synthetic` with the same seed.
    Synthetic(Box<PublishSettings>),
}

/// Exit codes: 2 for a bad setting (as clap), 1 for a failure while running.
pub const EXIT_BAD_SETTING: u8 = 2;
pub const EXIT_FAILURE: u8 = 1;

impl Cli {
    /// Parses the command line and environment. `--help` and `--version` print and exit 0; a bad
    /// or missing setting prints one line naming it, without its value (which may hold a
    /// password), and exits 2.
    pub fn try_parse_settings() -> Result<Self, ExitCode> {
        Self::try_parse().map_err(|error| {
            use clap::error::ErrorKind;
            match error.kind() {
                // Printing help can only fail on a closed stdout, and then nobody reads it.
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _printed = error.print();
                    return ExitCode::SUCCESS;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _printed = error.print();
                    return ExitCode::from(EXIT_BAD_SETTING);
                }
                _ => {}
            }
            eprintln!("{}", one_line(&error));
            ExitCode::from(EXIT_BAD_SETTING)
        })
    }
}

/// clap's message, first line only, with the rejected value taken out, naming the setting both
/// ways (`CACHE_TTL_SECS / --cache-ttl-secs`), the way it was given first.
fn one_line(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = error.render().to_string();
    let mut line = rendered
        .lines()
        .next()
        .unwrap_or("error: invalid settings")
        .to_owned();
    if let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) {
        line = line.replace(&format!(" '{value}'"), "");
    }
    if let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg)
        && let Some(names) = both_names(arg)
    {
        line = line.replace(&format!("'{arg}'"), &names);
    }
    // Settings another one needs (AUTH_JWKS_URL needs AUTH_ISSUER): clap lists them on the
    // lines below; named on this one.
    if let Some(ContextValue::Strings(missing)) = error.get(ContextKind::InvalidArg) {
        let names: Vec<String> = missing
            .iter()
            .map(|arg| both_names(arg).unwrap_or_else(|| arg.clone()))
            .collect();
        line = format!("{} {}", line.trim_end(), names.join(", "));
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        line = format!("{line}: expected one of {}", valid.join(", "));
    }
    line
}

/// For clap's `--cache-ttl-secs <CACHE_TTL_SECS>`: `CACHE_TTL_SECS / --cache-ttl-secs`, or the
/// other way round when the flag is on the command line.
fn both_names(arg: &str) -> Option<String> {
    let flag = arg.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?;
    let env = find_env(&<Cli as clap::CommandFactory>::command(), long)?;
    let on_command_line = std::env::args_os().any(|given| {
        given
            .to_str()
            .is_some_and(|given| given == flag || given.starts_with(&format!("{flag}=")))
    });
    Some(if on_command_line {
        format!("{flag} / {env}")
    } else {
        format!("{env} / {flag}")
    })
}

/// The environment variable of the option `--long`, in `command` or any of its subcommands.
fn find_env(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_env(sub, long))
        })
}

impl Command {
    /// The trace settings of a command that traces, with its default `service.name`.
    pub fn traces(&self) -> Option<(&TraceSettings, &'static str)> {
        match self {
            Command::Serve(settings) => Some((&settings.traces, "vehicle-state")),
            Command::Ingest(settings) => Some((&settings.traces, "vehicle-state-ingest")),
            Command::Publish {
                events: PublishEvents::Synthetic(settings),
            } => Some((&settings.traces, "vehicle-state-publish")),
            _ => None,
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(settings) => {
                // Listening from the start: a SIGTERM while migrations run (PID 1 in a container
                // gets no default handler) stops the start-up instead of being ignored.
                let mut signals = telemetry::ShutdownSignals::listen()
                    .context("cannot listen for SIGTERM and Ctrl-C")?;
                let app = tokio::select! {
                    app = startup::Application::build(*settings) => app?,
                    () = signals.recv() => {
                        tracing::info!("stopped before serving");
                        return Ok(());
                    }
                };
                app.run_until_stopped(async move {
                    signals.recv().await;
                    // A second signal means "now": skip the drain and the wait for requests.
                    tokio::spawn(async move {
                        signals.recv().await;
                        tracing::warn!("second signal: exiting without waiting for requests");
                        std::process::exit(i32::from(EXIT_FAILURE));
                    });
                })
                .await?;
            }
            Command::Migrate(database) => db::prepare(&database, None).await?,
            Command::Seed { data, database } => db::prepare(&database, Some(data)).await?,
            Command::RebuildFleet(database) => db::rebuild_fleet_sums(&database).await?,
            Command::Ingest(settings) => crate::ingest::run(*settings).await?,
            Command::Publish {
                events: PublishEvents::Synthetic(settings),
            } => crate::publish::synthetic(*settings).await?,
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
    fn every_option_shows_its_environment_variable_as_its_value_name() {
        // An error names the option by `--flag <VALUE_NAME>`; operators set variables, so the
        // value name must be the variable's name.
        let cli = Cli::command();
        let mut checked = 0;
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                let Some(env) = arg.get_env() else { continue };
                let names: Vec<_> = arg
                    .get_value_names()
                    .unwrap_or_default()
                    .iter()
                    .map(|n| n.as_str())
                    .collect();
                assert_eq!(names, [env.to_string_lossy()], "--{}", arg.get_id());
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked}");
    }

    #[test]
    fn every_option_is_its_variable_in_kebab_case_under_a_heading() {
        // `RUST_LOG` is `--rust-log`, `CACHE_TTL_SECS` `--cache-ttl-secs`: one name to learn.
        // In `--help`, settings are grouped (PostgreSQL, Redis, ...) and the global logging
        // options sit in their own group, not in whichever group precedes them.
        fn visit(command: &clap::Command, checked: &mut usize) {
            for arg in command.get_arguments() {
                let Some(env) = arg.get_env() else { continue };
                let env = env.to_string_lossy();
                let kebab = env.to_lowercase().replace('_', "-");
                assert_eq!(arg.get_long(), Some(kebab.as_str()), "{env}");
                let heading = arg.get_help_heading();
                assert!(heading.is_some(), "{env} has no heading");
                if env == "RUST_LOG" || env == "LOG_FORMAT" {
                    assert_eq!(heading, Some("Logging"), "{env}");
                }
                *checked += 1;
            }
            for sub in command.get_subcommands() {
                visit(sub, checked);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut checked = 0;
        visit(&cli, &mut checked);
        assert!(checked >= 40, "{checked}");
    }

    #[test]
    fn a_refused_setting_is_one_line_without_its_value() {
        let error = Cli::try_parse_from([
            "vehicle-state",
            "serve",
            "--database-url",
            "postgres://u:s3cret@h:notaport/db",
        ])
        .expect_err("refused");

        let line = one_line(&error);

        // Named both ways (in this order here, as the test's own command line has no flag).
        assert!(
            line.starts_with("error: invalid value for DATABASE_URL / --database-url: "),
            "{line}"
        );
        assert!(!line.contains("s3cret") && !line.contains('\n'), "{line}");
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
