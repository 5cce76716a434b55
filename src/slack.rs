//! Slack messages for CI events. One formatter serves the `SLACK` payload format (rendered in
//! the event's transaction) and `herald bridge slack` (which receives Herald's or Cirrus CI's
//! deliveries): both hand it repository, build and task JSON and post what it returns to a Slack
//! incoming webhook.
//!
//! The input is read leniently, because Cirrus CI sends ids as numbers and Herald as strings,
//! and a custom selection may leave fields out: whatever is missing is simply not shown.

use serde_json::{Map, Value as Json, json};

/// The selection the `SLACK` format renders, whatever the endpoint's `payloadQuery` says: the
/// message needs these fields and no others.
pub const SLACK_SELECTION: &str = "query SlackPayload($repositoryId: ID!, $buildId: ID!, $taskId: ID) {
  repository(id: $repositoryId) { id owner name }
  build(id: $buildId) { id branch tag pullRequest changeIdInRepo changeMessageTitle status durationInSeconds }
  task(id: $taskId) { id name status durationInSeconds }
}";

/// The longest change title shown; Slack refuses sections over 3000 characters.
const MAX_TITLE_CHARS: usize = 200;

/// A build or task event, as a receiver sees it.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// `build` or `task`.
    pub kind: &'a str,
    /// `created` or `updated`.
    pub action: &'a str,
    pub old_status: Option<&'a str>,
    pub repository: &'a Json,
    pub build: &'a Json,
    /// Null (or `{}`, as Cirrus sends it) for build events.
    pub task: &'a Json,
}

impl Event<'_> {
    /// The object whose status the event is about: the task for task events, else the build.
    fn subject(&self) -> &Json {
        if self.kind == "task" {
            self.task
        } else {
            self.build
        }
    }

    /// The status after the change.
    pub fn status(&self) -> Option<String> {
        text(&self.subject()["status"])
    }
}

/// A string or a number as text (ids arrive as either); `None` for anything else.
pub fn text(value: &Json) -> Option<String> {
    match value {
        Json::String(text) => Some(text.clone()),
        Json::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// `owner/name`, or whichever of the two is known.
pub fn repository_name(repository: &Json) -> Option<String> {
    match (text(&repository["owner"]), text(&repository["name"])) {
        (Some(owner), Some(name)) => Some(format!("{owner}/{name}")),
        (None, Some(name)) => Some(name),
        (Some(owner), None) => Some(owner),
        (None, None) => None,
    }
}

/// The emoji shown next to a build or task status.
pub fn emoji(status: &str) -> &'static str {
    match status {
        "COMPLETED" => ":white_check_mark:",
        "FAILED" => ":x:",
        "ERRORED" => ":boom:",
        "ABORTED" => ":no_entry_sign:",
        "EXECUTING" => ":hourglass_flowing_sand:",
        "SKIPPED" => ":fast_forward:",
        "PAUSED" => ":double_vertical_bar:",
        "NEEDS_APPROVAL" => ":raised_hand:",
        "CREATED" | "TRIGGERED" | "SCHEDULED" => ":arrow_forward:",
        _ => ":grey_question:",
    }
}

/// A duration in seconds as Slack readers like it: `42s`, `3m 05s`, `2h 01m`.
pub fn duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h {:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

/// Escapes the three characters Slack's mrkdwn gives meaning to.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn linked(label: &str, url: Option<&str>) -> String {
    match url {
        Some(url) => format!("<{url}|{}>", escape(label)),
        None => escape(label),
    }
}

fn field(title: &str, value: String) -> Json {
    json!({ "type": "mrkdwn", "text": format!("*{title}*\n{value}") })
}

/// The Slack message (`text` for notifications, `blocks` for the channel) of an event. With
/// a `public_url`, the build and task link to `<public_url>/build/<id>` and `/task/<id>`
/// (`https://cirrus-ci.com` links Cirrus CI's own pages).
pub fn message(event: &Event<'_>, public_url: Option<&str>) -> Json {
    let base = public_url.map(|url| url.trim_end_matches('/'));
    let repository = repository_name(event.repository).unwrap_or_else(|| "a repository".into());
    let build_id = text(&event.build["id"]).unwrap_or_else(|| "?".into());
    let build_url = base.map(|base| format!("{base}/build/{build_id}"));
    let branch = text(&event.build["branch"]);
    let status = event.status().unwrap_or_else(|| "UNKNOWN".into());
    let emoji = emoji(&status);
    let was = match (event.action, event.old_status) {
        ("created", _) => " (created)".to_string(),
        (_, Some(old)) => format!(" (was {old})"),
        _ => String::new(),
    };
    let on_branch = branch
        .as_deref()
        .map(|branch| format!(" on {branch}"))
        .unwrap_or_default();

    let task = (event.kind == "task").then(|| {
        let id = text(&event.task["id"]).unwrap_or_else(|| "?".into());
        let name = text(&event.task["name"]).unwrap_or_else(|| format!("task {id}"));
        let url = base.map(|base| format!("{base}/task/{id}"));
        (name, url)
    });
    let (plain, rich) = match &task {
        Some((name, url)) => (
            format!(
                "{emoji} {repository}: task {name} (build {build_id}{on_branch}) is {status}{was}"
            ),
            format!(
                "{emoji} *{}*: task {} (build {}{}) is *{status}*{was}",
                escape(&repository),
                linked(name, url.as_deref()),
                linked(&build_id, build_url.as_deref()),
                escape(&on_branch),
            ),
        ),
        None => (
            format!("{emoji} {repository}: build {build_id}{on_branch} is {status}{was}"),
            format!(
                "{emoji} *{}*: build {}{} is *{status}*{was}",
                escape(&repository),
                linked(&build_id, build_url.as_deref()),
                escape(&on_branch),
            ),
        ),
    };

    let mut fields = vec![field("Repository", escape(&repository))];
    let mut branch_text = branch.as_deref().map(escape).unwrap_or_else(|| "—".into());
    if let Some(tag) = text(&event.build["tag"]) {
        branch_text.push_str(&format!(" (tag {})", escape(&tag)));
    }
    if let Some(pr) = text(&event.build["pullRequest"]) {
        branch_text.push_str(&format!(" (PR #{})", escape(&pr)));
    }
    fields.push(field("Branch", branch_text));
    fields.push(field("Build", linked(&build_id, build_url.as_deref())));
    if let Some((name, url)) = &task {
        fields.push(field("Task", linked(name, url.as_deref())));
    }
    fields.push(field("Status", format!("{emoji} {status}{was}")));
    if let Some(seconds) = event.subject()["durationInSeconds"].as_i64() {
        fields.push(field("Duration", duration(seconds)));
    }

    let mut blocks = vec![
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": rich } }),
        json!({ "type": "section", "fields": fields }),
    ];
    let change = [
        text(&event.build["changeIdInRepo"]).map(|id| format!("`{}`", escape(&id))),
        text(&event.build["changeMessageTitle"]).map(|title| {
            let short: String = title.chars().take(MAX_TITLE_CHARS).collect();
            escape(&short)
        }),
    ];
    let change: Vec<String> = change.into_iter().flatten().collect();
    if !change.is_empty() {
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": change.join(" · ") }],
        }));
    }
    let target = match &task {
        Some((_, url)) => url.clone().map(|url| ("Open task", url)),
        None => build_url.clone().map(|url| ("Open build", url)),
    };
    if let Some((label, url)) = target {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": { "type": "plain_text", "text": label },
                "url": url,
            }],
        }));
    }
    json!({ "text": escape(&plain), "blocks": blocks })
}

