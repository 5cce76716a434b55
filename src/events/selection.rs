//! Parsing and checking stored selections.

use std::collections::BTreeSet;

use async_graphql::Name;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::parser::{Pos, Positioned};
use async_graphql_value::Value;

use crate::{Error, Result};

pub use crate::schema::selections::{CIRRUS_DOCUMENTED_SELECTION, DEFAULT_SELECTION};

/// The variables a selection may use, with their types.
pub const VARIABLES: [(&str, &str); 3] = [
    ("repositoryId", "ID!"),
    ("buildId", "ID!"),
    ("taskId", "ID"),
];

/// The deepest a selection may nest.
pub const MAX_DEPTH: usize = 15;

/// The longest selection Herald stores.
pub const MAX_LEN: usize = 16 * 1024;

/// A selection that parsed and passed the checks that need no schema, ready to run.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The whole operation: the stored text, or a bare selection wrapped in one.
    pub text: String,
    pub doc: ExecutableDocument,
    /// Columns the wrapper added before the stored text on its first line.
    shift: usize,
    /// Lines of the stored text; anything after them is the wrapper's closing brace.
    lines: usize,
}

impl Prepared {
    /// Where `pos` in the prepared text stands in the stored text, as "line L, column C".
    pub fn locate(&self, pos: Pos) -> String {
        locate(pos, self.shift, self.lines)
    }
}

fn locate(pos: Pos, shift: usize, lines: usize) -> String {
    if pos.line > lines {
        return "the end of the selection".to_owned();
    }
    let column = if pos.line == 1 {
        pos.column.saturating_sub(shift).max(1)
    } else {
        pos.column
    };
    format!("line {}, column {column}", pos.line)
}

/// Parses a stored selection: a whole query operation, or a bare selection set that is wrapped
/// in one declaring the variables it uses.
pub fn prepare(source: &str) -> Result<Prepared> {
    if source.len() > MAX_LEN {
        return Err(Error::Invalid(format!(
            "The payload selection is longer than {MAX_LEN} bytes."
        )));
    }
    if source.trim().is_empty() {
        return Err(Error::Invalid("The payload selection is empty.".into()));
    }
    let prepared = if is_whole_document(source) {
        parse(source.to_owned(), 0, usize::MAX)?
    } else {
        // First with every variable declared, to learn which ones the selection uses; then
        // with just those, since an unused declaration is itself a validation error.
        let probe = parse_wrapped(source, &VARIABLES.iter().map(|(name, _)| *name).collect())?;
        let used = used_variables(&probe.doc);
        if let Some(other) = used
            .iter()
            .find(|name| !VARIABLES.iter().any(|(allowed, _)| allowed == name))
        {
            return Err(unknown_variable(other));
        }
        parse_wrapped(source, &used.iter().map(String::as_str).collect())?
    };
    check_operation(&prepared)?;
    Ok(prepared)
}

fn parse_wrapped(source: &str, variables: &BTreeSet<&str>) -> Result<Prepared> {
    let declared: Vec<String> = VARIABLES
        .iter()
        .filter(|(name, _)| variables.contains(name))
        .map(|(name, ty)| format!("${name}: {ty}"))
        .collect();
    let declarations = if declared.is_empty() {
        String::new()
    } else {
        format!("({})", declared.join(", "))
    };
    let trimmed = source.trim_start();
    let head = &source[..source.len() - trimmed.len()];
    if trimmed.starts_with('{') {
        let prefix = format!("query WebhookPayload{declarations} ");
        parse(format!("{prefix}{head}{trimmed}"), prefix.len(), usize::MAX)
    } else {
        let prefix = format!("query WebhookPayload{declarations} {{ ");
        parse(
            format!("{prefix}{source}\n}}"),
            prefix.len(),
            source.lines().count().max(1),
        )
    }
}

fn parse(text: String, shift: usize, lines: usize) -> Result<Prepared> {
    match async_graphql::parser::parse_query(&text) {
        Ok(doc) => Ok(Prepared {
            text,
            doc,
            shift,
            lines,
        }),
        Err(err) => {
            let position = err.positions().next().map(|pos| locate(pos, shift, lines));
            let message = err.to_string();
            let reason = message
                .lines()
                .find_map(|line| line.trim().strip_prefix("= "))
                .unwrap_or_else(|| message.lines().next().unwrap_or("syntax error"))
                .trim_end_matches('.');
            Err(Error::Invalid(match position {
                Some(position) => {
                    format!("The payload selection does not parse at {position}: {reason}.")
                }
                None => format!("The payload selection does not parse: {reason}."),
            }))
        }
    }
}

