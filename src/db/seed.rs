use anyhow::Context;
use sqlx::PgPool;

use crate::config::Dataset;

/// Loads a data set. Each is idempotent SQL, so running it twice changes nothing.
pub(super) async fn seed(pool: &PgPool, dataset: Dataset) -> anyhow::Result<()> {
    let sql = match dataset {
        Dataset::Sample => include_str!("../../seed/sample.sql"),
    };
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .with_context(|| format!("cannot load the {dataset:?} data set"))?;
    tracing::info!(?dataset, "data set loaded");
    Ok(())
}
