//! Versions against the race the change feed leaves open: a lookup that read a vehicle before a
//! change committed, and writes its answer back after the feed announced the change, must not
//! leave that answer in Redis. Driven through the cache's own calls in the order that race
//! takes, on the real Redis.

use actix_web::web::Bytes;

use vehicle_state::cache::{OPEN_END, RedisCache, RenderedAnswer, unix_ms};
use vehicle_state::domain::{Outcome, VehicleId};
use vehicle_state_test_support::app::spawn_app;

fn segment(version: u64, body: &'static str) -> RenderedAnswer {
    RenderedAnswer {
        outcome: Outcome::Found,
        body: Bytes::from_static(body.as_bytes()),
        read_at_ms: unix_ms(std::time::SystemTime::now()),
        start_us: 1_600_000_000_000_000,
        end_us: OPEN_END,
        version,
    }
}

#[tokio::test]
async fn an_answer_read_before_an_announced_change_is_not_written_back_and_a_newer_one_is() {
    let app = spawn_app().await;
    let redis = RedisCache::new(&app.settings.redis, &app.settings.cache).expect("a pool");
    let id = VehicleId::parse("3").expect("an id");
    let key = redis.key(id);
    let at_us = 1_700_000_000_000_000;
    let held = async |answer: &RenderedAnswer| {
        let mut got = redis
            .get_many(&[(&key, at_us)])
            .await
            .expect("Redis answers");
        match got.pop() {
            Some(Ok(vehicle_state::cache::Cached::Fresh(found, _))) => found == *answer,
            _ => false,
        }
    };
    let before = segment(1, r#"{"state":"selling"}"#);
    redis.put_many(&[(&key, &before)]).await.expect("written");
    assert!(held(&before).await, "written while no change is known");

    // The change commits as version 2 and is announced: the segment goes and the floor rises.
    let news = redis.invalidate(&[(id, 2)]).await.expect("carried out");
    let again = redis.invalidate(&[(id, 2)]).await.expect("carried out");
    // The lookup that read version 1 before the commit writes back only now.
    redis.put_many(&[(&key, &before)]).await.expect("sent");

    assert_eq!(
        (news, again),
        (1, 0),
        "the second announcement was carried out before"
    );
    assert!(
        !held(&before).await,
        "an answer older than the floor stays out"
    );
    assert!(
        app.cache_keys()
            .await
            .contains(&format!("{}:v5:floor:{{3}}", app.prefix)),
        "{:?}",
        app.cache_keys().await
    );
    let after = segment(2, r#"{"state":"sold"}"#);
    redis.put_many(&[(&key, &after)]).await.expect("written");
    assert!(
        held(&after).await,
        "the answer read after the change is kept"
    );
    // A late announcement of an older version changes nothing.
    assert_eq!(redis.invalidate(&[(id, 1)]).await.expect("carried out"), 0);
    assert!(held(&after).await);
}
