//! Calls over real loopback UDP with real TLS.
#![allow(clippy::unwrap_used, missing_docs)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use courier::{
    CallOptions, Client, Context, Peer, ReconnectPolicy, RpcError, Server, TransportError,
};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, Semaphore};

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

#[courier::service]
pub trait Lab {
    /// Returns its argument.
    async fn echo(&self, v: u64) -> u64;
    /// Returns the bytes it was given.
    async fn blob(&self, b: ByteBuf) -> ByteBuf;
    /// Reports start, then waits for the gate.
    async fn hold(&self, tag: u32) -> u32;
    /// The same, idempotent: re-sent after a reconnect, even to a restarted server.
    #[idempotent]
    async fn hold_idempotent(&self, tag: u32) -> u32;
    /// One-way: reports the value.
    #[oneway]
    async fn note(&self, v: u64);
    /// Calls the client's `Doubler` back on the same connection.
    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String>;
    /// The caller's certificate chain, as the handler sees it.
    async fn peer_certs(&self, ctx: Context) -> Vec<Vec<u8>>;
}

#[courier::service]
pub trait Doubler {
    /// Doubles.
    async fn double(&self, x: u32) -> u32;
}

struct LabImpl {
    started: mpsc::UnboundedSender<u32>,
    finished: mpsc::UnboundedSender<u32>,
    dropped: mpsc::UnboundedSender<u32>,
    noted: mpsc::UnboundedSender<u64>,
    gate: Arc<Semaphore>,
}

/// Reports its tag if the handler is dropped before it finishes.
struct DropGuard(Option<(u32, mpsc::UnboundedSender<u32>)>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some((tag, tx)) = self.0.take() {
            let _ = tx.send(tag);
        }
    }
}

impl Lab for LabImpl {
    async fn echo(&self, v: u64) -> u64 {
        v
    }
    async fn blob(&self, b: ByteBuf) -> ByteBuf {
        b
    }
    async fn hold(&self, tag: u32) -> u32 {
        let mut guard = DropGuard(Some((tag, self.dropped.clone())));
        let _ = self.started.send(tag);
        self.gate.acquire().await.unwrap().forget();
        guard.0 = None;
        let _ = self.finished.send(tag);
        tag
    }
    async fn hold_idempotent(&self, tag: u32) -> u32 {
        self.hold(tag).await
    }
    async fn note(&self, v: u64) {
        let _ = self.noted.send(v);
    }
    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String> {
        let client = ctx.client(Cbor::default()).map_err(|e| e.to_string())?;
        DoublerClient::new(client)
            .double(x)
            .await
            .map_err(|e| e.to_string())
    }
    async fn peer_certs(&self, ctx: Context) -> Vec<Vec<u8>> {
        match ctx.peer() {
            Peer::Network { certificates, .. } => certificates.clone(),
            _ => Vec::new(),
        }
    }
}

struct Probes {
    started: mpsc::UnboundedReceiver<u32>,
    finished: mpsc::UnboundedReceiver<u32>,
    dropped: mpsc::UnboundedReceiver<u32>,
    noted: mpsc::UnboundedReceiver<u64>,
    gate: Arc<Semaphore>,
}

fn lab() -> (LabImpl, Probes) {
    let (started, started_rx) = mpsc::unbounded_channel();
    let (finished, finished_rx) = mpsc::unbounded_channel();
    let (dropped, dropped_rx) = mpsc::unbounded_channel();
    let (noted, noted_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let probes = Probes {
        started: started_rx,
        finished: finished_rx,
        dropped: dropped_rx,
        noted: noted_rx,
        gate: Arc::clone(&gate),
    };
    (
        LabImpl {
            started,
            finished,
            dropped,
            noted,
            gate,
        },
        probes,
    )
}

struct Running {
    addr: SocketAddr,
    cert: DevCert,
    probes: Probes,
}

fn serve(tls: ServerTls, cert: DevCert, options: QuicOptions) -> Running {
    let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), tls, options).unwrap();
    let addr = listener.local_addr().unwrap();
    let (lab, probes) = lab();
    let server = Server::builder(Cbor::default())
        .service(LabServer::new(lab))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    Running { addr, cert, probes }
}

fn start() -> Running {
    let cert = DevCert::localhost().unwrap();
    serve(ServerTls::dev(&cert), cert, QuicOptions::default())
}

async fn connect(r: &Running) -> LabClient<Cbor> {
    connect_with(r, Client::builder(Cbor::default())).await
}

