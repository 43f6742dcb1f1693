//! The codec × transport matrix: every codec over every transport at every payload size, with
//! the floors and a peer measured in the same run.
//!
//! ```text
//! cargo run --release -p courier-benches --bin matrix -- --json matrix.json --svg matrix.svg
//! ```
//!
//! Rows come in three kinds ([`RowKind`]):
//!
//! - **Courier**: the `echo(ByteBuf)` method of [`crate::quic::Echo`] through a generated
//!   client, with CBOR or XDR, in process, over shared memory, over QUIC and over TLS on TCP;
//! - **floors**: the least work that moves the same bytes the same way, to which each Courier
//!   row is compared: `memcpy` for in-process, a raw shared-memory spin ping-pong (copying the
//!   payload in and out) for shared memory, a raw quinn stream echo for QUIC, tarpc over plain
//!   TCP (no encryption) for TLS over TCP;
//! - **peers**: tarpc with its bincode transport over TCP loopback and over a Unix socket, and
//!   over TCP with rustls TLS 1.3 (tokio-rustls, the same certificate, ALPN and cipher suites
//!   as Courier's), the fair peer of Courier's encrypted rows; and tonic's unary gRPC calls
//!   over HTTP/2 with TLS 1.3 (its `tls-ring` feature, the same certificate).
//!
//! The rows of one transport (its floor, Courier with each codec, its peer) are measured in
//! turns: ten rounds (three with `--quick`) in which every row gets a slice of time, in an
//! order that rotates. A noisy machine drifts by tens of percent over a minute; measured in
//! turns, a row and its floor see the same machine, and their ratio holds still from run to
//! run. Latency and one-in-flight rates come from calls made one at a time; the 64-in-flight
//! rate from 64 tasks calling in a loop.
//!
//! Every server but the in-process one runs in a child process: this program started again
//! with a role in its environment. The spin floor's child sleeps between its turns. A binary that calls [`run`] must therefore call
//! [`child_role`] first thing in `main`, as the `matrix` binary does.

mod measure;
mod report;
mod targets;
mod veth;

pub use veth::{run_across, VethEnd};

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::spin::{Bells, SpinSegment, Waiting};
use measure::{Budget, Sample, SyncOp, Tally, Target};
use targets::{ChildServer, Scratch, MAX_PAYLOAD};

/// Errors of a matrix run: they say which row failed and why.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A codec Courier offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    /// CBOR (`courier-cbor`).
    Cbor,
    /// XDR (`courier-xdr`).
    Xdr,
}

/// A transport Courier offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportName {
    /// In process (`courier::transport::mem`); its peer-free floor is `memcpy`.
    Mem,
    /// Shared memory between processes (`courier-shm`); tarpc over a Unix socket beside it.
    Shm,
    /// QUIC over loopback (`courier-quic`); tarpc over TCP beside it.
    Quic,
    /// TLS 1.3 over TCP on loopback (`courier-tcp`); tarpc over TCP with the same TLS and
    /// tonic over HTTP/2 with TLS beside it, and tarpc over plain TCP as the unencrypted bound.
    Tcp,
}

/// The payload sizes: the bytes of the `echo` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Payload {
    /// No bytes: the cost of a call itself.
    #[value(name = "null")]
    #[serde(rename = "null")]
    Null,
    /// 1 KiB.
    #[value(name = "1k", alias = "1kib")]
    #[serde(rename = "1 KiB")]
    Kib1,
    /// 64 KiB.
    #[value(name = "64k", alias = "64kib")]
    #[serde(rename = "64 KiB")]
    Kib64,
    /// 1 MiB.
    #[value(name = "1m", alias = "1mib")]
    #[serde(rename = "1 MiB")]
    Mib1,
}

impl Payload {
    /// Every payload, smallest first.
    pub const ALL: [Payload; 4] = [Payload::Null, Payload::Kib1, Payload::Kib64, Payload::Mib1];

