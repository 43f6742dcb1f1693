//! What only TCP has: its TLS identities, its framing's limits and its time limits, over real
//! loopback sockets and real TLS 1.3.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use courier::wire::{FrameKind, Header, Hello, Welcome, WelcomeStatus, PROTOCOL_VERSION};
use courier::{Client, Context, Limits, Peer, RpcError, Server, TransportError};
use courier_cbor::Cbor;
use courier_tcp::{ClientTls, DevCert, ServerTls, TcpConnector, TcpListener, TcpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[courier::service]
pub trait Who {
    /// How many certificates the caller presented.
    async fn certificates(&self, ctx: Context) -> usize;
}

struct Me;

impl Who for Me {
    async fn certificates(&self, ctx: Context) -> usize {
        match ctx.peer() {
            Peer::Network { certificates, .. } => certificates.len(),
            _ => usize::MAX,
        }
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the test ran past its bound")
}

/// Serves `Who` over TCP with `tls` and `options`; returns the address.
fn serve(tls: ServerTls, options: TcpOptions) -> SocketAddr {
    serve_with(tls, options, Limits::default())
}

fn serve_with(tls: ServerTls, options: TcpOptions, limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind(([127, 0, 0, 1], 0).into(), tls, options).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder(Cbor::default())
        .service(WhoServer::new(Me))
        .limits(limits)
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    addr
}

/// A TLS connection to `addr` that speaks bytes, not Courier: for sending what a client
/// written elsewhere could send.
async fn raw(
    addr: SocketAddr,
    cert: &DevCert,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = ClientTls::trusting_dev(cert).into_rustls().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Reads until the peer ends the connection (or it fails); what was read before.
async fn until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn hello() -> Vec<u8> {
    let hello = Hello {
        version: u16::from(PROTOCOL_VERSION),
        codec: "cbor".to_owned(),
        client_id: 7,
        epoch: 1,
    }
    .encode();
    let mut message = u32::try_from(hello.len()).unwrap().to_be_bytes().to_vec();
    message.extend_from_slice(&hello);
    message
}

#[tokio::test]
async fn mutual_tls_gives_handlers_the_clients_certificate_and_refuses_strangers() {
    within(async {
        let (server_cert, client_cert, stranger) = (
            DevCert::localhost().unwrap(),
            DevCert::localhost().unwrap(),
            DevCert::localhost().unwrap(),
        );
        let tls = ServerTls::dev(&server_cert)
            .require_client_certificates(vec![client_cert.certificate().clone()]);
        let addr = serve(tls, TcpOptions::default());

        let trusted = ClientTls::trusting_dev(&server_cert).with_dev_identity(&client_cert);
        let connector =
            TcpConnector::new(addr, "localhost", trusted, TcpOptions::default()).unwrap();
        let who = WhoClient::new(
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .unwrap(),
        );
        assert_eq!(who.certificates().await.unwrap(), 1);

        // A client whose certificate the server does not trust gets no link: the server
        // refuses it in the TLS handshake, or closes the connection right after it (TLS 1.3
        // checks the client's certificate after the client's side of the handshake is done).
        let refused = ClientTls::trusting_dev(&server_cert).with_dev_identity(&stranger);
        let connector =
            TcpConnector::new(addr, "localhost", refused, TcpOptions::default()).unwrap();
        let outcome = Client::builder(Cbor::default()).connect(&connector).await;
        assert!(outcome.is_err(), "a stranger was served");
    })
    .await
}

#[tokio::test]
async fn a_server_the_client_does_not_trust_is_a_tls_error() {
    within(async {
        let (server_cert, other) = (DevCert::localhost().unwrap(), DevCert::localhost().unwrap());
        let addr = serve(ServerTls::dev(&server_cert), TcpOptions::default());
        let connector = TcpConnector::new(
            addr,
            "localhost",
            ClientTls::trusting_dev(&other),
            TcpOptions::default(),
        )
        .unwrap();
        match Client::builder(Cbor::default()).connect(&connector).await {
            Err(RpcError::Transport(TransportError::Tls { detail, .. })) => {
                assert!(detail.contains(&addr.to_string()), "{detail}");
            }
            other => panic!("expected a TLS error, got {:?}", other.map(drop)),
        }
    })
    .await
}

#[tokio::test]
async fn a_client_silent_after_connecting_is_dropped_after_the_handshake_timeout() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let options = TcpOptions::default().handshake_timeout(Duration::from_millis(300));
        let addr = serve(ServerTls::dev(&cert), options);
        // TCP only: no TLS ClientHello ever comes.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(until_closed(&mut tcp).await.is_empty());
    })
    .await
}

