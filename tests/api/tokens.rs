//! OpenID Connect access tokens (`AUTH_JWKS_URL`, `AUTH_ISSUER`, `AUTH_AUDIENCE`): JWTs signed by
//! an identity provider of the test's own (`vehicle_state_test_support::oidc`), whose key set the
//! service fetches over HTTP on loopback. Keys are made by the test, never committed.

use std::time::Duration;

use serde_json::json;
use vehicle_state::config::ServeSettings;
use vehicle_state_test_support::app::{TestApp, spawn_app_with};
use vehicle_state_test_support::http::Reply;
use vehicle_state_test_support::oidc::{AUDIENCE, ISSUER, JwksServer, SigningKey, claims, now};

const LOOKUP: &str = "/vehicles/3/timestamp/2022-09-12T10:00:00Z";

fn with_provider(idp: &JwksServer) -> impl FnOnce(&mut ServeSettings) + use<> {
    let url = idp.url();
    move |s| {
        s.auth.tokens.jwks_url = Some(url);
        s.auth.tokens.issuer = Some(ISSUER.to_owned());
        s.auth.tokens.audience = vec!["another-service".to_owned(), AUDIENCE.to_owned()];
        s.auth.tokens.jwks_min_refetch = Duration::from_secs(1);
        // Shorter than the least time between fetches, as the replica requires.
        s.auth.tokens.jwks_timeout = Duration::from_millis(500);
    }
}

async fn with_token(app: &TestApp, token: &str) -> Reply {
    app.get_with(LOOKUP, &[("authorization", &format!("Bearer {token}"))])
        .await
}

/// Asks until the replica has fetched the provider's keys (the fetch at start runs beside it).
async fn served_once_keys_are_fetched(app: &TestApp, token: &str) -> Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = with_token(app, token).await;
        if reply.status != 503 || std::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tokens_signed_with_the_provider_s_rsa_and_ec_keys_are_served() {
    let (ec, rsa) = (SigningKey::es256("ec-1"), SigningKey::rs256("rsa-1"));
    let idp = JwksServer::serving(&[&ec, &rsa]).await;
    let app = spawn_app_with(with_provider(&idp)).await;

    let by_ec = served_once_keys_are_fetched(&app, &ec.token("dashboard@example.com")).await;
    let by_rsa = with_token(&app, &rsa.token("reports")).await;
    let missing = app.get(LOOKUP).await;

    for served in [&by_ec, &by_rsa] {
        assert_eq!(served.status, 200, "{}", served.body);
        assert!(
            served.header("cache-control").starts_with("private,"),
            "{}",
            served.header("cache-control")
        );
    }
    let detail = missing.assert_problem(401, "/problems/unauthorized");
    assert!(detail.contains("an access token"), "{detail}");
    assert_eq!(
        missing.header("www-authenticate"),
        r#"Bearer realm="vehicle-state""#
    );
    assert_eq!(app.get("/livez").await.status, 200, "health stays open");
}

#[tokio::test]
async fn a_token_that_fails_any_check_is_a_401_that_says_which() {
    let (ec, rsa) = (SigningKey::es256("ec-1"), SigningKey::rs256("rsa-1"));
    let stranger = SigningKey::es256("ec-1");
    let idp = JwksServer::serving(&[&ec, &rsa]).await;
    let app = spawn_app_with(with_provider(&idp)).await;
    served_once_keys_are_fetched(&app, &ec.token("warm-up")).await;

    let b64 = |v: &serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let mut wrong_issuer = claims("x", 3600);
    wrong_issuer["iss"] = json!("https://evil.test.invalid/");
    let mut wrong_audience = claims("x", 3600);
    wrong_audience["aud"] = json!("some-other-api");
    let mut not_yet = claims("x", 3600);
    not_yet["nbf"] = json!(now() + 600);
    let mut no_sub = claims("x", 3600);
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut empty_sub = claims("x", 3600);
    empty_sub["sub"] = json!("");
    let mut no_exp = claims("x", 3600);
    no_exp.as_object_mut().unwrap().remove("exp");
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "ec-1"})),
        b64(&claims("x", 3600))
    );
    let mut tampered = ec.token("x");
    let dot = tampered.rfind('.').unwrap();
    tampered.replace_range(dot - 4..dot, "AAAA");

    let cases = [
        (
            "expired beyond the skew",
            ec.sign(&ec.header(), &claims("x", -120)),
            "the token has expired",
        ),
        (
            "another issuer",
            ec.sign(&ec.header(), &wrong_issuer),
            "issued by another issuer",
        ),
        (
            "another audience",
            ec.sign(&ec.header(), &wrong_audience),
            "not meant for this service",
        ),
        (
            "not valid before ten minutes from now",
            ec.sign(&ec.header(), &not_yet),
            "not valid yet",
        ),
        (
            "no sub",
            ec.sign(&ec.header(), &no_sub),
            "lacks a required claim",
        ),
        (
            "an empty sub",
            ec.sign(&ec.header(), &empty_sub),
            "lacks a required claim",
        ),
        (
            "no exp",
            ec.sign(&ec.header(), &no_exp),
            "lacks a required claim",
        ),
        (
            "signed by a stranger's key under the provider's kid",
            stranger.token("x"),
            "signature is not valid",
        ),
        ("a changed payload", tampered, "signature is not valid"),
        ("alg none", unsigned, "algorithm is not accepted"),
        (
            "an EC key's kid with alg RS256",
            rsa.sign(&json!({"alg": "RS256", "kid": "ec-1"}), &claims("x", 3600)),
            "algorithm is not accepted",
        ),
        (
            "HS256 with the RSA key's published modulus as the secret",
            format!(
                "{}.{}.c2lnbmF0dXJl",
                b64(&json!({"alg": "HS256", "kid": "rsa-1"})),
                b64(&claims("x", 3600))
            ),
            "algorithm is not accepted",
        ),
        (
            "not a JWT",
            "eyJub3QiOiJqc29uIn0.eyJub3QiOiJqc29uIn0.e30".to_owned(),
            "not a well-formed JWT",
        ),
    ];
    for (what, token, says) in cases {
        let reply = with_token(&app, &token).await;
        let detail = reply.assert_problem(401, "/problems/unauthorized");
        assert!(detail.contains(says), "{what}: {detail}");
        let challenge = reply.header("www-authenticate");
        assert!(
            challenge.starts_with(
                r#"Bearer realm="vehicle-state", error="invalid_token", error_description=""#
            ) && challenge.contains(says),
            "{what}: {challenge}"
        );
    }
    // Inside the clock skew (60 s by default) an expired token still passes.
    let just_expired = with_token(&app, &ec.sign(&ec.header(), &claims("x", -30))).await;
    assert_eq!(just_expired.status, 200, "{}", just_expired.body);
}