    /// The size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Payload::Null => 0,
            Payload::Kib1 => 1024,
            Payload::Kib64 => 64 * 1024,
            Payload::Mib1 => MAX_PAYLOAD,
        }
    }

    /// How the tables and the chart name it.
    pub fn label(self) -> &'static str {
        match self {
            Payload::Null => "null",
            Payload::Kib1 => "1 KiB",
            Payload::Kib64 => "64 KiB",
            Payload::Mib1 => "1 MiB",
        }
    }

    /// Whether rows of this payload report MB/s.
    pub fn is_large(self) -> bool {
        self.bytes() >= 64 * 1024
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Fewer samples, for a run of well under a minute.
    pub quick: bool,
    /// The codecs of the Courier rows.
    pub codecs: Vec<CodecName>,
    /// The transports of the Courier rows; the floors and peers of those transports come
    /// with them.
    pub transports: Vec<TransportName>,
    /// The payloads of every row.
    pub payloads: Vec<Payload>,
    /// Whether to run the tarpc and tonic rows.
    pub peers: bool,
    /// Whether to add raw quinn with calls framed on one long-lived stream to the QUIC group
    /// (`--stream-floor`): what opening a stream per call costs.
    pub stream_floor: bool,
    /// Whether to add quinn-proto driven on one task per connection to the QUIC group
    /// (`--one-task-floor`): what quinn's three tasks per packet cost.
    pub one_task_floor: bool,
    /// QUIC levers on top of the defaults, for Courier and raw quinn alike (`--quic`; see
    /// [`crate::quic::options`]).
    pub quic: String,
    /// The servers' end of a veth pair, when the run crosses one instead of loopback.
    pub veth: Option<VethEnd>,
}

impl Default for Config {
    /// Everything, with the full sample budget.
    fn default() -> Config {
        Config {
            quick: false,
            codecs: vec![CodecName::Cbor, CodecName::Xdr],
            transports: vec![
                TransportName::Mem,
                TransportName::Shm,
                TransportName::Quic,
                TransportName::Tcp,
            ],
            payloads: Payload::ALL.to_vec(),
            peers: true,
            stream_floor: false,
            one_task_floor: false,
            quic: String::new(),
            veth: None,
        }
    }
}

impl Config {
    fn has(&self, transport: TransportName) -> bool {
        self.transports.contains(&transport)
    }

    /// How many rows a run of this configuration produces.
    pub fn row_count(&self) -> usize {
        let per_payload: usize = self
            .transports
            .iter()
            .map(|&t| match t {
                // A row per codec and wait mode, the spin and futex floors, tarpc.
                TransportName::Shm => {
                    self.codecs.len() * ShmMode::ALL.len() + 3 + usize::from(self.peers)
                }
                TransportName::Mem => self.codecs.len() + 1,
                TransportName::Quic => {
                    self.codecs.len()
                        + 1
                        + usize::from(self.peers)
                        + usize::from(self.stream_floor)
                        + usize::from(self.one_task_floor)
                }
                TransportName::Tcp => self.codecs.len() + 1 + 2 * usize::from(self.peers),
            })
            .sum();
        per_payload * self.payloads.len()
    }
}

/// Which kind of row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowKind {
    /// Courier, with a codec over a transport.
    Courier,
    /// A floor: the least work that moves the bytes.
    Floor,
    /// Another RPC crate.
    Peer,
}