/// How a build's tasks stand, for the message a Slack app keeps up to date: counted from the
/// statuses of the tasks seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub total: usize,
    /// In a final status: `COMPLETED`, `FAILED`, `ABORTED` or `SKIPPED`.
    pub finished: usize,
    pub failed: usize,
    pub aborted: usize,
}

impl TaskCounts {
    /// Counts one more task, in `status`.
    pub fn add(&mut self, status: Option<&str>) {
        self.total += 1;
        match status {
            Some("FAILED") => self.failed += 1,
            Some("ABORTED") => self.aborted += 1,
            _ => {}
        }
        if matches!(status, Some("COMPLETED" | "FAILED" | "ABORTED" | "SKIPPED")) {
            self.finished += 1;
        }
    }

    /// `7/10 tasks finished, 1 failed`; `None` before any task.
    pub fn sentence(&self) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let noun = if self.total == 1 { "task" } else { "tasks" };
        let mut sentence = format!("{}/{} {noun} finished", self.finished, self.total);
        for (count, word) in [(self.failed, "failed"), (self.aborted, "aborted")] {
            if count > 0 {
                sentence.push_str(&format!(", {count} {word}"));
            }
        }
        Some(sentence)
    }
}

/// A build's message as a Slack app keeps it, edited in place: the message of the build's
/// latest state (without "was", which an edited message would make stale), with its tasks'
/// summary after the text and as a field.
pub fn build_message(event: &Event<'_>, public_url: Option<&str>, tasks: &TaskCounts) -> Json {
    let event = Event {
        kind: "build",
        action: "updated",
        old_status: None,
        task: &Json::Null,
        ..*event
    };
    let mut message = message(&event, public_url);
    if let Some(summary) = tasks.sentence() {
        if let Some(Json::String(text)) = message.get_mut("text") {
            text.push_str(&format!(" · {summary}"));
        }
        if let Some(Json::Array(fields)) = message.pointer_mut("/blocks/1/fields") {
            fields.push(field("Tasks", summary));
        }
    }
    message
}

