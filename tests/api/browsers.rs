//! What a browser needs: CORS for pages on other origins, compression of large answers, and
//! conditional requests that keep working through both.

use std::io::Read;

use reqwest::Method;
use reqwest::header::HeaderMap;
use vehicle_state::config::CorsOrigins;

use vehicle_state_test_support::app::{TestApp, spawn_app, spawn_app_with};

const DASHBOARD: &str = "https://dashboard.example.com";
const LOOKUP: &str = "/vehicles/3/timestamp/2022-09-12T10:00:00Z";
const HISTORY: &str = "/vehicles/3/history";
const BATCH: &str = "/vehicles/states";

/// A response as it came over the wire: the body not decoded.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The names in `Vary`, lower case.
    fn vary(&self) -> Vec<String> {
        self.headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .collect()
    }

    /// The body, decoded as `Content-Encoding` says.
    fn decoded(&self) -> String {
        let mut out = Vec::new();
        match self.header("content-encoding") {
            "" => out.clone_from(&self.body),
            "gzip" => {
                flate2::read::GzDecoder::new(&self.body[..])
                    .read_to_end(&mut out)
                    .expect("gzip");
            }
            "br" => {
                brotli::Decompressor::new(&self.body[..], 4096)
                    .read_to_end(&mut out)
                    .expect("br");
            }
            "zstd" => out = zstd::decode_all(&self.body[..]).expect("zstd"),
            other => panic!("an encoding the test does not know: {other}"),
        }
        String::from_utf8(out).expect("UTF-8")
    }
}

async fn send(app: &TestApp, method: Method, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut request = app
        .client
        .request(method.clone(), format!("{}{path}", app.address));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if method == Method::POST {
        request = request
            .header("content-type", "application/json")
            .body(serde_json::json!({ "lookups": lookups(40) }).to_string());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    Raw {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("a body").to_vec(),
    }
}

/// `n` lookups: a batch answer of about 150 bytes each.
fn lookups(n: usize) -> serde_json::Value {
    (0..n)
        .map(|i| serde_json::json!({"id": 1 + i % 3, "timestamp": format!("2022-09-12T10:00:{:02}Z", i % 60)}))
        .collect()
}

async fn with_origins(origins: &str) -> TestApp {
    let origins = CorsOrigins::parse(origins).expect("valid origins");
    spawn_app_with(|s| s.cors.allowed_origins = Some(origins)).await
}

fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut sent = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        sent.push(("access-control-request-headers", headers));
    }
    sent
}

#[tokio::test]
async fn without_cors_allowed_origins_there_are_no_cors_headers_and_no_preflight() {
    let app = spawn_app().await;

    let get = send(&app, Method::GET, LOOKUP, &[("origin", DASHBOARD)]).await;
    let options = send(
        &app,
        Method::OPTIONS,
        BATCH,
        &preflight(DASHBOARD, "POST", "content-type"),
    )
    .await;

    assert_eq!(get.status, 200);
    assert_eq!(get.header("access-control-allow-origin"), "");
    assert_eq!(get.header("access-control-expose-headers"), "");
    assert!(
        !get.vary().contains(&"origin".to_owned()),
        "{:?}",
        get.vary()
    );
    assert_eq!(options.status, 405, "as before: no route answers OPTIONS");
    assert_eq!(options.header("access-control-allow-origin"), "");
}

#[tokio::test]
async fn an_empty_cors_allowed_origins_is_the_same_as_unset() {
    let app = with_origins("").await;

    let get = send(&app, Method::GET, LOOKUP, &[("origin", DASHBOARD)]).await;
    let options = send(
        &app,
        Method::OPTIONS,
        BATCH,
        &preflight(DASHBOARD, "POST", ""),
    )
    .await;

    assert_eq!(get.header("access-control-allow-origin"), "");
    assert!(!get.vary().contains(&"origin".to_owned()));
    assert_eq!(options.status, 405);
}