#[tokio::test]
async fn a_handshake_message_over_1024_bytes_closes_the_connection() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        // Every other time limit is far beyond the test's bound: only the length check can
        // end this connection in time.
        let long = Duration::from_secs(600);
        let options = TcpOptions::default().frame_timeout(long);
        let addr = serve_with(
            ServerTls::dev(&cert),
            options,
            Limits::default().handshake_timeout(long),
        );
        let mut tls = raw(addr, &cert).await;
        tls.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        tls.write_all(&[0u8; 1025]).await.unwrap();
        tls.flush().await.unwrap();
        // No Welcome: the connection ends.
        assert!(until_closed(&mut tls).await.is_empty());
    })
    .await
}

#[tokio::test]
async fn a_frame_that_stalls_half_way_closes_the_connection_after_the_frame_timeout() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let options = TcpOptions::default().frame_timeout(Duration::from_millis(300));
        let long = Duration::from_secs(600);
        let addr = serve_with(
            ServerTls::dev(&cert),
            options,
            Limits::default().handshake_timeout(long),
        );
        let mut tls = raw(addr, &cert).await;
        tls.write_all(&hello()).await.unwrap();
        // Half a header, then nothing.
        let header = Header::new(
            FrameKind::Call,
            1,
            courier::InterfaceId::new(1),
            courier::MethodId::new(1),
        )
        .to_bytes();
        tls.write_all(&header[..10]).await.unwrap();
        tls.flush().await.unwrap();
        // The Welcome comes, then the close (no answer: the frame never arrived whole).
        let seen = until_closed(&mut tls).await;
        let len = u32::from_be_bytes(seen[..4].try_into().unwrap()) as usize;
        let welcome = Welcome::decode(&seen[4..4 + len]).unwrap();
        assert_eq!(welcome.status, WelcomeStatus::Accepted);
    })
    .await
}

#[tokio::test]
async fn a_tcp_address_listens_and_connects_and_bad_ones_are_refused() {
    use courier::address::{Address, Transports};
    use courier_tcp::TcpTransport;
    within(async {
        let cert = DevCert::localhost().unwrap();
        let transports = Transports::new().with(
            TcpTransport::new()
                .server_tls(ServerTls::dev(&cert))
                .client_tls(ClientTls::trusting_dev(&cert)),
        );
        let bound = transports
            .listen(&"tcp://127.0.0.1:0".parse().unwrap())
            .unwrap();
        assert_eq!(bound.address.scheme(), "tcp");
        assert_ne!(bound.address.port(), Some(0));
        let server = Server::builder(Cbor::default())
            .service(WhoServer::new(Me))
            .build();
        let listener = bound.listener;
        tokio::spawn(async move { server.serve(listener).await });
        let address = bound.address.with_param("server_name", "localhost");
        let connector = transports.connector(&address).unwrap();
        let who = WhoClient::new(
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .unwrap(),
        );
        assert_eq!(who.certificates().await.unwrap(), 0);

        for bad in [
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:1/path",
            "tcp://127.0.0.1:1?colour=red",
        ] {
            let address: Address = bad.parse().unwrap();
            assert!(
                transports.connector(&address).is_err(),
                "{bad} was accepted"
            );
        }
        // Without roots to trust, a client address must name them.
        let bare = Transports::new().with(TcpTransport::new());
        let err = bare
            .connector(&"tcp://127.0.0.1:1".parse().unwrap())
            .map(drop)
            .unwrap_err();
        assert!(err.to_string().contains("ca="), "{err}");
    })
    .await
}