/// One measured row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The row's name: `courier cbor/shm`, `floor raw-quinn`, `tarpc bincode/tcp`, ….
    pub name: String,
    /// The group it was measured in, one per transport: `in-process`, `shared memory`,
    /// `QUIC`, `TLS over TCP` (empty in reports from before groups were recorded).
    #[serde(default)]
    pub group: String,
    /// Courier, floor or peer.
    pub kind: RowKind,
    /// The payload.
    pub payload: Payload,
    /// The payload in bytes.
    pub payload_bytes: usize,
    /// Median round trip with one call in flight, µs.
    pub p50_us: f64,
    /// 99th-percentile round trip with one call in flight, µs.
    pub p99_us: f64,
    /// Calls per second with one call in flight.
    pub calls_per_sec_1: f64,
    /// Calls per second with 64 calls in flight (floors have none).
    pub calls_per_sec_64: Option<f64>,
    /// For payloads of 64 KiB and more: MB (10⁶ bytes) per second with one call in flight,
    /// counting the bytes both ways for an echo and once for `memcpy`.
    pub mb_per_sec: Option<f64>,
    /// The floor this row is compared with.
    pub floor: Option<String>,
    /// This row's p50 divided by its floor's: how many times slower.
    pub p50_vs_floor: Option<f64>,
    /// This row's MB/s divided by its floor's: the share of the floor's bandwidth reached.
    pub mb_vs_floor: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When the run ended, in seconds since the Unix epoch.
    pub unix_time: u64,
    /// Whether it was a `--quick` run.
    pub quick: bool,
    /// CPUs available to the run.
    pub cpus: usize,
    /// The path the network rows crossed: `loopback`, or `veth pair, MTU …`.
    #[serde(default)]
    pub network: String,
    /// The QUIC levers of the run (`--quic`), empty for the defaults.
    #[serde(default)]
    pub quic: String,
    /// The rows, in the order they ran.
    pub rows: Vec<Row>,
}

const MEMCPY: &str = "floor memcpy";
const RAW_SPIN: &str = "floor raw-spin";
const RAW_FUTEX: &str = "floor raw-futex";
const RAW_EVENTFD: &str = "floor raw-eventfd";
const RAW_QUINN: &str = "floor raw-quinn";
/// Raw quinn with calls framed on one long-lived stream: what a stream per call costs.
const RAW_QUINN_STREAM: &str = "raw-quinn, one stream";
/// quinn-proto with each connection driven on one task: what quinn's three tasks per packet cost.
const ONE_TASK: &str = "quinn-proto, one task";
/// tarpc over plain TCP: the unencrypted bound of the TLS-over-TCP rows.
const PLAIN_TCP: &str = "floor tarpc bincode/tcp, no TLS";
const TARPC_TLS: &str = "tarpc bincode/tcp+tls";
const TONIC_TLS: &str = "tonic grpc/h2+tls";

/// How a shared-memory row's two ends wait for frames (`courier_shm::Wait`); each mode is a
/// row of its own, beside the floor that waits the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShmMode {
    /// Both ends poll: `Wait::Poll`. The row connects for each of its turns and leaves after
    /// it, since a polling link keeps a core busy for as long as it is open.
    Poll,
    /// Both ends spin, then park: the default `Wait::SpinThenPark`.
    Spin,
    /// Both ends park at once: `Wait::Park`.
    Park,
}

impl ShmMode {
    pub(crate) const ALL: [ShmMode; 3] = [ShmMode::Poll, ShmMode::Spin, ShmMode::Park];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ShmMode::Poll => "shm-poll",
            ShmMode::Spin => "shm-spin",
            ShmMode::Park => "shm-park",
        }
    }

    fn floor(self) -> &'static str {
        match self {
            ShmMode::Poll | ShmMode::Spin => RAW_SPIN,
            ShmMode::Park => RAW_FUTEX,
        }
    }

    pub(crate) fn wait(self) -> courier_shm::Wait {
        match self {
            ShmMode::Poll => courier_shm::Wait::Poll,
            ShmMode::Spin => courier_shm::Wait::default(),
            ShmMode::Park => courier_shm::Wait::Park,
        }
    }

    /// The child server's socket for this mode.
    pub(crate) fn socket(self) -> String {
        format!("courier-{}.sock", self.label())
    }
}

fn floor_of(transport: TransportName) -> &'static str {
    match transport {
        TransportName::Mem => MEMCPY,
        TransportName::Shm => RAW_SPIN,
        TransportName::Quic => RAW_QUINN,
        TransportName::Tcp => PLAIN_TCP,
    }
}

fn transport_label(transport: TransportName) -> &'static str {
    match transport {
        TransportName::Mem => "mem",
        TransportName::Shm => "shm",
        TransportName::Quic => "quic",
        TransportName::Tcp => "tcp",
    }
}

