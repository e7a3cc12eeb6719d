//! The tests' HTTP clients, and what they look at in a response.

use reqwest::header::HeaderMap;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A builder for the tests' HTTP clients. The service's trace exporter has reqwest use rustls
/// with the process-wide crypto provider and none of its own, so a client in a test process
/// installs the same one (ring) first, or building it panics.
pub fn client_builder() -> reqwest::ClientBuilder {
    // Err: already installed, by an earlier client or the service in this process.
    let _installed = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// What the tests look at in a response.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts `Cache-Control: public, max-age=N` with N at most `max`, and returns N.
    pub fn assert_max_age_at_most(&self, max: u64) -> u64 {
        let cache_control = self.header("cache-control");
        let age = cache_control
            .strip_prefix("public, max-age=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cache-control: {cache_control}"));
        assert!(age <= max, "{cache_control}");
        age
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an RFC 9457 problem of this status and type, and returns its detail.
    pub fn assert_problem(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), PROBLEM_JSON);
        let body = self.json();
        assert_eq!(body["type"], kind, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap_or_default().to_owned();
        assert!(!detail.is_empty(), "{body}");
        detail
    }
}
