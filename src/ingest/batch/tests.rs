//! The batching decisions, without a broker: what one batch holds, in which order, and how its
//! messages are sorted.

use std::time::Duration;

use futures_util::stream;

use super::*;

const PREFIX: &str = "vehicles";

/// A delivered message, numbered in the order it arrived.
#[derive(Debug, PartialEq)]
struct Message {
    n: usize,
    subject: String,
    payload: Vec<u8>,
}

impl Delivered for Message {
    fn subject(&self) -> &str {
        &self.subject
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

fn message(n: usize, subject: &str, payload: &str) -> Result<Message, MessagesError> {
    Ok(Message {
        n,
        subject: subject.to_owned(),
        payload: payload.as_bytes().to_vec(),
    })
}

fn registered(n: usize, vehicle: u32) -> Result<Message, MessagesError> {
    let payload =
        format!(r#"{{"eventId":"r{n}","vehicleId":{vehicle},"make":"VW","model":"GOLF"}}"#);
    message(n, "vehicles.registered", &payload)
}

fn changed(n: usize, vehicle: u32, state: &str) -> Result<Message, MessagesError> {
    let payload = format!(
        r#"{{"eventId":"c{n}","vehicleId":{vehicle},"state":"{state}","timestamp":"2022-09-11T23:21:38Z"}}"#
    );
    message(n, "vehicles.state_changed", &payload)
}

fn pull_error(kind: MessagesErrorKind) -> Result<Message, MessagesError> {
    Err(MessagesError::new(kind))
}

fn arrival<T>(list: &[(Message, T)]) -> Vec<usize> {
    list.iter().map(|(m, _)| m.n).collect()
}

#[test]
fn events_are_sorted_by_subject_and_each_list_keeps_the_order_they_arrived_in() {
    let chunk = vec![
        changed(0, 7, "selling"),
        registered(1, 7),
        changed(2, 3, "sold"),
        registered(3, 3),
        changed(4, 7, "quoted"),
    ];

    let (sorted, pull_again) = Sorted::of(PREFIX, chunk);

    assert_eq!(arrival(&sorted.registrations), [1, 3]);
    assert_eq!(arrival(&sorted.changes), [0, 2, 4]);
    assert!(sorted.rejected.is_empty());
    assert!(!pull_again);
    let vehicles: Vec<String> = sorted
        .changes
        .iter()
        .map(|(_, c)| format!("{} {}", c.vehicle, c.state.as_str()))
        .collect();
    assert_eq!(vehicles, ["7 selling", "3 sold", "7 quoted"]);
}

#[test]
fn the_same_event_twice_in_one_batch_is_kept_twice_for_the_database_to_find_duplicate() {
    // Whether an event is a duplicate is decided against what is stored, in the same
    // transaction (`db::apply_events`): sorting drops nothing, so each copy is acked.
    let chunk = vec![
        changed(0, 1, "sold"),
        changed(0, 1, "sold"),
        registered(1, 1),
        registered(1, 1),
    ];

    let (sorted, _) = Sorted::of(PREFIX, chunk);

    assert_eq!(arrival(&sorted.changes), [0, 0]);
    assert_eq!(arrival(&sorted.registrations), [1, 1]);
    assert_eq!(sorted.changes[0].1, sorted.changes[1].1);
}

#[test]
fn an_event_on_a_subject_of_no_kind_is_rejected_with_no_kind_and_the_subjects_it_may_have() {
    let payload = r#"{"eventId":"r1","vehicleId":1,"make":"VW","model":"GOLF"}"#;
    for subject in [
        "vehicles.deleted",
        "vehicles.registered.twice",
        "vehiclesX.registered",
        "fleet.registered",
        "vehicles",
    ] {
        let (sorted, _) = Sorted::of(PREFIX, vec![message(0, subject, payload)]);

        assert!(sorted.registrations.is_empty(), "{subject}");
        let [(rejected, kind, reason)] = &sorted.rejected[..] else {
            panic!("{subject}: one rejection, not {:?}", sorted.rejected.len());
        };
        assert_eq!(rejected.subject, subject);
        assert_eq!(*kind, None, "{subject}");
        assert_eq!(
            reason.0,
            format!("subject {subject} is neither vehicles.registered nor vehicles.state_changed")
        );
    }
}

#[test]
fn an_event_that_does_not_parse_is_rejected_with_its_kind_and_the_parsers_reason() {
    let chunk = vec![
        message(0, "vehicles.registered", "not json"),
        message(
            1,
            "vehicles.state_changed",
            r#"{"eventId":"c1","vehicleId":1,"state":"scrapped","timestamp":1663000000}"#,
        ),
        // A registration's payload on the subject of a change.
        message(
            2,
            "vehicles.state_changed",
            r#"{"eventId":"r1","vehicleId":1,"make":"VW","model":"GOLF"}"#,
        ),
        registered(3, 1),
    ];

    let (sorted, _) = Sorted::of(PREFIX, chunk);

    assert_eq!(arrival(&sorted.registrations), [3]);
    let rejected: Vec<(usize, Option<EventKind>)> = sorted
        .rejected
        .iter()
        .map(|(m, kind, _)| (m.n, *kind))
        .collect();
    assert_eq!(
        rejected,
        [
            (0, Some(EventKind::Registered)),
            (1, Some(EventKind::StateChanged)),
            (2, Some(EventKind::StateChanged)),
        ]
    );
    for (message, kind, reason) in &sorted.rejected {
        let parsed = Event::parse(kind.expect("a kind"), &message.payload);
        assert_eq!(parsed, Err(reason.clone()), "the parser's own reason");
    }
}

#[test]
fn only_a_pull_lost_with_its_server_asks_for_a_new_pull_and_no_error_hides_an_event() {
    use MessagesErrorKind::*;
    for (kind, again) in [
        (MissingHeartbeat, true),
        (NoResponders, true),
        (ConsumerDeleted, false),
        (Pull, false),
        (PushBasedConsumer, false),
        (Other, false),
    ] {
        let chunk = vec![registered(0, 1), pull_error(kind), changed(1, 1, "sold")];

        let (sorted, pull_again) = Sorted::of(PREFIX, chunk);

        assert_eq!(pull_again, again, "{kind:?}");
        assert_eq!(arrival(&sorted.registrations), [0], "{kind:?}");
        assert_eq!(arrival(&sorted.changes), [1], "{kind:?}");
    }
    let (_, pull_again) = Sorted::of(PREFIX, vec![pull_error(Other), pull_error(NoResponders)]);
    assert!(pull_again, "any lost pull among the errors");
}

/// `ready_batch`, bounded: one that waited for more than is there would hang the test.
async fn batch<S>(messages: &mut S, first: usize, max: usize) -> Vec<usize>
where
    S: futures_util::Stream<Item = usize> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), ready_batch(messages, first, max))
        .await
        .expect("a batch without waiting")
}

