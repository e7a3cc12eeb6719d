//! Wires everything together. `main` and the tests build the server through the same
//! [`Application::build`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::future::ready;

use actix_http::HttpService;
use actix_http::error::DispatchError;
use actix_service::{ServiceFactoryExt as _, fn_service, map_config};
use actix_web::dev::{AppConfig, Server};
use actix_web::http::KeepAlive;
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tokio::net::TcpStream;
use tracing_actix_web::TracingLogger;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{ApiKeys, Authenticator, TokenVerifier};
use crate::cache::{LocalCache, RedisCache};
use crate::config::ServeSettings;
use crate::connection::{self, ConnectionLimits, Metered};
use crate::context::{AppContext, BatchLimits, CacheControlValues};
use crate::error::RetryAfter;
use crate::listener::Reserved;
use crate::middleware::auth::Authenticate;
use crate::middleware::{compression, cors, head, pages, quota::Quotas};
use crate::quota::Quota;
use crate::service::{Gathering, StateService};
use crate::task::AbortOnDrop;
use crate::telemetry::{self, RequestSpan};
use crate::{db, openapi, routes};

/// Replays of the change stream a replica runs at once: each reads up to `CHANGES_REPLAY_MAX`
/// announcements into memory, so a storm of reconnections costs at most this many times that.
const REPLAYS_AT_ONCE: usize = 8;

pub struct Application {
    port: u16,
    server: Server,
    /// The server of METRICS_BIND_ADDR, and its port, when /metrics is served apart.
    metrics: Option<(u16, Server)>,
    state: web::Data<AppContext>,
    drain: Duration,
    /// Reads AUTH_API_KEYS_FILE again when it changes; stopped with the server.
    _keys_watch: Option<AbortOnDrop>,
    /// Fetches the identity provider's keys (AUTH_JWKS_URL); stopped with the server.
    _tokens_watch: Option<AbortOnDrop>,
    /// Follows the change feed (NATS_URL, CACHE_INVALIDATION); stopped with the server.
    _follow: Option<AbortOnDrop>,
}

