//! The OpenAPI 3.1 description of the HTTP API, written by hand (it is the contract the
//! dashboard, the SDK and scripts code against), served at `/api/v1/openapi.json`.

use std::sync::OnceLock;

use axum::{Json, http::HeaderValue, response::IntoResponse};
use serde_json::{Value, json};

fn err(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string" } })
}

fn query_param(name: &str, description: &str, ty: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": ty } })
}

/// User and token names (what the store accepts).
const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$";

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Adds the error answers every authenticated endpoint can give.
fn authed(mut op: Value, with_403: bool) -> Value {
    let responses = op["responses"].as_object_mut().expect("responses");
    responses.insert(
        "401".into(),
        err("Missing, bad or expired session or token."),
    );
    if with_403 {
        responses.insert(
            "403".into(),
            err("The caller's role may not do this, or the CSRF token is missing."),
        );
    }
    op
}

pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(build)
}

fn build() -> Value {
    let device_id = path_param("id", "Device id.");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "devicecloud API",
            "version": "1",
            "description": "JSON everywhere. Authenticate with the dashboard session (cookie dc_session, plus header X-CSRF-Token on mutating requests) or with 'Authorization: Bearer <token>' (devicecloud token create NAME). Errors are {\"error\": message, \"field\": name?}."
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }, { "session": [] }],
        "paths": {
            "/api/v1/login": { "post": {
                "summary": "Log in to the dashboard; sets the dc_session cookie.", "security": [],
                "requestBody": body(json!({ "type": "object", "required": ["username", "password"],
                    "properties": { "username": { "type": "string", "minLength": 1 }, "password": { "type": "string" } } })),
                "responses": { "200": ok("Logged in.", schema_ref("Session")), "400": err("Bad JSON (the field is named)."),
                    "401": err("Wrong user name or password."), "429": err("Too many failed logins from this address or for this account; see Retry-After."),
                    "503": err("Too many logins are being checked right now; see Retry-After.") } } },
            "/api/v1/logout": { "post": authed(json!({ "summary": "End the session.", "responses": { "204": { "description": "Logged out." } } }), true) },
            "/api/v1/me": { "get": authed(json!({ "summary": "Who is calling.", "responses": { "200": ok("The caller.", schema_ref("Session")) } }), false) },
            "/api/v1/devices": {
                "get": authed(json!({ "summary": "Every device with presence and capabilities.",
                    "responses": { "200": ok("Devices.", json!({ "type": "array", "items": schema_ref("Device") })) } }), false),
                "post": authed(json!({ "summary": "Add a device (admin).",
                    "requestBody": body(json!({ "type": "object", "required": ["id"], "additionalProperties": false, "properties": {
                        "id": { "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$" },
                        "credential": { "enum": ["enroll", "certificate", "token"], "default": "enroll" } } })),
                    "responses": { "201": ok("Added: an enrollment code, or the device bundle (TOML) with its secret.", json!({ "type": "object", "properties": {
                            "id": { "type": "string" }, "enroll_command": { "type": "string" }, "code": { "type": "string" },
                            "expires_at": { "type": "integer" }, "bundle": { "type": "string" } } })),
                        "400": err("Bad JSON or invalid id (the field is named)."), "409": err("The device exists.") } }), true)
            },
            "/api/v1/devices/{id}": {
                "get": authed(json!({ "summary": "One device, with reported and desired state.", "parameters": [device_id],
                    "responses": { "200": ok("The device.", schema_ref("DeviceDetail")), "404": err("No such device.") } }), false),
                "delete": authed(json!({ "summary": "Remove a device and revoke its credentials (admin).", "parameters": [device_id],
                    "responses": { "204": { "description": "Removed." }, "404": err("No such device.") } }), true)
            },
            "/api/v1/devices/{id}/properties/{name}": { "put": authed(json!({
                "summary": "Set an output: sends the command and (by default) waits until the device confirms it.",
                "parameters": [device_id, path_param("name", "Output name."),
                    query_param("wait", "false: answer 202 at once with the command id.", "boolean")],
                "requestBody": body(json!({ "description": "The JSON value, e.g. true or 21.5." })),
                "responses": { "200": ok("Confirmed by the device.", schema_ref("CommandResult")),
                    "202": ok("Sent; poll GET /api/v1/commands/{id}.", schema_ref("CommandResult")),
                    "400": err("Unknown output or value of the wrong type (field: value)."), "404": err("No such device."),
                    "409": err("The device is offline."), "422": err("The device refused the command."),
                    "504": err("The device did not confirm in time.") } }), true) },
            "/api/v1/commands/{id}": { "get": authed(json!({ "summary": "A command's status.", "parameters": [path_param("id", "Command id.")],
                "responses": { "200": ok("The command.", schema_ref("Command")), "404": err("No such command.") } }), false) },
            "/api/v1/devices/{id}/telemetry/{sensor}": { "get": authed(json!({
                "summary": "Readings in a time range, downsampled to at most `points` buckets (min/avg/max).",
                "parameters": [device_id, path_param("sensor", "Sensor name."),
                    json!({ "name": "from", "in": "query", "required": false, "description": "Start, ms since the epoch (default: to - 1 hour).",
                        "schema": { "type": "integer", "minimum": 0, "maximum": super::telemetry::MAX_TS } }),
                    json!({ "name": "to", "in": "query", "required": false, "description": "End, ms since the epoch (default: now).",
                        "schema": { "type": "integer", "minimum": 0, "maximum": super::telemetry::MAX_TS } }),
                    json!({ "name": "points", "in": "query", "required": false, "description": "At most this many buckets (default 500).",
                        "schema": { "type": "integer", "minimum": 1, "maximum": 10000 } })],
                "responses": { "200": ok("The series.", schema_ref("Telemetry")), "400": err("Bad range (the field is named)."), "404": err("No such device.") } }), false) },
            "/api/v1/live": { "get": authed(json!({ "summary": "WebSocket: a JSON message per presence, state, meta, telemetry or command change.",
                "parameters": [query_param("device", "Only this device.", "string")],
                "responses": { "101": { "description": "Switching to WebSocket; messages are LiveEvent JSON." },
                    "400": err("Not a WebSocket request."), "403": err("A browser page of another site (Origin) may not open it.") } }), false) },
            "/api/v1/events": { "get": authed(json!({ "summary": "Server-sent events: the same messages as /api/v1/live.",
                "parameters": [query_param("device", "Only this device.", "string")],
                "responses": { "200": { "description": "text/event-stream of LiveEvent JSON.", "content": { "text/event-stream": { "schema": schema_ref("LiveEvent") } } } } }), false) },
            "/api/v1/tokens": {
                "get": authed(json!({ "summary": "API tokens (admin).", "responses": { "200": ok("Tokens (never the secrets).",
                    json!({ "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "role": schema_ref("Role"),
                        "created_at": { "type": "integer" }, "last_used": { "type": ["integer", "null"] } } } })) } }), true),
                "post": authed(json!({ "summary": "Create a token (admin); the secret is shown once.",
                    "requestBody": body(json!({ "type": "object", "required": ["name"], "additionalProperties": false, "properties": { "name": { "type": "string", "pattern": NAME_PATTERN }, "role": schema_ref("Role") } })),
                    "responses": { "201": ok("Created.", json!({ "type": "object", "properties": { "name": { "type": "string" }, "role": schema_ref("Role"), "token": { "type": "string" } } })),
                        "400": err("Bad JSON (the field is named)."), "409": err("A token of that name exists.") } }), true)
            },
            "/api/v1/tokens/{name}": { "delete": authed(json!({ "summary": "Revoke a token (admin).", "parameters": [path_param("name", "Token name.")],
                "responses": { "204": { "description": "Revoked." }, "404": err("No such token.") } }), true) },
            "/api/v1/users": {
                "get": authed(json!({ "summary": "Local users (admin).", "responses": { "200": ok("Users.",
                    json!({ "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "role": schema_ref("Role") } } })) } }), true),
                "post": authed(json!({ "summary": "Create a user (admin).",
                    "requestBody": body(json!({ "type": "object", "required": ["name", "password"], "additionalProperties": false, "properties": { "name": { "type": "string", "pattern": NAME_PATTERN },
                        "role": schema_ref("Role"), "password": { "type": "string", "minLength": 8 } } })),
                    "responses": { "201": ok("Created.", json!({ "type": "object", "properties": { "name": { "type": "string" }, "role": schema_ref("Role") } })),
                        "400": err("Bad JSON or weak password (the field is named)."), "409": err("The user exists.") } }), true)
            },
            "/api/v1/users/{name}": { "delete": authed(json!({ "summary": "Remove a user and end their sessions (admin).", "parameters": [path_param("name", "User name.")],
                "responses": { "204": { "description": "Removed." }, "404": err("No such user.") } }), true) },
            "/api/v1/enroll": { "post": {
                "summary": "Enroll a device with a one-time code: the server signs its CSR and answers with its bundle.", "security": [],
                "requestBody": body(json!({ "type": "object", "required": ["code", "csr_pem"], "properties": { "code": { "type": "string", "minLength": 1 },
                    "csr_pem": { "type": "string", "description": "A PEM certificate signing request (PKCS#10) for the device's key." } } })),
                "responses": { "200": ok("Enrolled.", json!({ "type": "object", "properties": { "bundle": { "type": "string", "description": "Bundle TOML without key or token." }, "cert_pem": { "type": "string" } } })),
                    "400": err("Bad JSON or CSR (the field is named)."), "401": err("Unknown, used or expired code."), "429": err("Too many failed attempts from this address.") } } },
            "/api/v1/openapi.json": { "get": { "summary": "This document.", "security": [], "responses": { "200": { "description": "OpenAPI 3.1 JSON." } } } },
            "/mqtt": { "get": authed(json!({ "summary": "MQTT over WebSocket (subprotocol mqtt), under the caller's role ACL.",
                "responses": { "101": { "description": "Switching to WebSocket; speak MQTT 3.1.1 or 5." }, "400": err("Not a WebSocket request or no mqtt subprotocol."),
                    "403": err("A browser page of another site (Origin) may not open it.") } }), false) },
            "/metrics": { "get": authed(json!({ "summary": "Prometheus metrics (admin).", "responses": { "200": { "description": "Prometheus text format.", "content": { "text/plain": {} } } } }), true) },
            "/healthz": { "get": { "summary": "Health: 200 when the database answers.", "security": [],
                "responses": { "200": ok("Healthy.", json!({ "type": "object" })), "503": ok("Unhealthy.", json!({ "type": "object" })) } } },
            "/apps/{name}/{path}": { "get": authed(json!({ "summary": "A user web app's files from DATA/apps/NAME/ (browsers without a session are redirected to /login).",
                "parameters": [path_param("name", "App name."), path_param("path", "File path inside the app.")],
                "responses": { "200": { "description": "The file." }, "303": { "description": "Not logged in: to /login?next=..." }, "404": err("No such app or file.") } }), false) }
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": "dc_session" }
            },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" }, "field": { "type": "string" } } },
                "Role": { "enum": ["viewer", "operator", "admin"] },
                "Session": { "type": "object", "properties": { "user": { "type": "string" }, "role": { "$ref": "#/components/schemas/Role" }, "csrf_token": { "type": ["string", "null"] } } },
                "Capabilities": { "type": "object", "properties": {
                    "outputs": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "type": { "enum": ["bool", "number"] } } } },
                    "inputs": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "type": { "enum": ["bool", "number"] } } } },
                    "sensors": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "unit": { "type": "string" }, "interval_ms": { "type": "integer" } } } } } },
                "Device": { "type": "object", "properties": { "id": { "type": "string" }, "online": { "type": "boolean" },
                    "last_seen": { "type": ["integer", "null"] }, "capabilities": { "$ref": "#/components/schemas/Capabilities" } } },
                "DeviceDetail": { "allOf": [{ "$ref": "#/components/schemas/Device" }, { "type": "object", "properties": {
                    "reported": { "type": "object", "additionalProperties": { "type": "object", "properties": { "value": {}, "ts": { "type": "integer" } } } },
                    "desired": { "type": "object", "additionalProperties": { "type": "object", "properties": { "value": {}, "ts": { "type": "integer" },
                        "command_id": { "type": "string" }, "status": { "enum": ["pending", "confirmed", "failed", "timeout"] } } } },
                    "telemetry": { "type": "object", "additionalProperties": { "type": "object", "properties": { "value": { "type": "number" }, "ts": { "type": "integer" } } } } } }] },
                "CommandResult": { "type": "object", "properties": { "command_id": { "type": "string" }, "device": { "type": "string" }, "name": { "type": "string" },
                    "value": {}, "status": { "enum": ["pending", "confirmed"] } } },
                "Command": { "type": "object", "properties": { "id": { "type": "string" }, "device": { "type": "string" }, "name": { "type": "string" }, "value": {},
                    "status": { "enum": ["pending", "confirmed", "failed", "timeout"] }, "error": { "type": ["string", "null"] } } },
                "Telemetry": { "type": "object", "properties": { "device": { "type": "string" }, "sensor": { "type": "string" }, "from": { "type": "integer" }, "to": { "type": "integer" },
                    "bucket_ms": { "type": "integer" }, "points": { "type": "array", "items": { "type": "object", "properties": {
                        "ts": { "type": "integer" }, "min": { "type": "number" }, "avg": { "type": "number" }, "max": { "type": "number" }, "count": { "type": "integer" } } } } } },
                "LiveEvent": { "oneOf": [
                    { "type": "object", "properties": { "type": { "const": "presence" }, "device": { "type": "string" }, "online": { "type": "boolean" }, "ts": { "type": "integer" } } },
                    { "type": "object", "properties": { "type": { "const": "state" }, "device": { "type": "string" }, "name": { "type": "string" }, "value": {}, "ts": { "type": "integer" }, "cmd": { "type": ["string", "null"] } } },
                    { "type": "object", "properties": { "type": { "const": "telemetry" }, "device": { "type": "string" }, "sensor": { "type": "string" }, "ts": { "type": "integer" }, "value": { "type": "number" } } },
                    { "type": "object", "properties": { "type": { "const": "meta" }, "device": { "type": "string" }, "capabilities": { "$ref": "#/components/schemas/Capabilities" } } },
                    { "type": "object", "properties": { "type": { "const": "command" }, "device": { "type": "string" }, "name": { "type": "string" }, "command_id": { "type": "string" },
                        "status": { "enum": ["pending", "confirmed", "failed", "timeout"] }, "error": { "type": ["string", "null"] } } },
                    { "type": "object", "properties": { "type": { "const": "lagged" }, "missed": { "type": "integer" } } }
                ] }
            }
        }
    })
}

pub async fn document() -> impl IntoResponse {
    let mut response = Json(spec().clone()).into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let spec = super::spec();
        for (method, path) in super::super::ROUTES {
            assert!(
                spec["paths"][*path][*method].is_object(),
                "{method} {path} is missing from the OpenAPI document"
            );
        }
        let documented: usize = spec["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            super::super::ROUTES.len(),
            "the document lists routes the router does not serve"
        );
    }
}
