//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations
//! (`GET /api/v2/openapi.json`). Tool argument and result schemas are the tools' own and are
//! published by `GET /api/v2/tools/list`; this document describes the envelope.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::wire::*;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice API", description = "A gateway in front of DuckDB with WebAssembly tools. Every response carries X-Request-Id."),
    paths(
        super::versions,
        super::health,
        super::whoami,
        super::openapi_json,
        super::metrics,
        super::gone,
        super::tools::list,
        super::tools::call,
        super::tools::plugins,
        super::tools::reload,
        super::tools::promote,
        super::tools::rollback,
        super::sql::sql,
        super::otlp::ingest,
        super::exports::list,
        super::exports::show,
        super::exports::run,
        super::exports::sinks,
        super::exports::test,
        super::mcp::mcp_doc,
        super::mcp::mcp_root_doc,
        super::oauth::metadata,
    ),
    components(schemas(ErrorBody, SqlRequest, SqlResult, ToolCall, ToolResult, ToolList, ToolDescription, WhoAmI,
        BearerCapabilities, Health, Versions, BinaryVersion, ApiCapabilities, PluginList, ReloadResult, FailedFile,
        crate::runtime::PluginStatus, crate::runtime::rollout::RolloutStatus, crate::export::sink::SinkReload, super::oauth::ResourceMetadata)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document as JSON.
/// Adds `POST /api/v2/tools/<name>` for each tool: the request body `{"args": <input schema>}`,
/// the answer `{"result": <output schema>}`, the same errors as the generic route.
pub fn add_tools<'a>(doc: &mut Value, tools: impl Iterator<Item = &'a crate::runtime::LoadedTool>) {
    let generic = doc["paths"]["/api/v2/tools/{name}"]["post"].clone();
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for t in tools {
        let mut op = generic.clone();
        op["summary"] = Value::from(t.name.clone());
        op["description"] = Value::from(t.description.clone());
        op["operationId"] = Value::from(format!("tool.{}", t.name));
        if let Some(o) = op.as_object_mut() {
            o.remove("parameters");
        }
        op["requestBody"] = serde_json::json!({
            "required": true,
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"args": t.input_schema},
                "additionalProperties": false
            }}}
        });
        op["responses"]["200"] = serde_json::json!({
            "description": format!("The answer of {} {}", t.name, t.version),
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["result"],
                "properties": {"result": t.output_schema}
            }}}
        });
        paths.insert(format!("/api/v2/tools/{}", t.name), serde_json::json!({ "post": op }));
    }
}

pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
    doc
}
