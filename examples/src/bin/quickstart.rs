//! Quick start: one service, every call kind, over the in-process transport with CBOR.
//!
//! ```text
//! cargo run --release -p courier-examples --bin quickstart
//! ```
//!
//! The service is a plain Rust trait. `#[courier::service]` turns it into a client stub
//! (`GreeterClient`) and a server dispatcher (`GreeterServer`); the codec and the transport are
//! picked when connecting, not in the trait.

use std::time::Duration;

use courier::transport::mem;
use courier::{CallOptions, Client, Context, RpcError, Server};
use courier_cbor::Cbor;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A typed application error: it reaches the caller as itself, not as a string.
#[derive(Debug, Serialize, Deserialize)]
pub enum GreetError {
    /// The name was empty.
    EmptyName,
}

/// The service the server offers.
#[courier::service]
pub trait Greeter {
    /// Greets someone by name.
    async fn greet(&self, name: String) -> Result<String, GreetError>;
    /// Takes a while: used to show acknowledged calls and deadlines.
    async fn slow_count(&self, upto: u32) -> u32;
    /// Fire and forget: no reply ever comes.
    #[oneway]
    async fn log(&self, line: String);
    /// Replies by calling back the client's `Progress` service, then returns.
    async fn work(&self, ctx: Context, steps: u32) -> u32;
}

/// A service the *client* exports, so the server can call back into it.
#[courier::service]
pub trait Progress {
    /// Reports how far the work is.
    async fn report(&self, step: u32, of: u32);
}

struct MyGreeter {
    logs: mpsc::UnboundedSender<String>,
}

impl Greeter for MyGreeter {
    async fn greet(&self, name: String) -> Result<String, GreetError> {
        if name.is_empty() {
            return Err(GreetError::EmptyName);
        }
        Ok(format!("Hello, {name}!"))
    }

    async fn slow_count(&self, upto: u32) -> u32 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        (1..=upto).sum()
    }

    async fn log(&self, line: String) {
        let _ = self.logs.send(line);
    }

    async fn work(&self, ctx: Context, steps: u32) -> u32 {
        // The client exported `Progress` on this same connection: call it back.
        if let Ok(client) = ctx.client(Cbor::default()) {
            let progress = ProgressClient::new(client);
            for step in 1..=steps {
                let _ = progress.report(step, steps).await;
            }
        }
        steps
    }
}

struct PrintProgress;

impl Progress for PrintProgress {
    async fn report(&self, step: u32, of: u32) {
        println!("  callback  : progress {step}/{of}");
    }
}

#[tokio::main]
async fn main() -> Result<(), RpcError> {
    // Server: register services, pick the codec(s), serve a listener.
    let (logs, mut logged) = mpsc::unbounded_channel();
    let server = Server::builder(Cbor::default())
        .service(GreeterServer::new(MyGreeter { logs }))
        .build();
    let listener = mem::Listener::bind("quickstart")?;
    tokio::spawn(async move { server.serve(listener).await });

    // Client: same codec, export `Progress` for callbacks, connect by name.
    let client = Client::builder(Cbor::default())
        .export(ProgressServer::new(PrintProgress))
        .connect(&mem::Dialer::new("quickstart"))
        .await?;
    let greeter = GreeterClient::new(client);

    // 1. A call: waits for the reply. The method's own error type comes back typed.
    println!("call      : {:?}", greeter.greet("Ada".into()).await?);
    println!("call      : {:?}", greeter.greet(String::new()).await?);

    // 2. A blocking call, from a thread with no async runtime.
    let blocking = greeter.clone();
    let answer = std::thread::spawn(move || blocking.greet_blocking("Grace".into()))
        .join()
        .map_err(|_| RpcError::Internal("the blocking thread panicked".into()))??;
    println!("blocking  : {answer:?}");

    // 3. A one-way call: returns once sent; the server logs it.
    greeter.log("a line for the server's log".into()).await?;
    println!("one-way   : sent; server logged {:?}", logged.recv().await);

    // 4. An acknowledged call: returns as soon as the server has it; the reply comes later.
    let pending = greeter.slow_count_acked(10).await?;
    println!("acked     : the server has the call");
    println!("acked     : reply {}", pending.await?);

    // 5. A callback reply: the server calls back into the client during the call.
    println!("callback  : work done, {} steps", greeter.work(3).await?);

    // 6. A deadline: the call gives up, and the server drops the handler.
    let hurried = greeter.with_options(CallOptions::new().timeout(Duration::from_millis(1)));
    println!("deadline  : {:?}", hurried.slow_count(5).await);
    Ok(())
}
