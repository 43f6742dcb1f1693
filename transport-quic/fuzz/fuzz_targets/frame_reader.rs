//! The QUIC frame reader, fuzzed through a real connection: each input becomes the bytes of a
//! new bidirectional stream to a real Courier server over loopback UDP and TLS, written in
//! pieces of a size the input chooses, then finished. The server must answer the stream (a
//! reply, an error, or a reset) or stop it within a bound, and the connection must stay up and
//! serve a valid call afterwards. A panic, a hang or a lost connection is a finding.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use courier::wire::{FrameKind, Header, Hello, HEADER_LEN};
use courier::Server;
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicListener, QuicOptions, ServerTls};
use libfuzzer_sys::fuzz_target;
use quinn::crypto::rustls::QuicClientConfig;

#[courier::service]
pub trait Ping {
    /// Returns its argument.
    async fn ping(&self, v: u64) -> u64;
}

struct Pong;

impl Ping for Pong {
    async fn ping(&self, v: u64) -> u64 {
        v
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (endpoint, conn) = runtime.block_on(async {
            let cert = DevCert::localhost().unwrap();
            let options = QuicOptions::default()
                .max_frame_size(1 << 16)
                .frame_timeout(Duration::from_millis(50));
            let listener = QuicListener::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                ServerTls::dev(&cert),
                options,
            )
            .unwrap();
            let addr = listener.local_addr().unwrap();
            let server = Server::builder(Cbor::default())
                .service(PingServer::new(Pong))
                .build();
            tokio::spawn(async move { server.serve(listener).await });
            let tls = ClientTls::trusting_dev(&cert).into_rustls().unwrap();
            let mut config =
                quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
            config.transport_config(Arc::new(QuicOptions::default().into_transport().unwrap()));
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let conn = endpoint
                .connect_with(config, addr, "localhost")
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let hello = Hello {
                version: 1,
                codec: "cbor".to_owned(),
                client_id: 1,
                epoch: 1,
            }
            .encode();
            send.write_all(&(hello.len() as u32).to_be_bytes()).await.unwrap();
            send.write_all(&hello).await.unwrap();
            send.finish().unwrap();
            let mut len = [0u8; 4];
            recv.read_exact(&mut len).await.unwrap();
            let mut welcome = vec![0u8; u32::from_be_bytes(len) as usize];
            recv.read_exact(&mut welcome).await.unwrap();
            (endpoint, conn)
        });
        World {
            runtime,
            _endpoint: endpoint,
            conn,
        }
    })
}

/// A valid call on its own stream: the server must still answer it. Each canary has a call
/// id of its own, as a real client's calls do: the server may still be deregistering the
/// previous one when its reply has arrived.
async fn canary(conn: &quinn::Connection) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 62);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let desc = PingClient::<Cbor>::PING;
    let header = Header {
        payload_len: 2,
        version: desc.version,
        ..Header::new(FrameKind::Call, id, desc.interface, desc.method)
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&header.to_bytes()).await.unwrap();
    send.write_all(&[0x81, 0x05]).await.unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(1024).await.unwrap();
    assert_eq!(
        reply.get(1),
        Some(&(FrameKind::Reply as u8)),
        "the canary was refused: {:?}",
        courier::wire::ErrorPayload::decode(reply.get(HEADER_LEN..).unwrap_or_default())
    );
    assert_eq!(&reply[HEADER_LEN..], &[0x05]);
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let world = world();
    world.runtime.block_on(async {
        let conn = &world.conn;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        for chunk in bytes.chunks(piece) {
            if send.write_all(chunk).await.is_err() {
                break; // stopped by the server: allowed
            }
        }
        let _ = send.finish();
        // An answer, a reset or a stop: anything but silence past the frame timeout.
        let answered = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
        assert!(answered.is_ok(), "the server neither answered nor closed the stream");
        assert!(conn.close_reason().is_none(), "the connection was lost: {:?}", conn.close_reason());
        canary(conn).await;
    });
});
