//! Transitions: how a build or task that reaches a final status compares with the previous one
//! of its branch. "Previous" is the one whose final status was recorded last before this one's,
//! in the order the changes commit: of two builds of a branch finishing together, the one
//! written second compares with the first. An aborted (or skipped) build or task neither has a
//! transition nor counts as a previous one: it says nothing about the code.

use super::{BuildStatus, TaskStatus, WebHookCondition};

/// What a finished build or task says about its branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
}

impl Verdict {
    /// A build's: `COMPLETED` passes, `FAILED` and `ERRORED` fail, anything else says nothing.
    pub fn of_build(status: BuildStatus) -> Option<Self> {
        match status {
            BuildStatus::Completed => Some(Self::Pass),
            BuildStatus::Failed | BuildStatus::Errored => Some(Self::Fail),
            _ => None,
        }
    }

    /// A task's: `COMPLETED` passes, `FAILED` fails, anything else says nothing.
    pub fn of_task(status: TaskStatus) -> Option<Self> {
        match status {
            TaskStatus::Completed => Some(Self::Pass),
            TaskStatus::Failed => Some(Self::Fail),
            _ => None,
        }
    }

    /// A stored status name, a build's or a task's.
    pub fn of_name(status: &str) -> Option<Self> {
        BuildStatus::parse(status)
            .and_then(Self::of_build)
            .or_else(|| TaskStatus::parse(status).and_then(Self::of_task))
    }
}

/// The transition of a build or task whose verdict is `now`, after `previous` (none when
/// nothing finished on its branch before it); none when it passes after a pass or first.
pub fn transition(previous: Option<Verdict>, now: Verdict) -> Option<WebHookCondition> {
    match (previous, now) {
        (None, Verdict::Fail) => Some(WebHookCondition::FirstFailureOnBranch),
        (Some(Verdict::Pass), Verdict::Fail) => Some(WebHookCondition::Broken),
        (Some(Verdict::Fail), Verdict::Fail) => Some(WebHookCondition::StillFailing),
        (Some(Verdict::Fail), Verdict::Pass) => Some(WebHookCondition::Fixed),
        (_, Verdict::Pass) => None,
    }
}

/// Whether an endpoint with `conditions` gets a change whose transition is `transition`: every
/// change when it names none, else only a change whose transition it names.
pub fn wanted(conditions: &[WebHookCondition], transition: Option<WebHookCondition>) -> bool {
    conditions.is_empty() || transition.is_some_and(|t| conditions.contains(&t))
}

/// The verdict a change with `transition` has reached: a failure but for `FIXED`.
pub fn verdict_of(transition: WebHookCondition) -> Verdict {
    match transition {
        WebHookCondition::Fixed => Verdict::Pass,
        WebHookCondition::Broken
        | WebHookCondition::StillFailing
        | WebHookCondition::FirstFailureOnBranch => Verdict::Fail,
    }
}

/// Whether an endpoint's `conditions` and status filter (both given) can both hold for some
/// change: a status of the filter has the verdict of one of the conditions.
pub fn can_meet(conditions: &[WebHookCondition], statuses: &[String]) -> bool {
    conditions.iter().any(|condition| {
        statuses
            .iter()
            .any(|status| Verdict::of_name(status) == Some(verdict_of(*condition)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_history_gives_its_transitions() {
        use Verdict::{Fail, Pass};
        let history = [Pass, Fail, Fail, Pass, Pass];
        let mut previous = None;
        let mut seen = Vec::new();
        for now in history {
            seen.push(transition(previous, now));
            previous = Some(now);
        }
        assert_eq!(
            seen,
            [
                None,
                Some(WebHookCondition::Broken),
                Some(WebHookCondition::StillFailing),
                Some(WebHookCondition::Fixed),
                None
            ]
        );
        assert_eq!(
            transition(None, Fail),
            Some(WebHookCondition::FirstFailureOnBranch)
        );
    }

    #[test]
    fn aborted_and_skipped_say_nothing() {
        assert_eq!(Verdict::of_build(BuildStatus::Aborted), None);
        assert_eq!(Verdict::of_build(BuildStatus::Errored), Some(Verdict::Fail));
        assert_eq!(Verdict::of_task(TaskStatus::Skipped), None);
        assert_eq!(Verdict::of_name("ERRORED"), Some(Verdict::Fail));
        assert_eq!(Verdict::of_name("COMPLETED"), Some(Verdict::Pass));
    }

    #[test]
    fn conditions_and_a_status_filter_must_meet() {
        let fixed = [WebHookCondition::Fixed];
        assert!(!can_meet(&fixed, &["FAILED".into()]));
        assert!(can_meet(&fixed, &["FAILED".into(), "COMPLETED".into()]));
        assert!(can_meet(&[WebHookCondition::Broken], &["ERRORED".into()]));
        assert!(!can_meet(&[WebHookCondition::Broken], &["ABORTED".into()]));
    }

    #[test]
    fn conditions_choose_changes_by_transition() {
        let broken = [WebHookCondition::Broken];
        assert!(wanted(&[], None));
        assert!(wanted(&broken, Some(WebHookCondition::Broken)));
        assert!(!wanted(&broken, Some(WebHookCondition::Fixed)));
        assert!(!wanted(&broken, None));
    }
}
