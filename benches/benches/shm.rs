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
use std::sync::atomic::{AtomicU32, Ordering};

use courier::{Client, Limits, Server};
use courier_benches::quic::{Echo, EchoClient, EchoServer};
use courier_cbor::Cbor;
use courier_shm::{ShmConnector, ShmListener, ShmOptions};
use criterion::{Criterion, Throughput};
use serde_bytes::ByteBuf;

const ROLE: &str = "COURIER_BENCH_ROLE";

struct Echoer;

impl Echo for Echoer {
    async fn echo(&self, data: ByteBuf) -> ByteBuf {
        data
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Two 32-bit words in a shared anonymous mapping, inherited by the child process.
struct Shared {
    base: *mut AtomicU32,
}

impl Shared {
    /// A shared page in a memory file the child inherits (no close-on-exec); the child maps it
    /// by the descriptor number it finds in its environment.
    fn create() -> (Shared, i32) {
        // SAFETY: plain syscalls creating and mapping a fresh 4 KiB memory file.
        unsafe {
            let fd = libc::memfd_create(c"courier-bench".as_ptr(), 0);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, 4096), 0);
            (Shared::map(fd), fd)
        }
    }

    /// # Safety
    /// `fd` must be a memory file of at least 4 KiB.
    unsafe fn map(fd: i32) -> Shared {
        // SAFETY: maps 4 KiB of the file shared; the caller vouches for its size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Shared { base: ptr.cast() }
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        // SAFETY: words 0 and 16 (separate cache lines) of a live 4 KiB mapping.
        unsafe { &*self.base.add(i * 16) }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in shared memory (no FUTEX_PRIVATE: the other
    // process waits on the same physical page).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in shared memory.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// The child side of the raw ping-pongs: answer every ping until told to stop (u32::MAX).
fn pong(shared: &Shared, sleeping: bool) {
    let (ping, pong) = (shared.word(0), shared.word(1));
    let mut seen = 0;
    loop {
        let v = loop {
            let v = ping.load(Ordering::Acquire);
            if v != seen {
                break v;
            }
            if sleeping {
                futex_wait(ping, seen);
            } else {
                std::hint::spin_loop();
            }
        };
        if v == u32::MAX {
            return;
        }
        seen = v;
        pong.store(v, Ordering::Release);
        if sleeping {
            futex_wake(pong);
        }
    }
}

fn ping(shared: &Shared, n: u32, sleeping: bool) {
    let (ping, pong) = (shared.word(0), shared.word(1));
    ping.store(n, Ordering::Release);
    if sleeping {
        futex_wake(ping);
    }
    loop {
        let v = pong.load(Ordering::Acquire);
        if v == n {
            return;
        }
        if sleeping {
            // Sleep only while the word still holds what we just saw.
            futex_wait(pong, v);
        } else {
            std::hint::spin_loop();
        }
    }
}

fn child(role: &str) {
    match role {
        "spin" | "futex" => {
            let fd: i32 = std::env::var("COURIER_BENCH_FD")
                .ok()
                .and_then(|v| v.parse().ok())
                .expect("fd");
            // SAFETY: the parent created this 4 KiB memfd and left it open across exec.
            let shared = unsafe { Shared::map(fd) };
            pong(&shared, role == "futex");
        }
        server => {
            let spin: u32 = server.trim_start_matches("server-").parse().unwrap_or(64);
            let path = std::env::var("COURIER_BENCH_PATH").expect("path");
            runtime().block_on(async move {
                let listener = ShmListener::bind(&path, options(spin)).expect("bind");
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

fn options(spin: u32) -> ShmOptions {
    ShmOptions::default().spin(spin)
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
        let (shared, fd) = Shared::create();
        let mut child = spawn(
            if sleeping { "futex" } else { "spin" },
            &[("COURIER_BENCH_FD", fd.to_string())],
        );
        let mut n = 0u32;
        c.bench_function(&format!("shm/null_round_trip/{name}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1) % (u32::MAX - 1);
                ping(&shared, n + 1, sleeping);
            })
        });
        // Tell the child to stop; it answers nothing to this one.
        shared.word(0).store(u32::MAX, Ordering::Release);
        futex_wake(shared.word(0));
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
    for (name, spin) in [("courier_polling", 100_000u32), ("courier_sleeping", 0)] {
        let path =
            std::env::temp_dir().join(format!("courier-bench-{}-{name}.sock", std::process::id()));
        let mut server = spawn(
            &format!("server-{spin}"),
            &[("COURIER_BENCH_PATH", path.display().to_string())],
        );
        let mut out = std::io::BufReader::new(server.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("ready");
        let client = rt.block_on(async {
            let connector = ShmConnector::new(&path, options(spin));
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .expect("connect")
        });
        let echo = EchoClient::new(client);
        c.bench_function(&format!("shm/null_round_trip/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(echo.echo(ByteBuf::new()).await.expect("call")) })
        });
        if spin > 0 {
            let mib = ByteBuf::from(vec![0x5au8; 1024 * 1024]);
            let mut g = c.benchmark_group("shm/echo_1mib");
            g.throughput(Throughput::Bytes(2 * mib.len() as u64));
            g.sample_size(30);
            g.bench_function(name, |b| {
                b.to_async(&rt)
                    .iter(|| async { black_box(echo.echo(mib.clone()).await.expect("call")) })
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
