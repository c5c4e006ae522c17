//! Open Inference Protocol v2 over gRPC, as a mirror sees it: the HTTP/2 bodies of a
//! `inference.GRPCInferenceService/ModelInfer` call, each a 5-byte-prefixed protobuf message
//! (1 byte compressed flag, 4 bytes big-endian length).
//!
//! Tensor data comes from the typed `contents` or, when set, `raw_input_contents` /
//! `raw_output_contents` (little-endian, row-major). A compressed message, an unknown data
//! type or a shape that does not match its data is an error the caller counts.

use crate::exchange::decode::{DecodeError, Decoded};
use crate::proto::inference::{InferTensor, ModelInferRequest, ModelInferResponse};
use prost::Message;

/// The first message of a gRPC body.
fn first_message(body: &[u8]) -> Result<&[u8], DecodeError> {
    if body.len() < 5 {
        return Err(DecodeError::BadShape);
    }
    if body[0] != 0 {
        // Compressed with an encoding negotiated in headers we do not decode.
        return Err(DecodeError::UnknownFormat);
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + len).ok_or(DecodeError::BadShape)
}

fn raw_values(datatype: &str, raw: &[u8]) -> Result<Vec<f32>, DecodeError> {
    let chunks = |n: usize| {
        if raw.len().is_multiple_of(n) {
            Ok(raw.chunks_exact(n))
        } else {
            Err(DecodeError::BadShape)
        }
    };
    Ok(match datatype {
        "FP32" => chunks(4)?
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "FP64" => chunks(8)?
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        "INT32" => chunks(4)?
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        "INT64" => chunks(8)?
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        "UINT8" | "BOOL" => raw.iter().map(|&b| f32::from(b)).collect(),
        _ => return Err(DecodeError::NotNumeric),
    })
}

fn typed_values(t: &InferTensor) -> Vec<f32> {
    let Some(c) = &t.contents else { return vec![] };
    let mut v: Vec<f32> = c.fp32_contents.clone();
    v.extend(c.fp64_contents.iter().map(|&x| x as f32));
    v.extend(c.int_contents.iter().map(|&x| x as f32));
    v.extend(c.int64_contents.iter().map(|&x| x as f32));
    v.extend(c.uint_contents.iter().map(|&x| x as f32));
    v.extend(c.uint64_contents.iter().map(|&x| x as f32));
    v.extend(c.bool_contents.iter().map(|&x| f32::from(u8::from(x))));
    v
}

/// Rows of the first tensor (its raw contents when given).
fn rows(tensors: &[InferTensor], raw: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, DecodeError> {
    let t = tensors.first().ok_or(DecodeError::UnknownFormat)?;
    let data = match raw.first() {
        Some(r) => raw_values(&t.datatype, r)?,
        None => typed_values(t),
    };
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| DecodeError::BadShape))
        .collect::<Result<_, _>>()?;
    // A hostile shape must not overflow the product.
    let total = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(DecodeError::BadShape)?;
    if shape.is_empty() || total == 0 || total != data.len() {
        return Err(DecodeError::BadShape);
    }
    let n = if shape.len() == 1 { 1 } else { shape[0] };
    Ok(data.chunks(total / n).map(<[f32]>::to_vec).collect())
}

/// Decodes a mirrored `ModelInfer` call: the model name and one query per input row.
///
/// A call the model did not answer (an error status, no response message) is not a query of
/// a model: counting it would let a client create model entries with any name it likes. The
/// model name is the one the server answered with, the request's only when that is empty.
pub fn decode(request: &[u8], response: &[u8]) -> Result<(String, Vec<Decoded>), DecodeError> {
    let req =
        ModelInferRequest::decode(first_message(request)?).map_err(|_| DecodeError::NotJson)?;
    let inputs = rows(&req.inputs, &req.raw_input_contents)?;
    let resp =
        ModelInferResponse::decode(first_message(response)?).map_err(|_| DecodeError::NotJson)?;
    let outputs = rows(&resp.outputs, &resp.raw_output_contents).unwrap_or_default();
    let model = if resp.model_name.is_empty() {
        req.model_name
    } else {
        resp.model_name
    };
    if !outputs.is_empty() && outputs.len() != inputs.len() {
        return Err(DecodeError::RowMismatch);
    }
    let decoded = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| Decoded {
            input,
            output: outputs.get(i).cloned().unwrap_or_default(),
            label: None,
            llm: None,
        })
        .collect();
    Ok((model, decoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::InferTensorContents;

    fn framed(m: &impl Message) -> Vec<u8> {
        let b = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend(b);
        out
    }

    #[test]
    fn raw_and_typed_tensors_decode_to_rows() {
        let raw: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let req = ModelInferRequest {
            model_name: "digits".into(),
            inputs: vec![InferTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![2, 3],
                contents: None,
            }],
            raw_input_contents: vec![raw],
            ..Default::default()
        };
        let resp = ModelInferResponse {
            outputs: vec![InferTensor {
                name: "p".into(),
                datatype: "FP64".into(),
                shape: vec![2, 2],
                contents: Some(InferTensorContents {
                    fp64_contents: vec![0.1, 0.9, 0.7, 0.3],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        let (model, d) = decode(&framed(&req), &framed(&resp)).unwrap();
        assert_eq!(model, "digits");
        assert_eq!(d[1].input, vec![4.0, 5.0, 6.0]);
        assert_eq!(d[1].output, vec![0.7, 0.3]);
    }

    #[test]
    fn broken_frames_and_types_are_errors() {
        assert_eq!(decode(b"\x00\x00", b"").unwrap_err(), DecodeError::BadShape);
        assert_eq!(
            decode(b"\x01\x00\x00\x00\x01x", b"").unwrap_err(),
            DecodeError::UnknownFormat
        );
        let req = ModelInferRequest {
            inputs: vec![InferTensor {
                datatype: "BYTES".into(),
                shape: vec![1],
                ..Default::default()
            }],
            raw_input_contents: vec![b"abc".to_vec()],
            ..Default::default()
        };
        assert_eq!(
            decode(&framed(&req), b"").unwrap_err(),
            DecodeError::NotNumeric
        );
    }

    #[test]
    fn unanswered_calls_and_hostile_shapes_are_refused_and_the_answer_names_the_model() {
        let tensor = |shape: Vec<i64>| InferTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape,
            contents: Some(InferTensorContents {
                fp32_contents: vec![1.0, 2.0],
                ..Default::default()
            }),
        };
        let req = ModelInferRequest {
            model_name: "made-up-by-client".into(),
            inputs: vec![tensor(vec![1, 2])],
            ..Default::default()
        };
        // No response message (the call failed): not a query of any model.
        assert_eq!(
            decode(&framed(&req), b"").unwrap_err(),
            DecodeError::BadShape
        );
        let resp = ModelInferResponse {
            model_name: "digits".into(),
            ..Default::default()
        };
        let (model, d) = decode(&framed(&req), &framed(&resp)).unwrap();
        assert_eq!((model.as_str(), d.len()), ("digits", 1));
        // Dimensions whose product overflows are a bad shape, not a panic.
        let huge = ModelInferRequest {
            inputs: vec![tensor(vec![1 << 40, 1 << 40, 1 << 40])],
            ..Default::default()
        };
        assert_eq!(
            decode(&framed(&huge), &framed(&resp)).unwrap_err(),
            DecodeError::BadShape
        );
    }
}
