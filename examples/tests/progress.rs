//! The progress example runs: ten reports in order, then the end, in process and across
//! processes over shared memory.

use std::process::Command;

fn runs(mode: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_progress"))
        .arg(mode)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<&str> = stdout.lines().filter(|l| l.contains("step ")).collect();
    let expected: Vec<String> = (1..=10).map(|i| format!("  step {i}/10")).collect();
    assert_eq!(steps, expected, "{stdout}");
    assert!(stdout.ends_with("done\n"), "{stdout}");
}

#[test]
fn progress_reports_arrive_in_process() {
    runs("mem");
}

#[test]
fn progress_reports_arrive_across_processes() {
    runs("shm");
}
