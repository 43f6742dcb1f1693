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

/// A load test past its bound fails with the watchdog's report, work still pending: what was
/// done, what moved in the next second, and what the transport says of its links.
#[test]
fn the_load_watchdog_reports_a_stall_and_fails_the_test() {
    struct Reporting;
    impl Harness for Reporting {
        type Listener = mem::Listener;
        type Connector = mem::Dialer;
        type Address = String;
        fn bind(&self, limit: usize) -> Result<(mem::Listener, String), TransportError> {
            Mem.bind(limit)
        }
        fn connector(&self, name: &String, limit: usize) -> Result<mem::Dialer, TransportError> {
            Mem.connector(name, limit)
        }
        fn report(&self) -> String {
            "every link: asleep".to_owned()
        }
    }
    let failed = std::panic::catch_unwind(|| {
        courier::testing::run(
            Reporting,
            courier_cbor::Cbor::default(),
            |env, _| async move {
                let progress = courier::testing::Progress::default();
                let stuck = async {
                    for _ in 0..3 {
                        progress.step();
                    }
                    std::future::pending::<()>().await
                };
                let bound = std::time::Duration::from_millis(50);
                env.watched("stuck work", bound, &progress, stuck).await;
            },
        )
    });
    let report = failed.expect_err("the watchdog fails the test");
    let report = report
        .downcast_ref::<String>()
        .expect("the report is the panic's message");
    assert!(
        report.starts_with("stuck work: no end within 50ms; 3 done, 0 more in the next second"),
        "{report}"
    );
    assert!(
        report.ends_with("the transport's links:\nevery link: asleep"),
        "{report}"
    );
}