/// Whether the text starts with a keyword of a whole document rather than a selection.
fn is_whole_document(source: &str) -> bool {
    let mut rest = source;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == '\u{feff}');
        match rest.strip_prefix('#') {
            Some(comment) => {
                rest = comment
                    .split_once('\n')
                    .map(|(_, after)| after)
                    .unwrap_or("")
            }
            None => break,
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    matches!(
        word.as_str(),
        "query" | "mutation" | "subscription" | "fragment"
    )
}

fn unknown_variable(name: &str) -> Error {
    Error::Invalid(format!(
        "The payload selection uses ${name}; only $repositoryId, $buildId and $taskId are available."
    ))
}

fn check_operation(prepared: &Prepared) -> Result<()> {
    let doc = &prepared.doc;
    let operation = match &doc.operations {
        DocumentOperations::Single(operation) => operation,
        DocumentOperations::Multiple(operations) if operations.len() == 1 => {
            operations.values().next().expect("one operation")
        }
        DocumentOperations::Multiple(operations) => {
            return Err(Error::Invalid(format!(
                "The payload selection must hold exactly one operation; it has {}.",
                operations.len()
            )));
        }
    };
    if operation.node.ty != OperationType::Query {
        return Err(Error::Invalid(format!(
            "The payload selection must be a query, not a {} (at {}).",
            operation.node.ty,
            prepared.locate(operation.pos)
        )));
    }
    for variable in &operation.node.variable_definitions {
        let name = variable.node.name.node.as_str();
        if !VARIABLES.iter().any(|(allowed, _)| *allowed == name) {
            return Err(unknown_variable(name));
        }
    }
    let depth = depth_of(&operation.node.selection_set, doc, 0);
    if depth > MAX_DEPTH {
        return Err(Error::Invalid(format!(
            "The payload selection nests {depth} levels deep; at most {MAX_DEPTH} are allowed."
        )));
    }
    Ok(())
}

/// How deep a selection set nests, following fragments (a cycle stops at the depth limit).
fn depth_of(set: &Positioned<SelectionSet>, doc: &ExecutableDocument, level: usize) -> usize {
    if level > MAX_DEPTH {
        return level;
    }
    set.node
        .items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(field) if field.node.selection_set.node.items.is_empty() => level + 1,
            Selection::Field(field) => depth_of(&field.node.selection_set, doc, level + 1),
            Selection::InlineFragment(fragment) => {
                depth_of(&fragment.node.selection_set, doc, level)
            }
            Selection::FragmentSpread(spread) => doc
                .fragments
                .get(&spread.node.fragment_name.node)
                .map(|fragment| depth_of(&fragment.node.selection_set, doc, level))
                .unwrap_or(level),
        })
        .max()
        .unwrap_or(level)
}

/// Orders every object of a result as its selection lists the fields, as the GraphQL
/// specification requires (the engine resolves fields concurrently and may finish them in any
/// order), so the same state always renders the same bytes.
pub fn in_selection_order(data: serde_json::Value, doc: &ExecutableDocument) -> serde_json::Value {
    let sets: Vec<&SelectionSet> = doc
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set.node)
        .collect();
    reorder(data, &sets, doc)
}

fn reorder(
    value: serde_json::Value,
    sets: &[&SelectionSet],
    doc: &ExecutableDocument,
) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Json::Array(items) => Json::Array(
            items
                .into_iter()
                .map(|item| reorder(item, sets, doc))
                .collect(),
        ),
        Json::Object(mut fields) => {
            let mut keys: Vec<Key> = Vec::new();
            for set in sets {
                response_keys(set, doc, &mut keys, 0);
            }
            let mut ordered = serde_json::Map::with_capacity(fields.len());
            for Key { name, children, .. } in keys {
                if let Some(value) = fields.remove(&name) {
                    ordered.insert(name, reorder(value, &children, doc));
                }
            }
            ordered.extend(fields);
            Json::Object(ordered)
        }
        other => other,
    }
}

/// A response key of a selection set: the field it names, and that field's sub-selections.
pub(super) struct Key<'a> {
    pub name: String,
    pub field: &'a str,
    pub children: Vec<&'a SelectionSet>,
}

