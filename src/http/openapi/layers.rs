//! The answers the router's layers and shared extractors give, written into every operation
//! they can reach. The handlers' `#[utoipa::path]` annotations list what the handler itself
//! answers; a refusal by the auth layer (401, 403, 429, 503) or by the body limit and the
//! JSON extractors (400, 413, 415) happens before the handler runs, so it is added here,
//! from the same facts the layers decide on (the route's surface, whether it needs a key,
//! whether it takes a body). A new route gets them without anyone remembering to.

use utoipa::openapi::{
    path::Operation,
    response::{Response, ResponseBuilder},
    schema::{ObjectBuilder, Type},
    security::SecurityRequirement,
    Content, Header, OpenApi, Ref, RefOr,
};

use crate::error::Surface;

/// The component holding the error body of each surface.
fn error_schema(surface: Surface) -> &'static str {
    match surface {
        Surface::Admin => "ErrorBody",
        Surface::OpenAi => "OpenAiErrorBody",
        Surface::Venice => "VeniceErrorBody",
        Surface::Aixplain => "AixplainError",
        Surface::Anthropic => "AnthropicErrorBody",
    }
}

/// A refusal the layers give: status, when it applies, and what it means.
struct LayerAnswer {
    status: u16,
    applies: fn(&Operation, Surface) -> bool,
    description: &'static str,
    retry_after: bool,
}

fn needs_key(operation: &Operation, _surface: Surface) -> bool {
    operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty())
}

fn takes_body(operation: &Operation, _surface: Surface) -> bool {
    operation.request_body.is_some()
}

/// Bodies read by the JSON extractors (`http::extract`), which check `Content-Type`; the
/// inference routes pass the body on as the client sent it.
fn takes_json_body(operation: &Operation, surface: Surface) -> bool {
    takes_body(operation, surface) && !matches!(surface, Surface::OpenAi | Surface::Anthropic)
}

const LAYER_ANSWERS: &[LayerAnswer] = &[
    LayerAnswer {
        status: 400,
        applies: takes_body,
        description: "The body is not valid JSON, is empty, or is not an object \
            (`invalid_json`), or a field is invalid",
        retry_after: false,
    },
    LayerAnswer {
        status: 401,
        applies: needs_key,
        description: "No key, or an unknown, revoked or expired one (`invalid_api_key`)",
        retry_after: false,
    },
    LayerAnswer {
        status: 403,
        applies: needs_key,
        description:
            "The key is of the wrong kind for this route (an inference key on a \
            management route, an admin key on inference), or its `ip_allowlist` excludes the caller",
        retry_after: false,
    },
    LayerAnswer {
        status: 413,
        applies: takes_body,
        description: "The body is larger than `http.max_body_bytes` (`body_too_large`)",
        retry_after: false,
    },
    LayerAnswer {
        status: 415,
        applies: takes_json_body,
        description: "A `Content-Type` other than JSON (`unsupported_media_type`)",
        retry_after: false,
    },
    LayerAnswer {
        status: 429,
        applies: needs_key,
        description: "Too many failed authentications from this address \
            (`too_many_auth_attempts`); see `Retry-After`",
        retry_after: true,
    },
    LayerAnswer {
        status: 503,
        applies: needs_key,
        description: "The key store cannot be reached (`store_unavailable`); retry",
        retry_after: false,
    },
];

/// Declares the key headers the auth layer reads, and adds each layer answer that applies to
/// every operation that does not list that status already (a handler's own description of
/// it is more precise).
pub fn add_layer_answers(openapi: &mut OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let surface = Surface::for_path(path);
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            if needs_key(operation, surface) {
                // The auth layer reads the key from `Authorization` or `x-api-key` on every
                // route (`auth::presented_key`): either one is enough.
                operation.security = Some(vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::new("x_api_key", Vec::<String>::new()),
                ]);
            }
            for answer in LAYER_ANSWERS {
                if !(answer.applies)(operation, surface) {
                    continue;
                }
                operation
                    .responses
                    .responses
                    .entry(answer.status.to_string())
                    .or_insert_with(|| RefOr::T(error_response(surface, answer)));
            }
        }
    }
}

fn error_response(surface: Surface, answer: &LayerAnswer) -> Response {
    let mut response = ResponseBuilder::new()
        .description(answer.description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(error_schema(surface)))),
        );
    if answer.retry_after {
        response = response.header(
            "Retry-After",
            Header::new(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            ),
        );
    }
    response.build()
}
