//! PROTOCOL.md's worked examples are the bytes this code puts on the wire: each example block
//! is compared with what a real client and server exchange through a recording relay.
//!
//! `PROTOCOL_PRINT=1 cargo test -p courier --test protocol -- --nocapture` prints the blocks.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use courier::transport::{mem, Link};
use courier::wire::{ErrorCode, ErrorPayload, FrameKind, Header};
use courier::{CallOptions, Client, Codec, Identity, InterfaceId, Metadata, MethodId, Server};
use courier_cbor::Cbor;
use courier_xdr::Xdr;

/// The service of the worked examples.
#[courier::service(id = 0x4341_4C43)]
pub trait Calc {
    /// Divides `a` by `b`, or says why it cannot.
    async fn div(&self, a: i32, b: i32) -> Result<i32, String>;
}

struct MyCalc;

impl Calc for MyCalc {
    async fn div(&self, a: i32, b: i32) -> Result<i32, String> {
        a.checked_div(b)
            .ok_or_else(|| "division by zero".to_owned())
    }
}

async fn forward(from: &mut Link, to: &Link) -> Bytes {
    let message = tokio::time::timeout(Duration::from_secs(10), from.rx.recv())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("the link stays open");
    let mut buf = to.tx.buffer(message.len()).await.unwrap();
    buf.put_slice(&message);
    to.tx.send(buf).await.unwrap();
    message
}

/// The server instance id the examples show; a real one is random per server.
const EXAMPLE_INSTANCE: u128 = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff;

/// The hello, welcome, call and reply of `div(7, 2)` with `codec`, from a client of `epoch`,
/// as they crossed the wire (the welcome's random instance id replaced by
/// [`EXAMPLE_INSTANCE`], once checked).
/// Then a second call, `div(7, 2)` with the metadata `request-id: 42`: the fifth frame.
async fn exchange<C: Codec>(codec: C, epoch: u64) -> [Bytes; 5] {
    let (client_end, mut relay_client) = mem::pair();
    let (mut relay_server, server_end) = mem::pair();
    let server = Server::builder((Cbor::default(), Xdr::default()))
        .service(CalcServer::new(MyCalc))
        .build();
    let instance = server.instance();
    let serving = tokio::spawn(async move { server.serve_link(server_end).await });
    let connecting = tokio::spawn(
        Client::builder(codec)
            .identity(Identity::new(
                0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
                epoch,
            ))
            .connect_link(client_end),
    );
    let hello = forward(&mut relay_client, &relay_server).await;
    let welcome = forward(&mut relay_server, &relay_client).await;
    serving.await.unwrap().unwrap();
    let calc = CalcClient::new(connecting.await.unwrap().unwrap());
    let tagged =
        calc.with_options(CallOptions::new().metadata(Metadata::new().with("request-id", "42")));
    let call = tokio::spawn(async move { calc.div(7, 2).await });
    let request = forward(&mut relay_client, &relay_server).await;
    let reply = forward(&mut relay_server, &relay_client).await;
    assert_eq!(call.await.unwrap(), Ok(Ok(3)));
    let call = tokio::spawn(async move { tagged.div(7, 2).await });
    let with_metadata = forward(&mut relay_client, &relay_server).await;
    forward(&mut relay_server, &relay_client).await;
    assert_eq!(call.await.unwrap(), Ok(Ok(3)));
    let mut welcome = welcome.to_vec();
    let tail = welcome.len() - 16;
    assert_eq!(
        welcome[tail..],
        (instance ^ 1).to_be_bytes(),
        "the welcome ends with the client's session id: the instance id, the session's number \
         (the server's first: 1) mixed in"
    );
    welcome[tail..].copy_from_slice(&EXAMPLE_INSTANCE.to_be_bytes());
    [hello, welcome.into(), request, reply, with_metadata]
}

fn error_example() -> Bytes {
    let payload = ErrorPayload {
        code: Some(ErrorCode::UnknownMethod),
        raw: ErrorCode::UnknownMethod as u16,
        too_large: None,
        message: "no method".to_owned(),
    };
    let mut body = Vec::new();
    payload.encode(&mut body);
    let header = Header {
        payload_len: body.len() as u32,
        ..Header::new(
            FrameKind::Error,
            1,
            InterfaceId::new(0x4341_4C43),
            MethodId::new(9),
        )
    };
    let mut frame = header.to_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame.into()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ```hex NAME blocks of PROTOCOL.md, by name.
fn documented() -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md"))
        .expect("PROTOCOL.md at the repository root");
    let mut blocks = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```hex ") else {
            continue;
        };
        let mut bytes = Vec::new();
        for line in lines.by_ref().take_while(|l| !l.starts_with("```")) {
            let data = line.split('#').next().unwrap_or("");
            for byte in data.split_whitespace() {
                bytes.push(u8::from_str_radix(byte, 16).expect("hex bytes"));
            }
        }
        blocks.insert(name.trim().to_owned(), bytes);
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_examples_are_what_the_code_sends() {
    let mut produced: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, frames) in [
        ("cbor", exchange(Cbor::default(), 7).await),
        ("xdr", exchange(Xdr::default(), 8).await),
    ] {
        let [hello, welcome, call, reply, with_metadata] = frames;
        // The metadata block sits between the header and the arguments, and nothing else
        // changes but the flag, the length and the call id: without metadata, the frame is
        // what it always was (the plain call above is checked against PROTOCOL.md).
        let block = b"\x00\x0f\x0arequest-id\x00\x0242";
        let mut expected = call.to_vec();
        expected[3] |= 0x04;
        expected[8..16].copy_from_slice(&with_metadata[8..16]);
        expected.splice(32..32, block.iter().copied());
        let len = u32::from_be_bytes(expected[24..28].try_into().unwrap()) + block.len() as u32;
        expected[24..28].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            hex(&expected),
            hex(&with_metadata),
            "{name}: the call with metadata"
        );
        for (what, bytes) in ["hello", "welcome", "call", "reply"]
            .iter()
            .zip([hello, welcome, call, reply])
        {
            produced.insert(format!("{name}-{what}"), bytes.to_vec());
        }
        if name == "cbor" {
            produced.insert("cbor-call-metadata".to_owned(), with_metadata.to_vec());
        }
    }
    produced.insert("error".to_owned(), error_example().to_vec());
    if std::env::var_os("PROTOCOL_PRINT").is_some() {
        for (name, bytes) in &produced {
            println!("```hex {name}\n{}\n```\n", hex(bytes));
        }
    }
    let documented = documented();
    for (name, bytes) in &produced {
        let doc = documented
            .get(name)
            .unwrap_or_else(|| panic!("PROTOCOL.md has no `hex {name}` example"));
        assert_eq!(
            hex(doc),
            hex(bytes),
            "PROTOCOL.md's `{name}` example differs from what the code sends"
        );
    }
}
