//! Per-client quotas, shared by the fleet through Redis.

use std::net::IpAddr;

use clap::Args;

/// How many requests each client may make: a generic cell rate (GCRA) of `RATE_LIMIT_RPS`
/// with bursts of `RATE_LIMIT_BURST`, one budget per client for all replicas together.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Quotas")]
pub struct QuotaSettings {
    /// Requests a second each client may make, all replicas together (a batch counts one per
    /// lookup); more is a 429 with Retry-After. Unset: no quotas. A fraction is allowed (0.5:
    /// one request every two seconds).
    #[arg(long = "rate-limit-rps", id = "RATE_LIMIT_RPS", env = "RATE_LIMIT_RPS", value_parser = parse_rate)]
    pub rps: Option<f64>,

    /// Requests a client may make at once before the rate applies (its bucket's size). Unset:
    /// one second's worth of RATE_LIMIT_RPS (at least 1).
    #[arg(long = "rate-limit-burst", id = "RATE_LIMIT_BURST", env = "RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub burst: Option<u32>,

    /// Proxies and load balancers (addresses or CIDR blocks, comma-separated) whose
    /// X-Forwarded-For names the client: a request from one of them counts against the last
    /// address in X-Forwarded-For that is not itself trusted. Any other peer is the client.
    #[arg(long = "trusted-proxies", id = "TRUSTED_PROXIES", env = "TRUSTED_PROXIES", value_parser = parse_proxies, default_value = "")]
    pub trusted_proxies: TrustedProxies,
}

/// The peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&addr))
    }
}

/// A quota that is on: the rate and the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl QuotaSettings {
    /// The quota, `None` when `RATE_LIMIT_RPS` is unset.
    pub fn rate(&self) -> Option<Rate> {
        let per_second = self.rps?;
        // One second's worth, at least one request; a whole number of at most a million.
        let default_burst = per_second.ceil().clamp(1.0, 1_000_000.0) as u32;
        Some(Rate {
            per_second,
            burst: self.burst.unwrap_or(default_burst),
        })
    }
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && (0.001..=1_000_000.0).contains(&rate) => Ok(rate),
        _ => {
            Err("a number of requests a second from 0.001 to 1000000, such as 20 or 0.5".to_owned())
        }
    }
}

fn parse_proxies(raw: &str) -> Result<TrustedProxies, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("`{item}` is not an address or a CIDR block such as 10.0.0.0/8")
                })
        })
        .collect::<Result<_, _>>()
        .map(TrustedProxies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_bursts_and_proxies_are_read_and_bad_ones_refused() {
        assert_eq!(parse_rate("20"), Ok(20.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "abc", "inf", "NaN", "2000000"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        let proxies = parse_proxies("10.0.0.0/8, 192.168.1.7,::1").expect("valid");
        assert!(proxies.contains("10.1.2.3".parse().expect("an address")));
        assert!(proxies.contains("192.168.1.7".parse().expect("an address")));
        assert!(!proxies.contains("192.168.1.8".parse().expect("an address")));
        assert!(proxies.contains("::1".parse().expect("an address")));
        assert_eq!(parse_proxies(""), Ok(TrustedProxies::default()));
        assert!(parse_proxies("10.0.0.0/33").is_err());
        assert!(parse_proxies("nginx").is_err());
    }

    #[test]
    fn the_burst_defaults_to_a_second_of_the_rate() {
        let settings = |rps, burst| QuotaSettings {
            rps,
            burst,
            trusted_proxies: TrustedProxies::default(),
        };
        assert_eq!(settings(None, Some(5)).rate(), None);
        assert_eq!(
            settings(Some(20.0), None).rate(),
            Some(Rate {
                per_second: 20.0,
                burst: 20
            })
        );
        assert_eq!(settings(Some(0.5), None).rate().map(|r| r.burst), Some(1));
        assert_eq!(
            settings(Some(2.0), Some(7)).rate().map(|r| r.burst),
            Some(7)
        );
    }
}