impl Application {
    pub async fn build(settings: ServeSettings) -> anyhow::Result<Self> {
        // Settings that cannot work fail before anything is touched.
        let redis = std::sync::Arc::new(RedisCache::new(&settings.redis, &settings.cache)?);
        // Credentials are such settings too: a key file that cannot be read stops the start,
        // naming the line.
        let keys = settings
            .auth
            .api_keys_file
            .as_deref()
            .map(ApiKeys::load)
            .transpose()?
            .map(std::sync::Arc::new);
        if let (Some(keys), Some(path)) = (&keys, &settings.auth.api_keys_file) {
            tracing::info!(file = %path.display(), keys = keys.len(), "API keys read: requests need one");
        }
        let keys_watch = keys
            .as_ref()
            .map(|keys| AbortOnDrop(keys.clone().watch(settings.auth.api_keys_check_interval)));
        // The identity provider's keys are fetched in the background, at once and then every
        // AUTH_JWKS_REFRESH_SECS: a provider that cannot be reached at start does not stop the
        // replica (API keys still work; tokens get a 503 until a fetch succeeds).
        let tokens = TokenVerifier::new(&settings.auth.tokens)?.map(std::sync::Arc::new);
        if let Some(url) = &settings.auth.tokens.jwks_url {
            tracing::info!(jwks_url = %url, "access tokens accepted: their keys are fetched from the identity provider");
        }
        let tokens_watch = tokens
            .as_ref()
            .map(|tokens| AbortOnDrop(tokens.clone().watch()));
        let auth = (keys.is_some() || tokens.is_some())
            .then(|| std::sync::Arc::new(Authenticator::new(keys, tokens)));
        // A port that is taken is such a setting too: found before the database is created or
        // migrated. Bound, not listened on, so connections are refused until the server runs.
        let port = Reserved::bind(settings.http.bind_addr, "BIND_ADDR")?;
        let local = port.local_addr();
        tracing::debug!(address = %local, "port bound; connections are refused until the replica serves");
        let metrics_port = settings
            .http
            .metrics_addr()
            .map(|addr| Reserved::bind(addr, "METRICS_BIND_ADDR"))
            .transpose()?;
        let reachable = if settings.migrate_on_start || settings.seed.is_some() {
            db::prepare(&settings.database, settings.seed.map(Into::into)).await?;
            true
        } else {
            db::check_connection(&settings.database).await?
        };
        // Not required, but the first thing an operator wants to know: said once at start.
        let redis_url = &settings.redis.url;
        match redis.check().await {
            Ok(()) => {
                tracing::info!(redis = ?redis_url, mode = redis.mode().label(), "Redis answers")
            }
            Err(error) => {
                let what = if error.is_refused_login() {
                    "Redis refused the login: check the user and password in REDIS_URL (and REDIS_SENTINEL_PASSWORD with sentinels); serving, with answers from PostgreSQL until it accepts"
                } else {
                    "Redis cannot be reached; serving, with answers from PostgreSQL until it can"
                };
                tracing::warn!(
                    redis = ?redis_url,
                    mode = redis.mode().label(),
                    error = %telemetry::chain(&error),
                    "{what}"
                );
            }
        }
        let quota = settings.quota.rate().map(|rate| {
            std::sync::Arc::new(Quota::new(
                rate,
                redis.clone(),
                settings.quota.trusted_proxies.clone(),
            ))
        });
        let state = web::Data::new(AppContext {
            service: StateService::new(
                db::Database::new(&settings.database, settings.db_probe_interval, reachable),
                redis,
                LocalCache::new(settings.cache.local_max_bytes),
                settings.http.lookup_concurrency_limit,
                Gathering {
                    max_batch: usize::try_from(settings.http.lookup_batch_max)
                        .unwrap_or(usize::MAX),
                    in_flight: usize::try_from(settings.http.lookup_batches_in_flight)
                        .unwrap_or(usize::MAX),
                },
            ),
            retry_after: RetryAfter {
                database: settings.http.retry_after_secs,
                overloaded: settings.http.overload_retry_after_secs,
            },
            cache_control: CacheControlValues::new(
                settings.cache.ttl_secs,
                settings.cache.stale_if_error_secs,
                settings.auth.on(),
            ),
            shutting_down: AtomicBool::new(false),
            batch: BatchLimits {
                max_lookups: usize::try_from(settings.http.batch_max_lookups).unwrap_or(usize::MAX),
                max_body_bytes: usize::try_from(settings.http.batch_max_body_bytes)
                    .unwrap_or(usize::MAX),
                read_timeout: settings.http.client_request_timeout,
            },
            compress_at: settings.compression.threshold(),
            quota: quota.clone(),
            changes: crate::context::ChangeStreams {
                hub: std::sync::Arc::new(crate::service::changes::ChangeHub::new(
                    crate::service::changes::StreamLimits {
                        max_streams: settings.follow.max_streams as usize,
                        buffer: settings.follow.stream_buffer as usize,
                    },
                    settings.follow.on(),
                )),
                max_ids: settings.follow.max_ids as usize,
                keepalive: settings.follow.keepalive,
                replay_max: settings.follow.replay_max as usize,
                subject_prefix: settings.follow.changes.subject_prefix.clone(),
                replays: tokio::sync::Semaphore::new(REPLAYS_AT_ONCE),
            },
            fleet_series_max_points: settings.http.fleet_series_max_points,
        });

        // Built once here, not per worker.
        let spec = openapi::spec();
        crate::metrics::handle();
        let follow = crate::follow::start(&settings.follow, state.clone()).map(AbortOnDrop);
        crate::metrics::register_at_zero(&crate::cache::CacheError::KINDS, &db::DbError::KINDS);
        telemetry::otel::register_at_zero();
        let app_state = state.clone();
        let cors_settings = settings.cors.clone();
        // The one threshold the middleware and the handlers' 304s both go by.
        let compress_at = state.compress_at;
        let metrics_apart = metrics_port.is_some();
        let connection_limits = ConnectionLimits {
            max_requests: settings.http.max_requests_per_connection,
            max_response_bytes: settings.http.max_response_bytes_per_connection,
        };
        let http = settings.http.clone();
        let mut builder = actix_server::Server::build()
            // Signals are ours (see `run_until_stopped`): readiness must fail before the
            // listener closes.
            .disable_signals()
            .shutdown_timeout(http.shutdown_timeout.as_secs())
            .max_concurrent_connections(
                usize::try_from(http.max_connections).unwrap_or(usize::MAX),
            );
        if let Some(workers) = http.workers {
            builder = builder.workers(workers.into());
        }
        let draining = builder.graceful_shutdown_signal();
        // What actix-web's `HttpServer` builds, but over the connection's own stream
        // (`connection::Metered`), which bounds what a client can make the replica hold.
        let server = builder
            .listen("vehicle-state", port.listen()?, move || {
                let cors = cors::layer(&cors_settings);
                let cors_on = cors.is_some();
                let app = App::new()
                    .app_data(app_state.clone())
                    .into_utoipa_app()
                    .configure(if metrics_apart {
                        routes::configure_api
                    } else {
                        routes::configure
                    })
                    .into_app()
                    .service(
                        SwaggerUi::new("/swagger-ui/{_:.*}")
                            .url("/api-docs/openapi.json", spec.clone()),
                    )
                    .service(web::redirect("/swagger-ui", "/swagger-ui/"))
                    .configure(routes::explore::configure)
                    .default_service(web::to(routes::not_found))
                    // Innermost first. Compression sees the answer as the route made it; CORS
                    // sits outside the request log and metrics, so a preflight is answered
                    // before routing and never counted or logged as a request.
                    .wrap(from_fn(head::documentation_as_get))
                    .wrap(pages::PageHeaders)
                    .wrap(compression::Compress {
                        min_bytes: compress_at,
                    })
                    // Inside the metrics and the request log, so a 429 is counted and logged.
                    .wrap(Condition::new(quota.is_some(), Quotas(quota.clone())))
                    // Outside the quotas, which count an authenticated caller by its name.
                    .wrap(Condition::new(auth.is_some(), Authenticate(auth.clone())))
                    .wrap(from_fn(crate::metrics::record_request))
                    .wrap(TracingLogger::<RequestSpan>::new())
                    .wrap(Condition::new(cors_on, cors.unwrap_or_default()))
                    .wrap(from_fn(telemetry::request_id))
                    // Outermost: it sees every request start and end on its connection.
                    .wrap(connection_limits);
                let draining = draining.clone();
                let service = HttpService::build()
                    .keep_alive(if http.keep_alive.is_zero() {
                        KeepAlive::Disabled
                    } else {
                        KeepAlive::Timeout(http.keep_alive)
                    })
                    .client_request_timeout(http.client_request_timeout)
                    .client_disconnect_timeout(http.client_disconnect_timeout)
                    .local_addr(local)
                    .graceful_shutdown_signal(move || {
                        let draining = draining.clone();
                        async move { draining.notified().await }
                    })
                    .on_connect_ext(connection::on_connect::<TcpStream>)
                    // No route builds URLs or reads `ConnectionInfo`'s fallback host, the only
                    // users of the app's host and address.
                    .h1(map_config(app, |_| AppConfig::default()));
                let send_timeout = http.send_timeout;
                fn_service(move |io: TcpStream| {
                    let peer = io.peer_addr().ok();
                    // As actix-web's server: answers are small, sent at once.
                    if let Err(error) = io.set_nodelay(true) {
                        tracing::debug!(error = %error, "cannot set TCP_NODELAY");
                    }
                    ready(Ok::<_, DispatchError>((
                        Metered::new(io, send_timeout),
                        peer,
                    )))
                })
                .and_then(service)
            })
            .context("cannot start the HTTP server")?
            .run();
        tracing::info!(address = %local, "listening");
        let metrics = match metrics_port {
            Some(port) => {
                let address = port.local_addr();
                let server = metrics_server(state.clone(), port)?;
                tracing::info!(address = %address, "serving /metrics apart (METRICS_BIND_ADDR)");
                Some((address.port(), server))
            }
            None => None,
        };
        Ok(Self {
            port: local.port(),
            server,
            metrics,
            state,
            drain: settings.http.shutdown_drain,
            _keys_watch: keys_watch,
            _tokens_watch: tokens_watch,
            _follow: follow,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of METRICS_BIND_ADDR's server, when /metrics is served apart.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// Serves until `shutdown` resolves; then fails readiness, waits `SHUTDOWN_DRAIN_SECS`,
    /// stops accepting, lets in-flight requests finish (up to `SHUTDOWN_TIMEOUT_SECS`), returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        // Scraped until the public server has stopped, so the drain shows in the metrics.
        let metrics = self.metrics.map(|(_, metrics)| {
            let handle = metrics.handle();
            (handle, AbortOnDrop(tokio::spawn(async move {
                if let Err(error) = metrics.await {
                    tracing::error!(error = %error, "the /metrics server (METRICS_BIND_ADDR) failed");
                }
            })))
        });
        // Histogram samples no scrape reads are drained now and then, so memory stays bounded.
        let upkeep = tokio::spawn(async {
            let mut every = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                crate::metrics::handle().run_upkeep();
            }
        });
        let _stop_upkeep = AbortOnDrop(upkeep);
        tokio::select! {
            result = &mut server => return Ok(result.context("the HTTP server task failed")??),
            () = shutdown => {}
        }
        self.state.shutting_down.store(true, Ordering::Release);
        // Streams of changes end now, each telling its client when to come back (to another
        // replica, through the load balancer), rather than hold the drain and the stop.
        self.state.changes.hub.close();
        tracing::info!(
            drain_secs = self.drain.as_secs(),
            "shutting down: readiness now fails"
        );
        tokio::time::sleep(self.drain).await;
        handle.stop(true).await;
        server.await.context("the HTTP server task failed")??;
        if let Some((handle, _task)) = metrics {
            handle.stop(true).await;
        }
        self.state.service.db.pool().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The server of METRICS_BIND_ADDR: /metrics alone, on one worker, logged and counted like any
/// request; every other path is a 404 problem.
fn metrics_server(state: web::Data<AppContext>, port: Reserved) -> anyhow::Result<Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .into_utoipa_app()
            .configure(routes::configure_metrics)
            .into_app()
            .default_service(web::to(routes::not_found))
            .wrap(from_fn(crate::metrics::record_request))
            .wrap(TracingLogger::<RequestSpan>::new())
            .wrap(from_fn(telemetry::request_id))
    })
    .disable_signals()
    .workers(1)
    .shutdown_timeout(METRICS_SHUTDOWN_TIMEOUT_SECS)
    .listen(port.listen()?)
    .context("cannot start the /metrics server (METRICS_BIND_ADDR)")?
    .run())
}

/// Seconds a scrape in flight gets to finish when the replica stops: a scrape is quick.
const METRICS_SHUTDOWN_TIMEOUT_SECS: u64 = 2;
