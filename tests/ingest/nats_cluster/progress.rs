//! How far ingest has got, sampled while a test runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `"stateLogs"` rows every 50 ms while the test runs: to act when ingest is mid-way, and to see
/// how long it stood still.
pub struct Progress {
    samples: Arc<Mutex<Vec<(Instant, i64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn watch(database_url: String) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let samples = samples.clone();
            async move {
                let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
                loop {
                    let rows = sqlx::query_scalar(r#"SELECT count(*) FROM "stateLogs""#)
                        .fetch_one(&pool)
                        .await;
                    if let Ok(rows) = rows {
                        let mut samples = samples.lock().expect("samples");
                        samples.push((Instant::now(), rows));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self { samples, task }
    }

    /// The rows at the latest sample.
    pub fn rows(&self) -> i64 {
        let samples = self.samples.lock().expect("samples");
        samples.last().map_or(0, |&(_, rows)| rows)
    }

    /// Waits until a sample shows more than `rows`; false if none does by `deadline`.
    pub async fn wait_above(&self, rows: i64, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.rows() > rows {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The longest time after `since` that the rows stayed the same before the last of them
    /// arrived, and when it began (after `since`).
    pub fn longest_pause_after(&self, since: Instant) -> (Duration, Duration) {
        let samples = self.samples.lock().expect("samples");
        let mut longest = (Duration::ZERO, Duration::ZERO);
        let mut last_change: Option<(Instant, i64)> = None;
        for &(at, rows) in samples.iter().filter(|(at, _)| *at >= since) {
            match last_change {
                Some((changed, before)) if rows != before => {
                    let pause = at.duration_since(changed);
                    if pause > longest.1 {
                        longest = (changed.duration_since(since), pause);
                    }
                    last_change = Some((at, rows));
                }
                Some(_) => {}
                None => last_change = Some((at, rows)),
            }
        }
        longest
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