#[tokio::test]
async fn a_page_of_a_listed_origin_may_read_every_route_and_its_headers() {
    let app = with_origins(&format!("http://localhost:5173, {DASHBOARD}")).await;

    for (method, path) in [
        (Method::GET, LOOKUP),
        (Method::GET, HISTORY),
        (Method::POST, BATCH),
        (Method::HEAD, LOOKUP),
    ] {
        let reply = send(&app, method.clone(), path, &[("origin", DASHBOARD)]).await;

        assert_eq!(reply.status, 200, "{method} {path}");
        assert_eq!(
            reply.header("access-control-allow-origin"),
            DASHBOARD,
            "{method} {path}"
        );
        assert_eq!(
            reply.header("access-control-allow-credentials"),
            "",
            "no credentials"
        );
        let exposed: Vec<String> = reply
            .header("access-control-expose-headers")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for header in ["x-cache", "etag", "age", "retry-after", "x-request-id"] {
            assert!(
                exposed.contains(&header.to_owned()),
                "{method} {path}: {exposed:?}"
            );
        }
        assert!(
            reply.vary().contains(&"origin".to_owned()),
            "{method} {path}: {:?}",
            reply.vary()
        );
    }
}

#[tokio::test]
async fn a_preflight_is_answered_before_routing_and_never_reaches_a_lookup() {
    let app = with_origins(DASHBOARD).await;

    for (path, method) in [
        (BATCH, "POST"),
        (LOOKUP, "GET"),
        ("/vehicles/999/timestamp/2022-09-12T10:00:00Z", "GET"),
        (HISTORY, "GET"),
    ] {
        let reply = send(
            &app,
            Method::OPTIONS,
            path,
            &preflight(
                DASHBOARD,
                method,
                "content-type,if-none-match,x-request-id,traceparent,tracestate",
            ),
        )
        .await;

        assert_eq!(
            reply.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(reply.body.is_empty(), "{path}");
        assert_eq!(
            reply.header("access-control-allow-origin"),
            DASHBOARD,
            "{path}"
        );
        let methods = reply.header("access-control-allow-methods").to_owned();
        for allowed in ["GET", "HEAD", "POST"] {
            assert!(methods.contains(allowed), "{path}: {methods}");
        }
        let headers = reply
            .header("access-control-allow-headers")
            .to_ascii_lowercase();
        for allowed in [
            "content-type",
            "if-none-match",
            "x-request-id",
            "traceparent",
            "tracestate",
        ] {
            assert!(headers.contains(allowed), "{path}: {headers}");
        }
        assert_eq!(reply.header("access-control-max-age"), "3600", "{path}");
        assert_eq!(reply.header("x-cache"), "", "{path}: no lookup answered it");
        assert_eq!(
            reply.header("x-request-id").len(),
            36,
            "{path}: a preflight has its id too"
        );
        assert!(reply.vary().contains(&"origin".to_owned()), "{path}");
    }
    // Nothing was looked up, so nothing was cached.
    assert_eq!(app.cache_keys().await, Vec::<String>::new());
}

#[tokio::test]
async fn an_origin_not_listed_gets_no_cors_headers_and_its_preflight_a_problem() {
    let app = with_origins(DASHBOARD).await;
    let stranger = "https://elsewhere.example";

    let get = send(&app, Method::GET, LOOKUP, &[("origin", stranger)]).await;
    let refused = send(
        &app,
        Method::OPTIONS,
        BATCH,
        &preflight(stranger, "POST", "content-type"),
    )
    .await;
    let bad_method = send(
        &app,
        Method::OPTIONS,
        BATCH,
        &preflight(DASHBOARD, "DELETE", ""),
    )
    .await;
    let bad_header = send(
        &app,
        Method::OPTIONS,
        BATCH,
        &preflight(DASHBOARD, "POST", "content-type,x-secret"),
    )
    .await;

    assert_eq!(get.status, 200, "served: the browser is what refuses it");
    assert_eq!(get.header("access-control-allow-origin"), "");
    assert_eq!(get.header("access-control-expose-headers"), "");
    assert!(get.vary().contains(&"origin".to_owned()));
    for (reply, says) in [
        (
            &refused,
            "`https://elsewhere.example` may not call this API: it is not in CORS_ALLOWED_ORIGINS",
        ),
        (
            &bad_method,
            "may use GET, HEAD or POST; this preflight asks for `DELETE`",
        ),
        (
            &bad_header,
            "this preflight asks for `content-type,x-secret`",
        ),
    ] {
        assert_eq!(reply.status, 403);
        assert_eq!(reply.header("content-type"), "application/problem+json");
        assert_eq!(reply.header("access-control-allow-origin"), "");
        assert_eq!(reply.header("x-request-id").len(), 36);
        let problem: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
        assert_eq!(problem["type"], "/problems/cors-refused");
        assert_eq!(problem["status"], 403);
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{detail}");
    }
}

#[tokio::test]
async fn a_huge_origin_is_echoed_clipped_in_the_refusal_not_whole() {
    // A client chooses what it sends; it must not choose how much the replica writes back (or
    // into its log): a 100 KB Origin used to come back whole in the 403.
    let app = with_origins(DASHBOARD).await;
    let huge = format!("https://{}.example", "a".repeat(100_000));

    let refused = send(
        &app,
        Method::OPTIONS,
        BATCH,
        &preflight(&huge, "POST", "content-type"),
    )
    .await;

    assert_eq!(refused.status, 403);
    let problem: serde_json::Value = serde_json::from_slice(&refused.body).expect("JSON");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("pages of the origin `https://aaaa"),
        "{detail}"
    );
    assert!(detail.contains("aaa…` may not call this API"), "{detail}");
    assert!(detail.len() < 400, "clipped: {} bytes", detail.len());
}

