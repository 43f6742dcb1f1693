//! The conformance suite over TCP: real loopback sockets, real TLS 1.3.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use courier::testing::Harness;
use courier::TransportError;
use courier_tcp::{ClientTls, DevCert, ServerTls, TcpConnector, TcpListener, TcpOptions};

struct Tcp;

fn options(frame_limit: usize) -> TcpOptions {
    TcpOptions::default()
        .max_frame_size(frame_limit)
        .handshake_timeout(Duration::from_secs(5))
        .frame_timeout(Duration::from_secs(5))
}

fn failed(e: courier_tcp::Error) -> TransportError {
    TransportError::Other(e.to_string())
}

impl Harness for Tcp {
    type Listener = TcpListener;
    type Connector = TcpConnector;
    type Address = (SocketAddr, DevCert);

    fn one_byte_stream(&self) -> bool {
        true
    }

    fn bind(&self, frame_limit: usize) -> Result<(TcpListener, Self::Address), TransportError> {
        let cert = DevCert::localhost().map_err(|e| failed(e.into()))?;
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listener =
            TcpListener::bind(any, ServerTls::dev(&cert), options(frame_limit)).map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        Ok((listener, (addr, cert)))
    }

    fn connector(
        &self,
        (addr, cert): &Self::Address,
        frame_limit: usize,
    ) -> Result<TcpConnector, TransportError> {
        TcpConnector::new(
            *addr,
            "localhost",
            ClientTls::trusting_dev(cert),
            options(frame_limit),
        )
        .map_err(failed)
    }
}

mod cbor {
    courier::conformance_tests!(super::Tcp, courier_cbor::Cbor::default());
}

mod xdr {
    courier::conformance_tests!(super::Tcp, courier_xdr::Xdr::default());
}
