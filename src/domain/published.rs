//! Published events: the types a platform may announce with `publishEvent`, their subjects, and
//! the chain a subject's deliveries are ordered in.

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The longest event type name.
pub const MAX_TYPE: usize = 64;
/// The longest subject.
pub const MAX_SUBJECT: usize = 255;
/// The published types one endpoint may name.
pub const MAX_PUBLISHED_TYPES: usize = 50;
/// The largest payload a published event may carry, as JSON text: the largest body a delivery
/// may carry.
pub const MAX_PAYLOAD: usize = super::limits::MAX_BODY;

/// Event types Herald sends itself, which no platform may publish.
const RESERVED: [&str; 4] = ["build", "task", "ping", "audit_event"];

/// Checks a published event type: a letter, then letters, digits, `_`, `.` or `-`, at most
/// [`MAX_TYPE`] characters in all, and none of Herald's own types (in any case).
pub fn check_type(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= MAX_TYPE;
    if !well_formed {
        return Err(Error::Invalid(format!(
            "The event type {name:?} must be a letter followed by at most {} letters, digits, `_`, `.` or `-`.",
            MAX_TYPE - 1
        )));
    }
    if RESERVED
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
    {
        return Err(Error::Invalid(format!(
            "The event type {name:?} is reserved for Herald's own events; publish another type."
        )));
    }
    Ok(())
}

/// Checks an endpoint's list of published types and returns it without repeats (types compare
/// case-insensitively; the first spelling is kept).
pub fn check_types(names: Vec<String>) -> Result<Vec<String>> {
    super::limits::count("published event types", names.len(), MAX_PUBLISHED_TYPES)?;
    let mut unique: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = name.trim().to_owned();
        check_type(&name)?;
        if !unique.iter().any(|seen| seen.eq_ignore_ascii_case(&name)) {
            unique.push(name);
        }
    }
    Ok(unique)
}

/// Whether an endpoint naming `wanted` (none: every type) gets events of type `name`.
pub fn wants(wanted: &[String], name: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(name))
}

/// Checks a subject: 1 to [`MAX_SUBJECT`] characters, no control characters.
pub fn check_subject(subject: &str) -> Result<()> {
    if subject.trim().is_empty()
        || subject.chars().count() > MAX_SUBJECT
        || subject.chars().any(char::is_control)
    {
        return Err(Error::Invalid(format!(
            "The subject must have between 1 and {MAX_SUBJECT} characters, none of them control characters."
        )));
    }
    Ok(())
}

/// The chain of an organization's subject: deliveries to one endpoint in one chain are sent in
/// order. Builds' chains are their (positive) ids; a subject's is a negative number derived
/// from it, so the two never meet. Two subjects that came to the same number (one chance in
/// 2^61) would only be ordered together.
pub fn subject_chain(org_id: i64, subject: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(org_id.to_be_bytes())
        .chain_update(subject.as_bytes())
        .finalize();
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("a digest has 8 bytes"));
    -((bits >> 2) as i64) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_names_and_not_herald_s_own() {
        for good in [
            "deployment",
            "PostDeployment",
            "tag_push",
            "a.b-c_9",
            &"x".repeat(64),
        ] {
            check_type(good).unwrap();
        }
        for bad in [
            "",
            "9lives",
            "_x",
            "a b",
            "é",
            &"x".repeat(65),
            "build",
            "TASK",
            "Ping",
        ] {
            assert!(check_type(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            check_types(vec!["push".into(), "PUSH".into(), " note ".into()]).unwrap(),
            ["push", "note"]
        );
        assert!(wants(&[], "anything"));
        assert!(wants(&["PostDeployment".into()], "postdeployment"));
        assert!(!wants(&["push".into()], "tag_push"));
    }

    #[test]
    fn subject_chains_are_negative_and_stable() {
        let a = subject_chain(1, "deploy/prod");
        assert!(a < 0);
        assert_eq!(a, subject_chain(1, "deploy/prod"));
        assert_ne!(a, subject_chain(2, "deploy/prod"));
        assert_ne!(a, subject_chain(1, "deploy/staging"));
    }
}