#[tokio::test]
async fn with_a_list_an_answer_to_a_request_without_origin_still_varies_by_origin() {
    // A shared cache that stored this answer must not hand it to a page of a listed origin,
    // which needs `Access-Control-Allow-Origin`.
    let app = with_origins(DASHBOARD).await;

    let reply = send(&app, Method::GET, LOOKUP, &[]).await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), "");
    assert!(
        reply.vary().contains(&"origin".to_owned()),
        "{:?}",
        reply.vary()
    );
}

#[tokio::test]
async fn a_star_lets_any_page_read_answers_that_do_not_vary_by_origin() {
    let app = with_origins("*").await;

    let get = send(
        &app,
        Method::GET,
        LOOKUP,
        &[("origin", "https://anyone.example")],
    )
    .await;
    // Kept by a cache, an answer to a request without `Origin` must serve any page too.
    let without = send(&app, Method::GET, LOOKUP, &[]).await;
    let options = send(
        &app,
        Method::OPTIONS,
        BATCH,
        &preflight("https://anyone.example", "POST", "content-type"),
    )
    .await;

    assert_eq!(get.header("access-control-allow-origin"), "*");
    assert!(
        get.header("access-control-expose-headers")
            .contains("x-cache")
    );
    assert!(
        !get.vary().contains(&"origin".to_owned()),
        "{:?}",
        get.vary()
    );
    assert_eq!(without.header("access-control-allow-origin"), "*");
    assert!(
        without
            .header("access-control-expose-headers")
            .contains("x-cache")
    );
    assert!(!without.vary().contains(&"origin".to_owned()));
    assert_eq!(options.status, 200);
    assert_eq!(options.header("access-control-allow-origin"), "*");
    assert_eq!(options.header("access-control-allow-credentials"), "");
}

#[tokio::test]
async fn a_small_answer_is_sent_as_it_is_whatever_the_client_accepts() {
    let app = spawn_app().await;

    let reply = send(
        &app,
        Method::GET,
        LOOKUP,
        &[("accept-encoding", "gzip, deflate, br, zstd")],
    )
    .await;

    assert_eq!(reply.status, 200);
    assert!(reply.body.len() < 1024, "{}", reply.body.len());
    assert_eq!(reply.header("content-encoding"), "");
    assert!(!reply.vary().contains(&"accept-encoding".to_owned()));
    assert_eq!(
        reply.header("etag").len(),
        18,
        "the identity tag: {}",
        reply.header("etag")
    );
}

