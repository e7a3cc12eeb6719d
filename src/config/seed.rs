//! The data sets `seed` and `serve --seed` load.

use clap::{Args, ValueEnum};

/// The data set `serve --seed` can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dataset {
    /// Three vehicles and six state changes (`seed/sample.sql`).
    Sample,
}

/// What `seed` loads.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum SeedData {
    /// Three vehicles and six state changes (`seed/sample.sql`); loading it twice changes nothing.
    Sample,
    /// Generated histories for many vehicles, bulk-loaded with COPY; the same seed gives the same
    /// data. Refuses a database that already holds vehicles unless --replace.
    Synthetic(SyntheticSettings),
}

impl From<Dataset> for SeedData {
    fn from(dataset: Dataset) -> Self {
        match dataset {
            Dataset::Sample => SeedData::Sample,
        }
    }
}

/// The size and randomness of a synthetic data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct SyntheticSettings {
    /// How many vehicles (ids 1 to N); each gets 1 to 6 state changes, about 2.7 on average.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub vehicles: u32,
    /// Seed of the random generator: the same seed gives the same data
    /// (`--seed` still works: its former name).
    #[arg(long, alias = "seed", default_value_t = 1)]
    pub random_seed: u64,
    /// Empty `vehicles` and `"stateLogs"` first, instead of refusing a database that has rows.
    #[arg(long)]
    pub replace: bool,
}