/// A directory record with a `quic://` and a `tcp://` address of one instance, the TCP one
/// served by a listener of `transports`; the QUIC one as `quic_port` says.
fn both_addresses(
    transports: &courier::address::Transports,
    quic_port: u16,
) -> Arc<courier::directory::StaticDirectory> {
    use courier::directory::{InstanceRecord, StaticDirectory};
    let bound = transports
        .listen(&"tcp://127.0.0.1:0".parse().unwrap())
        .unwrap();
    let server = Server::builder(Cbor::default())
        .service(WhoServer::new(Me))
        .build();
    let listener = bound.listener;
    tokio::spawn(async move { server.serve(listener).await });
    let quic: courier::address::Address =
        format!("quic://127.0.0.1:{quic_port}?server_name=localhost")
            .parse()
            .unwrap();
    let tcp = bound.address.with_param("server_name", "localhost");
    let directory = Arc::new(StaticDirectory::new());
    // TCP listed first: the client still tries QUIC first.
    directory.insert(InstanceRecord::new("who", [tcp, quic]).instance("only"));
    directory
}

fn both_transports(cert: &DevCert) -> courier::address::Transports {
    courier::address::Transports::new()
        .with(
            courier_quic::QuicTransport::new()
                .server_tls(ServerTls::dev(cert))
                .client_tls(ClientTls::trusting_dev(cert))
                // A QUIC dial that gets no answer gives up only after the test's bound.
                .options(
                    courier_quic::QuicOptions::default().idle_timeout(Duration::from_secs(600)),
                ),
        )
        .with(
            courier_tcp::TcpTransport::new()
                .server_tls(ServerTls::dev(cert))
                .client_tls(ClientTls::trusting_dev(cert)),
        )
}

#[tokio::test]
async fn where_udp_gets_no_answer_a_client_falls_back_to_tcp_after_the_fallback_delay() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let transports = both_transports(&cert);
        // A UDP socket that never reads: QUIC's packets are taken and never answered, as
        // behind a firewall that drops them.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let directory = both_addresses(&transports, silent.local_addr().unwrap().port());
        // Each address may take far longer than this test's bound: only the race reaches
        // TCP in time.
        let client = Client::builder(Cbor::default())
            .transports(transports)
            .dial_timeout(Duration::from_secs(600))
            .connect_named(directory, "who")
            .await
            .unwrap();
        assert_eq!(client.address().unwrap().scheme(), "tcp");
        assert_eq!(WhoClient::new(client).certificates().await.unwrap(), 0);
    })
    .await
}

#[tokio::test]
async fn where_quic_answers_a_client_given_both_addresses_uses_quic() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let transports = both_transports(&cert);
        let quic = transports
            .listen(&"quic://127.0.0.1:0".parse().unwrap())
            .unwrap();
        let server = Server::builder(Cbor::default())
            .service(WhoServer::new(Me))
            .build();
        let port = quic.address.port().unwrap();
        let listener = quic.listener;
        tokio::spawn(async move { server.serve(listener).await });
        let directory = both_addresses(&transports, port);
        // TCP is dialed only if QUIC has not connected within a delay far beyond a
        // loopback handshake, even on a loaded machine.
        let client = Client::builder(Cbor::default())
            .transports(transports)
            .fallback_delay(Duration::from_secs(30))
            .connect_named(directory, "who")
            .await
            .unwrap();
        assert_eq!(client.address().unwrap().scheme(), "quic");
        assert_eq!(WhoClient::new(client).certificates().await.unwrap(), 0);
    })
    .await
}

#[tokio::test]
async fn connections_beyond_the_handshakes_under_way_are_closed_at_once() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        // Each handshake may take far longer than the test's bound: only the cap closes the
        // second connection in time.
        let options = TcpOptions::default()
            .max_handshakes(1)
            .handshake_timeout(Duration::from_secs(600));
        let addr = serve(ServerTls::dev(&cert), options.clone());
        // A client that connects and says nothing holds the only handshake.
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(until_closed(&mut refused).await.is_empty());
        // Once it leaves, the handshake is free again for a client that speaks.
        drop(silent);
        let connector =
            TcpConnector::new(addr, "localhost", ClientTls::trusting_dev(&cert), options).unwrap();
        let client = loop {
            // The server notices the silent client's departure on its own time.
            match Client::builder(Cbor::default()).connect(&connector).await {
                Ok(client) => break client,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        assert_eq!(WhoClient::new(client).certificates().await.unwrap(), 0);
    })
    .await
}
