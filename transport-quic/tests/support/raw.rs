//! A Courier client written by hand with raw quinn, for the tests of what the `Link` API
//! cannot express: frames on streams of the test's choosing, in the order it chooses.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use courier::wire::{FrameKind, Header, Hello, Welcome, WelcomeStatus, HEADER_LEN};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicOptions};
use quinn::crypto::rustls::QuicClientConfig;

use super::ping::PingClient;

/// A quinn connection to `addr`, before Courier's handshake.
pub async fn dial(addr: SocketAddr, cert: &DevCert) -> (quinn::Endpoint, quinn::Connection) {
    let tls = ClientTls::trusting_dev(cert).into_rustls().unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    config.transport_config(Arc::new(QuicOptions::default().into_transport().unwrap()));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// Says hello on the handshake stream and returns the server's welcome, or the read's error.
pub async fn handshake(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<Welcome, quinn::ReadExactError> {
    let hello = Hello {
        version: u16::from(courier::wire::PROTOCOL_VERSION),
        codec: "cbor".to_owned(),
        client_id: 99,
        epoch: 1,
    }
    .encode();
    let mut message = (hello.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&hello);
    send.write_all(&message).await.unwrap();
    send.finish().unwrap();
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let mut welcome = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut welcome).await?;
    Ok(Welcome::decode(&welcome).unwrap())
}

/// A quinn connection that has done Courier's handshake by hand.
pub async fn raw(addr: SocketAddr, cert: &DevCert) -> (quinn::Endpoint, quinn::Connection) {
    let (endpoint, conn) = dial(addr, cert).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let welcome = handshake(&mut send, &mut recv).await.unwrap();
    assert_eq!(welcome.status, WelcomeStatus::Accepted);
    (endpoint, conn)
}

/// A ping call with `v` as its argument.
pub fn ping_call(id: u64, v: u8) -> Vec<u8> {
    let mut call = header(FrameKind::Call, id, 2).to_vec();
    call.extend_from_slice(&[0x81, v]); // CBOR [v], v < 24
    call
}

pub fn header(kind: FrameKind, id: u64, payload_len: u32) -> [u8; HEADER_LEN] {
    let desc = PingClient::<Cbor>::PING;
    Header {
        payload_len,
        version: desc.version,
        ..Header::new(kind, id, desc.interface, desc.method)
    }
    .to_bytes()
}
