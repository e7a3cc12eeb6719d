//! How log lines look. The filter and format options themselves are global options of the
//! command line, declared beside it.

use clap::ValueEnum;

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}
