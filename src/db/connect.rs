//! What a failure to connect to PostgreSQL means, in one line an operator can act on: a
//! certificate that is not trusted or names another host, a server that refuses plain
//! connections or offers no TLS, a refused login. Never the password: the URL is printed
//! without it.

use std::error::Error as _;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgSslMode};

use crate::config::{DatabaseSettings, DatabaseUrl};

/// At start, when nothing else connects first (`MIGRATE_ON_START=false`): one connection,
/// within `DB_ACQUIRE_TIMEOUT_MS`. A setting that can never work (TLS, the login, a missing
/// database) stops the start with its cause; a server that is down or slow does not, since the
/// pool connects when it comes back and `/readyz` says not ready meanwhile. `Ok(false)` when
/// it could not be reached.
pub async fn check_connection(settings: &DatabaseSettings) -> anyhow::Result<bool> {
    let url = &settings.url;
    let attempt = PgConnection::connect_with(&url.options);
    match tokio::time::timeout(settings.acquire_timeout, attempt).await {
        Ok(Ok(conn)) => {
            if let Err(error) = conn.close().await {
                tracing::debug!(error = %error, "closing the start-up check's connection");
            }
            Ok(true)
        }
        Ok(Err(error)) if is_setting(&error) => Err(failure(&error, url)),
        Ok(Err(error)) => {
            tracing::warn!(database = %url, cause = %unreachable(&error, url), "PostgreSQL cannot be reached yet; serving, not ready until it can");
            Ok(false)
        }
        Err(_) => {
            tracing::warn!(database = %url, timeout_ms = settings.acquire_timeout.as_millis(), "PostgreSQL did not answer in time (DB_ACQUIRE_TIMEOUT_MS); serving, not ready until it does");
            Ok(false)
        }
    }
}

/// Whether a failure to connect comes from the settings (and will happen again), as opposed
/// to a server that is down or busy.
fn is_setting(error: &sqlx::Error) -> bool {
    // Configuration: an unusable certificate or key file, among others.
    if tls_error(error).is_some()
        || matches!(error, sqlx::Error::Tls(_) | sqlx::Error::Configuration(_))
    {
        return true;
    }
    // 28: invalid authorization (a refused login, no pg_hba.conf entry); 3D000: no such database.
    super::has_code(error, "3D000")
        || error
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("28"))
}

/// The error to stop on: what went wrong with `url`, and what to change.
pub fn failure(error: &sqlx::Error, url: &DatabaseUrl) -> anyhow::Error {
    let options = &url.options;
    let host = options.get_host();
    let mode = ssl_mode_name(options.get_ssl_mode());
    let cause = if let Some(tls) = tls_error(error) {
        use rustls::CertificateError as C;
        match tls {
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                "TLS: the server's certificate is not trusted (signed by an unknown CA): give the CA's certificate with sslrootcert=/path/to/ca.pem in DATABASE_URL ({tls})"
            ),
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => format!(
                "TLS: the server's certificate is not valid for the host name {host:?}: connect by a name the certificate lists, or use sslmode=verify-ca to check only the CA ({tls})"
            ),
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                format!("TLS: the server's certificate has expired ({tls})")
            }
            other => format!("TLS: the handshake failed: {other}"),
        }
    } else if let sqlx::Error::Tls(cause) = error {
        if cause.to_string().contains("does not support TLS") {
            format!(
                "the server does not offer TLS, and sslmode={mode} requires it: turn ssl on in the server, or use sslmode=prefer"
            )
        } else {
            format!("TLS: {cause}")
        }
    } else if let Some(db) = error.as_database_error() {
        let message = db.message();
        match db.code().as_deref() {
            Some(code) if code.starts_with("28") && message.contains("no encryption") => format!(
                "the server refuses connections without TLS from here ({message}): use sslmode=require, verify-ca or verify-full (now sslmode={mode})"
            ),
            Some(code) if code.starts_with("28") => {
                // Reached: the server said no, which is not "cannot connect".
                let hint = if message.contains("certificate") {
                    "give a client certificate with sslcert=/path/to/cert.pem&sslkey=/path/to/key.pem in DATABASE_URL"
                } else {
                    "check the user and password in DATABASE_URL, and the server's pg_hba.conf"
                };
                return anyhow::anyhow!(
                    "PostgreSQL at {url} refused the login: {message} ({hint})"
                );
            }
            Some("3D000") => format!(
                "{message}: create it and apply the migrations with `vehicle-state migrate` (against the primary)"
            ),
            _ => format!("the server answered: {message}"),
        }
    } else if let sqlx::Error::Configuration(cause) = error {
        format!("DATABASE_URL: {cause}")
    } else {
        return anyhow::anyhow!(
            "cannot reach PostgreSQL at {url}: {}",
            unreachable(error, url)
        );
    };
    anyhow::anyhow!("cannot connect to PostgreSQL at {url}: {cause}")
}

