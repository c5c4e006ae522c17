//! The fuzz smoke pass CI runs on the stable toolchain: every decoder's fuzz target
//! (`tools/fuzz/targets.rs`) over its committed corpus (`tools/fuzz/corpus/<target>/`) and
//! a bounded number of deterministic mutations of it (bytes flipped, cut, repeated and
//! spliced). The coverage-guided runs use the same targets under cargo fuzz
//! (`tools/fuzz/README.md`) and add what they find to the corpus.

#[path = "../tools/fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

/// Mutated inputs per target in the smoke pass.
const MUTATIONS: u64 = 3000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th mutation of the corpus.
fn mutate(seeds: &[Vec<u8>], i: u64) -> Vec<u8> {
    let r = |k: u64| mix(i.wrapping_mul(31).wrapping_add(k));
    let mut v = seeds[(r(0) % seeds.len() as u64) as usize].clone();
    for step in 0..1 + r(1) % 4 {
        let at = |k| {
            if v.is_empty() {
                0
            } else {
                (r(k) % v.len() as u64) as usize
            }
        };
        match r(2 + step) % 6 {
            0 if !v.is_empty() => {
                let p = at(10 + step);
                v[p] ^= 1 << (r(20 + step) % 8);
            }
            1 => {
                let p = at(30 + step);
                v.truncate(p);
            }
            2 if !v.is_empty() => {
                let p = at(40 + step);
                v.insert(p, (r(50 + step) & 0xff) as u8);
            }
            3 => {
                let other = &seeds[(r(60 + step) % seeds.len() as u64) as usize];
                let p = at(70 + step);
                let q = if other.is_empty() {
                    0
                } else {
                    (r(80 + step) % other.len() as u64) as usize
                };
                v.truncate(p);
                v.extend_from_slice(&other[q..]);
            }
            4 if !v.is_empty() => {
                // A run repeated: nesting, long arrays, big numbers.
                let p = at(90 + step);
                let n = (r(100 + step) % 64) as usize;
                let chunk: Vec<u8> = v[p..(p + 8).min(v.len())].to_vec();
                for _ in 0..n {
                    v.splice(p..p, chunk.iter().copied());
                }
            }
            _ => {
                let p = at(110 + step);
                v.insert(
                    p,
                    b"\x00\"{[]},:0123456789e-.\n"[(r(120 + step) % 22) as usize],
                );
            }
        }
    }
    v
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    for (name, target) in targets::TARGETS {
        let seeds = corpus(name);
        assert!(seeds.len() >= 3, "{name}: corpus too small");
        for s in &seeds {
            target(s);
        }
        for i in 0..MUTATIONS {
            target(&mutate(&seeds, i ^ mix(name.len() as u64)));
        }
    }
}

/// Writes the protobuf seeds (`cargo test --test fuzz_corpus -- --ignored`); the JSON and
/// text seeds are written by hand.
#[test]
#[ignore]
fn write_binary_seeds() {
    use probewatch::proto::inference::{
        InferTensor, InferTensorContents, ModelInferRequest, ModelInferResponse,
    };
    use probewatch::proto::v1::{QueryRecord, RecordBatch};
    use prost::Message;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz/corpus");
    let frame = |m: Vec<u8>| {
        let mut f = vec![0u8];
        f.extend_from_slice(&(m.len() as u32).to_be_bytes());
        f.extend(m);
        f
    };
    let tensor = |shape: Vec<i64>, data: Vec<f32>| InferTensor {
        name: "x".into(),
        datatype: "FP32".into(),
        shape,
        contents: Some(InferTensorContents {
            fp32_contents: data,
            ..Default::default()
        }),
    };
    let dir = root.join("oip_grpc");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (shape, n)) in [(vec![1, 4], 4), (vec![2, 3], 6), (vec![3, 1], 3)]
        .into_iter()
        .enumerate()
    {
        let req = ModelInferRequest {
            model_name: "digits".into(),
            inputs: vec![tensor(shape.clone(), (0..n).map(|v| v as f32).collect())],
            ..Default::default()
        };
        let resp = ModelInferResponse {
            model_name: "digits".into(),
            outputs: vec![tensor(vec![shape[0], 2], vec![0.5; 2 * shape[0] as usize])],
            ..Default::default()
        };
        let mut seed = frame(req.encode_to_vec());
        seed.push(0);
        seed.extend(frame(resp.encode_to_vec()));
        std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
    }
    let dir = root.join("spool_segment");
    std::fs::create_dir_all(&dir).unwrap();
    let line = |seq: u64, id: &str| {
        let a = probewatch::vocab::Alert::example(id);
        format!("{}\n", serde_json::json!({"seq": seq, "alert": a}))
    };
    std::fs::write(dir.join("seed-0"), line(1, "pw-a")).unwrap();
    std::fs::write(dir.join("seed-1"), line(1, "pw-a") + &line(2, "pw-b")).unwrap();
    let torn = line(3, "pw-c") + &line(4, "pw-d")[..40];
    std::fs::write(dir.join("seed-2"), torn).unwrap();
    let dir = root.join("ingest_batch");
    std::fs::create_dir_all(&dir).unwrap();
    let rec = |c: &str, attrs: usize| QueryRecord {
        client_id: c.into(),
        model: "m".into(),
        ts_ms: 1_700_000_000_000,
        input: vec![0.5; 8],
        output: vec![0.25, 0.75],
        attributes: (0..attrs).map(|i| (format!("k{i}"), "v".into())).collect(),
        ..Default::default()
    };
    for (i, b) in [
        RecordBatch {
            batch_id: 1,
            records: vec![rec("a", 0)],
        },
        RecordBatch {
            batch_id: 2,
            records: vec![rec("a", 2), rec("b", 0), rec("c", 70)],
        },
        RecordBatch {
            batch_id: 3,
            records: vec![],
        },
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(dir.join(format!("seed-{i}")), b.encode_to_vec()).unwrap();
    }
}
