//! The handshake: hello and welcome, before any frame.

use std::time::Duration;

use crate::error::{HandshakeError, RpcError, TransportError};
use crate::transport::{Link, LinkTx};
use crate::wire::{Hello, Welcome, WelcomeStatus, PROTOCOL_VERSION};

/// Client side of the handshake: send the hello, check the welcome. Returns the server's
/// instance id.
pub(crate) async fn client_handshake(
    link: &mut Link,
    codec: &'static str,
    client_id: u128,
    epoch: u64,
    timeout: Duration,
) -> Result<u128, RpcError> {
    let hello = Hello {
        version: u16::from(PROTOCOL_VERSION),
        codec: codec.to_owned(),
        client_id,
        epoch,
    };
    send_raw(&*link.tx, &hello.encode()).await?;
    let answer = tokio::time::timeout(timeout, link.rx.recv())
        .await
        .map_err(|_| HandshakeError::Timeout)??
        .ok_or(HandshakeError::Closed)?;
    let welcome = Welcome::decode(&answer)?;
    match welcome.status {
        WelcomeStatus::Accepted => Ok(welcome.instance),
        WelcomeStatus::VersionUnsupported => Err(HandshakeError::Version {
            ours: u16::from(PROTOCOL_VERSION),
            theirs: welcome.version,
        }
        .into()),
        WelcomeStatus::CodecUnsupported => Err(HandshakeError::Codec {
            requested: codec.to_owned(),
            offered: welcome.codecs,
        }
        .into()),
        WelcomeStatus::Busy => Err(HandshakeError::Busy.into()),
        WelcomeStatus::StaleEpoch => Err(HandshakeError::StaleEpoch.into()),
        WelcomeStatus::EpochOutOfRange => Err(HandshakeError::EpochOutOfRange.into()),
        other => Err(HandshakeError::Malformed(format!("a welcome with status {other:?}")).into()),
    }
}

/// Server side of the handshake: read the hello, pick the codec, let `admit` decide on the
/// client's identity. Returns the index of the codec in `codecs` and what `admit` returned.
/// An accepted welcome names the id `admit` gave (the client's session on this server); a
/// refusal names `instance`. With `busy`, the hello is answered with [`WelcomeStatus::Busy`]
/// and the handshake fails with [`HandshakeError::Busy`]; if `admit` refuses with
/// [`WelcomeStatus::StaleEpoch`] or [`WelcomeStatus::EpochOutOfRange`], the welcome says so and
/// the handshake fails with the matching [`HandshakeError`].
///
/// The caller closes the link when this fails.
pub(crate) async fn server_handshake<T>(
    link: &mut Link,
    codecs: &[&'static str],
    timeout: Duration,
    busy: bool,
    instance: u128,
    admit: impl FnOnce(&Hello) -> Result<(T, u128), WelcomeStatus>,
) -> Result<(usize, T), RpcError> {
    let first = tokio::time::timeout(timeout, link.rx.recv())
        .await
        .map_err(|_| HandshakeError::Timeout)??
        .ok_or(HandshakeError::Closed)?;
    let hello = Hello::decode(&first)?;
    let offered = codecs.join(",");
    let answer = |status| Welcome {
        version: u16::from(PROTOCOL_VERSION),
        status,
        codecs: offered.clone(),
        instance,
    };
    if busy {
        send_raw(&*link.tx, &answer(WelcomeStatus::Busy).encode()).await?;
        return Err(HandshakeError::Busy.into());
    }
    if hello.version != u16::from(PROTOCOL_VERSION) {
        send_raw(
            &*link.tx,
            &answer(WelcomeStatus::VersionUnsupported).encode(),
        )
        .await?;
        return Err(HandshakeError::Version {
            ours: u16::from(PROTOCOL_VERSION),
            theirs: hello.version,
        }
        .into());
    }
    let Some(index) = codecs.iter().position(|c| *c == hello.codec) else {
        send_raw(&*link.tx, &answer(WelcomeStatus::CodecUnsupported).encode()).await?;
        return Err(HandshakeError::Codec {
            requested: hello.codec,
            offered,
        }
        .into());
    };
    let (admitted, session) = match admit(&hello) {
        Ok(admitted) => admitted,
        Err(status) => {
            send_raw(&*link.tx, &answer(status).encode()).await?;
            return Err(match status {
                WelcomeStatus::EpochOutOfRange => HandshakeError::EpochOutOfRange,
                _ => HandshakeError::StaleEpoch,
            }
            .into());
        }
    };
    let welcome = Welcome {
        instance: session,
        ..answer(WelcomeStatus::Accepted)
    };
    send_raw(&*link.tx, &welcome.encode()).await?;
    Ok((index, admitted))
}

async fn send_raw(tx: &dyn LinkTx, message: &[u8]) -> Result<(), TransportError> {
    let mut buf = tx.buffer(message.len()).await?;
    bytes::BufMut::put_slice(&mut buf, message);
    tx.send(buf).await
}
