//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no
//! system `protoc`. The encoded descriptor set is kept for server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "shepherd/audit/v1/audit.proto",
    "shepherd/agentmanager/v1/agent_manager.proto",
    "shepherd/scheduler/v1/scheduler.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("shepherd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No generated `Client::connect(url)` constructor: it would clash with
        // the `AgentSession.Connect` RPC. Clients are built from a `Channel`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
