//! The conformance suite over shared memory: a real Unix socket, a real memfd segment with
//! its rings and eventfd doorbells. Both ends run in this process so that the suite can watch
//! the server's handlers and tasks; `shm.rs` runs the calls across real separate processes.
#![allow(missing_docs)]

use std::path::PathBuf;

use courier::testing::{unique_name, Harness};
use courier::TransportError;
use courier_shm::{ShmConnector, ShmListener, ShmOptions};

struct Shm;

/// Rings smaller than the default, so that the suite's large payloads cross them many times.
fn options(frame_limit: usize) -> ShmOptions {
    ShmOptions::default()
        .ring_capacity(1 << 20)
        .max_frame_size(frame_limit)
}

impl Harness for Shm {
    type Listener = ShmListener;
    type Connector = ShmConnector;
    type Address = PathBuf;

    fn bind(&self, frame_limit: usize) -> Result<(ShmListener, PathBuf), TransportError> {
        let path = std::env::temp_dir().join(format!("{}.sock", unique_name("courier-conf")));
        let listener = ShmListener::bind(&path, options(frame_limit))?;
        Ok((listener, path))
    }

    fn connector(
        &self,
        path: &PathBuf,
        frame_limit: usize,
    ) -> Result<ShmConnector, TransportError> {
        Ok(ShmConnector::new(path, options(frame_limit)))
    }
}

mod cbor {
    courier::conformance_tests!(super::Shm, courier_cbor::Cbor::default());
}

mod xdr {
    courier::conformance_tests!(super::Shm, courier_xdr::Xdr::default());
}
