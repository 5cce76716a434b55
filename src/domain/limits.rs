//! The bounds of what a token can record: every text and list a mutation stores has one, so
//! that no organization can grow a row, a payload or the writer's work without limit.
//!
//! Lengths count characters (what a user sees), not bytes.

use crate::{Error, Result};

/// Names, branches, tags, change ids, aliases, instance types, labels and user names.
pub const MAX_NAME: usize = 255;
/// A build's `changeMessageTitle`.
pub const MAX_TITLE: usize = 1024;
/// A build's `changeMessage`.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Labels of one task.
pub const MAX_LABELS: usize = 100;
/// Tasks of one build: the bound the cost of `Build.tasks` is computed with.
pub const MAX_TASKS_PER_BUILD: usize = 200;
/// Notifications one status change may attach.
pub const MAX_NOTIFICATIONS_PER_CHANGE: usize = 20;
/// Notifications a task keeps, all changes together: every payload of the task carries them.
pub const MAX_NOTIFICATIONS_PER_TASK: usize = 100;
/// One notification's message.
pub const MAX_NOTIFICATION_MESSAGE: usize = 4 * 1024;
/// One notification's link.
pub const MAX_LINK: usize = 2048;
/// An endpoint's secret.
pub const MAX_SECRET: usize = 1024;
/// The statuses one endpoint's filter may name.
pub const MAX_STATUS_FILTER: usize = 32;
/// The largest body a delivery may carry; a larger rendered payload is recorded as a failed
/// delivery instead of being sent.
pub const MAX_BODY: usize = 256 * 1024;

/// Checks that `value`, the input `field`, has at most `max` characters, and at least one
/// that is not white space when `required`.
pub fn text(field: &str, value: &str, required: bool, max: usize) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(Error::Invalid(format!("The {field} must not be empty.")));
    }
    if value.chars().count() > max {
        return Err(Error::Invalid(format!(
            "The {field} is longer than {max} characters."
        )));
    }
    Ok(())
}

/// [`text`] for an optional input.
pub fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |value| text(field, value, false, max))
}

/// Checks that a list input holds at most `max` `things` (a plural noun: "labels").
pub fn count(things: &str, items: usize, max: usize) -> Result<()> {
    if items > max {
        return Err(Error::Invalid(format!(
            "There are {items} {things}; at most {max} are allowed."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_count_characters_and_name_the_field() {
        assert!(text("branch", &"é".repeat(MAX_NAME), true, MAX_NAME).is_ok());
        let err = text("branch", &"é".repeat(MAX_NAME + 1), true, MAX_NAME).unwrap_err();
        assert_eq!(err.to_string(), "The branch is longer than 255 characters.");
        let err = text("task name", " ", true, MAX_NAME).unwrap_err();
        assert_eq!(err.to_string(), "The task name must not be empty.");
        let err = count("labels", 101, MAX_LABELS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "There are 101 labels; at most 100 are allowed."
        );
    }
}