#[tokio::test]
async fn a_large_answer_is_compressed_as_the_client_prefers() {
    let app = spawn_app().await;
    let identity = send(&app, Method::POST, BATCH, &[]).await;
    let expected: serde_json::Value = serde_json::from_slice(&identity.body).expect("JSON");

    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        // A tie goes to gzip: the cheapest in CPU and memory.
        ("gzip, deflate, br, zstd", "gzip"),
        ("br, zstd", "zstd"),
        ("br;q=1.0, gzip;q=0.8", "br"),
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0, gzip;q=0.1", "gzip"),
        ("identity", ""),
        ("deflate", ""),
        ("br;q=0, gzip;q=0, zstd;q=0", ""),
    ] {
        let reply = send(&app, Method::POST, BATCH, &[("accept-encoding", accept)]).await;

        assert_eq!(reply.status, 200, "{accept}");
        assert_eq!(reply.header("content-encoding"), coding, "{accept}");
        assert!(
            reply.vary().contains(&"accept-encoding".to_owned()),
            "{accept}: {:?}",
            reply.vary()
        );
        let body: serde_json::Value = serde_json::from_str(&reply.decoded()).expect("JSON");
        // The same answers (the cache columns aside, which say HIT now).
        assert_eq!(
            body["results"].as_array().map(Vec::len),
            Some(40),
            "{accept}"
        );
        assert_eq!(
            body["results"][5]["answer"], expected["results"][5]["answer"],
            "{accept}"
        );
        if !coding.is_empty() {
            assert!(
                reply.body.len() * 3 < identity.body.len(),
                "{accept}: {} of {}",
                reply.body.len(),
                identity.body.len()
            );
        }
    }
    assert_eq!(identity.header("content-encoding"), "");
    assert!(
        identity.vary().contains(&"accept-encoding".to_owned()),
        "without Accept-Encoding too"
    );
}

