//! Inference payloads as a mirror sees them (a request path, a request body, a response
//! body), decoded into query records. The mirrors (`crate::ingest`) and the trace reader
//! ([`crate::trace`], for recorded exchanges) both go through [`decode_rest`], so a replayed
//! exchange is judged on exactly the code path of a mirrored one.
//!
//! - [`route`]: which API a path belongs to, and the model it names;
//! - [`decode`]: the JSON bodies of Open Inference Protocol v2, KServe v1 and OpenAI-style
//!   chat and completions ([`openai`]: what LLM extraction shows in, without the text). Open Inference Protocol gRPC bodies are protobuf, decoded by the
//!   ext_proc source itself.

pub mod decode;
pub mod openai;
pub mod route;

use decode::{DecodeError, Decoded};
use openai::PromptKey;
use route::Route;

/// Why an exchange was not decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// Not an inference route (a health check, metadata).
    #[error("not an inference path")]
    NotInference,
    /// An Open Inference Protocol gRPC call: its bodies are protobuf, not JSON.
    #[error("a gRPC exchange (protobuf bodies)")]
    Grpc,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl ExchangeError {
    /// Counter name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeError::NotInference => "not_inference",
            ExchangeError::Grpc => "grpc",
            ExchangeError::Decode(e) => e.as_str(),
        }
    }
}

/// The model and the queries of a JSON exchange on `path`: the model from the path (OIP v2,
/// KServe v1) or from the request body (OpenAI-style, `openai` when it names none).
pub fn decode_rest(
    path: &str,
    request: &[u8],
    response: &[u8],
    key: &PromptKey,
) -> Result<(String, Vec<Decoded>), ExchangeError> {
    let model = match Route::of_path(path).ok_or(ExchangeError::NotInference)? {
        Route::OipGrpc => return Err(ExchangeError::Grpc),
        Route::OpenAi => decode::model_from_body(request).unwrap_or_else(|| "openai".into()),
        Route::OipRest { model } | Route::KserveV1 { model } => model.to_string(),
    };
    Ok((model, decode::decode(request, response, key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_names_the_model_or_refuses() {
        let k = PromptKey::offline();
        let req = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
        let resp =
            br#"{"outputs":[{"name":"y","shape":[1,2],"datatype":"FP32","data":[0.1,0.9]}]}"#;
        let (m, d) = decode_rest("/v2/models/digits/infer", req, resp, &k).unwrap();
        assert_eq!((m.as_str(), d.len()), ("digits", 1));
        assert_eq!(d[0].input, vec![1.0, 2.0]);
        assert_eq!(
            decode_rest("/v2/health/ready", req, resp, &k),
            Err(ExchangeError::NotInference)
        );
        assert_eq!(
            decode_rest(route::MODEL_INFER_PATH, req, resp, &k),
            Err(ExchangeError::Grpc)
        );
        let chat = br#"{"model":"nimbus","messages":[{"role":"user","content":"hi"}]}"#;
        let answer = br#"{"choices":[{"message":{"role":"assistant","content":"hello"}}]}"#;
        let (m, _) = decode_rest("/v1/chat/completions", chat, answer, &k).unwrap();
        assert_eq!(m, "nimbus");
    }
}
