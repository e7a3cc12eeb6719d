//! Conditional requests: every 200 of a GET carries a strong `ETag`; `If-None-Match` with it
//! gets 304, no body, and the same caching headers.

use vehicle_state_test_support::app::{spawn_app, spawn_replica};

const PATH: &str = "/vehicles/3/timestamp/2022-09-12T10:00:00Z";

#[tokio::test]
async fn an_answer_sent_back_in_if_none_match_is_not_modified() {
    let app = spawn_app().await;
    let first = app.get(PATH).await;
    let etag = first.header("etag").to_owned();

    let again = app.get_with(PATH, &[("if-none-match", &etag)]).await;
    let among_others = app
        .get_with(
            PATH,
            &[("if-none-match", &format!(r#""0000000000000000", W/{etag}"#))],
        )
        .await;
    let other_tag = app
        .get_with(PATH, &[("if-none-match", r#""0000000000000000""#)])
        .await;
    let other_answer = app
        .get_with(
            "/vehicles/3/timestamp/2022-09-13T10:00:00Z",
            &[("if-none-match", &etag)],
        )
        .await;

    assert_eq!(first.status, 200);
    assert!(
        etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'),
        "a strong tag: {etag}"
    );
    assert_eq!(again.status, 304);
    assert_eq!(again.body, "", "no body");
    assert_eq!(again.header("etag"), etag);
    assert_eq!(again.header("x-cache"), "HIT");
    assert!(
        again
            .header("cache-control")
            .starts_with("public, max-age="),
        "{}",
        again.header("cache-control")
    );
    assert_eq!(
        among_others.status, 304,
        "a list, and the weak form, match too"
    );
    assert_eq!(other_tag.status, 200);
    assert_eq!(other_tag.header("etag"), etag);
    assert_eq!(other_answer.status, 200, "another answer has another tag");
    assert_ne!(other_answer.header("etag"), etag);
}

#[tokio::test]
async fn every_replica_gives_an_answer_the_same_etag_and_a_404_has_none() {
    let app = spawn_app().await;
    let other = spawn_replica(&app, |_| {}).await;

    let here = app.get(PATH).await;
    let there = other.get(PATH).await;
    let unknown = app
        .get("/vehicles/999/timestamp/2022-09-12T10:00:00Z")
        .await;

    assert_eq!(there.header("x-cache"), "HIT", "through Redis");
    assert_eq!(here.header("etag"), there.header("etag"));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("etag"), "", "only answers are tagged");
}