fn courier_name(codec: CodecName, transport: TransportName) -> String {
    format!(
        "courier {}/{}",
        codec_label(codec),
        transport_label(transport)
    )
}

fn codec_label(codec: CodecName) -> &'static str {
    match codec {
        CodecName::Cbor => "cbor",
        CodecName::Xdr => "xdr",
    }
}

/// Runs the child server this process was started as, if it was: `Some` with the outcome for
/// a child (which should then exit), `None` in the parent. Call it first thing in `main`.
pub fn child_role() -> Option<Result<(), Error>> {
    targets::child_role()
}

/// One row's subject.
enum Subject {
    /// Called through the runtime: Courier, raw quinn, tarpc.
    Async(Target),
    /// Called through the runtime, over a connection made for each turn and closed after it
    /// (a polling shared-memory link, which keeps a core busy while open).
    PerTurn {
        connect: Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<Target, Error>>>,
    },
    /// Run on this thread: `memcpy`, the raw spin ping-pong. `pause`, if any, runs after each
    /// turn (the spin floor's other side sleeps between its turns, leaving the CPU to others).
    Sync {
        op: SyncOp,
        pause: Option<Box<dyn FnMut()>>,
    },
}

/// One row of a group.
struct Entry {
    name: String,
    kind: RowKind,
    floor: Option<&'static str>,
    subject: Subject,
}

impl Entry {
    fn courier_shm(codec: CodecName, mode: ShmMode, subject: Subject) -> Entry {
        Entry {
            name: format!("courier {}/{}", codec_label(codec), mode.label()),
            kind: RowKind::Courier,
            floor: Some(mode.floor()),
            subject,
        }
    }

    fn courier(codec: CodecName, transport: TransportName, target: Target) -> Entry {
        Entry {
            name: courier_name(codec, transport),
            kind: RowKind::Courier,
            floor: Some(floor_of(transport)),
            subject: Subject::Async(target),
        }
    }

    fn other(name: &str, kind: RowKind, target: Target) -> Entry {
        Entry {
            name: name.to_owned(),
            kind,
            floor: None,
            subject: Subject::Async(target),
        }
    }
}

struct Runner<'a> {
    config: &'a Config,
    budget: Budget,
    progress: &'a ProgressBar,
    rt: tokio::runtime::Runtime,
    rows: Vec<Row>,
}

