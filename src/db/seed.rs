use anyhow::Context;
use sqlx::PgPool;

/// Loads `seed/sample.sql` (idempotent SQL, so running it twice changes nothing), then builds the
/// fleet's sums anew.
pub(super) async fn sample(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(include_str!("../../seed/sample.sql"))
        .execute(pool)
        .await
        .context("cannot load the sample data set")?;
    let mut conn = pool
        .acquire()
        .await
        .context("cannot connect to load the sample data set")?;
    super::fleet::rebuild(&mut conn)
        .await
        .context("cannot build the fleet's sums (fleet_sums)")?;
    tracing::info!("sample data set loaded");
    Ok(())
}
