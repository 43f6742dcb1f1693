//! Progress reports from a long job, through a `Callback<T>` parameter.
//!
//! ```text
//! cargo run -p courier-examples --bin progress [shm|mem]
//! ```
//!
//! The server's `run` handler starts the job and returns at once; the job reports each step to
//! the caller's callback, then drops it, which closes the caller's channel. With `shm`, the
//! server is a child process and the reports cross shared memory; by default, both run in this
//! process (`mem`).

use std::time::Duration;

use courier::address::Transports;
use courier::{Callback, Client, Server};
use courier_cbor::Cbor;

/// A job runner.
#[courier::service]
pub trait Jobs {
    /// Starts a job of `steps` steps, each reported to `progress` as `(step, of)`; returns the
    /// job's name at once.
    async fn run(&self, steps: u32, progress: Callback<(u32, u32)>) -> String;
}

struct Runner;

impl Jobs for Runner {
    async fn run(&self, steps: u32, progress: Callback<(u32, u32)>) -> String {
        tokio::spawn(async move {
            for step in 1..=steps {
                // The work of one step.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if progress.call((step, steps)).await.is_err() {
                    return; // the caller stopped listening, or left
                }
            }
            // Dropping `progress` here tells the caller the job is done.
        });
        format!("job of {steps} steps")
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "mem".into());
    Transports::install(courier_shm::ShmTransport::default());
    let socket = std::env::temp_dir().join(format!("courier-progress-{}.sock", std::process::id()));
    let address = match mode.as_str() {
        "serve" => {
            // The child process of `shm` mode.
            let at = args.next().ok_or("serve needs an address")?;
            let server = Server::builder(Cbor::default())
                .service(JobsServer::new(Runner))
                .build();
            let listeners = server.listen([at])?;
            println!("ready");
            server.serve_all(listeners).await?;
            return Ok(());
        }
        "shm" => format!("shm://{}", socket.display()),
        _ => "mem://jobs".to_owned(),
    };
    let mut child = None;
    if mode == "shm" {
        let mut process = tokio::process::Command::new(std::env::current_exe()?)
            .args(["serve", &address])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = process.stdout.take().ok_or("no stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        lines.next_line().await?.ok_or("the server did not start")?;
        child = Some(process);
    } else {
        let server = Server::builder(Cbor::default())
            .service(JobsServer::new(Runner))
            .build();
        let listeners = server.listen([address.as_str()])?;
        tokio::spawn(async move { server.serve_all(listeners).await });
    }

    let jobs = JobsClient::new(
        Client::builder(Cbor::default())
            .connect_to(&address)
            .await?,
    );
    let (progress, mut reports) = Callback::channel(4);
    let name = jobs.run(10, progress).await?;
    println!("started {name} over {mode}");
    while let Some((step, of)) = reports.recv().await {
        println!("  step {step}/{of}");
    }
    println!("done");
    drop(child);
    let _ = std::fs::remove_file(socket);
    Ok(())
}