impl Runner<'_> {
    fn push(&mut self, group: &str, entry: &Entry, payload: Payload, sample: Sample) {
        let bytes = payload.bytes();
        let moved = if entry.name == MEMCPY {
            bytes
        } else {
            2 * bytes
        };
        self.rows.push(Row {
            name: entry.name.clone(),
            group: group.to_owned(),
            kind: entry.kind,
            payload,
            payload_bytes: bytes,
            p50_us: sample.p50_us,
            p99_us: sample.p99_us,
            calls_per_sec_1: sample.calls_per_sec_1,
            calls_per_sec_64: sample.calls_per_sec_64,
            mb_per_sec: payload
                .is_large()
                .then(|| moved as f64 * sample.calls_per_sec_1 / 1e6),
            floor: entry.floor.map(str::to_owned),
            p50_vs_floor: None,
            mb_vs_floor: None,
        });
        self.progress.inc(1);
    }

    /// One latency turn of `entry`.
    fn latency_turn(
        &self,
        entry: &mut Entry,
        data: &Bytes,
        slice: Duration,
        warmup: bool,
        tally: &mut Tally,
    ) -> Result<(), Error> {
        match &mut entry.subject {
            Subject::Async(target) => self
                .rt
                .block_on(measure::async_latency(target, data, slice, warmup, tally)),
            Subject::PerTurn { connect } => self.rt.block_on(async {
                let target = connect().await?;
                measure::async_latency(&target, data, slice, warmup, tally).await
            }),
            Subject::Sync { op, pause } => {
                let outcome = measure::sync_latency(op, data, slice, warmup, tally);
                if let Some(pause) = pause {
                    pause();
                }
                outcome
            }
        }
    }

    /// Measures a group of rows (a transport's floor, Courier per codec, its peer) at every
    /// payload, in turns: each round gives every row one slice, in an order that rotates, so
    /// that a row and its floor see the same machine.
    fn group(&mut self, label: &str, entries: &mut [Entry]) -> Result<(), Error> {
        let budget = self.budget;
        let payloads = self.config.payloads.clone();
        for payload in payloads {
            self.progress
                .set_message(format!("{label} · {}", payload.label()));
            let data = Bytes::from(vec![0x5au8; payload.bytes()]);
            let mut tallies: Vec<Tally> = entries.iter().map(|_| Tally::default()).collect();
            let failed = |entry: &Entry, e: Error| -> Error {
                format!("{} with {}: {e}", entry.name, payload.label()).into()
            };
            for (entry, tally) in entries.iter_mut().zip(&mut tallies) {
                self.latency_turn(entry, &data, budget.warmup, true, tally)
                    .map_err(|e| failed(entry, e))?;
            }
            let n = entries.len();
            for round in 0..budget.rounds as usize {
                for k in 0..n {
                    let i = (k + round) % n;
                    self.latency_turn(
                        &mut entries[i],
                        &data,
                        budget.latency,
                        false,
                        &mut tallies[i],
                    )
                    .map_err(|e| failed(&entries[i], e))?;
                }
            }
            for round in 0..budget.rounds as usize {
                for k in 0..n {
                    let i = (k + round) % n;
                    let tally = &mut tallies[i];
                    let flight = match &entries[i].subject {
                        Subject::Async(target) => self.rt.block_on(measure::async_flight(
                            target,
                            &data,
                            budget.flight,
                            tally,
                        )),
                        Subject::PerTurn { connect } => self.rt.block_on(async {
                            let target = connect().await?;
                            measure::async_flight(&target, &data, budget.flight, tally).await
                        }),
                        Subject::Sync { .. } => Ok(()),
                    };
                    flight.map_err(|e| failed(&entries[i], e))?;
                }
            }
            for (entry, tally) in entries.iter().zip(tallies) {
                self.push(label, entry, payload, tally.sample());
            }
        }
        Ok(())
    }

    fn ratios(&mut self) {
        let floors: Vec<(String, Payload, f64, Option<f64>)> = self
            .rows
            .iter()
            .filter(|r| r.kind == RowKind::Floor)
            .map(|r| (r.name.clone(), r.payload, r.p50_us, r.mb_per_sec))
            .collect();
        for row in &mut self.rows {
            let Some(floor) = &row.floor else { continue };
            let Some((_, _, p50, mb)) = floors
                .iter()
                .find(|(name, payload, ..)| name == floor && *payload == row.payload)
            else {
                continue;
            };
            row.p50_vs_floor = Some(row.p50_us / p50);
            row.mb_vs_floor = row.mb_per_sec.zip(*mb).map(|(ours, theirs)| ours / theirs);
        }
    }
}

fn memcpy_floor() -> Entry {
    let mut dst = vec![0u8; MAX_PAYLOAD];
    Entry {
        name: MEMCPY.to_owned(),
        kind: RowKind::Floor,
        floor: None,
        subject: Subject::Sync {
            op: Box::new(move |src: &[u8]| {
                let n = src.len();
                dst[..n].copy_from_slice(std::hint::black_box(src));
                std::hint::black_box(&dst[..n]).len()
            }),
            pause: None,
        },
    }
}

/// A raw floor's row and its child; `stop` ends the child.
struct RawFloor {
    entry: Entry,
    stop: Box<dyn FnOnce()>,
    _child: ChildServer,
}

