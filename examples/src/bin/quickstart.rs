//! Quick start: one service, every call kind, over QUIC on loopback, once per codec.
//!
//! ```text
//! cargo run --release -p courier-examples --bin quickstart
//! ```
//!
//! The service is a plain Rust trait. `#[courier::service]` turns it into a client stub
//! (`GreeterClient`) and a server dispatcher (`GreeterServer`); the codec and the transport are
//! picked when connecting, not in the trait. The server offers CBOR and XDR at once; each client
//! picks one in its handshake.

use std::time::Duration;

use courier::{CallOptions, Client, Codec, Context, RpcError, Server};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};
use courier_xdr::Xdr;
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
    /// Calls back the client's `Progress` service during the call, then returns.
    async fn work(&self, ctx: Context, steps: u32) -> u32;
}

/// A service the *client* exports, so the server can call back into it.
#[courier::service]
pub trait Progress {
    /// Reports how far the work is.
    async fn report(&self, step: u32, of: u32) -> ();
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
        // The client exported `Progress` on this same connection; call it back with the
        // codec this connection uses.
        match ctx.codec_name() {
            "xdr" => report(ctx.client(Xdr::default()), steps).await,
            _ => report(ctx.client(Cbor::default()), steps).await,
        }
    }
}

async fn report<C: Codec>(client: Result<Client<C>, RpcError>, steps: u32) -> u32 {
    let Ok(client) = client else { return 0 };
    let progress = ProgressClient::new(client);
    for step in 1..=steps {
        if progress.report(step, steps).await.is_err() {
            return step - 1;
        }
    }
    steps
}

struct PrintProgress(&'static str);

impl Progress for PrintProgress {
    async fn report(&self, step: u32, of: u32) {
        println!("[{}] callback : progress {step}/{of}", self.0);
    }
}

/// Every call kind, with one codec.
async fn tour<C: Codec>(
    codec: C,
    connector: &QuicConnector,
    logged: &mut mpsc::UnboundedReceiver<String>,
) -> Result<(), RpcError> {
    let tag = C::NAME;
    // Connect, exporting `Progress` so the server can call back.
    let client = Client::builder(codec)
        .export(ProgressServer::new(PrintProgress(tag)))
        .connect(connector)
        .await?;
    let greeter = GreeterClient::new(client);

    // 1. A call: waits for the reply. The method's own error type comes back typed.
    println!(
        "[{tag}] call     : {:?}",
        greeter.greet("Ada".into()).await?
    );
    println!(
        "[{tag}] call     : {:?}",
        greeter.greet(String::new()).await?
    );

    // 2. A blocking call, from a thread with no async runtime.
    let blocking = greeter.clone();
    let answer = std::thread::spawn(move || blocking.greet_blocking("Grace".into()))
        .join()
        .map_err(|_| RpcError::Internal("the blocking thread panicked".into()))??;
    println!("[{tag}] blocking : {answer:?}");

    // 3. A one-way call: returns once sent; the server logs it.
    greeter.log(format!("a line sent with {tag}")).await?;
    println!(
        "[{tag}] one-way  : sent; server logged {:?}",
        logged.recv().await
    );

    // 4. An acknowledged call: returns as soon as the server has it; the reply comes later.
    let pending = greeter.slow_count_acked(10).await?;
    println!("[{tag}] acked    : the server has the call");
    println!("[{tag}] acked    : reply {}", pending.await?);

    // 5. A callback: the server calls back into the client during the call.
    println!(
        "[{tag}] callback : work done, {} steps",
        greeter.work(3).await?
    );

    // 6. A deadline: the call gives up, and the server drops the handler.
    let hurried = greeter.with_options(CallOptions::new().timeout(Duration::from_millis(1)));
    println!("[{tag}] deadline : {:?}", hurried.slow_count(5).await);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Server: a development certificate, a QUIC listener on loopback, both codecs.
    let cert = DevCert::localhost()?;
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse()?,
        ServerTls::dev(&cert),
        QuicOptions::default(),
    )?;
    let addr = listener.local_addr()?;
    let (logs, mut logged) = mpsc::unbounded_channel();
    let server = Server::builder((Cbor::default(), Xdr::default()))
        .service(GreeterServer::new(MyGreeter { logs }))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    println!("serving Greeter over QUIC on {addr}");

    // Client: trust exactly that certificate, then take the tour once per codec.
    let connector = QuicConnector::new(
        addr,
        "localhost",
        ClientTls::trusting_dev(&cert),
        QuicOptions::default(),
    )?;
    tour(Cbor::default(), &connector, &mut logged).await?;
    tour(Xdr::default(), &connector, &mut logged).await?;
    Ok(())
}
