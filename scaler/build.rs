//! Compiles KEDA's external scaler contract (proto/externalscaler.proto)
//! with protox, a protobuf compiler in Rust: building Agimo needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/externalscaler.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_client(true).compile_fds(descriptors)?;
    Ok(())
}