/// The raw ping-pong with a child process, both sides waiting as `spinning`, `futex` or
/// `eventfd` says.
fn raw_floor(wait: &str) -> Result<RawFloor, Error> {
    let (segment, fd) = SpinSegment::create(MAX_PAYLOAD)?;
    let (name, how, child_how) = match wait {
        "futex" => (RAW_FUTEX, Waiting::Futex, Waiting::Futex),
        "eventfd" => {
            let (mine, theirs) = Bells::pair()?;
            (RAW_EVENTFD, Waiting::Bells(mine), Waiting::Bells(theirs))
        }
        _ => (RAW_SPIN, Waiting::Spin, Waiting::Spin),
    };
    let arg = match child_how {
        Waiting::Bells(bells) => format!("{fd},{},{}", bells.mine, bells.theirs),
        _ => fd.to_string(),
    };
    let child = ChildServer::spawn(&format!("raw-{wait}"), &arg);
    // SAFETY: closes our copy of the descriptor; the mapping and the child's copy remain.
    unsafe { libc::close(fd) };
    let child = child?;
    let segment = Rc::new(segment);
    let (ping, pause, stop) = (Rc::clone(&segment), Rc::clone(&segment), segment);
    let mut out = Vec::with_capacity(MAX_PAYLOAD);
    let mut round = 0u32;
    let entry = Entry {
        name: name.to_owned(),
        kind: RowKind::Floor,
        floor: None,
        subject: Subject::Sync {
            op: Box::new(move |data: &[u8]| {
                // Rounds run from 1 to u32::MAX - 2; the values above have meanings of their own.
                round = round % (u32::MAX - 2) + 1;
                ping.ping(round, data, &mut out, how)
            }),
            // A sleeping pong side needs no pause: it sleeps between pings anyway.
            pause: (how == Waiting::Spin)
                .then(|| Box::new(move || pause.pause()) as Box<dyn FnMut()>),
        },
    };
    Ok(RawFloor {
        entry,
        stop: Box::new(move || stop.stop(how)),
        _child: child,
    })
}

