//! The matrix harness cannot rot: a quick run of the `matrix` binary at the null payload must
//! produce every row with finite positive figures, parseable JSON and a chart. No timing is
//! asserted.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const EXPECTED: [&str; 21] = [
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
];

/// The transports' groups, each a panel of the chart.
const GROUPS: [&str; 4] = ["in-process", "shared memory", "QUIC", "TLS over TCP"];

fn positive(row: &Value, key: &str) -> bool {
    row[key].as_f64().is_some_and(|v| v.is_finite() && v > 0.0)
}

#[test]
fn quick_null_run_produces_every_row() {
    let dir = std::env::temp_dir().join(format!("courier-matrix-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("m.json"), dir.join("m.svg"));
    let child = Command::new(env!("CARGO_BIN_EXE_matrix"))
        .args(["--quick", "--payload", "null", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
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
        panic!("matrix --quick did not finish within 300 s");
    };
    let output = output.unwrap();
    assert!(
        output.status.success(),
        "matrix failed: {:?}",
        output.status
    );

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
