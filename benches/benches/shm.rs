//! Courier over shared memory between two processes, against the floors measured in the same run:
//! a raw cross-process ping-pong on a shared atomic (both sides busy-spinning), the same
//! ping-pong sleeping on a futex, and `memcpy` bandwidth.
//!
//! ```text
//! cargo bench -p courier-benches --bench shm
//! ```
//!
//! The other process is this bench binary started again with `COURIER_BENCH_ROLE` set.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use courier::{Client, Limits, Server};
use courier_benches::in_task;
use courier_benches::quic::{EchoClient, EchoServer, Echoer};
use courier_benches::spin::{SpinSegment, Waiting};
use courier_cbor::Cbor;
use courier_shm::{ShmConnector, ShmListener, ShmOptions, Wait};
use criterion::{Criterion, Throughput};
use serde_bytes::ByteBuf;

const ROLE: &str = "COURIER_BENCH_ROLE";

fn runtime() -> tokio::runtime::Runtime {
    courier_benches::runtime().expect("runtime")
}

fn child(role: &str) {
    match role {
        "spin" | "futex" => {
            let fd: i32 = std::env::var("COURIER_BENCH_FD")
                .ok()
                .and_then(|v| v.parse().ok())
                .expect("fd");
            // SAFETY: the parent created this memfd with capacity 0 and left it open across exec.
            let segment = unsafe { SpinSegment::map(fd, 0) }.expect("map");
            segment.pong(if role == "futex" {
                Waiting::Futex
            } else {
                Waiting::Spin
            });
        }
        server => {
            let wait = server.trim_start_matches("server-").to_owned();
            let path = std::env::var("COURIER_BENCH_PATH").expect("path");
            runtime().block_on(async move {
                let listener = ShmListener::bind(&path, options(&wait)).expect("bind");
                let server = Server::builder(Cbor::default())
                    .service(EchoServer::new(Echoer))
                    .limits(Limits::default())
                    .build();
                println!("READY");
                let _ = server.serve(listener).await;
            });
        }
    }
}

/// Both ends wait the same way: `poll`, `park`, or anything else for the default.
fn options(wait: &str) -> ShmOptions {
    ShmOptions::default().wait(match wait {
        "poll" => Wait::Poll,
        "park" => Wait::Park,
        _ => Wait::default(),
    })
}

fn spawn(role: &str, envs: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("exe"));
    command
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        command.env(k, v);
    }
    command.spawn().expect("spawn")
}

fn raw_floors(c: &mut Criterion) {
    for (name, sleeping) in [("raw_spin", false), ("raw_futex", true)] {
        let (segment, fd) = SpinSegment::create(0).expect("segment");
        let mut child = spawn(
            if sleeping { "futex" } else { "spin" },
            &[("COURIER_BENCH_FD", fd.to_string())],
        );
        let how = if sleeping {
            Waiting::Futex
        } else {
            Waiting::Spin
        };
        let mut n = 0u32;
        let mut out = Vec::new();
        c.bench_function(&format!("shm/null_round_trip/{name}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1) % (u32::MAX - 2);
                segment.ping(n + 1, &[], &mut out, how);
            })
        });
        // Tell the child to stop; it answers nothing to this one.
        segment.stop(how);
        let _ = child.wait();
        let _ = child.kill();
    }
    let src = vec![7u8; 1024 * 1024];
    let mut dst = vec![0u8; 1024 * 1024];
    let mut g = c.benchmark_group("shm/copy_1mib");
    g.throughput(Throughput::Bytes(src.len() as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

fn courier_shm(c: &mut Criterion) {
    let rt = runtime();
    for (name, wait) in [("courier_polling", "poll"), ("courier_sleeping", "park")] {
        let path =
            std::env::temp_dir().join(format!("courier-bench-{}-{name}.sock", std::process::id()));
        let mut server = spawn(
            &format!("server-{wait}"),
            &[("COURIER_BENCH_PATH", path.display().to_string())],
        );
        let mut out = std::io::BufReader::new(server.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("ready");
        let client = rt.block_on(async {
            let connector = ShmConnector::new(&path, options(wait));
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .expect("connect")
        });
        let echo = Arc::new(EchoClient::new(client));
        c.bench_function(&format!("shm/null_round_trip/{name}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let echo = echo.clone();
                in_task(iters, move || {
                    let echo = echo.clone();
                    async move { echo.echo(ByteBuf::new()).await.expect("call") }
                })
            })
        });
        if wait == "poll" {
            let mib = ByteBuf::from(vec![0x5au8; 1024 * 1024]);
            let mut g = c.benchmark_group("shm/echo_1mib");
            g.throughput(Throughput::Bytes(2 * mib.len() as u64));
            g.sample_size(30);
            g.bench_function(name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (echo, mib) = (echo.clone(), mib.clone());
                    in_task(iters, move || {
                        let (echo, mib) = (echo.clone(), mib.clone());
                        async move { echo.echo(mib).await.expect("call") }
                    })
                })
            });
            g.finish();
        }
        drop(echo);
        let _ = server.kill();
        let _ = server.wait();
        let _ = std::fs::remove_file(&path);
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    raw_floors(&mut c);
    courier_shm(&mut c);
    c.final_summary();
}
