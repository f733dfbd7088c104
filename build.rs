//! Compiles proto/ with the protoc binary vendored by `protoc-bin-vendored`,
//! so a fresh machine needs nothing but the Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build runs the protoc named by PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/switchyard/v1/agent.proto",
            "proto/switchyard/v1/admin.proto",
            "proto/switchyard/v1/peer.proto",
            "proto/switchyard/v1/gateway.proto",
        ],
        &["proto"],
    )?;
    // etcd's KV.Put, client only: the write benchmark compares against etcd.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd/kv.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
