//! Admission of ingest batches before they are decoded: a batch's memory is known, and paid
//! for out of the memory budget, before anything is allocated for it.
//!
//! A protobuf message decodes into far more memory than its wire size: a record of one
//! float and a one-letter client id is 11 bytes on the wire and about 300 once decoded
//! (struct, strings, vectors), and a map of attributes costs ~100 bytes per entry of 6.
//! [`scan`] walks a `RecordBatch`'s wire bytes without allocating, counting records and
//! attributes and estimating the decoded size; the [`BatchCodec`] refuses a batch over the
//! limits, or one the budget cannot hold, *before* decoding it. A refused batch becomes an
//! [`Inbound::Refused`] that the service acknowledges with every record rejected and a
//! reason, so the stream goes on and nothing is lost silently.

use crate::budget::{Grant, MemoryBudget};
use crate::proto::v1::{QueryRecord, RecordBatch, RejectReason};
use prost::bytes::Buf;
use prost::Message;
use std::sync::Arc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Heap and struct bytes of a decoded map entry beyond its key and value text.
pub const ATTRIBUTE_OVERHEAD: usize = 2 * std::mem::size_of::<String>() + 16;
/// Smallest heap allocation (a one-byte string still takes this much).
pub const MIN_ALLOCATION: usize = 16;

/// What a batch will cost once decoded, from its wire bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    pub batch_id: u64,
    pub records: usize,
    /// Attributes in the record that has most.
    pub max_attributes: usize,
    /// Key and value bytes of every attribute in the batch.
    pub attribute_bytes: usize,
    /// Estimated bytes of the decoded batch (an upper bound for well-formed input).
    pub decoded_bytes: usize,
}

/// The wire is not a well-formed `RecordBatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

fn varint(b: &mut &[u8]) -> Result<u64, Malformed> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first().ok_or(Malformed)?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(Malformed)
}

/// One field: its number, wire type and, for length-delimited fields, its bytes.
fn field<'a>(b: &mut &'a [u8]) -> Result<(u32, u8, &'a [u8]), Malformed> {
    let key = varint(b)?;
    let (num, wire) = ((key >> 3) as u32, (key & 7) as u8);
    let payload: &[u8] = match wire {
        0 => {
            varint(b)?;
            &[]
        }
        1 | 5 => {
            let n = if wire == 1 { 8 } else { 4 };
            if b.len() < n {
                return Err(Malformed);
            }
            let (p, rest) = b.split_at(n);
            *b = rest;
            p
        }
        2 => {
            let n = usize::try_from(varint(b)?).map_err(|_| Malformed)?;
            if b.len() < n {
                return Err(Malformed);
            }
            let (p, rest) = b.split_at(n);
            *b = rest;
            p
        }
        _ => return Err(Malformed),
    };
    Ok((num, wire, payload))
}

/// Estimated decoded bytes of one `QueryRecord`, and its attribute count and bytes.
fn scan_record(mut b: &[u8]) -> Result<(usize, usize, usize), Malformed> {
    let mut bytes = std::mem::size_of::<QueryRecord>();
    let (mut attrs, mut attr_bytes) = (0usize, 0usize);
    while !b.is_empty() {
        let (num, wire, p) = field(&mut b)?;
        match (num, wire) {
            // Strings: their text (at least one allocation).
            (1 | 2 | 3 | 5, 2) => bytes += p.len().max(MIN_ALLOCATION),
            // Packed floats; a vector may hold up to twice its length while it grows.
            (6 | 7, 2) => bytes += 2 * p.len().max(MIN_ALLOCATION),
            // One unpacked float.
            (6 | 7, 5) => bytes += 8,
            (10, 2) => {
                attrs += 1;
                attr_bytes += p.len();
                bytes += ATTRIBUTE_OVERHEAD + 2 * MIN_ALLOCATION + p.len();
            }
            _ => {}
        }
    }
    Ok((bytes, attrs, attr_bytes))
}

