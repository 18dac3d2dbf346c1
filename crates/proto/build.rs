//! Generates the gRPC code with protox (pure Rust): no protoc needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/podflow.proto");
    let fds = protox::compile(["proto/podflow.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
