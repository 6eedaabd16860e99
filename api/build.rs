//! Compiles `proto/` with `protox` (pure Rust: no system `protoc`) into tonic code
//! and an encoded file descriptor set for server reflection.
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/auth/v1/auth.proto"];
    println!("cargo:rerun-if-changed=proto");
    // `compile` includes every imported file (google/protobuf/timestamp.proto), which
    // reflection needs so that `grpcurl describe` can resolve the message types.
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds_path = out.join("auth_descriptor.bin");
    fs::write(&fds_path, fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
