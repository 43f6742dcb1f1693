//! The service every client offers: through it, a server's handlers deliver values to the
//! callbacks the client passed in its calls ([`Callback`](crate::Callback)).

use std::sync::Arc;

use crate::callback::{CallbackTable, CLOSE, DELIVER, INTERFACE, SERVICE};
use crate::codec::{ByteBuf, Codec};
use crate::dispatch::{HandlerFuture, Incoming, Service};
use crate::error::RpcError;
use crate::ids::{InterfaceId, MethodId};

/// The service every client offers, through which handlers deliver to callbacks.
pub(crate) struct CallbackService(pub(crate) Arc<CallbackTable>);

impl Service for CallbackService {
    const NAME: &'static str = SERVICE;
    const INTERFACE: InterfaceId = INTERFACE;
    const VERSION: u16 = 1;

    fn dispatch<C: Codec>(&self, codec: &C, call: Incoming<'_>) -> Result<HandlerFuture, RpcError> {
        match call.method() {
            m if m == DELIVER.method => {
                let (id, value): (u64, ByteBuf) = call.decode(codec)?;
                let sink = self.0.sink(id).ok_or_else(|| {
                    RpcError::Closed(format!("callback {id} is no longer listened to"))
                })?;
                let table = Arc::clone(&self.0);
                let codec = codec.clone();
                Ok(Box::pin(async move {
                    let delivered = sink.deliver(value.into_vec()).await;
                    if delivered.is_err() {
                        table.remove(id);
                    }
                    delivered?;
                    crate::dispatch::handler(&codec, async {}).await
                }))
            }
            m if m == CLOSE.method => {
                let (id,): (u64,) = call.decode(codec)?;
                self.0.remove(id);
                Ok(crate::dispatch::handler(codec, async {}))
            }
            _ => Err(call.unknown_method()),
        }
    }

    fn method_name(method: MethodId) -> Option<&'static str> {
        [DELIVER, CLOSE]
            .iter()
            .find(|d| d.method == method)
            .map(|d| d.name)
    }
}
