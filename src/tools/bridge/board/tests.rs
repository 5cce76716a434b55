use serde_json::json;

use super::*;

fn repository() -> Json {
    json!({ "id": "1", "owner": "acme", "name": "app" })
}

fn build(id: &str, status: &str) -> Json {
    json!({ "id": id, "branch": "main", "status": status })
}

fn task(id: &str, status: &str) -> Json {
    json!({ "id": id, "name": format!("task {id}"), "status": status })
}

/// Records a build event.
fn build_event(board: &mut Board, key: &str, status: &str, at: Option<i64>) -> (SlotId, u64) {
    let repository = repository();
    let build = build("7", status);
    let fact = Fact {
        repository: &repository,
        build: &build,
        task: &Json::Null,
        at,
    };
    board.ingest(key, &fact).unwrap()
}

/// Records a task event of build 7.
fn task_event(board: &mut Board, key: &str, id: &str, status: &str) -> (SlotId, u64) {
    let repository = repository();
    let build = build("7", "EXECUTING");
    let task = task(id, status);
    let fact = Fact {
        repository: &repository,
        build: &build,
        task: &task,
        at: None,
    };
    board.ingest(key, &fact).unwrap()
}

fn posted(ts: &str) -> Posted {
    Posted {
        channel: "C0123".into(),
        ts: ts.into(),
    }
}

fn text(send: &Send) -> String {
    let message = match &send.call {
        Call::Post { message, .. } | Call::Update { message, .. } => message,
    };
    message["text"].as_str().unwrap().to_owned()
}

#[test]
fn a_build_is_posted_once_then_updated_and_its_tasks_reply_in_its_thread() {
    let mut board = Board::new("#ci", None, 100);
    let (top, version) = build_event(&mut board, "d1", "CREATED", None);
    let send = board.next().unwrap();
    assert!(matches!(&send.call, Call::Post { channel, thread_ts: None, .. } if channel == "#ci"));
    board.done(&send, Outcome::Shown(posted("1.1")));
    assert_eq!(board.progress(&top, version), Progress::Shown);

    let (reply, version) = task_event(&mut board, "d2", "t1", "EXECUTING");
    // The reply first, since a delivery waits for it; the build's summary after.
    board.wait(&reply, true);
    let send = board.next().unwrap();
    assert_eq!(send.slot, reply);
    assert!(matches!(&send.call,
        Call::Post { channel, thread_ts: Some(ts), .. } if channel == "C0123" && ts == "1.1"));
    board.done(&send, Outcome::Shown(posted("1.2")));
    assert_eq!(board.progress(&reply, version), Progress::Shown);
    let send = board.next().unwrap();
    assert!(matches!(&send.call, Call::Update { ts, .. } if ts == "1.1"));
    assert!(
        text(&send).ends_with("is EXECUTING · 0/1 task finished"),
        "{}",
        text(&send)
    );
    board.done(&send, Outcome::Shown(posted("1.1")));

    task_event(&mut board, "d3", "t1", "COMPLETED");
    let send = board.next().unwrap();
    assert!(matches!(&send.call, Call::Update { ts, .. } if ts == "1.2"));
    assert!(text(&send).contains("task task t1 (build 7 on main) is COMPLETED"));
    board.done(&send, Outcome::Shown(posted("1.2")));
    let send = board.next().unwrap();
    assert!(
        text(&send).ends_with("1/1 task finished"),
        "{}",
        text(&send)
    );
    board.done(&send, Outcome::Shown(posted("1.1")));
    assert!(board.next().is_none());
}

#[test]
fn states_that_wait_coalesce_into_one_call_that_answers_them_all() {
    let mut board = Board::new("C0123", None, 100);
    let first = build_event(&mut board, "d1", "CREATED", None);
    let send = board.next().unwrap();
    board.done(&send, Outcome::Shown(posted("1.1")));
    assert_eq!(board.progress(&first.0, first.1), Progress::Shown);

    let waiting: Vec<_> = ["TRIGGERED", "EXECUTING", "COMPLETED"]
        .iter()
        .enumerate()
        .map(|(n, status)| build_event(&mut board, &format!("d{}", n + 2), status, None))
        .collect();
    let send = board.next().unwrap();
    assert!(text(&send).contains("is COMPLETED"));
    assert!(board.next().is_none(), "one call for three states");
    board.done(&send, Outcome::Busy);
    // Slack was busy: the same message goes again, still the latest state.
    let send = board.next().unwrap();
    board.done(&send, Outcome::Shown(posted("1.1")));
    for (id, version) in &waiting {
        assert_eq!(board.progress(id, *version), Progress::Shown);
    }
    assert!(board.next().is_none());
}

