//! The example servers stop gracefully on Ctrl-C (SIGINT): they report and exit cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn stops_on_ctrl_c(binary: &str, args: &[String]) {
    let mut server = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(first.starts_with("serving"), "{first}");
    let interrupted = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .expect("run kill");
    assert!(interrupted.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = server.wait().expect("the server exits");
    assert!(status.success(), "{status}: {rest:?}");
    assert!(
        rest.iter()
            .any(|l| l == "stopped: 0 calls were running, 0 cancelled"),
        "{rest:?}"
    );
}

#[test]
fn the_shared_memory_server_stops_on_ctrl_c() {
    let socket = std::env::temp_dir().join(format!("courier-ctrl-c-{}.sock", std::process::id()));
    stops_on_ctrl_c(
        env!("CARGO_BIN_EXE_shm_server"),
        &[socket.display().to_string()],
    );
    assert!(!socket.exists(), "the socket file is removed");
}

#[test]
fn the_quic_server_stops_on_ctrl_c() {
    let cert = std::env::temp_dir().join(format!("courier-ctrl-c-{}.pem", std::process::id()));
    stops_on_ctrl_c(
        env!("CARGO_BIN_EXE_quic_server"),
        &["127.0.0.1:0".to_owned(), cert.display().to_string()],
    );
    let _ = std::fs::remove_file(cert);
}
