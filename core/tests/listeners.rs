//! One server on several listeners: served together, and stopped together when one fails.

use std::time::Duration;

use courier::address::{Bound, Transports};
use courier::directory::{InstanceRecord, StaticDirectory};
use courier::transport::{Link, Listener};
use courier::{Client, RpcError, Server, TransportError};
use courier_cbor::Cbor;

/// Answers with a number that tells servers apart.
#[courier::service]
pub trait Ping {
    /// The server's number.
    async fn ping(&self) -> u32;
}

struct Pong(u32);

impl Ping for Pong {
    async fn ping(&self) -> u32 {
        self.0
    }
}

/// A listener that accepts nothing and fails when told to.
struct Failing(tokio::sync::oneshot::Receiver<()>);

impl Listener for Failing {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        let _ = (&mut self.0).await;
        Err(TransportError::Other("the listener broke".into()))
    }
}

#[tokio::test]
async fn listeners_are_served_together_and_stop_together() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let server = Server::builder(Cbor::default())
            .service(PingServer::new(Pong(7)))
            .build();
        let mut listeners = server
            .listen(["mem://listeners-a", "mem://listeners-b"])
            .expect("listen");
        let (fail, failing) = tokio::sync::oneshot::channel();
        listeners.push(Bound {
            listener: Box::new(Failing(failing)),
            address: "mem://unused".parse().expect("address"),
        });
        let serving = tokio::spawn(async move { server.serve_all(listeners).await });

        for address in ["mem://listeners-a", "mem://listeners-b"] {
            let client = Client::builder(Cbor::default())
                .connect_to(address)
                .await
                .expect("connect");
            assert_eq!(PingClient::new(client).ping().await.expect("call"), 7);
        }

        // One listener fails: serving ends with its error, and the others close with it.
        fail.send(()).expect("still serving");
        let ended = serving.await.expect("the serving task");
        assert!(
            matches!(&ended, Err(TransportError::Other(m)) if m.contains("broke")),
            "{ended:?}"
        );
        for address in ["mem://listeners-a", "mem://listeners-b"] {
            match Client::builder(Cbor::default()).connect_to(address).await {
                Err(RpcError::Transport(TransportError::NotFound(_))) => {}
                other => panic!("{address} still listens: {:?}", other.map(drop)),
            }
        }
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_static_directory_binds_by_name_and_reports_the_choice() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let server = Server::builder(Cbor::default())
            .service(PingServer::new(Pong(9)))
            .build();
        let listeners = server.listen(["mem://listeners-named"]).expect("listen");
        let directory = std::sync::Arc::new(StaticDirectory::new());
        directory.insert(
            InstanceRecord::new("ping", listeners.addresses())
                .instance("only")
                .interfaces(server.interfaces()),
        );
        tokio::spawn(async move { server.serve_all(listeners).await });
        let client = Client::builder(Cbor::default())
            .transports(Transports::new())
            .connect_named(directory.clone(), "ping")
            .await
            .expect("bind");
        assert_eq!(client.instance().as_deref(), Some("only"));
        assert_eq!(
            client.address().map(|a| a.to_string()).as_deref(),
            Some("mem://listeners-named")
        );
        assert_eq!(PingClient::new(client).ping().await.expect("call"), 9);

        // A name nobody serves: a clear error, not a hang.
        match Client::builder(Cbor::default())
            .connect_named(directory, "nobody")
            .await
        {
            Err(RpcError::Address(e)) => {
                assert!(
                    e.to_string().contains("no reachable instance of `nobody`"),
                    "{e}"
                )
            }
            other => panic!("expected NoInstance, got {:?}", other.map(drop)),
        }
    })
    .await
    .expect("in time");
}
