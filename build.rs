//! Compiles `proto/` with protox (pure Rust), so a clean machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/probewatch/v1/ingest.proto",
        "proto/probewatch/v1/query.proto",
        "proto/probewatch/v1/control.proto",
        "proto/inference/grpc_predict_v2.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("probewatch_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Replicas echo it to each other (bincode over Redis), and state snapshots keep it.
        .type_attribute(
            ".probewatch.v1.LlmQuery",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .compile_fds(fds)?;
    Ok(())
}