/// The response keys a selection set produces, in order, each with its field's sub-selections.
pub(super) fn response_keys<'a>(
    set: &'a SelectionSet,
    doc: &'a ExecutableDocument,
    keys: &mut Vec<Key<'a>>,
    level: usize,
) {
    if level > MAX_DEPTH {
        return;
    }
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => {
                let name = field.node.response_key().node.to_string();
                let child = &field.node.selection_set.node;
                match keys.iter_mut().find(|key| key.name == name) {
                    Some(key) => key.children.push(child),
                    None => keys.push(Key {
                        name,
                        field: field.node.name.node.as_str(),
                        children: vec![child],
                    }),
                }
            }
            Selection::InlineFragment(fragment) => {
                response_keys(&fragment.node.selection_set.node, doc, keys, level + 1)
            }
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                    response_keys(&fragment.node.selection_set.node, doc, keys, level + 1);
                }
            }
        }
    }
}

/// Every variable a document's operations and fragments refer to.
fn used_variables(doc: &ExecutableDocument) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (_, operation) in doc.operations.iter() {
        collect_set(&operation.node.selection_set, &mut used);
    }
    for fragment in doc.fragments.values() {
        collect_set(&fragment.node.selection_set, &mut used);
    }
    used
}

fn collect_set(set: &Positioned<SelectionSet>, used: &mut BTreeSet<String>) {
    for item in &set.node.items {
        match &item.node {
            Selection::Field(field) => {
                for (_, value) in &field.node.arguments {
                    collect_value(&value.node, used);
                }
                for directive in &field.node.directives {
                    for (_, value) in &directive.node.arguments {
                        collect_value(&value.node, used);
                    }
                }
                collect_set(&field.node.selection_set, used);
            }
            Selection::InlineFragment(fragment) => collect_set(&fragment.node.selection_set, used),
            Selection::FragmentSpread(_) => {}
        }
    }
}

fn collect_value(value: &Value, used: &mut BTreeSet<String>) {
    match value {
        Value::Variable(name) => {
            used.insert(Name::as_str(name).to_owned());
        }
        Value::List(items) => items.iter().for_each(|item| collect_value(item, used)),
        Value::Object(fields) => fields.values().for_each(|item| collect_value(item, used)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_selections_prepare() {
        for selection in [DEFAULT_SELECTION, CIRRUS_DOCUMENTED_SELECTION] {
            let prepared = prepare(selection).unwrap();
            assert_eq!(prepared.text, selection);
        }
    }

    #[test]
    fn a_bare_selection_declares_only_what_it_uses() {
        let prepared = prepare("build(id: $buildId) { id status }").unwrap();
        assert!(
            prepared
                .text
                .starts_with("query WebhookPayload($buildId: ID!) {"),
            "{}",
            prepared.text
        );
        let braced = prepare("{ task(id: $taskId) { id } }").unwrap();
        assert!(
            braced
                .text
                .starts_with("query WebhookPayload($taskId: ID) {"),
            "{}",
            braced.text
        );
    }

    #[test]
    fn syntax_errors_name_the_position_in_the_stored_text() {
        let err = prepare("build(id: $buildId) { id status")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not parse at the end of the selection"),
            "{err}"
        );
        let err = prepare("build(id: $buildId) { id(: }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse at line 1, column 26"), "{err}");
        let err = prepare("query Q { build(id: \"1\") { id(: } }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn refuses_other_operations_and_variables() {
        let mutation = prepare("mutation M { createBuild { build { id } } }")
            .unwrap_err()
            .to_string();
        assert!(mutation.contains("must be a query"), "{mutation}");
        let two = prepare("query A { viewer { uid } } query B { viewer { uid } }")
            .unwrap_err()
            .to_string();
        assert!(two.contains("exactly one operation"), "{two}");
        let other = prepare("build(id: $other) { id }").unwrap_err().to_string();
        assert!(other.contains("$other"), "{other}");
        let declared = prepare("query Q($x: ID!) { build(id: $x) { id } }")
            .unwrap_err()
            .to_string();
        assert!(declared.contains("$x"), "{declared}");
    }

    #[test]
    fn refuses_deep_selections() {
        let mut deep = String::from("build(id: $buildId) { ");
        for _ in 0..8 {
            deep.push_str("repository { builds { edges { node { ");
        }
        deep.push_str("id");
        deep.push_str(&" } } } }".repeat(8));
        deep.push_str(" }");
        let err = prepare(&deep).unwrap_err().to_string();
        assert!(err.contains("levels deep"), "{err}");
    }
}
