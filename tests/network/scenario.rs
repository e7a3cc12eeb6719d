//! One fault under load: the load runs, the link goes bad for a while, heals, and the load runs
//! on while the service recovers; every request's outcome and timing is kept.

use std::time::{Duration, Instant};

use vehicle_state_test_support::load::{Load, Paths, Report, Sample, figure};
use vehicle_state_test_support::netns::{Fault, Host};

/// How long each phase lasts.
pub struct Phases {
    /// Load before the fault, so caches and pools are warm.
    pub before: Duration,
    /// The fault.
    pub during: Duration,
    /// Load after the link heals.
    pub after: Duration,
}

pub const PHASES: Phases = Phases {
    before: Duration::from_secs(1),
    during: Duration::from_secs(3),
    after: Duration::from_secs(4),
};

/// What happened: every request, and when the fault began and ended.
pub struct Timeline {
    pub report: Report,
    pub faulted_at: Instant,
    pub healed_at: Instant,
}

/// Runs `clients` closed-loop clients of `paths` against `base`, and `fault` on `host` (only
/// on `ports`, or on everything when empty) for the middle phase.
pub async fn under_fault(
    host: &mut Host,
    base: &str,
    clients: usize,
    paths: Paths,
    fault: Fault,
    ports: &[u16],
) -> Timeline {
    under_fault_after(host, base, clients, paths, None, fault, ports).await
}

/// [`under_fault`], with `prelude` (if any) on the link from the start, and `fault` added to it.
pub async fn under_fault_after(
    host: &mut Host,
    base: &str,
    clients: usize,
    paths: Paths,
    prelude: Option<Fault>,
    fault: Fault,
    ports: &[u16],
) -> Timeline {
    let (timeline, _) = run(
        host,
        base,
        clients,
        paths,
        prelude,
        fault,
        ports,
        async || true,
    )
    .await;
    timeline
}

/// [`under_fault`], asking `recovered` every 20 ms after the link heals until it says yes; the
/// second value is how long after healing that was.
pub async fn under_fault_watching(
    host: &mut Host,
    base: &str,
    clients: usize,
    paths: Paths,
    fault: Fault,
    ports: &[u16],
    recovered: impl AsyncFn() -> bool,
) -> (Timeline, Option<Duration>) {
    run(host, base, clients, paths, None, fault, ports, recovered).await
}

#[allow(clippy::too_many_arguments)]
async fn run(
    host: &mut Host,
    base: &str,
    clients: usize,
    paths: Paths,
    prelude: Option<Fault>,
    fault: Fault,
    ports: &[u16],
    recovered: impl AsyncFn() -> bool,
) -> (Timeline, Option<Duration>) {
    if let Some(prelude) = prelude {
        host.fault(prelude, ports);
    }
    let load = Load::start(base, clients, paths);
    tokio::time::sleep(PHASES.before).await;
    host.add_fault(fault, ports);
    let faulted_at = Instant::now();
    tokio::time::sleep(PHASES.during).await;
    host.heal();
    let healed_at = Instant::now();
    let mut recovered_after = None;
    while healed_at.elapsed() < PHASES.after {
        if recovered_after.is_none() && recovered().await {
            recovered_after = Some(healed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = load.stop().await;
    (
        Timeline {
            report,
            faulted_at,
            healed_at,
        },
        recovered_after,
    )
}

impl Timeline {
    /// Requests that started during the fault.
    pub fn during(&self) -> impl Iterator<Item = &Sample> {
        self.report
            .samples
            .iter()
            .filter(|s| s.started >= self.faulted_at && s.started < self.healed_at)
    }

    /// How long after the link healed the first request that `recovered` accepts and that
    /// started after healing was answered; None if none was.
    pub fn recovered_after(&self, recovered: impl Fn(&Sample) -> bool) -> Option<Duration> {
        self.report
            .samples
            .iter()
            .filter(|s| s.started >= self.healed_at && recovered(s))
            .map(|s| (s.started + s.took) - self.healed_at)
            .min()
    }

    /// Every request that got something other than an answer (200, 404) or, when
    /// `unavailable_allowed`, a 503 `database-unavailable` with `Retry-After`.
    pub fn unexpected(&self, unavailable_allowed: bool) -> Vec<&Sample> {
        self.report
            .samples
            .iter()
            .filter(|s| match s.outcome {
                Ok(200 | 404) => false,
                Ok(503) if unavailable_allowed => {
                    s.problem_type.as_deref() != Some("/problems/database-unavailable")
                        || s.retry_after.is_none()
                }
                _ => true,
            })
            .collect()
    }

    /// Asserts that no request waited longer than `bound`, naming the slowest if one did.
    pub fn assert_no_request_over(&self, bound: Duration, what: &str) {
        let slowest = self
            .report
            .samples
            .iter()
            .max_by_key(|s| s.took)
            .expect("the load made requests");
        assert!(
            slowest.took <= bound,
            "{what}: a request waited {} (bound {}): {slowest:?}",
            figure(slowest.took),
            figure(bound)
        );
    }

    /// The p99 and max of the requests that started during the fault.
    pub fn during_summary(&self) -> String {
        let mut took: Vec<Duration> = self.during().map(|s| s.took).collect();
        took.sort_unstable();
        let at = |q: f64| {
            took.get(((took.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        format!(
            "{} requests started during the fault: p50 {}, p99 {}, max {}",
            took.len(),
            figure(at(0.5)),
            figure(at(0.99)),
            figure(at(1.0))
        )
    }
}
