//! The conformance suite over the in-process transport.
#![allow(missing_docs)]

use courier::testing::{unique_name, Harness};
use courier::transport::mem;
use courier::TransportError;

struct Mem;

impl Harness for Mem {
    type Listener = mem::Listener;
    type Connector = mem::Dialer;
    type Address = String;

    fn bind(&self, _frame_limit: usize) -> Result<(mem::Listener, String), TransportError> {
        let name = unique_name("conformance");
        Ok((mem::Listener::bind(name.clone())?, name))
    }

    fn connector(&self, name: &String, _frame_limit: usize) -> Result<mem::Dialer, TransportError> {
        Ok(mem::Dialer::new(name.clone()))
    }
}

mod cbor {
    courier::conformance_tests!(super::Mem, courier_cbor::Cbor::default());
}

mod xdr {
    courier::conformance_tests!(super::Mem, courier_xdr::Xdr::default());
}
