//! The codec × transport matrix: every codec over every transport at every payload, beside
//! the floors and tarpc, in one run.
//!
//! ```text
//! cargo run --release -p courier-benches --bin matrix -- --json matrix.json --svg matrix.svg
//! cargo run --release -p courier-benches --bin matrix -- --quick --transport shm,quic --payload null
//! cargo run --release -p courier-benches --bin matrix -- --veth 9000        # as root
//! cargo run --release -p courier-benches --bin matrix -- --quic payload=16k,rcvbuf=4m
//! ```
//!
//! Prints a markdown table on stdout and a progress line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use courier_benches::matrix::{self, CodecName, Config, Payload, TransportName};
use indicatif::{ProgressBar, ProgressStyle};

/// Courier's codec × transport matrix, with floors and tarpc measured in the same run.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A run of well under a minute: fewer samples per row.
    #[arg(long)]
    quick: bool,
    /// Only these codecs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    codec: Vec<CodecName>,
    /// Only these transports (comma-separated); their floors and peers come with them.
    #[arg(long, value_delimiter = ',')]
    transport: Vec<TransportName>,
    /// Only these payloads (comma-separated).
    #[arg(long, value_delimiter = ',')]
    payload: Vec<Payload>,
    /// Leave out the tarpc and tonic rows.
    #[arg(long)]
    no_peers: bool,
    /// Add raw quinn with calls framed on one long-lived stream to the QUIC rows: what a
    /// stream per call costs.
    #[arg(long)]
    stream_floor: bool,
    /// Add quinn-proto with each connection driven on one task to the QUIC rows: what
    /// quinn's three tasks per packet cost (small payloads; one datagram per system call).
    #[arg(long)]
    one_task_floor: bool,
    /// Also write the report as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Also draw the latency chart as SVG here.
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
    /// Run the network rows (QUIC and TCP, the default transports then) across a veth pair
    /// with this MTU between two network namespaces the run makes, instead of loopback.
    /// Needs root and `ip`.
    #[arg(long, value_name = "MTU")]
    veth: Option<u32>,
    /// QUIC levers for Courier and raw quinn alike, on top of the defaults:
    /// `payload=BYTES,rcvbuf=BYTES,sndbuf=BYTES,window=BYTES,cc=cubic|newreno|bbr,gso=on|off`.
    #[arg(long, value_name = "LEVERS", default_value = "")]
    quic: String,
}

fn main() -> ExitCode {
    if let Some(outcome) = matrix::child_role() {
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("matrix child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    let veth = match matrix::VethEnd::inside() {
        Ok(veth) => veth,
        Err(e) => {
            eprintln!("matrix: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(mtu), None) = (args.veth, &veth) {
        // Outside the pair: make it, run again inside the client's namespace, clean up.
        return match matrix::run_across(mtu) {
            Ok(status) if status.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("matrix: veth pair: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut config = Config {
        quick: args.quick,
        peers: !args.no_peers,
        stream_floor: args.stream_floor,
        one_task_floor: args.one_task_floor,
        quic: args.quic,
        ..Config::default()
    };
    if veth.is_some() {
        config.transports = vec![TransportName::Quic, TransportName::Tcp];
    }
    config.veth = veth;
    if !args.codec.is_empty() {
        config.codecs = args.codec;
    }
    if !args.transport.is_empty() {
        config.transports = args.transport;
    }
    if !args.payload.is_empty() {
        config.payloads = args.payload;
    }

    let progress = ProgressBar::new(config.row_count() as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = match matrix::run(&config, &progress) {
        Ok(report) => report,
        Err(e) => {
            progress.abandon();
            eprintln!("matrix: {e}");
            return ExitCode::FAILURE;
        }
    };
    progress.finish_and_clear();
    print!("{}", report.markdown());
    for (path, write) in [
        (&args.json, matrix::Report::write_json as fn(&_, &_) -> _),
        (&args.svg, matrix::Report::write_svg),
    ] {
        if let Some(path) = path {
            if let Err(e) = write(&report, path) {
                eprintln!("matrix: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