#[test]
fn an_older_state_never_replaces_a_newer_one() {
    let mut board = Board::new("C0123", None, 100);
    build_event(&mut board, "d1", "FAILED", None);
    // Without event times, a final status stands against one that is not.
    build_event(&mut board, "d2", "EXECUTING", None);
    let send = board.next().unwrap();
    assert!(text(&send).contains("is FAILED"), "{}", text(&send));
    board.done(&send, Outcome::Shown(posted("1.1")));

    // With event times, the later event wins, whatever its status.
    let mut board = Board::new("C0123", None, 100);
    build_event(&mut board, "d1", "EXECUTING", Some(2_000));
    build_event(&mut board, "d2", "CREATED", Some(1_000));
    let (id, version) = build_event(&mut board, "d3", "COMPLETED", Some(3_000));
    build_event(&mut board, "d4", "EXECUTING", Some(2_500));
    let send = board.next().unwrap();
    assert!(text(&send).contains("is COMPLETED"), "{}", text(&send));
    board.done(&send, Outcome::Shown(posted("1.1")));
    assert_eq!(board.progress(&id, version), Progress::Shown);
    assert!(board.next().is_none());
}

#[test]
fn a_deleted_message_is_posted_anew_with_its_replies() {
    let mut board = Board::new("C0123", None, 100);
    build_event(&mut board, "d1", "EXECUTING", None);
    let send = board.next().unwrap();
    board.done(&send, Outcome::Shown(posted("1.1")));
    task_event(&mut board, "d2", "t1", "EXECUTING");
    while let Some(send) = board.next() {
        let ts = if send.slot.task.is_some() {
            "1.2"
        } else {
            "1.1"
        };
        board.done(&send, Outcome::Shown(posted(ts)));
    }

    let (id, version) = build_event(&mut board, "d3", "COMPLETED", None);
    let send = board.next().unwrap();
    assert!(matches!(&send.call, Call::Update { ts, .. } if ts == "1.1"));
    board.done(&send, Outcome::Gone);
    let send = board.next().unwrap();
    assert!(matches!(
        &send.call,
        Call::Post {
            thread_ts: None,
            ..
        }
    ));
    board.done(&send, Outcome::Shown(posted("2.1")));
    assert_eq!(board.progress(&id, version), Progress::Shown);
    let send = board.next().unwrap();
    assert!(
        matches!(&send.call,
        Call::Post { thread_ts: Some(ts), .. } if ts == "2.1"),
        "{send:?}"
    );
}

#[test]
fn a_refusal_fails_the_waiting_deliveries_and_a_repeat_tries_again() {
    let mut board = Board::new("C0123", None, 100);
    let (top, version) = build_event(&mut board, "d1", "CREATED", None);
    let (reply, reply_version) = task_event(&mut board, "d2", "t1", "CREATED");
    let send = board.next().unwrap();
    board.done(&send, Outcome::Refused("no".into()));
    assert_eq!(
        board.progress(&top, version),
        Progress::Refused("no".into())
    );
    assert_eq!(
        board.progress(&reply, reply_version),
        Progress::Refused("no".into())
    );
    assert!(board.next().is_none());

    let (again, again_version) = board.repeat("d2").unwrap();
    assert_eq!((&again, again_version), (&reply, reply_version));
    board.rearm(&again);
    assert_eq!(board.progress(&reply, reply_version), Progress::Waiting);
    let send = board.next().unwrap();
    assert_eq!(send.slot, top, "the build's message first");
}

#[test]
fn the_oldest_idle_build_is_forgotten() {
    let mut board = Board::new("C0123", None, 2);
    let repository = repository();
    let ingest = |board: &mut Board, id: &str| {
        let build = build(id, "CREATED");
        let fact = Fact {
            repository: &repository,
            build: &build,
            task: &Json::Null,
            at: None,
        };
        board.ingest(id, &fact).unwrap()
    };
    let (one, _) = ingest(&mut board, "1");
    let send = board.next().unwrap();
    board.done(&send, Outcome::Shown(posted("1.1")));
    let (two, _) = ingest(&mut board, "2");
    board.wait(&two, true);
    ingest(&mut board, "3");
    assert!(board.repeat("1").is_none(), "build 1 was idle");
    assert!(board.repeat("2").is_some(), "build 2 is awaited");
    assert!(board.slot(&one).is_none());
}

#[test]
fn events_without_ids_have_no_message() {
    let mut board = Board::new("C0123", None, 2);
    let fact = Fact {
        repository: &Json::Null,
        build: &json!({ "status": "FAILED" }),
        task: &Json::Null,
        at: None,
    };
    assert_eq!(board.ingest("d", &fact), Err(Unplaceable::NoBuildId));
    let fact = Fact {
        repository: &Json::Null,
        build: &build("7", "FAILED"),
        task: &json!({ "status": "FAILED" }),
        at: None,
    };
    assert_eq!(board.ingest("d", &fact), Err(Unplaceable::NoTaskId));
}
