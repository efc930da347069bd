//! The OpenAPI document of a gateway, generated from its routes and from the params schemas the
//! services declare.

use super::EventRoute;
use super::route::{Route, Segment};
use super::table::ActionTable;
use axum::http::Method;
use serde_json::{Map, Value, json};

/// One operation: a method on a path calling an action.
struct Operation<'a> {
    methods: Vec<Method>,
    path: String,
    path_params: Vec<&'a str>,
    action: &'a str,
    authenticated: bool,
}

/// The document for `routes` as the cluster is now.
pub(super) fn document(routes: &[Route], events: &[EventRoute], table: &ActionTable) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in routes {
        for operation in operations(route, table) {
            let entry = paths
                .entry(operation.path.clone())
                .or_insert_with(|| json!({}));
            for method in &operation.methods {
                let key = method.as_str().to_ascii_lowercase();
                entry[key] = describe(&operation, method, table.schema(operation.action));
            }
        }
    }
    for route in events {
        paths.insert(
            route.path.clone(),
            json!({ "get": {
                "summary": format!("Server-Sent Events matching `{}`", route.pattern),
                "parameters": [{
                    "name": "pattern", "in": "query", "required": false,
                    "schema": { "type": "string" },
                    "description": "Narrows the stream to events matching this pattern."
                }],
                "responses": { "200": {
                    "description": "An endless stream of events",
                    "content": { "text/event-stream": { "schema": { "type": "string" } } }
                }}
            }}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Phalanx API gateway", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "gateway": {
                "type": "apiKey", "in": "header", "name": "authorization",
                "description": "Whatever the gateway's authenticator accepts."
            }},
            "schemas": { "Error": {
            "type": "object",
            "properties": {
                "name": { "type": "string" },
                "message": { "type": "string" },
                "code": { "type": "integer" },
                "type": { "type": "string" },
                "data": {}
            },
            "required": ["name", "message", "code", "type"]
        }}}
    })
}

fn operations<'a>(route: &'a Route, table: &'a ActionTable) -> Vec<Operation<'a>> {
    let any = || vec![Method::GET, Method::POST];
    let mut found: Vec<Operation<'a>> = route
        .aliases
        .iter()
        .filter(|a| route.allows(&a.action))
        .map(|alias| Operation {
            methods: alias.method.clone().map_or_else(any, |m| vec![m]),
            path: alias.openapi_path(&route.prefix),
            path_params: alias
                .template
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(p) => Some(p.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect(),
            action: &alias.action,
            authenticated: route.authenticated,
        })
        .collect();
    if route.auto_aliases {
        for action in table.published().filter(|a| route.allows(a)) {
            let mut path = String::new();
            for segment in route
                .prefix
                .iter()
                .map(String::as_str)
                .chain(action.split('.'))
            {
                path.push('/');
                path.push_str(segment);
            }
            found.push(Operation {
                methods: any(),
                path,
                path_params: Vec::new(),
                action,
                authenticated: route.authenticated,
            });
        }
    }
    found
}

fn describe(operation: &Operation<'_>, method: &Method, schema: Option<&Value>) -> Value {
    let mut parameters: Vec<Value> = operation
        .path_params
        .iter()
        .map(|name| {
            let schema = property(schema, name).unwrap_or_else(|| json!({ "type": "string" }));
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect();
    let has_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if !has_body && let Some(Value::Object(properties)) = schema.and_then(|s| s.get("properties")) {
        let required = |name: &str| {
            schema
                .and_then(|s| s.get("required"))
                .and_then(Value::as_array)
                .is_some_and(|r| r.iter().any(|n| n == name))
        };
        for (name, property) in properties {
            if !operation.path_params.contains(&name.as_str()) {
                parameters.push(json!({
                    "name": name, "in": "query", "required": required(name), "schema": property
                }));
            }
        }
    }
    let mut described = json!({
        "operationId": format!("{}:{}", operation.action, method.as_str().to_ascii_lowercase()),
        "summary": format!("Calls `{}`", operation.action),
        "parameters": parameters,
        "responses": {
            "200": { "description": "The action's result", "content": { "application/json": { "schema": {} } } },
            "default": { "description": "An error", "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/Error" } } } }
        }
    });
    if has_body {
        let schema = schema
            .cloned()
            .unwrap_or_else(|| json!({ "type": "object" }));
        described["requestBody"] = json!({
            "required": false,
            "content": { "application/json": { "schema": schema } }
        });
    }
    if operation.authenticated {
        described["security"] = json!([{ "gateway": [] }]);
    }
    described
}

fn property(schema: Option<&Value>, name: &str) -> Option<Value> {
    schema?.get("properties")?.get(name).cloned()
}