#[tokio::test]
async fn a_new_key_is_learnt_at_its_first_token_a_withdrawn_one_stops_passing_and_made_up_kids_cost_one_fetch_a_second()
 {
    let old = SigningKey::es256("2026-11");
    let idp = JwksServer::serving(&[&old]).await;
    let app = spawn_app_with(with_provider(&idp)).await;
    served_once_keys_are_fetched(&app, &old.token("a")).await;
    // Past AUTH_JWKS_MIN_REFETCH_SECS (1 s here) since the fetch at start.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The provider rotates: a new key is published and tokens are signed with it at once.
    let new = SigningKey::rs256("2026-12");
    idp.publish(&[&old, &new]);
    let fetches_before = idp.fetches();
    let by_new_key = with_token(&app, &new.token("b")).await;
    let by_old_key = with_token(&app, &old.token("c")).await;
    let after_rotation = idp.fetches();

    // Forty tokens naming keys nobody publishes, at once.
    let made_up = SigningKey::es256("unknown");
    let refusals = futures_util::future::join_all((0..40).map(|i| {
        let key = SigningKey::es256(&format!("made-up-{i}"));
        let token = key.token("attacker");
        let app = &app;
        async move { with_token(app, &token).await }
    }))
    .await;
    let one_more = with_token(&app, &made_up.token("attacker")).await;
    let made_up_fetches = idp.fetches() - after_rotation;

    // The provider withdraws the old key: once the replica has fetched the set again (a token
    // naming an unknown key asks for that, a second later), tokens it signed stop passing,
    // though one passed a moment ago.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    idp.publish(&[&new]);
    with_token(&app, &made_up.token("attacker")).await;
    let withdrawn = with_token(&app, &old.token("c")).await;

    assert_eq!(by_new_key.status, 200, "{}", by_new_key.body);
    assert_eq!(by_old_key.status, 200, "{}", by_old_key.body);
    assert_eq!(
        after_rotation - fetches_before,
        1,
        "one fetch learnt the new key"
    );
    for refused in refusals.iter().chain([&one_more]) {
        let detail = refused.assert_problem(401, "/problems/unauthorized");
        assert!(
            detail.contains("a key the provider does not publish"),
            "{detail}"
        );
    }
    assert!(
        made_up_fetches <= 1,
        "41 tokens with unknown kids within a second made {made_up_fetches} fetches"
    );
    let detail = withdrawn.assert_problem(401, "/problems/unauthorized");
    assert!(
        detail.contains("a key the provider does not publish"),
        "{detail}"
    );
}

#[tokio::test]
async fn while_the_provider_is_down_tokens_get_a_503_and_api_keys_still_work() {
    let key = SigningKey::es256("k");
    let idp = JwksServer::serving(&[&key]).await;
    idp.fail();
    let dir = std::env::temp_dir().join(format!("vs-tokens-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("api-keys");
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"ops-key")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    std::fs::write(&keys, format!("ops {digest}\n")).unwrap();
    let app = spawn_app_with(|s| {
        with_provider(&idp)(s);
        s.auth.api_keys_file = Some(keys.clone());
    })
    .await;

    let down = with_token(&app, &key.token("a")).await;
    let by_api_key = app.get_with(LOOKUP, &[("x-api-key", "ops-key")]).await;
    idp.publish(&[&key]);
    // The next fetch is at most AUTH_JWKS_MIN_REFETCH_SECS (1 s here) away.
    let back = served_once_keys_are_fetched(&app, &key.token("a")).await;
    let _ = std::fs::remove_dir_all(&dir);

    let detail = down.assert_problem(503, "/problems/keys-unavailable");
    assert!(detail.contains("keys could not be fetched"), "{detail}");
    assert!(down.header("retry-after").parse::<u32>().is_ok());
    assert_eq!(by_api_key.status, 200, "{}", by_api_key.body);
    assert_eq!(back.status, 200, "{}", back.body);
}
