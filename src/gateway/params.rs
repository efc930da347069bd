//! An action's params from an HTTP request: query, body and path parameters merged into one
//! JSON object (path parameters win over the body, the body over the query).
//!
//! Query and path values arrive as text. When the action declares a
//! [params schema](crate::ServiceBuilder::params_schema), a property typed `integer`, `number` or
//! `boolean` is converted and one typed `string` stays text; without a schema, text that is a
//! JSON number (`42`, `-1.5`; not `007`) or `true`/`false` is converted and anything else stays
//! text.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// The body as it arrived, parsed by its content type.
#[derive(Debug)]
pub(super) enum Body {
    Empty,
    Json(Value),
    Form(Vec<(String, String)>),
}

/// Merges the request's parts into the action's params.
pub(super) fn merge(
    query: Vec<(String, String)>,
    body: Body,
    path: Vec<(String, String)>,
    schema: Option<&Value>,
) -> Result<Value> {
    if let Body::Json(value) = &body
        && !value.is_object()
    {
        return match (query.is_empty() && path.is_empty(), body) {
            (true, Body::Json(value)) => Ok(value),
            _ => Err(Error::validation(
                "a body that is not a JSON object cannot be merged with query or path parameters",
            )),
        };
    }
    let mut params = Map::new();
    add_text(&mut params, query, schema);
    match body {
        Body::Empty => {}
        Body::Json(Value::Object(fields)) => params.extend(fields),
        Body::Json(_) => unreachable!("non-objects returned above"),
        Body::Form(fields) => add_text(&mut params, fields, schema),
    }
    for (name, value) in path {
        let value = convert(&name, value, schema);
        params.insert(name, value);
    }
    Ok(Value::Object(params))
}

/// Adds text fields; a name given more than once becomes an array.
fn add_text(
    params: &mut Map<String, Value>,
    fields: Vec<(String, String)>,
    schema: Option<&Value>,
) {
    for (name, value) in fields {
        let value = convert(&name, value, schema);
        match params.get_mut(&name) {
            Some(Value::Array(items)) => items.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                params.insert(name, value);
            }
        }
    }
}

/// Text as the schema (or, without one, its look) says it should be.
fn convert(name: &str, text: String, schema: Option<&Value>) -> Value {
    let declared = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.get(name))
        .and_then(|p| match p.get("type") {
            Some(Value::String(t)) if t != "array" => Some(t.as_str()),
            // An array's items (a name given more than once) convert by the items' type.
            _ => p
                .get("items")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str),
        });
    match declared {
        Some("string") => Value::String(text),
        Some("integer" | "number") => text
            .parse::<serde_json::Number>()
            .map(Value::Number)
            .unwrap_or(Value::String(text)),
        Some("boolean") => match text.as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => Value::String(text),
        },
        Some(_) => Value::String(text),
        None => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => match serde_json::from_str::<serde_json::Number>(&text) {
                Ok(number) => Value::Number(number),
                Err(_) => Value::String(text),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn path_wins_over_body_which_wins_over_query() {
        let params = merge(
            pairs(&[("a", "1"), ("b", "2"), ("tag", "x"), ("tag", "y")]),
            Body::Json(json!({"b": 20, "c": "body"})),
            pairs(&[("c", "007")]),
            None,
        )
        .unwrap();
        assert_eq!(
            params,
            json!({"a": 1, "b": 20, "c": "007", "tag": ["x", "y"]})
        );
    }

    #[test]
    fn a_schema_decides_how_text_is_read() {
        let schema = json!({"properties": {
            "zip": {"type": "string"},
            "n": {"type": "integer"},
            "on": {"type": "boolean"},
            "ids": {"type": "array", "items": {"type": "integer"}},
        }});
        let params = merge(
            pairs(&[
                ("zip", "01234"),
                ("n", "5"),
                ("on", "1"),
                ("ids", "3"),
                ("ids", "4"),
            ]),
            Body::Empty,
            Vec::new(),
            Some(&schema),
        )
        .unwrap();
        assert_eq!(
            params,
            json!({"zip": "01234", "n": 5, "on": true, "ids": [3, 4]})
        );
        let plain = merge(
            pairs(&[("zip", "12345"), ("t", "true")]),
            Body::Empty,
            Vec::new(),
            None,
        );
        assert_eq!(plain.unwrap(), json!({"zip": 12345, "t": true}));
    }

    #[test]
    fn a_scalar_body_passes_alone_and_refuses_to_merge() {
        let alone = merge(Vec::new(), Body::Json(json!([1, 2])), Vec::new(), None);
        assert_eq!(alone.unwrap(), json!([1, 2]));
        let mixed = merge(pairs(&[("a", "1")]), Body::Json(json!(5)), Vec::new(), None);
        assert_eq!(mixed.unwrap_err().code(), 422);
        let form = merge(
            Vec::new(),
            Body::Form(pairs(&[("x", "y")])),
            Vec::new(),
            None,
        );
        assert_eq!(form.unwrap(), json!({"x": "y"}));
    }
}
