//! Checks of a request's input that no field's type expresses, made before anything runs.
//!
//! A NUL character cannot be stored: PostgreSQL refuses it in text, and the error would end
//! the transaction the request writes in — on the writer of changes, the batch of every
//! organization's changes. A request holding one anywhere (a variable, or a string in the
//! query) is refused whole, naming where.

use std::convert::Infallible;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Value, Variables};

/// Where the first string holding a NUL character stands among a request's variables, if
/// anywhere: its path (`$input.name`).
pub fn nul_in_variables(variables: &Variables) -> Option<String> {
    variables
        .iter()
        .find_map(|(name, value)| nul_in_value(value, format!("${name}")))
}

/// Where the first string holding a NUL character stands in a document's arguments, if
/// anywhere: the field and the argument's path (`createBuild(input.branch)`).
pub fn nul_in_document(doc: &ExecutableDocument) -> Option<String> {
    let mut sets: Vec<&SelectionSet> = doc
        .operations
        .iter()
        .map(|(_, operation)| &operation.node.selection_set.node)
        .collect();
    sets.extend(
        doc.fragments
            .values()
            .map(|fragment| &fragment.node.selection_set.node),
    );
    sets.into_iter().find_map(nul_in_set)
}

fn nul_in_set(set: &SelectionSet) -> Option<String> {
    set.items.iter().find_map(|item| match &item.node {
        Selection::Field(field) => {
            let name = field.node.name.node.as_str();
            field
                .node
                .arguments
                .iter()
                .chain(
                    field
                        .node
                        .directives
                        .iter()
                        .flat_map(|directive| directive.node.arguments.iter()),
                )
                .find_map(|(argument, value)| {
                    // Variables are checked on their own; here they stand as nulls.
                    let value = value
                        .node
                        .clone()
                        .into_const_with(|_| Ok::<_, Infallible>(Value::Null))
                        .unwrap_or(Value::Null);
                    nul_in_value(&value, argument.node.to_string())
                        .map(|path| format!("{name}({path})"))
                })
                .or_else(|| nul_in_set(&field.node.selection_set.node))
        }
        Selection::InlineFragment(fragment) => nul_in_set(&fragment.node.selection_set.node),
        Selection::FragmentSpread(_) => None,
    })
}

fn nul_in_value(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(text) if text.contains('\0') => Some(path),
        Value::List(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| nul_in_value(item, format!("{path}[{index}]"))),
        Value::Object(fields) => fields
            .iter()
            .find_map(|(name, item)| nul_in_value(item, format!("{path}.{name}"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nul(query: &str, variables: serde_json::Value) -> Option<String> {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        nul_in_variables(&Variables::from_json(variables)).or_else(|| nul_in_document(&doc))
    }

    #[test]
    fn a_nul_is_found_in_variables_and_literals_and_named() {
        assert_eq!(
            nul(
                "mutation($input: CreateTaskInput!) { createTask(input: $input) { task { id } } }",
                serde_json::json!({"input": {"buildId": "1", "labels": ["ok", "b\u{0}"]}}),
            ),
            Some("$input.labels[1]".into())
        );
        assert_eq!(
            nul(
                "mutation($r: ID!) { createBuild(input: {repositoryId: $r, branch: \"a\\u0000\"}) { build { id } } }",
                serde_json::json!({"r": "1"}),
            ),
            Some("createBuild(input.branch)".into())
        );
        assert_eq!(
            nul(
                "query { viewer { ...F } } fragment F on OwnerInfo { repositories(after: \"\\u0000\") { edges { cursor } } }",
                serde_json::json!({}),
            ),
            Some("repositories(after)".into())
        );
        assert_eq!(
            nul("{ viewer { name } }", serde_json::json!({"x": "fine"})),
            None
        );
    }
}
