use anyhow::Context;
use sqlx::PgPool;

/// Loads `seed/sample.sql`: idempotent SQL, so running it twice changes nothing.
pub(super) async fn sample(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(include_str!("../../seed/sample.sql"))
        .execute(pool)
        .await
        .context("cannot load the sample data set")?;
    tracing::info!("sample data set loaded");
    Ok(())
}
