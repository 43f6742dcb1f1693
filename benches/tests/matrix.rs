//! The matrix harness cannot rot: a quick run of the `matrix` binary at the null payload must
//! produce every row with finite positive figures, parseable JSON and a chart. No timing is
//! asserted.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const EXPECTED: [&str; 22] = [
    "floor memcpy",
    "courier cbor/mem",
    "courier xdr/mem",
    "floor raw-spin",
    "floor raw-futex",
    "floor raw-eventfd",
    "courier cbor/shm-poll",
    "courier cbor/shm-spin",
    "courier cbor/shm-park",
    "courier xdr/shm-poll",
    "courier xdr/shm-spin",
    "courier xdr/shm-park",
    "tarpc bincode/unix",
    "floor raw-quinn",
    "courier cbor/quic",
    "courier xdr/quic",
    "tarpc bincode/tcp",
    "floor tarpc bincode/tcp, no TLS",
    "courier cbor/tcp",
    "courier xdr/tcp",
    "tarpc bincode/tcp+tls",
    "tonic grpc/h2+tls",
];

/// The transports' groups, each a panel of the chart.
const GROUPS: [&str; 4] = ["in-process", "shared memory", "QUIC", "TLS over TCP"];

/// Runs the `matrix` binary with `args`, killed if it has not finished within 300 s; its
/// output, once it succeeded.
fn run_matrix(args: &[std::ffi::OsString]) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_matrix"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(Duration::from_secs(300)) else {
        // SAFETY: kill(2) on the child we spawned, which has not been reaped (its waiter is
        // still blocked); its own children die with it (PR_SET_PDEATHSIG).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("matrix {args:?} did not finish within 300 s");
    };
    let output = output.unwrap();
    assert!(
        output.status.success(),
        "matrix {args:?} failed: {:?}",
        output.status
    );
    output
}

fn positive(row: &Value, key: &str) -> bool {
    row[key].as_f64().is_some_and(|v| v.is_finite() && v > 0.0)
}

#[test]
fn quick_null_run_produces_every_row() {
    let dir = std::env::temp_dir().join(format!("courier-matrix-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("m.json"), dir.join("m.svg"));
    let mut args: Vec<std::ffi::OsString> = ["--quick", "--payload", "null", "--json"]
        .map(Into::into)
        .to_vec();
    args.extend([json.clone().into(), "--svg".into(), svg.clone().into()]);
    let output = run_matrix(&args);
    let table = String::from_utf8(output.stdout).unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["quick"], Value::Bool(true));
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), EXPECTED.len(), "{rows:#?}");
    for name in EXPECTED {
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row for {name}"));
        assert_eq!(row["payload"], "null", "{name}");
        assert!(
            GROUPS.contains(&row["group"].as_str().unwrap_or_default()),
            "{name}: group {}",
            row["group"]
        );
        for key in ["p50_us", "p99_us", "calls_per_sec_1"] {
            assert!(positive(row, key), "{name}: {key} = {}", row[key]);
        }
        assert!(row["p99_us"].as_f64() >= row["p50_us"].as_f64(), "{name}");
        match row["kind"].as_str().unwrap() {
            "floor" => assert!(row["floor"].is_null(), "{name}"),
            "courier" => {
                assert!(positive(row, "calls_per_sec_64"), "{name}");
                assert!(
                    positive(row, "p50_vs_floor"),
                    "{name}: no ratio to its floor"
                );
                // Each shared-memory mode beside the floor that waits the same way.
                let floor = row["floor"].as_str().unwrap_or_default();
                if name.contains("/shm-park") {
                    assert_eq!(floor, "floor raw-futex", "{name}");
                } else if name.contains("/shm-") {
                    assert_eq!(floor, "floor raw-spin", "{name}");
                }
            }
            "peer" => assert!(positive(row, "calls_per_sec_64"), "{name}"),
            other => panic!("{name}: unknown kind {other}"),
        }
        assert!(
            table.contains(&format!("| {name} | null |")),
            "{name} not in the table"
        );
    }
    // The network rows again, each divided by the TLS peers of the same run.
    assert!(
        table.contains("| row | payload | p50 ÷ tarpc+TLS |"),
        "{table}"
    );
    for name in [
        "courier cbor/quic",
        "courier xdr/quic",
        "courier cbor/tcp",
        "courier xdr/tcp",
    ] {
        assert_eq!(
            table.matches(&format!("| {name} | null |")).count(),
            2,
            "{name} is not set beside the peers"
        );
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg"), "not an SVG");
    assert!(
        EXPECTED.iter().all(|name| chart.contains(name)),
        "a row is missing from the legend"
    );
    assert!(
        GROUPS.iter().all(|group| chart.contains(group)),
        "a transport has no panel"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Network namespaces whose names the matrix's veth runs use.
fn matrix_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("courier-matrix-"))
        .map(str::to_owned)
        .collect()
}

/// `--veth`: the network rows cross a veth pair between two namespaces the run makes, and
/// the namespaces are gone when it ends. Needs root and `ip`, as the two-host test does.
#[test]
fn a_veth_run_crosses_the_pair_and_removes_it() {
    let dir = std::env::temp_dir().join(format!("courier-matrix-veth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("m.json");
    let mut args: Vec<std::ffi::OsString> = [
        "--quick",
        "--veth",
        "1500",
        "--payload",
        "null",
        "--codec",
        "xdr",
        "--no-peers",
        "--json",
    ]
    .map(Into::into)
    .to_vec();
    args.push(json.clone().into());
    run_matrix(&args);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["network"], "veth pair, MTU 1500");
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "floor raw-quinn",
            "courier xdr/quic",
            "floor tarpc bincode/tcp, no TLS",
            "courier xdr/tcp"
        ],
        "only the network rows cross the pair"
    );
    for row in rows {
        assert!(positive(row, "p50_us"), "{row}");
    }
    assert_eq!(
        matrix_namespaces(),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