/// Scans a `RecordBatch`'s wire bytes without allocating.
pub fn scan(wire: &[u8]) -> Result<Scan, Malformed> {
    let (b_all, mut b) = (wire, wire);
    let mut s = Scan {
        decoded_bytes: std::mem::size_of::<RecordBatch>(),
        ..Scan::default()
    };
    while !b.is_empty() {
        let (num, wire, p) = field(&mut b)?;
        if let (2, 2) = (num, wire) {
            {
                let (bytes, attrs, attr_bytes) = scan_record(p)?;
                s.records += 1;
                s.max_attributes = s.max_attributes.max(attrs);
                s.attribute_bytes += attr_bytes;
                // The records vector, also up to twice its length while it grows.
                s.decoded_bytes += bytes + std::mem::size_of::<QueryRecord>();
            }
        }
    }
    s.batch_id = batch_id(b_all);
    Ok(s)
}

/// Limits a batch must meet before it is decoded.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_attributes: usize,
    pub max_attribute_bytes_per_batch: usize,
}

/// A batch as the ingest service receives it.
#[derive(Debug)]
pub enum Inbound {
    /// Decoded, its memory held by `grant` until it is processed.
    Batch { batch: RecordBatch, grant: Grant },
    /// Not decoded: every record is rejected with `reason`.
    Refused {
        batch_id: u64,
        records: usize,
        reason: RejectReason,
        detail: String,
    },
}

/// The ingest codec: acknowledgements out as protobuf, batches in through [`scan`].
#[derive(Debug, Clone)]
pub struct BatchCodec {
    pub budget: Arc<MemoryBudget>,
    pub limits: BatchLimits,
}

impl Codec for BatchCodec {
    type Encode = crate::proto::v1::BatchAck;
    type Decode = Inbound;
    type Encoder = AckEncoder;
    type Decoder = BatchDecoder;

    fn encoder(&mut self) -> AckEncoder {
        AckEncoder
    }

    fn decoder(&mut self) -> BatchDecoder {
        BatchDecoder(self.clone())
    }
}

/// Encodes acknowledgements.
#[derive(Debug)]
pub struct AckEncoder;

impl Encoder for AckEncoder {
    type Item = crate::proto::v1::BatchAck;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding an ack: {e}")))
    }
}

/// Decodes batches that pass admission.
#[derive(Debug)]
pub struct BatchDecoder(BatchCodec);

impl Decoder for BatchDecoder {
    type Item = Inbound;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Inbound>, Status> {
        let wire = buf.copy_to_bytes(buf.remaining());
        admit(wire, &self.0).map(Some)
    }
}

/// Admits one batch's wire bytes: refused whole over the limits or the budget, else decoded
/// with its memory paid for (fuzzed: never panics on input).
pub fn admit(wire: prost::bytes::Bytes, codec: &BatchCodec) -> Result<Inbound, Status> {
    {
        let scan = scan(&wire).map_err(|_| Status::invalid_argument("malformed RecordBatch"))?;
        let batch_id = scan.batch_id;
        let l = &codec.limits;
        let refuse = |reason, detail: String| {
            Ok(Inbound::Refused {
                batch_id,
                records: scan.records,
                reason,
                detail,
            })
        };
        if scan.records > l.max_records {
            let d = format!(
                "batch of {} records (limit {})",
                scan.records, l.max_records
            );
            return refuse(RejectReason::BadField, d);
        }
        if scan.max_attributes > l.max_attributes
            || scan.attribute_bytes > l.max_attribute_bytes_per_batch
        {
            let d = format!(
                "attributes: {} in one record, {} bytes in the batch (limits {} and {})",
                scan.max_attributes,
                scan.attribute_bytes,
                l.max_attributes,
                l.max_attribute_bytes_per_batch
            );
            return refuse(RejectReason::BadField, d);
        }
        let Some(grant) = codec.budget.try_take(scan.decoded_bytes) else {
            let d = format!(
                "sidecar memory budget full ({} bytes needed); batch shed",
                scan.decoded_bytes
            );
            return refuse(RejectReason::Overloaded, d);
        };
        let batch = RecordBatch::decode(wire)
            .map_err(|e| Status::invalid_argument(format!("malformed RecordBatch: {e}")))?;
        Ok(Inbound::Batch { batch, grant })
    }
}