#[tokio::test]
async fn a_compressed_page_has_its_own_etag_and_either_tag_gets_304() {
    let app = spawn_app_with(|s| s.compression.min_bytes = 64).await;
    let plain = send(&app, Method::GET, HISTORY, &[]).await;
    let gzip = send(&app, Method::GET, HISTORY, &[("accept-encoding", "gzip")]).await;
    let plain_tag = plain.header("etag").to_owned();
    let gzip_tag = gzip.header("etag").to_owned();
    let br_tag = format!("{}-br\"", &plain_tag[..plain_tag.len() - 1]);

    assert_eq!(gzip.header("content-encoding"), "gzip");
    assert_eq!(gzip.decoded(), plain.decoded());
    assert_eq!(
        gzip_tag,
        format!("{}-gzip\"", &plain_tag[..plain_tag.len() - 1])
    );
    // If-None-Match names the representation the request would get: the client's copy is
    // fresh only if it holds that encoding of the answer.
    for (sent, accept, status, tag_back) in [
        (&gzip_tag, "gzip", 304, &gzip_tag),
        (&format!("W/{gzip_tag}"), "gzip", 304, &gzip_tag),
        (
            &format!(r#""0000000000000000", {gzip_tag}"#),
            "gzip",
            304,
            &gzip_tag,
        ),
        (&plain_tag, "", 304, &plain_tag),
        (&plain_tag, "identity", 304, &plain_tag),
        (&plain_tag, "gzip", 200, &gzip_tag),
        (&gzip_tag, "", 200, &plain_tag),
        (&gzip_tag, "br", 200, &br_tag),
    ] {
        let mut headers = vec![("if-none-match", sent.as_str())];
        if !accept.is_empty() {
            headers.push(("accept-encoding", accept));
        }

        let reply = send(&app, Method::GET, HISTORY, &headers).await;

        assert_eq!(reply.status, status, "{sent} with {accept:?}");
        assert_eq!(
            reply.header("etag"),
            tag_back.as_str(),
            "{sent} with {accept:?}"
        );
        assert!(
            reply.vary().contains(&"accept-encoding".to_owned()),
            "{sent} with {accept:?}"
        );
        if status == 304 {
            assert!(reply.body.is_empty());
            assert_eq!(reply.header("content-encoding"), "");
        } else {
            assert_eq!(reply.decoded(), plain.decoded(), "{sent} with {accept:?}");
        }
    }
    let changed = send(
        &app,
        Method::GET,
        HISTORY,
        &[
            ("if-none-match", r#""0000000000000000-gzip""#),
            ("accept-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(changed.status, 200);
}

#[tokio::test]
async fn the_threshold_and_the_switch_are_settings() {
    let everything = spawn_app_with(|s| s.compression.min_bytes = 0).await;
    let nothing = spawn_app_with(|s| s.compression.enabled = false).await;

    let small = send(
        &everything,
        Method::GET,
        LOOKUP,
        &[("accept-encoding", "gzip")],
    )
    .await;
    let large = send(
        &nothing,
        Method::POST,
        BATCH,
        &[("accept-encoding", "gzip, br, zstd")],
    )
    .await;

    assert_eq!(small.header("content-encoding"), "gzip");
    assert!(small.decoded().contains("\"state\""), "{}", small.decoded());
    assert!(
        small.header("etag").ends_with("-gzip\""),
        "{}",
        small.header("etag")
    );
    assert_eq!(large.status, 200);
    assert_eq!(large.header("content-encoding"), "");
    assert!(!large.vary().contains(&"accept-encoding".to_owned()));
}

#[tokio::test]
async fn cors_and_compression_together_vary_by_both() {
    let app = with_origins(DASHBOARD).await;

    let reply = send(
        &app,
        Method::POST,
        BATCH,
        &[("origin", DASHBOARD), ("accept-encoding", "gzip")],
    )
    .await;

    assert_eq!(reply.header("content-encoding"), "gzip");
    assert_eq!(reply.header("access-control-allow-origin"), DASHBOARD);
    assert_eq!(
        reply.headers.get_all("vary").iter().count(),
        1,
        "one Vary field, so every layer reads all of it"
    );
    let vary = reply.vary();
    assert!(
        vary.contains(&"origin".to_owned()) && vary.contains(&"accept-encoding".to_owned()),
        "{vary:?}"
    );
}

#[tokio::test]
async fn the_explore_page_is_served_from_the_binary_and_uses_only_the_public_api() {
    let app = spawn_app().await;

    let page = send(&app, Method::GET, "/explore/", &[]).await;
    let script = send(&app, Method::GET, "/explore/explore.js", &[]).await;
    let style = send(&app, Method::GET, "/explore/explore.css", &[]).await;
    let bare = send(&app, Method::GET, "/explore", &[]).await;
    let compressed = send(
        &app,
        Method::GET,
        "/explore/",
        &[("accept-encoding", "gzip")],
    )
    .await;

    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let html = page.decoded();
    // Its script and style are files of the binary's own, named relatively; nothing else is
    // loaded, from a CDN or anywhere.
    assert!(
        html.contains(r#"<script src="explore.js"></script>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<link rel="stylesheet" href="explore.css">"#),
        "{html}"
    );
    assert_eq!(html.matches("<script").count(), 1, "no inline script");
    assert_eq!(html.matches("<link").count(), 1);
    assert!(!html.contains("<style"), "no inline style");
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(style.status, 200);
    assert_eq!(style.header("content-type"), "text/css; charset=utf-8");
    let js = script.decoded();
    assert!(
        js.contains("fetch(`/vehicles/${encodeURIComponent(id)}/history?"),
        "the timeline"
    );
    assert!(
        js.contains("fetch(`/vehicles/${encodeURIComponent(id)}/timestamp/"),
        "the lookup"
    );
    assert!(
        js.contains("fetch(`/fleet/states/series?"),
        "the fleet's series"
    );
    assert_eq!(
        js.matches("fetch(").count(),
        js.matches("fetch(`/vehicles/").count() + js.matches("fetch(`/fleet/").count(),
        "every call is to the public API, relative"
    );
    assert_eq!(bare.status, 307);
    assert_eq!(bare.header("location"), "/explore/");
    assert_eq!(compressed.header("content-encoding"), "gzip");
    assert_eq!(compressed.decoded(), html);
}

#[tokio::test]
async fn the_pages_forbid_other_origins_scripts_framing_and_sniffing_and_the_api_s_answers_are_as_before()
 {
    let app = spawn_app().await;

    let explore = send(&app, Method::GET, "/explore/", &[]).await;
    let swagger = send(&app, Method::GET, "/swagger-ui/", &[]).await;
    let script = send(&app, Method::GET, "/explore/explore.js", &[]).await;
    let lookup = send(&app, Method::GET, LOOKUP, &[]).await;

    for (page, policy) in [
        (
            &explore,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'",
        ),
        (
            &swagger,
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'",
        ),
    ] {
        assert_eq!(page.status, 200);
        let csp = page.header("content-security-policy");
        assert!(csp.starts_with(policy), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(page.header("x-frame-options"), "DENY");
        assert_eq!(page.header("referrer-policy"), "no-referrer");
    }
    assert_eq!(script.header("x-content-type-options"), "nosniff");
    assert_eq!(script.header("content-security-policy"), "");
    assert_eq!(lookup.status, 200);
    for name in [
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ] {
        assert_eq!(lookup.header(name), "", "{name} on a JSON answer");
    }
}