#[tokio::test]
async fn a_batch_is_what_has_already_arrived_up_to_the_limit_and_the_rest_waits_in_order() {
    let mut messages = stream::iter(1..10);

    let first = batch(&mut messages, 0, 4).await;
    let second = batch(&mut messages, 10, 4).await;

    assert_eq!(first, [0, 1, 2, 3]);
    assert_eq!(
        second,
        [10, 4, 5, 6],
        "the next batch goes on where this one stopped"
    );
}

#[tokio::test]
async fn a_batch_of_one_takes_nothing_more_from_the_stream() {
    let mut messages = stream::iter(1..3);

    let taken = batch(&mut messages, 0, 1).await;

    assert_eq!(taken, [0]);
    assert_eq!(messages.next().await, Some(1), "nothing taken and dropped");
}

#[tokio::test]
async fn a_batch_ends_where_the_stream_does() {
    let mut messages = stream::iter(1..3);

    assert_eq!(batch(&mut messages, 0, 100).await, [0, 1, 2]);
}

#[tokio::test]
async fn a_lone_event_goes_out_at_once_without_waiting_for_more() {
    let mut messages = stream::pending::<usize>();

    assert_eq!(batch(&mut messages, 0, 100).await, [0]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_handed_over_during_one_turn_of_the_scheduler_joins_the_batch() {
    // The client hands buffered messages over from its own task; on this one-thread
    // runtime that task runs only when `ready_batch` yields.
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let handing_over = tokio::spawn(async move {
        sender.send(1).expect("open");
        sender.send(2).expect("open");
    });

    let taken = batch(&mut messages, 0, 100).await;

    assert_eq!(taken, [0, 1, 2]);
    handing_over.await.expect("handed over");
}
