//! A closed-loop load: N clients, each sending its next request when the last one is answered,
//! recording every outcome, until stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// Which path a client asks for its n-th request.
pub type Paths = Arc<dyn Fn(usize, u64) -> String + Send + Sync>;

/// A new instant every time (so a lookup PostgreSQL must answer), over the sample's vehicles.
/// A duration as a reader wants it: `850 µs`, `5.8 ms`, `45 ms`, `1.03 s`.
pub fn figure(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{} µs", d.as_micros())
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// [`figure`], or `never` for a wait that did not end.
pub fn figure_or_never(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), figure)
}

/// A vehicle not asked before each time, none of which exists: every lookup is a miss in both
/// caches (answered 404, and cached), as an instant of a vehicle asked before would be
/// answered by the segment cached for it.
pub fn uncached() -> Paths {
    Arc::new(|client, n| {
        let id = 1_000 + (client as u64) * 10_000_000 + n;
        format!("/vehicles/{id}/timestamp/1662976800")
    })
}

/// Half the requests ask a few hot answers, half a vehicle not asked before each time.
pub fn mixed() -> Paths {
    let cold = uncached();
    Arc::new(move |client, n| {
        if n % 2 == 0 {
            format!(
                "/vehicles/{}/timestamp/2022-09-12T10:00:00Z",
                1 + (n / 2) % 3
            )
        } else {
            cold(client, n)
        }
    })
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub path: String,
    pub started: Instant,
    pub took: Duration,
    /// The status, or the transport error (refused, reset, timed out).
    pub outcome: Result<u16, String>,
    pub problem_type: Option<String>,
    pub retry_after: Option<String>,
    pub x_cache: Option<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Sample>>>,
    started: Instant,
}

impl Load {
    pub fn start(base: &str, clients: usize, paths: Paths) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let http = crate::http::client_builder()
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(clients)
            .build()
            .expect("a client");
        let clients = (0..clients)
            .map(|client| {
                let (stop, http, paths) = (stop.clone(), http.clone(), paths.clone());
                let base = base.to_owned();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let path = paths(client, n);
                        samples.push(request(&http, &base, path).await);
                        n += 1;
                    }
                    samples
                })
            })
            .collect();
        Self {
            stop,
            clients,
            started: Instant::now(),
        }
    }

    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for client in self.clients {
            samples.extend(client.await.expect("a load client"));
        }
        Report {
            samples,
            elapsed: self.started.elapsed(),
        }
    }
}

async fn request(http: &reqwest::Client, base: &str, path: String) -> Sample {
    let started = Instant::now();
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match http.get(format!("{base}{path}")).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = header(&response, "retry-after");
            let x_cache = header(&response, "x-cache");
            let body = response.bytes().await;
            let took = started.elapsed();
            let problem_type = body
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["type"].as_str().map(str::to_owned));
            Sample {
                path,
                started,
                took,
                outcome: Ok(status),
                problem_type,
                retry_after,
                x_cache,
            }
        }
        Err(error) => Sample {
            path,
            started,
            took: started.elapsed(),
            outcome: Err(format!("{error:?}")),
            problem_type: None,
            retry_after: None,
            x_cache: None,
        },
    }
}

pub struct Report {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
}

impl Report {
    /// Requests that got neither a 200 nor a 404 (a transport error or any other status).
    pub fn failed(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| !matches!(s.outcome, Ok(200 | 404)))
            .collect()
    }

    pub fn count(&self, status: u16) -> usize {
        self.samples
            .iter()
            .filter(|s| s.outcome == Ok(status))
            .count()
    }

    /// The q-quantile (0..=1) of the latencies of the samples `which` selects.
    pub fn latency(&self, q: f64, which: impl Fn(&Sample) -> bool) -> Duration {
        let mut took: Vec<_> = self
            .samples
            .iter()
            .filter(|s| which(s))
            .map(|s| s.took)
            .collect();
        if took.is_empty() {
            return Duration::ZERO;
        }
        took.sort_unstable();
        let rank = ((took.len() - 1) as f64 * q).round() as usize;
        took[rank]
    }

    pub fn max(&self) -> Duration {
        self.latency(1.0, |_| true)
    }

    /// One line of figures, for the README's table (run with --nocapture).
    pub fn summary(&self, what: &str) -> String {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for s in &self.samples {
            let key = match (&s.outcome, &s.problem_type) {
                (Ok(status), Some(kind)) if *status >= 500 => format!("{status} {kind}"),
                (Ok(status), _) => status.to_string(),
                (Err(_), _) => "transport error".to_owned(),
            };
            *by.entry(key).or_default() += 1;
        }
        let outcomes: Vec<String> = by
            .iter()
            .map(|(outcome, n)| format!("{n} × {outcome}"))
            .collect();
        format!(
            "{what}: {} requests in {:.1} s ({:.0}/s): {}; p50 {}, p99 {}, max {}",
            self.samples.len(),
            self.elapsed.as_secs_f64(),
            self.samples.len() as f64 / self.elapsed.as_secs_f64(),
            outcomes.join(", "),
            figure(self.latency(0.5, |_| true)),
            figure(self.latency(0.99, |_| true)),
            figure(self.max()),
        )
    }

    /// Asserts that no client saw a failure; shows the first few if any did.
    pub fn assert_no_failures(&self, what: &str) {
        let failed = self.failed();
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed, e.g. {:?}",
            failed.len(),
            self.samples.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(!self.samples.is_empty(), "{what}: no requests were made");
    }
}
