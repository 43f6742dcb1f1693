//! The conformance suite over QUIC: real loopback UDP, real TLS.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use courier::testing::Harness;
use courier::TransportError;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};

struct Quic;

/// Short idle timeouts, so that a peer that dies without closing is noticed within the test.
fn options(frame_limit: usize) -> QuicOptions {
    QuicOptions::default()
        .idle_timeout(Duration::from_secs(3))
        .keep_alive(Some(Duration::from_millis(500)))
        .max_frame_size(frame_limit)
        .max_concurrent_calls(CALLS)
}

/// Concurrent calls (streams) per connection.
const CALLS: u32 = 128;

fn failed(e: courier_quic::Error) -> TransportError {
    TransportError::Other(e.to_string())
}

impl Harness for Quic {
    type Listener = QuicListener;
    type Connector = QuicConnector;
    type Address = (SocketAddr, DevCert);

    fn open_calls_per_connection(&self) -> usize {
        CALLS as usize
    }

    fn bind(&self, frame_limit: usize) -> Result<(QuicListener, Self::Address), TransportError> {
        let cert = DevCert::localhost().map_err(|e| failed(e.into()))?;
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listener =
            QuicListener::bind(any, ServerTls::dev(&cert), options(frame_limit)).map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        Ok((listener, (addr, cert)))
    }

    fn connector(
        &self,
        (addr, cert): &Self::Address,
        frame_limit: usize,
    ) -> Result<QuicConnector, TransportError> {
        QuicConnector::new(
            *addr,
            "localhost",
            ClientTls::trusting_dev(cert),
            options(frame_limit),
        )
        .map_err(failed)
    }
}

mod cbor {
    courier::conformance_tests!(super::Quic, courier_cbor::Cbor::default());
}

mod xdr {
    courier::conformance_tests!(super::Quic, courier_xdr::Xdr::default());
}