/// Runs the matrix `config` describes, advancing `progress` by one per row.
pub fn run(config: &Config, progress: &ProgressBar) -> Result<Report, Error> {
    targets::set_net(targets::Net {
        quic_spec: config.quic.clone(),
        host: config
            .veth
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |v| v.host),
        netns: config.veth.as_ref().map(|v| v.netns.clone()),
    })?;
    let scratch = Scratch::new()?;
    let dir = scratch.path("").display().to_string();
    let rt = crate::runtime()?;
    let mut runner = Runner {
        config,
        budget: Budget::new(config.quick),
        progress,
        rt,
        rows: Vec::new(),
    };
    let codecs = config.codecs.clone();
    if config.has(TransportName::Mem) {
        let mut entries = vec![memcpy_floor()];
        for &codec in &codecs {
            let target = runner.rt.block_on(targets::courier_mem(codec))?;
            entries.push(Entry::courier(codec, TransportName::Mem, target));
        }
        runner.group("in-process", &mut entries)?;
    }
    if config.has(TransportName::Shm) {
        let floors = ["spin", "futex", "eventfd"]
            .into_iter()
            .map(raw_floor)
            .collect::<Result<Vec<_>, _>>()?;
        let _server = ChildServer::spawn("courier-shm", &dir)?;
        let _peer = config
            .peers
            .then(|| ChildServer::spawn("tarpc-unix", &dir))
            .transpose()?;
        let mut entries = Vec::new();
        let mut stops = Vec::new();
        for floor in floors {
            entries.push(floor.entry);
            stops.push((floor.stop, floor._child));
        }
        for &codec in &codecs {
            for mode in ShmMode::ALL {
                let subject = if mode == ShmMode::Poll {
                    let path = scratch.path(&mode.socket());
                    Subject::PerTurn {
                        connect: Box::new(move || {
                            Box::pin(targets::courier_shm(codec, path.clone(), mode))
                        }),
                    }
                } else {
                    let path = scratch.path(&mode.socket());
                    Subject::Async(
                        runner
                            .rt
                            .block_on(targets::courier_shm(codec, path, mode))?,
                    )
                };
                entries.push(Entry::courier_shm(codec, mode, subject));
            }
        }
        if config.peers {
            let target = runner.rt.block_on(targets::tarpc_unix(&scratch))?;
            entries.push(Entry::other("tarpc bincode/unix", RowKind::Peer, target));
        }
        let outcome = runner.group("shared memory", &mut entries);
        for (stop, _child) in stops {
            stop();
        }
        outcome?;
    }
    if config.has(TransportName::Quic) {
        let floor = ChildServer::spawn("raw-quinn", &dir)?;
        let server = ChildServer::spawn("courier-quic", &dir)?;
        let peer = config
            .peers
            .then(|| ChildServer::spawn("tarpc-tcp", &dir))
            .transpose()?;
        let target = runner
            .rt
            .block_on(targets::raw_quinn(&scratch, floor.address.parse()?))?;
        let mut entries = vec![Entry::other(RAW_QUINN, RowKind::Floor, target)];
        let stream_floor = config
            .stream_floor
            .then(|| ChildServer::spawn("raw-quinn-stream", &dir))
            .transpose()?;
        if let Some(child) = &stream_floor {
            let target = runner
                .rt
                .block_on(targets::raw_quinn_stream(&scratch, child.address.parse()?))?;
            entries.push(Entry::other(RAW_QUINN_STREAM, RowKind::Peer, target));
        }
        let one_task = config
            .one_task_floor
            .then(|| ChildServer::spawn("onetask-quinn", &dir))
            .transpose()?;
        if let Some(child) = &one_task {
            let target = runner
                .rt
                .block_on(targets::onetask_quinn(&scratch, child.address.parse()?))?;
            entries.push(Entry::other(ONE_TASK, RowKind::Peer, target));
        }
        let addr = server.address.parse()?;
        for &codec in &codecs {
            let target = runner
                .rt
                .block_on(targets::courier_quic(codec, &scratch, addr))?;
            entries.push(Entry::courier(codec, TransportName::Quic, target));
        }
        if let Some(peer) = &peer {
            let target = runner
                .rt
                .block_on(targets::tarpc_tcp(peer.address.parse()?))?;
            entries.push(Entry::other("tarpc bincode/tcp", RowKind::Peer, target));
        }
        runner.group("QUIC", &mut entries)?;
    }
    if config.has(TransportName::Tcp) {
        let floor = ChildServer::spawn("tarpc-tcp", &dir)?;
        let server = ChildServer::spawn("courier-tcp", &dir)?;
        let peer = config
            .peers
            .then(|| ChildServer::spawn("tarpc-tls", &dir))
            .transpose()?;
        let tonic = config
            .peers
            .then(|| ChildServer::spawn("tonic-tls", &dir))
            .transpose()?;
        let target = runner
            .rt
            .block_on(targets::tarpc_tcp(floor.address.parse()?))?;
        let mut entries = vec![Entry::other(PLAIN_TCP, RowKind::Floor, target)];
        let addr = server.address.parse()?;
        for &codec in &codecs {
            let target = runner
                .rt
                .block_on(targets::courier_tcp(codec, &scratch, addr))?;
            entries.push(Entry::courier(codec, TransportName::Tcp, target));
        }
        if let Some(peer) = &peer {
            let target = runner
                .rt
                .block_on(targets::tarpc_tls(&scratch, peer.address.parse()?))?;
            entries.push(Entry::other(TARPC_TLS, RowKind::Peer, target));
        }
        if let Some(tonic) = &tonic {
            let target = runner
                .rt
                .block_on(targets::tonic_tls(&scratch, tonic.address.parse()?))?;
            entries.push(Entry::other(TONIC_TLS, RowKind::Peer, target));
        }
        runner.group("TLS over TCP", &mut entries)?;
    }
    runner.ratios();
    Ok(Report {
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        quick: config.quick,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        network: config.veth.as_ref().map_or("loopback".to_owned(), |v| {
            format!("veth pair, MTU {}", v.mtu)
        }),
        quic: config.quic.clone(),
        rows: runner.rows,
    })
}
