//! Which inference API a mirrored request path belongs to, and the model it names.
//!
//! The route decides the decoder: REST bodies are JSON (Open Inference Protocol v2 and
//! KServe v1 name the model in the path), OpenAI-style bodies name it in the request, and
//! Open Inference Protocol gRPC names it in the protobuf messages.

/// The gRPC method path of Open Inference Protocol inference.
pub const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// An inference route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Open Inference Protocol v2 REST, `/v2/models/{model}/...`.
    OipRest { model: &'a str },
    /// KServe v1, `/v1/models/{model}:predict`.
    KserveV1 { model: &'a str },
    /// Open Inference Protocol v2 gRPC (`ModelInfer`): the model is in the messages.
    OipGrpc,
    /// OpenAI-style `/v1/chat/completions` and `/v1/completions`: the model is in the body.
    OpenAi,
}

impl<'a> Route<'a> {
    /// The route of a request path (its query string ignored); `None` when it is not an
    /// inference call (health checks, metadata).
    pub fn of_path(path: &'a str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path);
        if path == "/v1/chat/completions" || path == "/v1/completions" {
            return Some(Route::OpenAi);
        }
        if path == MODEL_INFER_PATH {
            return Some(Route::OipGrpc);
        }
        if let Some(rest) = path.strip_prefix("/v2/models/") {
            let model = rest.split('/').next().filter(|m| !m.is_empty())?;
            return Some(Route::OipRest { model });
        }
        if let Some(rest) = path.strip_prefix("/v1/models/") {
            let model = rest.split(':').next().filter(|m| !m.is_empty())?;
            return Some(Route::KserveV1 { model });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes() {
        assert_eq!(
            Route::of_path("/v2/models/digits/infer"),
            Some(Route::OipRest { model: "digits" })
        );
        assert_eq!(
            Route::of_path("/v1/models/iris:predict"),
            Some(Route::KserveV1 { model: "iris" })
        );
        assert_eq!(
            Route::of_path("/v1/chat/completions?x=1"),
            Some(Route::OpenAi)
        );
        assert_eq!(Route::of_path(MODEL_INFER_PATH), Some(Route::OipGrpc));
        assert_eq!(Route::of_path("/v2/health/ready"), None);
        assert_eq!(Route::of_path("/v2/models//infer"), None);
    }

    #[test]
    fn models_named_like_other_routes_are_rest_models() {
        // A REST model really named `grpc` or `openai` is that model, not another decoder.
        assert_eq!(
            Route::of_path("/v2/models/grpc/infer"),
            Some(Route::OipRest { model: "grpc" })
        );
        assert_eq!(
            Route::of_path("/v1/models/openai:predict"),
            Some(Route::KserveV1 { model: "openai" })
        );
    }
}
