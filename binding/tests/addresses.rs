//! Connecting by address strings: one service reached over `quic://`, `shm://` and `mem://`,
//! a server on QUIC and shared memory at once (in a separate process, as shared memory is
//! between processes), and a clear error for each kind of bad address.

mod common;

use std::time::Duration;

use common::{transports, ChildProcess, Here, Scratch, WhereClient, WhereServer};
use courier::address::Transports;
use courier::{AddressError, Client, RpcError, Server, TransportError};
use courier_cbor::Cbor;
use courier_quic::QuicTransport;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the test took over 60 s")
}

/// A client of `address` through `transports`, or the error.
async fn connect(transports: Transports, address: &str) -> Result<Client<Cbor>, RpcError> {
    Client::builder(Cbor::default())
        .transports(transports)
        .connect_to(address)
        .await
}

fn address_error(result: Result<Client<Cbor>, RpcError>) -> AddressError {
    match result {
        Err(RpcError::Address(e)) => e,
        Err(other) => panic!("expected an address error, got {other}"),
        Ok(_) => panic!("expected an address error, got a client"),
    }
}

/// The server half of the first test: QUIC and shared memory at once, in a child process.
#[tokio::test]
#[ignore = "helper: runs as the child process of another test"]
async fn child_serves_quic_and_shm() {
    let Ok(dir) = std::env::var("SCRATCH") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let server = Server::builder(Cbor::default())
        .service(WhereServer::new(Here("child".into())))
        .transports(transports(&dir))
        .build();
    let shm = format!("shm://{}", dir.join("where.sock").display());
    let listeners = server
        .listen(["quic://127.0.0.1:0", shm.as_str()])
        .expect("listen");
    let addresses: Vec<String> = listeners
        .addresses()
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!("ADDRESSES {}", addresses.join(" "));
    server.serve_all(listeners).await.expect("serve");
}

#[tokio::test]
async fn one_service_by_quic_shm_and_mem_strings_alone() {
    within(async {
        let scratch = Scratch::new("strings");
        // Trust comes from the address (`?ca=`); the registry only says which transports exist.
        let registry = Transports::new()
            .with(QuicTransport::new())
            .with(courier_shm::ShmTransport::default());
        let _ = transports(&scratch.0); // makes the certificate the child serves with
        let mut child = ChildProcess::start(
            &[],
            "child_serves_quic_and_shm",
            &[("SCRATCH", scratch.0.display().to_string())],
        );
        let addresses = child.line("ADDRESSES ").await;
        let (quic, shm) = addresses.split_once(' ').expect("two addresses");
        assert!(quic.starts_with("quic://127.0.0.1:") && shm.starts_with("shm:///"));
        let quic = format!(
            "{quic}?server_name=localhost&ca={}",
            scratch.0.join("cert.pem").display()
        );

        let server = Server::builder(Cbor::default())
            .service(WhereServer::new(Here("here".into())))
            .build();
        let listeners = server.listen(["mem://binding-strings"]).expect("listen");
        tokio::spawn(async move { server.serve_all(listeners).await });

        for (address, instance, reached_by) in [
            (quic.as_str(), "child", "network"),
            (shm, "child", "process"),
            ("mem://binding-strings", "here", "in-process"),
        ] {
            let client = connect(registry.clone(), address)
                .await
                .unwrap_or_else(|e| panic!("{address}: {e}"));
            let scheme = address.split_once(':').expect("scheme").0;
            assert_eq!(
                client.address().map(|a| a.scheme().to_owned()).as_deref(),
                Some(scheme)
            );
            let stub = WhereClient::new(client);
            assert_eq!(stub.instance().await.expect("call"), instance, "{address}");
            assert_eq!(
                stub.reached_by().await.expect("call"),
                reached_by,
                "{address}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn a_malformed_address_says_what_is_wrong() {
    within(async {
        let e = address_error(connect(Transports::new(), "localhost:4433").await);
        assert!(
            matches!(&e, AddressError::Malformed { reason, .. } if reason.contains("scheme://")),
            "{e}"
        );
        let e = address_error(connect(Transports::new(), "quic://host:70000").await);
        assert!(e.to_string().contains("not a port"), "{e}");
    })
    .await
}

#[tokio::test]
async fn a_scheme_not_compiled_in_names_the_ones_that_are() {
    within(async {
        let e = address_error(connect(Transports::new(), "quic://10.0.0.1:4433").await);
        assert_eq!(
            e,
            AddressError::UnknownScheme {
                scheme: "quic".into(),
                registered: vec!["mem".into()],
            }
        );
        assert!(e.to_string().contains("courier-quic"), "{e}");
    })
    .await
}

#[tokio::test]
async fn a_misspelt_option_is_refused_not_ignored() {
    within(async {
        let registry = Transports::new().with(QuicTransport::new());
        let e = address_error(connect(registry, "quic://10.0.0.1:1?sever_name=x").await);
        assert!(e.to_string().contains("unknown option `sever_name`"), "{e}");
    })
    .await
}

#[tokio::test]
async fn a_quic_address_needs_a_port_and_roots() {
    within(async {
        let registry = Transports::new().with(QuicTransport::new());
        let e = address_error(connect(registry.clone(), "quic://10.0.0.1").await);
        assert!(e.to_string().contains("quic://host:port"), "{e}");
        let e = address_error(connect(registry.clone(), "quic://10.0.0.1:1").await);
        assert!(e.to_string().contains("?ca="), "{e}");
        let e = address_error(connect(registry, "quic://10.0.0.1:1?ca=/nonexistent.pem").await);
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
    })
    .await
}

#[tokio::test]
async fn a_shm_address_needs_an_absolute_path() {
    within(async {
        let registry = Transports::new().with(courier_shm::ShmTransport::default());
        let e = address_error(connect(registry, "shm://relative/x.sock").await);
        assert!(e.to_string().contains("absolute"), "{e}");
    })
    .await
}

#[tokio::test]
async fn nothing_listening_is_a_transport_error() {
    within(async {
        match connect(Transports::new(), "mem://binding-nobody").await {
            Err(RpcError::Transport(TransportError::NotFound(_))) => {}
            other => panic!("expected NotFound, got {:?}", other.err()),
        }
    })
    .await
}

#[tokio::test]
async fn listening_binds_every_address_or_none() {
    within(async {
        let server = Server::builder(Cbor::default())
            .service(WhereServer::new(Here("x".into())))
            .transports(Transports::new().with(QuicTransport::new()))
            .build();
        let e = server
            .listen(["mem://binding-all-or-none", "quic://127.0.0.1:0"])
            .expect_err("no certificate");
        assert!(e.to_string().contains("no certificate"), "{e}");
        // The first listener was dropped with the error: its name is free again.
        let listeners = server.listen(["mem://binding-all-or-none"]).expect("free");
        assert_eq!(listeners.addresses().len(), 1);
    })
    .await
}