/// A task's reply in its build's thread, edited in place: the task's line of its message and
/// its button, since the build's message above already shows the rest.
pub fn thread_reply(event: &Event<'_>, public_url: Option<&str>) -> Json {
    let event = Event {
        kind: "task",
        action: "updated",
        old_status: None,
        ..*event
    };
    let mut message = message(&event, public_url);
    if let Some(Json::Array(blocks)) = message.get_mut("blocks") {
        // The first section (the task's line) and the button; the fields and the change are
        // the build's, shown once above.
        blocks.retain(|block| block["type"] == "actions" || block.pointer("/text/text").is_some());
        if let (Some(seconds), Some(Json::String(line))) = (
            event.task["durationInSeconds"].as_i64(),
            blocks
                .first_mut()
                .and_then(|block| block.pointer_mut("/text/text")),
        ) {
            line.push_str(&format!(" · {}", duration(seconds)));
        }
    }
    message
}

/// The message for a `ping` (a test delivery): it tells the channel the hook works.
pub fn ping_message() -> Json {
    json!({
        "text": ":wave: Herald is connected: this channel will get build and task notifications.",
    })
}

/// The message of a selection's result (`{repository, build, task}`), as the `SLACK` format
/// renders it in the event's transaction.
pub fn from_data(
    kind: &str,
    action: &str,
    old_status: Option<&str>,
    data: &Json,
    public_url: Option<&str>,
) -> Json {
    let empty = Json::Object(Map::new());
    let pick = |name: &str| data.get(name).filter(|value| !value.is_null());
    let event = Event {
        kind,
        action,
        old_status,
        repository: pick("repository").unwrap_or(&empty),
        build: pick("build").unwrap_or(&empty),
        task: pick("task").unwrap_or(&Json::Null),
    };
    message(&event, public_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(65), "1m 05s");
        assert_eq!(duration(7260), "2h 01m");
    }

    #[test]
    fn ids_may_be_numbers_or_strings() {
        let repository = json!({ "owner": "acme", "name": "app" });
        let numeric = json!({ "id": 12, "branch": "main", "status": "FAILED" });
        let textual = json!({ "id": "12", "branch": "main", "status": "FAILED" });
        let event = |build| Event {
            kind: "build",
            action: "updated",
            old_status: Some("EXECUTING"),
            repository: &repository,
            build,
            task: &Json::Null,
        };
        let a = message(&event(&numeric), None);
        let b = message(&event(&textual), None);
        assert_eq!(a, b);
        assert_eq!(
            a["text"],
            ":x: acme/app: build 12 on main is FAILED (was EXECUTING)"
        );
    }

    #[test]
    fn mrkdwn_is_escaped_and_links_need_a_public_url() {
        let repository = json!({ "owner": "a<b", "name": "c&d" });
        let build = json!({ "id": "7", "status": "COMPLETED" });
        let task = json!({ "id": "9", "name": "<script>", "status": "COMPLETED" });
        let event = Event {
            kind: "task",
            action: "updated",
            old_status: None,
            repository: &repository,
            build: &build,
            task: &task,
        };
        let plain = message(&event, None).to_string();
        assert!(!plain.contains("<script>") && !plain.contains("http"));
        let rich = message(&event, Some("https://ci.example.com/")).to_string();
        assert!(rich.contains("<https://ci.example.com/task/9|&lt;script&gt;>"));
        assert!(rich.contains("\"url\":\"https://ci.example.com/task/9\""));
    }

    #[test]
    fn a_build_message_sums_up_its_tasks_and_a_reply_keeps_its_own_line() {
        let mut counts = TaskCounts::default();
        assert_eq!(counts.sentence(), None);
        for status in ["COMPLETED", "FAILED", "EXECUTING", "SKIPPED", "ABORTED"] {
            counts.add(Some(status));
        }
        counts.add(None);
        assert_eq!(
            counts.sentence().unwrap(),
            "4/6 tasks finished, 1 failed, 1 aborted"
        );

        let repository = json!({ "owner": "acme", "name": "app" });
        let build = json!({ "id": "12", "branch": "main", "status": "EXECUTING" });
        let task =
            json!({ "id": "9", "name": "lint", "status": "FAILED", "durationInSeconds": 65 });
        let event = Event {
            kind: "task",
            action: "updated",
            old_status: Some("EXECUTING"),
            repository: &repository,
            build: &build,
            task: &task,
        };
        let message = build_message(&event, None, &counts);
        assert_eq!(
            message["text"],
            ":hourglass_flowing_sand: acme/app: build 12 on main is EXECUTING · 4/6 tasks finished, 1 failed, 1 aborted"
        );
        let fields = message["blocks"][1]["fields"].as_array().unwrap();
        assert_eq!(
            fields.last().unwrap()["text"],
            "*Tasks*\n4/6 tasks finished, 1 failed, 1 aborted"
        );

        let reply = thread_reply(&event, Some("https://ci.example.com"));
        assert_eq!(
            reply["text"],
            ":x: acme/app: task lint (build 12 on main) is FAILED"
        );
        let blocks = reply["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2, "{blocks:#?}");
        assert!(
            blocks[0]["text"]["text"]
                .as_str()
                .unwrap()
                .ends_with("is *FAILED* · 1m 05s")
        );
        assert_eq!(
            blocks[1]["elements"][0]["url"],
            "https://ci.example.com/task/9"
        );
    }
}
