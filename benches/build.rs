//! Generates the tonic peer's echo service from `proto/echo.proto` (needs `protoc`, which
//! `scripts/install-deps` installs, as courier-binding's etcd client does).

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    // `bytes` fields as `bytes::Bytes`, so tonic's server hands the request's buffer back
    // without copying it, as Courier's and tarpc's echo servers do with theirs.
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/echo.proto"], &["proto"])
}
