//! Which browser pages on other origins may call the API (CORS).

use clap::Args;

/// CORS: which pages on other origins a browser lets read this API's answers.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "CORS")]
pub struct CorsSettings {
    /// Origins whose pages may call the API from a browser: a comma-separated list of exact
    /// origins as browsers send them (`https://dashboard.example.com`,
    /// `http://localhost:5173`), or `*` for any page. Unset: no CORS headers at all, so a
    /// browser lets only pages of this service's own origin read its answers.
    #[arg(long = "cors-allowed-origins", id = "CORS_ALLOWED_ORIGINS", env = "CORS_ALLOWED_ORIGINS", value_parser = CorsOrigins::parse)]
    pub allowed_origins: Option<CorsOrigins>,

    /// Seconds a browser may reuse the answer to a preflight (`Access-Control-Max-Age`) before
    /// it asks again; browsers cap it (Chromium at 7200, Firefox at 86400). 0: every
    /// cross-origin POST is preflighted.
    #[arg(long = "cors-max-age-secs", id = "CORS_MAX_AGE_SECS", env = "CORS_MAX_AGE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub max_age_secs: u32,
}

/// The origins of `CORS_ALLOWED_ORIGINS`, each as a browser serialises it in `Origin`, so a
/// plain byte comparison decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any page, answered `Access-Control-Allow-Origin: *` (never with credentials).
    Any,
    /// Only these; every answer then depends on `Origin` (`Vary: Origin`). Empty: CORS is off,
    /// as when the setting is unset (`CORS_ALLOWED_ORIGINS=` in a `.env` or a compose file).
    List(Vec<String>),
}

impl CorsOrigins {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "" => return Ok(CorsOrigins::List(Vec::new())),
            "*" => return Ok(CorsOrigins::Any),
            _ => {}
        }
        raw.split(',')
            .map(|entry| parse_origin(entry.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map(CorsOrigins::List)
    }
}

const FORM: &str = "an origin is scheme://host[:port] as a browser sends it, such as https://dashboard.example.com or http://localhost:5173; list several with commas, or give * alone for any";

fn parse_origin(entry: &str) -> Result<String, String> {
    if entry.is_empty() {
        return Err(format!("an empty origin (a stray comma?): {FORM}"));
    }
    if entry == "*" {
        return Err(format!("`*` must stand alone, not in a list: {FORM}"));
    }
    if entry.eq_ignore_ascii_case("null") {
        return Err(
            "`null` is the origin of sandboxed frames and local files, which any page can make; it is never allowed".to_owned(),
        );
    }
    let url =
        url::Url::parse(entry).map_err(|e| format!("`{entry}` is not an origin ({e}): {FORM}"))?;
    let Some(host) = url.host_str() else {
        return Err(format!("`{entry}` has no host: {FORM}"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{entry}` holds a user name or password: {FORM}"));
    }
    if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
        return Err(format!("`{entry}` has a path, query or fragment: {FORM}"));
    }
    // What the browser sends: lower case, no default port, no trailing slash. An origin written
    // otherwise would never match, so it is refused with the form that would.
    let serialised = match url.scheme() {
        "http" | "https" => url.origin().ascii_serialization(),
        scheme => match url.port() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        },
    };
    if serialised != entry {
        return Err(format!(
            "`{entry}` never matches: browsers send it as `{serialised}`; write that"
        ));
    }
    Ok(serialised)
}

#[cfg(test)]
mod tests {
    use super::{CorsOrigins, parse_origin};

    #[test]
    fn origins_are_taken_exactly_as_browsers_send_them() {
        for ok in [
            "https://dashboard.example.com",
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "capacitor://localhost",
            "https://xn--bcher-kva.example",
        ] {
            assert_eq!(parse_origin(ok).as_deref(), Ok(ok), "{ok}");
        }
        for (bad, says) in [
            ("", "empty origin"),
            ("*", "must stand alone"),
            ("null", "never allowed"),
            ("dashboard.example.com", "not an origin"),
            (
                "https://dashboard.example.com/",
                "browsers send it as `https://dashboard.example.com`",
            ),
            (
                "https://Dashboard.example.com",
                "browsers send it as `https://dashboard.example.com`",
            ),
            (
                "https://example.com:443",
                "browsers send it as `https://example.com`",
            ),
            ("https://example.com/app", "has a path"),
            ("https://example.com?x=1", "has a path, query"),
            ("https://user:pw@example.com", "user name or password"),
            ("https://bücher.example", "`https://xn--bcher-kva.example`"),
        ] {
            let error = parse_origin(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_list_or_a_lone_star_is_accepted_and_a_mixture_is_not() {
        assert_eq!(CorsOrigins::parse("*"), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse(" * "), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::List(Vec::new())));
        assert_eq!(CorsOrigins::parse("  "), Ok(CorsOrigins::List(Vec::new())));
        assert_eq!(
            CorsOrigins::parse("https://a.example, http://localhost:5173"),
            Ok(CorsOrigins::List(vec![
                "https://a.example".to_owned(),
                "http://localhost:5173".to_owned()
            ]))
        );
        for bad in [
            "https://a.example,*",
            "https://a.example,",
            ",https://a.example",
            " , ",
        ] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