/// The batch id of a batch's wire bytes (0 when absent or malformed).
fn batch_id(mut b: &[u8]) -> u64 {
    while !b.is_empty() {
        let Ok(key) = varint(&mut b) else { return 0 };
        if key == (1 << 3) {
            return varint(&mut b).unwrap_or(0);
        }
        // Skip the field: rewind to its key by reparsing it whole.
        let wire = (key & 7) as u8;
        let skip = match wire {
            0 => varint(&mut b).map(|_| 0),
            1 => Ok(8),
            5 => Ok(4),
            2 => varint(&mut b).map(|n| n as usize),
            _ => return 0,
        };
        match skip {
            Ok(n) if n <= b.len() => b = &b[n..],
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(attrs: usize, dim: usize) -> QueryRecord {
        QueryRecord {
            client_id: "client-1".into(),
            model: "m".into(),
            ts_ms: 7,
            input: vec![1.5; dim],
            output: vec![0.5, 0.5],
            attributes: (0..attrs).map(|i| (format!("k{i}"), "v".into())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_match_the_reference_decoder() {
        let b = RecordBatch {
            batch_id: 42,
            records: vec![record(0, 64), record(3, 8), record(1, 1)],
        };
        let wire = b.encode_to_vec();
        let s = scan(&wire).unwrap();
        assert_eq!(s.records, 3);
        assert_eq!(s.max_attributes, 3);
        assert_eq!(batch_id(&wire), 42);
        assert!(scan(&wire[..wire.len() - 1]).is_err(), "truncated");
    }

    #[test]
    fn tiny_records_are_priced_at_their_decoded_size() {
        let tiny = QueryRecord {
            client_id: "a".into(),
            input: vec![0.0],
            ..Default::default()
        };
        let b = RecordBatch {
            batch_id: 1,
            records: vec![tiny; 1000],
        };
        let wire = b.encode_to_vec();
        let s = scan(&wire).unwrap();
        assert!(wire.len() < 15_000);
        assert!(
            s.decoded_bytes > 20 * wire.len(),
            "{} for {}",
            s.decoded_bytes,
            wire.len()
        );
    }

    proptest! {
        /// For any batch, the scan agrees with prost on records and attributes and never
        /// estimates less than the decoded batch's own heap and struct bytes.
        #[test]
        fn scan_agrees_with_prost(
            recs in proptest::collection::vec((0usize..20, 0usize..100, "[a-z]{0,12}"), 0..30),
            id in any::<u64>(),
        ) {
            let b = RecordBatch {
                batch_id: id,
                records: recs.iter().map(|(a, d, c)| {
                    let mut r = record(*a, *d);
                    r.client_id = c.clone();
                    r
                }).collect(),
            };
            let wire = b.encode_to_vec();
            let s = scan(&wire).unwrap();
            prop_assert_eq!(s.records, b.records.len());
            prop_assert_eq!(batch_id(&wire), id);
            let max_attrs = b.records.iter().map(|r| r.attributes.len()).max().unwrap_or(0);
            prop_assert_eq!(s.max_attributes, max_attrs);
            let heap: usize = b.records.iter().map(|r| {
                std::mem::size_of::<QueryRecord>() + r.client_id.len() + r.model.len()
                    + 4 * (r.input.len() + r.output.len())
                    + r.attributes.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
            }).sum();
            prop_assert!(s.decoded_bytes >= heap);
        }

        /// Arbitrary bytes never panic the scan.
        #[test]
        fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = scan(&bytes);
            let _ = batch_id(&bytes);
        }
    }
}
