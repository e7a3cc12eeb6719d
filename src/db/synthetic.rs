//! `seed synthetic`: realistic histories for many vehicles, generated deterministically from a
//! seed and bulk-loaded with COPY.

mod histories;

pub use histories::{SyntheticHistory, generate};

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgPoolCopyExt;

use crate::config::SyntheticSettings;

/// Vehicles per COPY chunk: large enough to keep the server busy, small enough to stay flat in
/// memory whatever the total.
const CHUNK: u32 = 20_000;

/// Loads the histories with two COPY streams, one per table, then refreshes the planner's
/// statistics and the visibility map (so lookups can be index-only scans).
pub(super) async fn load(pool: &PgPool, settings: SyntheticSettings) -> anyhow::Result<()> {
    let started = Instant::now();
    let has_rows: bool = sqlx::query_scalar(
        r#"SELECT EXISTS (SELECT 1 FROM vehicles) OR EXISTS (SELECT 1 FROM "stateLogs")"#,
    )
    .fetch_one(pool)
    .await
    .context("cannot read the tables")?;
    if has_rows && !settings.replace {
        bail!(
            "the database already holds vehicles or state changes; seed a new database, or pass --replace to empty both tables first"
        );
    }
    if settings.replace {
        sqlx::query(r#"TRUNCATE vehicles, "stateLogs""#)
            .execute(pool)
            .await
            .context("cannot empty the tables")?;
    }
    // The timestamp index is built after the load, not row by row during it: the rows come in
    // vehicle order, so their instants land all over that index (10 million vehicles loaded in
    // more than 5 minutes with it in place, against about a minute without).
    sqlx::query(super::fleet::DROP_TIMESTAMP_INDEX_SQL)
        .execute(pool)
        .await
        .context("cannot drop the timestamp index for the load")?;
    let mut vehicles = pool
        .copy_in_raw("COPY vehicles (id, make, model, state) FROM STDIN")
        .await
        .context("cannot start COPY into vehicles")?;
    let mut logs = pool
        .copy_in_raw(r#"COPY "stateLogs" ("vehicleId", state, "timestamp") FROM STDIN"#)
        .await
        .context("cannot start COPY into stateLogs")?;
    let progress = Progress::new(settings.vehicles);
    let (mut vehicle_rows, mut log_rows) = (Vec::new(), Vec::new());
    let mut total_changes = 0u64;
    for history in generate(settings) {
        write_history(&history, &mut vehicle_rows, &mut log_rows);
        total_changes += history.changes.len() as u64;
        if history.id % CHUNK == 0 || history.id == settings.vehicles {
            vehicles
                .send(std::mem::take(&mut vehicle_rows))
                .await
                .context("COPY into vehicles failed")?;
            logs.send(std::mem::take(&mut log_rows))
                .await
                .context("COPY into stateLogs failed")?;
            progress.set(history.id);
        }
    }
    vehicles
        .finish()
        .await
        .context("COPY into vehicles failed")?;
    logs.finish().await.context("COPY into stateLogs failed")?;
    progress.finish();
    let index_started = Instant::now();
    sqlx::query(super::fleet::TIMESTAMP_INDEX_SQL)
        .execute(pool)
        .await
        .context("cannot build the timestamp index")?;
    tracing::info!(
        seconds = index_started.elapsed().as_secs_f64(),
        "timestamp index built"
    );
    // COPY is not `ingest`: it marked the fleet's sums inexact; they are built anew from what
    // was loaded.
    let fleet_started = Instant::now();
    let mut conn = pool
        .acquire()
        .await
        .context("cannot connect to build the fleet's sums")?;
    let sums = super::fleet::rebuild(&mut conn)
        .await
        .context("cannot build the fleet's sums (fleet_sums)")?;
    drop(conn);
    tracing::info!(
        rows = sums,
        seconds = fleet_started.elapsed().as_secs_f64(),
        "fleet's sums built (and its segments)"
    );
    // Separate statements: VACUUM refuses to run inside the implicit transaction of a batch.
    for statement in [
        "ANALYZE vehicles",
        // And the visibility map, so counts and pages read the keys alone.
        "VACUUM (ANALYZE) fleet_sums",
        "VACUUM (ANALYZE) fleet_segments",
        r#"VACUUM (ANALYZE) "stateLogs""#,
    ] {
        sqlx::query(statement)
            .execute(pool)
            .await
            .with_context(|| format!("{statement} failed"))?;
    }
    tracing::info!(
        vehicles = settings.vehicles,
        state_changes = total_changes,
        seed = settings.random_seed,
        seconds = started.elapsed().as_secs_f64(),
        "synthetic data set loaded"
    );
    Ok(())
}

/// COPY's text format: tab-separated, one row a line. Makes, models and states hold no tab,
/// newline or backslash, so nothing needs escaping.
fn write_history(history: &SyntheticHistory, vehicles: &mut Vec<u8>, logs: &mut Vec<u8>) {
    let SyntheticHistory {
        id, make, model, ..
    } = history;
    // Writing into a Vec<u8> cannot fail.
    let _infallible = writeln!(vehicles, "{id}\t{make}\t{model}\t{}", history.state());
    for (state, at) in &history.changes {
        let at = DateTime::<Utc>::from_timestamp(*at, 0).unwrap_or_default();
        let _infallible = writeln!(logs, "{id}\t{state}\t{}", at.format("%Y-%m-%d %H:%M:%S+00"));
    }
}

/// A progress bar on a terminal; a line every tenth of the way otherwise (CI, logs).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u32,
}

impl Progress {
    fn new(total: u32) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total.into());
            let style = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} vehicles, {per_sec}, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self { bar, total }
    }

    fn set(&self, done: u32) {
        match &self.bar {
            Some(bar) => bar.set_position(done.into()),
            None => {
                let tenth = (self.total / 10).max(1);
                if done % tenth < CHUNK.min(tenth) || done == self.total {
                    tracing::info!(done, total = self.total, "loading vehicles");
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_in_copy_text_format() {
        let history = SyntheticHistory {
            id: 7,
            make: "VW",
            model: "GOLF",
            changes: vec![("quoted", 1_662_976_800), ("selling", 1_662_980_400)],
        };
        let (mut vehicles, mut logs) = (Vec::new(), Vec::new());

        write_history(&history, &mut vehicles, &mut logs);

        assert_eq!(String::from_utf8_lossy(&vehicles), "7\tVW\tGOLF\tselling\n");
        assert_eq!(
            String::from_utf8_lossy(&logs),
            "7\tquoted\t2022-09-12 10:00:00+00\n7\tselling\t2022-09-12 11:00:00+00\n"
        );
    }
}