async fn lab_via(connector: &QuicConnector) -> LabClient<Cbor> {
    LabClient::new(
        Client::builder(Cbor::default())
            .connect(connector)
            .await
            .unwrap(),
    )
}

async fn connect_with(r: &Running, builder: courier::ClientBuilder<Cbor>) -> LabClient<Cbor> {
    let connector = QuicConnector::new(
        r.addr,
        "localhost",
        ClientTls::trusting_dev(&r.cert),
        QuicOptions::default(),
    )
    .unwrap();
    LabClient::new(builder.connect(&connector).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_kind_over_quic() {
    within(async {
        let mut r = start();
        struct Twice;
        impl Doubler for Twice {
            async fn double(&self, x: u32) -> u32 {
                x * 2
            }
        }
        let lab = connect_with(
            &r,
            Client::builder(Cbor::default()).export(DoublerServer::new(Twice)),
        )
        .await;

        // Call.
        assert_eq!(lab.echo(7).await.unwrap(), 7);
        // Blocking, from a thread without a runtime.
        let blocking = lab.clone();
        let answer = std::thread::spawn(move || blocking.echo_blocking(8))
            .join()
            .unwrap();
        assert_eq!(answer.unwrap(), 8);
        // One-way.
        lab.note(9).await.unwrap();
        assert_eq!(r.probes.noted.recv().await, Some(9));
        // Acknowledged: resolves while the handler still waits on the gate.
        let pending = lab.hold_acked(10).await.unwrap();
        assert_eq!(r.probes.started.recv().await, Some(10));
        r.probes.gate.add_permits(1);
        assert_eq!(pending.await.unwrap(), 10);
        assert_eq!(r.probes.finished.recv().await, Some(10));
        // Acknowledged, then the reply dropped unread: the call runs on, not cancelled (the
        // caller's reading of the stream carries on without it; dropping that reading would
        // send STOP_SENDING, which cancels).
        let pending = lab.hold_acked(11).await.unwrap();
        assert_eq!(r.probes.started.recv().await, Some(11));
        drop(pending);
        // A STOP_SENDING would travel ahead of these calls' requests on the connection, and
        // the server would have dropped the handler by the time they are answered.
        lab.echo(1).await.unwrap();
        lab.echo(2).await.unwrap();
        assert!(
            r.probes.dropped.try_recv().is_err(),
            "the handler was dropped"
        );
        r.probes.gate.add_permits(1);
        assert_eq!(r.probes.finished.recv().await, Some(11));
        // Server to client, on the same connection.
        assert_eq!(lab.ask_back(21).await.unwrap(), Ok(42));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_on_one_connection() {
    within(async {
        let r = start();
        let lab = connect(&r).await;
        let calls = (0..1000u64).map(|i| {
            let lab = lab.clone();
            async move { (i, lab.echo(i * 3).await) }
        });
        for (i, result) in futures::future::join_all(calls).await {
            assert_eq!(result.unwrap(), i * 3);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_argument_and_reply() {
    within(async {
        let r = start();
        let lab = connect(&r).await;
        let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        let back = lab.blob(ByteBuf::from(big.clone())).await.unwrap();
        assert!(back.into_vec() == big);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_a_clear_tls_error() {
    within(async {
        let r = start();
        let stranger = DevCert::localhost().unwrap();
        let connector = QuicConnector::new(
            r.addr,
            "localhost",
            ClientTls::trusting_dev(&stranger),
            QuicOptions::default(),
        )
        .unwrap();
        let err = Client::builder(Cbor::default())
            .connect(&connector)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RpcError::Transport(TransportError::Tls { detail, .. }) if detail.contains("certificate")),
            "{err}"
        );
        // The cause is kept, not flattened into the message: the chain reaches quinn's error.
        let RpcError::Transport(transport) = &err else {
            unreachable!()
        };
        let cause = std::error::Error::source(transport).expect("the TLS error keeps its cause");
        assert!(
            cause.downcast_ref::<quinn::ConnectionError>().is_some(),
            "the cause is quinn's ConnectionError: {cause:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_anonymous_clients_and_names_the_others() {
    within(async {
        let server_cert = DevCert::localhost().unwrap();
        let client_cert = DevCert::generate(vec!["client.example".to_owned()]).unwrap();
        let tls = ServerTls::dev(&server_cert)
            .require_client_certificates(vec![client_cert.certificate().clone()]);
        let r = serve(tls, server_cert.clone(), QuicOptions::default());

        // Without a certificate: refused. TLS 1.3 reports a client-auth failure after the
        // handshake, so it may surface at connect or at the first call.
        let anonymous = QuicConnector::new(
            r.addr,
            "localhost",
            ClientTls::trusting_dev(&server_cert),
            QuicOptions::default(),
        )
        .unwrap();
        match Client::builder(Cbor::default()).connect(&anonymous).await {
            Err(e) => assert!(
                matches!(e, RpcError::Transport(_) | RpcError::Handshake(_)),
                "{e}"
            ),
            Ok(client) => {
                let err = LabClient::new(client).echo(1).await.unwrap_err();
                assert!(matches!(err, RpcError::ConnectionLost(_)), "{err}");
            }
        }

        // With one: the handler sees it as the peer.
        let known = QuicConnector::new(
            r.addr,
            "localhost",
            ClientTls::trusting_dev(&server_cert).with_dev_identity(&client_cert),
            QuicOptions::default(),
        )
        .unwrap();
        let lab = LabClient::new(
            Client::builder(Cbor::default())
                .connect(&known)
                .await
                .unwrap(),
        );
        let chain = lab.peer_certs().await.unwrap();
        assert_eq!(chain, vec![client_cert.certificate().to_vec()]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_garbage_does_not_disturb_live_connections() {
    within(async {
        let r = start();
        let lab = connect(&r).await;
        assert_eq!(lab.echo(1).await.unwrap(), 1);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..2000usize {
            let len = 1 + (i * 37) % 1400;
            let datagram: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            socket.send_to(&datagram, r.addr).unwrap();
            if i % 500 == 0 {
                assert_eq!(lab.echo(i as u64).await.unwrap(), i as u64);
            }
        }
        assert_eq!(lab.echo(2).await.unwrap(), 2);
        // And a new connection is still accepted.
        assert_eq!(connect(&r).await.echo(3).await.unwrap(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_is_refused_and_other_calls_complete() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let options = QuicOptions::default().max_frame_size(64 * 1024);
        let r = serve(ServerTls::dev(&cert), cert, options);
        let lab = connect(&r).await;
        let (big, small) =
            tokio::join!(lab.blob(ByteBuf::from(vec![0u8; 256 * 1024])), lab.echo(5));
        let err = big.unwrap_err();
        assert!(matches!(err, RpcError::FrameTooLarge { .. }), "{err}");
        assert_eq!(small.unwrap(), 5);
        assert_eq!(
            lab.blob(ByteBuf::from(vec![1u8; 1024]))
                .await
                .unwrap()
                .len(),
            1024
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_server_fails_calls_in_flight() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let listener = QuicListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::dev(&cert),
            QuicOptions::default(),
        )
        .unwrap();
        let handle = listener.handle();
        let addr = handle.local_addr().unwrap();
        let (impl_, mut probes) = lab();
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(impl_))
            .build();
        tokio::spawn(async move { server.serve(listener).await });

        let r = Running {
            addr,
            cert,
            probes: lab().1,
        };
        // A server that is gone for good: the client tries to reconnect for 2 s, then gives up.
        let give_up = ReconnectPolicy::default().give_up_after(Duration::from_secs(2));
        let lab = connect_with(&r, Client::builder(Cbor::default()).reconnect(give_up)).await;
        let patient = lab.with_options(CallOptions::new().timeout(Duration::from_secs(60)));
        let call = patient.hold(1);
        let (result, ()) = tokio::join!(call, async {
            assert_eq!(probes.started.recv().await, Some(1));
            handle.close();
        });
        assert!(
            matches!(result, Err(RpcError::ConnectionLost(_))),
            "{result:?}"
        );
        assert!(matches!(
            lab.echo(1).await,
            Err(RpcError::ConnectionLost(_))
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_lost_at_the_idle_timeout_and_the_call_survives_it() {
    within(async {
        let mut r = start();
        // No keep-alives and a one-second idle timeout: a call that waits in silence loses
        // its connection long before its deadline, as it would if the network went away.
        let options = QuicOptions::default()
            .idle_timeout(Duration::from_secs(1))
            .keep_alive(None);
        let connector = QuicConnector::new(
            r.addr,
            "localhost",
            ClientTls::trusting_dev(&r.cert),
            options,
        )
        .unwrap();
        let lab = lab_via(&connector).await;
        let patient = lab.with_options(CallOptions::new().timeout(Duration::from_secs(60)));
        let call = tokio::spawn(async move { patient.hold(2).await });
        assert_eq!(r.probes.started.recv().await, Some(2));
        // The client reconnects and sends the call again; the server attaches the copy to the
        // call still running instead of running it twice.
        while lab.client().reconnections() == 0 {
            // Polling a count the test cannot await: the reconnect happens inside the client.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.probes.gate.add_permits(1);
        assert_eq!(call.await.unwrap(), Ok(2));
        assert_eq!(r.probes.finished.recv().await, Some(2));
        assert!(r.probes.started.try_recv().is_err(), "the call ran twice");
        assert_eq!(lab.echo(4).await.unwrap(), 4);
    })
    .await
}

/// The server half of `a_killed_server_process_fails_the_call_promptly`, run in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: runs as the child process of another test"]
async fn child_server_process() {
    let (Ok(cert), Ok(key)) = (std::env::var("CHILD_CERT"), std::env::var("CHILD_KEY")) else {
        return;
    };
    let tls = ServerTls::from_pem_files(cert, key).unwrap();
    let port: u16 = std::env::var("CHILD_PORT").map_or(0, |p| p.parse().unwrap());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // A long idle timeout where a test asks for one: a restart must then show by a reset.
    let options = match std::env::var("CHILD_IDLE_SECS") {
        Ok(secs) => QuicOptions::default().idle_timeout(Duration::from_secs(secs.parse().unwrap())),
        Err(_) => QuicOptions::default(),
    };
    let listener = QuicListener::bind(addr, tls, options).unwrap();
    println!("PORT {}", listener.local_addr().unwrap().port());
    let (impl_, mut probes) = lab();
    if std::env::var_os("CHILD_OPEN_GATE").is_some() {
        probes.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
    let server = Server::builder(Cbor::default())
        .service(LabServer::new(impl_))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    while let Some(tag) = probes.started.recv().await {
        println!("STARTED {tag}");
    }
}

/// A server in a child process: its certificate files, the process, and its stdout lines.
struct ChildServer {
    dir: std::path::PathBuf,
    cert_path: std::path::PathBuf,
    child: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    port: u16,
}

impl ChildServer {
    /// Starts `child_server_process` with `cert` on `port` (0: any), and waits until it listens.
    /// With `open_gate`, its `hold` calls return at once.
    async fn start(cert: &DevCert, tag: &str, port: u16, open_gate: bool) -> ChildServer {
        let dir =
            std::env::temp_dir().join(format!("courier-quic-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.certificate_pem()).unwrap();
        std::fs::write(&key_path, cert.private_key_pem()).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_server_process",
                "--ignored",
                "--nocapture",
            ])
            .env("CHILD_CERT", &cert_path)
            .env("CHILD_KEY", &key_path)
            .env("CHILD_PORT", port.to_string())
            .env("CHILD_IDLE_SECS", "600")
            .env(
                if open_gate {
                    "CHILD_OPEN_GATE"
                } else {
                    "CHILD_GATE_CLOSED"
                },
                "1",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let port: u16 = loop {
            let line = lines.recv().await.expect("child exited before listening");
            if let Some(p) = line.strip_prefix("PORT ") {
                break p.trim().parse().unwrap();
            }
        };
        ChildServer {
            dir,
            cert_path,
            child,
            lines,
            port,
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server process restarted on the same address: the client learns of it at once (the new
/// server, with the same identity, recognizes its predecessor's connection ids and resets the
/// connection at the client's next keep-alive) and reconnects. Both sides' idle timeout is ten
/// minutes, far past the test's bound: without the reset the test would time out. The
/// idempotent call in flight is sent again and succeeds on the new server; the at-most-once
/// call in flight fails with `OutcomeUnknown` (the old server may have run it); a call made
/// afterwards succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_resends_idempotent_calls_and_fails_the_others_as_unknown() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let mut first = ChildServer::start(&cert, "restart-1", 0, false).await;
        let options = QuicOptions::default()
            .idle_timeout(Duration::from_secs(600))
            .keep_alive(Some(Duration::from_millis(200)));
        let connector = QuicConnector::new(
            SocketAddr::from(([127, 0, 0, 1], first.port)),
            "localhost",
            ClientTls::trusting_dev(&cert),
            options,
        )
        .unwrap();
        let lab = lab_via(&connector).await;
        assert_eq!(lab.echo(1).await.unwrap(), 1);
        let at_most_once = tokio::spawn({
            let lab = lab.clone();
            async move { lab.hold(10).await }
        });
        let idempotent = tokio::spawn({
            let lab = lab.clone();
            async move { lab.hold_idempotent(20).await }
        });
        let mut started = Vec::new();
        while started.len() < 2 {
            let line = first.lines.recv().await.expect("the first server exited");
            if let Some(tag) = line.strip_prefix("STARTED ") {
                started.push(tag.trim().to_owned());
            }
        }
        first.kill();
        let _second = ChildServer::start(&cert, "restart-2", first.port, true).await;
        assert_eq!(idempotent.await.unwrap(), Ok(20));
        let err = at_most_once.await.unwrap().unwrap_err();
        assert!(matches!(err, RpcError::OutcomeUnknown(_)), "{err:?}");
        assert_eq!(lab.echo(3).await.unwrap(), 3);
    })
    .await
}

/// Dropping a listener (here, with the server task that owns it) refuses new clients at once,
/// lets the connections it made go on, and frees the port when the last of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listener_refuses_new_clients_and_frees_its_port() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let listener = QuicListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerTls::dev(&cert),
            QuicOptions::default(),
        )
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let (lab_impl, _probes) = lab();
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(lab_impl))
            .build();
        let serving = tokio::spawn(async move { server.serve(listener).await });
        let connector = QuicConnector::new(
            addr,
            "localhost",
            ClientTls::trusting_dev(&cert),
            QuicOptions::default(),
        )
        .unwrap();
        let lab = lab_via(&connector).await;
        assert_eq!(lab.echo(1).await.unwrap(), 1);

        serving.abort();
        let _ = serving.await;
        let refused = Client::builder(Cbor::default()).connect(&connector).await;
        assert!(
            matches!(refused, Err(RpcError::Transport(_))),
            "a new client is refused by QUIC itself, not left without a welcome: {:?}",
            refused.map(|_| ())
        );
        assert_eq!(lab.echo(2).await.unwrap(), 2, "the old connection goes on");
        drop(lab);
        // The port comes free once the last connection has closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match QuicListener::bind(addr, ServerTls::dev(&cert), QuicOptions::default()) {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the port was never freed: {e}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_process_fails_the_call_promptly() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let mut server = ChildServer::start(&cert, "killed", 0, false).await;
        let (port, cert_path) = (server.port, server.cert_path.clone());
        let mut lines = std::mem::replace(&mut server.lines, mpsc::unbounded_channel().1);
        // A short idle timeout: a killed peer sends nothing, so silence is how its death shows.
        let options = QuicOptions::default()
            .idle_timeout(Duration::from_secs(2))
            .keep_alive(Some(Duration::from_millis(300)));
        let connector = QuicConnector::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "localhost",
            ClientTls::from_pem_file(&cert_path).unwrap(),
            options,
        )
        .unwrap();
        let lab = lab_via(&connector).await;
        let patient = lab.with_options(CallOptions::new().timeout(Duration::from_secs(90)));
        let call = patient.hold(5);
        let (result, ()) = tokio::join!(call, async {
            loop {
                let line = lines.recv().await.expect("child exited early");
                if line.starts_with("STARTED 5") {
                    break;
                }
            }
            server.kill();
        });
        // ConnectionLost, not DeadlineExceeded: the loss was seen long before the deadline.
        assert!(
            matches!(result, Err(RpcError::ConnectionLost(_))),
            "{result:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_or_timing_out_a_call_drops_the_server_handler() {
    within(async {
        let mut r = start();
        let lab = connect(&r).await;
        // Dropping the caller's future: the stream's receive half goes, the server sees
        // STOP_SENDING and drops the handler.
        let call = tokio::spawn({
            let lab = lab.clone();
            async move { lab.hold(1).await }
        });
        assert_eq!(r.probes.started.recv().await, Some(1));
        call.abort();
        assert_eq!(r.probes.dropped.recv().await, Some(1));
        // A deadline: the caller gets DeadlineExceeded and the handler is dropped too.
        let hurried = lab.with_options(CallOptions::new().timeout(Duration::from_millis(100)));
        assert_eq!(hurried.hold(2).await, Err(RpcError::DeadlineExceeded));
        assert_eq!(r.probes.started.recv().await, Some(2));
        assert_eq!(r.probes.dropped.recv().await, Some(2));
        // The connection goes on.
        assert_eq!(lab.echo(3).await.unwrap(), 3);
    })
    .await
}