/// Why PostgreSQL at `url` could not be reached at all, in a phrase: a refused connection, a
/// host name that does not resolve, a time out. sqlx's own message wraps its cause twice and
/// says "pool timed out" for a refused connection it retried; this names the cause once.
pub fn unreachable(error: &sqlx::Error, url: &DatabaseUrl) -> String {
    let (host, port) = (url.options.get_host(), url.options.get_port());
    match error {
        sqlx::Error::Io(io) => {
            let text = io.to_string();
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!(
                        "connection refused: nothing listens on {host}:{port}; is PostgreSQL running there?"
                    )
                }
                std::io::ErrorKind::TimedOut => format!("timed out connecting to {host}:{port}"),
                _ if text.contains("lookup address") => {
                    // tokio: "failed to lookup address information: Name or service not known".
                    let reason = text.rsplit(": ").next().unwrap_or(&text);
                    format!("no such host {host:?} ({reason})")
                }
                _ => text,
            }
        }
        sqlx::Error::PoolTimedOut => {
            format!("timed out: no connection to {host}:{port} in time (DB_ACQUIRE_TIMEOUT_MS)")
        }
        // sqlx adds where in its own source it noticed: "… (sqlx_postgres::connection::tls:95)".
        sqlx::Error::Protocol(message) => match message.rsplit_once(" (sqlx") {
            Some((message, _)) => format!("the connection broke off: {message}"),
            None => format!("the connection broke off: {message}"),
        },
        other => crate::telemetry::chain(other).to_string(),
    }
}

/// After the pool gave up (`PoolTimedOut`, which hides why): one connection of its own, within
/// `DB_ACQUIRE_TIMEOUT_MS`, to find the cause to stop on.
pub async fn diagnose(settings: &DatabaseSettings) -> anyhow::Error {
    let url = &settings.url;
    let attempt = PgConnection::connect_with(&url.options);
    match tokio::time::timeout(settings.acquire_timeout, attempt).await {
        Ok(Err(error)) => failure(&error, url),
        Ok(Ok(_connected)) => anyhow::anyhow!(
            "cannot reach PostgreSQL at {url}: no connection within {} ms (DB_ACQUIRE_TIMEOUT_MS), although one made just after succeeded: a slow or busy server",
            settings.acquire_timeout.as_millis()
        ),
        Err(_) => anyhow::anyhow!(
            "cannot reach PostgreSQL at {url}: timed out: no answer from {}:{} within {} ms (DB_ACQUIRE_TIMEOUT_MS)",
            url.options.get_host(),
            url.options.get_port(),
            settings.acquire_timeout.as_millis()
        ),
    }
}

/// The rustls error under a failed handshake, however sqlx wrapped it.
fn tls_error(error: &sqlx::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error.source();
    if let sqlx::Error::Io(io) = error {
        cause = io
            .get_ref()
            .map(|e| e as &(dyn std::error::Error + 'static));
    }
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = current.source();
    }
    None
}

fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}
