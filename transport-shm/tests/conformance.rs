//! The conformance suite over shared memory: a real Unix socket, a real memfd segment with
//! its rings and eventfd doorbells. Both ends run in this process so that the suite can watch
//! the server's handlers and tasks; `shm.rs` runs the calls across real separate processes.
#![allow(missing_docs)]

use std::path::PathBuf;

use courier::testing::{unique_name, Harness};
use courier::TransportError;
use courier_shm::{ShmConnector, ShmListener, ShmOptions, Wait};

/// Both ends of every link wait for frames as this says: the suite runs once per mode, since
/// each mode reads the rings differently (a polling or spinning caller reads its own reply; a
/// parking one leaves it to the reading task).
struct Shm(Wait);

impl Shm {
    /// Rings smaller than the default, so that the suite's large payloads cross them many
    /// times.
    fn options(&self, frame_limit: usize) -> ShmOptions {
        ShmOptions::default()
            .ring_capacity(1 << 20)
            .max_frame_size(frame_limit)
            .wait(self.0)
    }
}

impl Harness for Shm {
    type Listener = ShmListener;
    type Connector = ShmConnector;
    type Address = PathBuf;

    fn bind(&self, frame_limit: usize) -> Result<(ShmListener, PathBuf), TransportError> {
        let path = std::env::temp_dir().join(format!("{}.sock", unique_name("courier-conf")));
        let listener = ShmListener::bind(&path, self.options(frame_limit))?;
        Ok((listener, path))
    }

    fn connector(
        &self,
        path: &PathBuf,
        frame_limit: usize,
    ) -> Result<ShmConnector, TransportError> {
        Ok(ShmConnector::new(path, self.options(frame_limit)))
    }

    fn report(&self) -> String {
        courier_shm::report()
    }
}

mod cbor {
    courier::conformance_tests!(
        super::Shm(courier_shm::Wait::default()),
        courier_cbor::Cbor::default()
    );
}

mod xdr {
    courier::conformance_tests!(
        super::Shm(courier_shm::Wait::default()),
        courier_xdr::Xdr::default()
    );
}

mod poll {
    courier::conformance_tests!(
        super::Shm(courier_shm::Wait::Poll),
        courier_xdr::Xdr::default()
    );
}

mod park {
    courier::conformance_tests!(
        super::Shm(courier_shm::Wait::Park),
        courier_cbor::Cbor::default()
    );
}
