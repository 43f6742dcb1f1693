//! The tutorial runs: a server registered in a real etcd, found by name over shared memory
//! (same host, by default) and over QUIC (when the client prefers the network).

use std::process::Command;

#[test]
fn the_directory_demo_finds_the_server_over_shm_and_over_quic() {
    let out = Command::new(env!("CARGO_BIN_EXE_directory"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("registered `greeter` instance"), "{stdout}");
    assert!(
        stdout.contains("client (same host): found `greeter` over shm at shm:///"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "client (prefers the network): found `greeter` over quic at quic://127.0.0.1:"
        ),
        "{stdout}"
    );
}
