//! Cirrus CI sends repository, build, task and user ids as JSON numbers, and its receivers
//! decode them as 64-bit integers; GraphQL's `ID` serialises as a string. In FLAT bodies every
//! field of type `ID` whose value is a decimal integer is therefore sent as a number (an
//! organization's uid too); any other value (a delivery's UUID) stays a string.
//!
//! Which fields are of type `ID` is read from the schema's own SDL, once, so that a field added
//! later is covered without a list to keep up to date.

use std::collections::HashMap;

use async_graphql::parser::types::{BaseType, ExecutableDocument, SelectionSet, TypeKind};
use async_graphql::parser::types::{Type, TypeSystemDefinition};
use serde_json::Value as Json;

use super::selection::{Key, response_keys};

/// For each object type of the schema, the named type of each of its fields.
pub struct IdFields {
    types: HashMap<String, HashMap<String, String>>,
}

impl IdFields {
    /// Reads the field types of the schema whose SDL is `sdl`.
    pub fn from_sdl(sdl: &str) -> Self {
        let mut types = HashMap::new();
        // The SDL is the schema's own; it always parses. Should it not, no id is converted.
        if let Ok(document) = async_graphql::parser::parse_schema(sdl) {
            for definition in document.definitions {
                let TypeSystemDefinition::Type(definition) = definition else {
                    continue;
                };
                let TypeKind::Object(object) = &definition.node.kind else {
                    continue;
                };
                let fields = object
                    .fields
                    .iter()
                    .map(|field| {
                        (
                            field.node.name.node.to_string(),
                            named(&field.node.ty.node).to_owned(),
                        )
                    })
                    .collect();
                types.insert(definition.node.name.node.to_string(), fields);
            }
        }
        Self { types }
    }

    /// `data`, the result of the selection `doc` over the query root, with the decimal-integer
    /// values of its `ID` fields as numbers.
    pub fn numbers(&self, data: Json, doc: &ExecutableDocument) -> Json {
        let sets: Vec<&SelectionSet> = doc
            .operations
            .iter()
            .map(|(_, op)| &op.node.selection_set.node)
            .collect();
        self.convert(data, "Query", &sets, doc)
    }

    fn convert(
        &self,
        value: Json,
        ty: &str,
        sets: &[&SelectionSet],
        doc: &ExecutableDocument,
    ) -> Json {
        match value {
            Json::Array(items) => Json::Array(
                items
                    .into_iter()
                    .map(|item| self.convert(item, ty, sets, doc))
                    .collect(),
            ),
            Json::Object(mut fields) => {
                let Some(field_types) = self.types.get(ty) else {
                    return Json::Object(fields);
                };
                let mut keys: Vec<Key> = Vec::new();
                for set in sets {
                    response_keys(set, doc, &mut keys, 0);
                }
                for Key {
                    name,
                    field,
                    children,
                } in keys
                {
                    let (Some(child_ty), Some(value)) =
                        (field_types.get(field), fields.get_mut(&name))
                    else {
                        continue;
                    };
                    let taken = std::mem::take(value);
                    *value = if child_ty == "ID" {
                        id_numbers(taken)
                    } else {
                        self.convert(taken, child_ty, &children, doc)
                    };
                }
                Json::Object(fields)
            }
            other => other,
        }
    }
}

/// The named type under any lists and non-null markers.
fn named(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(name) => name.as_str(),
        BaseType::List(inner) => named(inner),
    }
}

/// An `ID` value (or list of them) with each decimal integer that fits 64 bits as a number.
fn id_numbers(value: Json) -> Json {
    match value {
        Json::String(text) => match text.parse::<i64>() {
            Ok(number) if number.to_string() == text => Json::from(number),
            _ => Json::String(text),
        },
        Json::Array(items) => Json::Array(items.into_iter().map(id_numbers).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::selection::prepare;
    use serde_json::json;

    fn numbers(selection: &str, data: Json) -> Json {
        let ids =
            IdFields::from_sdl(&crate::schema::query_schema(crate::schema::Limits::API).sdl());
        ids.numbers(data, &prepare(selection).unwrap().doc)
    }

    #[test]
    fn decimal_ids_become_numbers_through_aliases_and_lists() {
        let data = numbers(
            "build(id: $buildId) { id b: repositoryId tasks { id buildId name } user { id username } }",
            json!({"build": {
                "id": "5082236150611968",
                "b": "7",
                "tasks": [{"id": "12", "buildId": "5082236150611968", "name": "12"}],
                "user": {"id": "3", "username": "42"},
            }}),
        );
        assert_eq!(
            data,
            json!({"build": {
                "id": 5082236150611968_i64,
                "b": 7,
                "tasks": [{"id": 12, "buildId": 5082236150611968_i64, "name": "12"}],
                "user": {"id": 3, "username": "42"},
            }})
        );
    }

    #[test]
    fn only_canonical_64_bit_decimals_are_converted() {
        let data = numbers(
            "viewer { uid } repository(id: $repositoryId) { id }",
            json!({"viewer": {"uid": "0042"}, "repository": {"id": "99999999999999999999"}}),
        );
        assert_eq!(
            data,
            json!({"viewer": {"uid": "0042"}, "repository": {"id": "99999999999999999999"}})
        );
        let data = numbers("viewer { uid }", json!({"viewer": {"uid": "-3"}}));
        assert_eq!(data, json!({"viewer": {"uid": -3}}));
    }

    #[test]
    fn fragments_and_nulls_are_followed() {
        let data = numbers(
            "query Q($taskId: ID) { task(id: $taskId) { ...T } } fragment T on Task { id build { id } }",
            json!({"task": {"id": "5", "build": null}}),
        );
        assert_eq!(data, json!({"task": {"id": 5, "build": null}}));
    }
}
