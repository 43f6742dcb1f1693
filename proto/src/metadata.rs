//! Per-call metadata: key/value pairs sent beside a call's arguments (a request id, an auth
//! token, a trace context). In `courier`, a caller sets them with `CallOptions::metadata` and
//! the handler reads them with `Context::metadata`.
//!
//! On the wire it is an optional block at the start of a Call or OneWay frame's payload,
//! present only when the frame's [`Flags::METADATA`](crate::wire::Flags::METADATA) bit is set
//! (its layout is in [`wire`](crate::wire)): a call without metadata sends exactly the bytes
//! it would without this feature, and pays nothing for it.
//!
//! ```
//! use courier_proto::metadata::Metadata;
//! let metadata = Metadata::new().with("request-id", "7f3a").with("tenant", b"\x00\x01".to_vec());
//! assert_eq!(metadata.get_str("request-id"), Some("7f3a"));
//!
//! // The block as it travels, and back.
//! let mut block = Vec::new();
//! metadata.encode(&mut block);
//! let len = block.len();
//! let (decoded, used) = Metadata::decode(&block.into(), 64, 16 * 1024).expect("a valid block");
//! assert_eq!(used, len);
//! assert_eq!(decoded.get_str("request-id"), Some("7f3a"));
//! ```

use bytes::{BufMut, Bytes};

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64;

/// Key/value pairs of one call. Keys are 1 to 64 bytes of lower-case ASCII letters, digits,
/// `-`, `_` and `.` (like HTTP header names, lower-cased), each at most once; values are any
/// bytes up to 65,535. Insertion order is kept on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, Bytes)>,
}

impl Metadata {
    /// No entries.
    #[inline]
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Sets `key` to `value`, replacing an earlier value. A key or value that cannot be sent is
    /// refused when the call is made (`RpcError::BadRequest` in `courier`).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.entries.push((key, value)),
        }
        self
    }

    /// [`Metadata::insert`], by value.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The value of `key`, if it is UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// How many entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes of the entries on the wire (the block without its length field).
    fn encoded_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(k, v)| 1 + k.len() + 2 + v.len())
            .sum()
    }

    /// Checks the entries against `limits`, as the receiver will: what the caller gets as
    /// `RpcError::BadRequest` before anything is sent.
    pub fn check(&self, max_entries: usize, max_bytes: usize) -> Result<(), String> {
        if self.entries.len() > max_entries {
            return Err(format!(
                "{} metadata entries, over the limit of {max_entries}",
                self.entries.len()
            ));
        }
        for (key, value) in &self.entries {
            check_key(key.as_bytes())?;
            if value.len() > usize::from(u16::MAX) {
                return Err(format!(
                    "metadata value of `{key}` has {} bytes, over 65,535",
                    value.len()
                ));
            }
        }
        let bytes = self.encoded_len();
        if bytes > max_bytes {
            return Err(format!(
                "{bytes} bytes of metadata, over the limit of {max_bytes}"
            ));
        }
        Ok(())
    }

    /// Writes the block: its length, then each entry. [`Metadata::check`] first.
    pub fn encode<B: BufMut + ?Sized>(&self, out: &mut B) {
        let len = u16::try_from(self.encoded_len()).unwrap_or(u16::MAX);
        out.put_u16(len);
        for (key, value) in &self.entries {
            out.put_u8(key.len() as u8);
            out.put_slice(key.as_bytes());
            out.put_u16(value.len() as u16);
            out.put_slice(value);
        }
    }

    /// Reads the block at the start of `payload` (a frame's payload, after the header):
    /// the metadata, and how many bytes it took. Anything malformed or over the limits is an
    /// error that says what.
    pub fn decode(
        payload: &Bytes,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(Metadata, usize), String> {
        let Some(len) = payload.get(..2) else {
            return Err("the metadata block's length is cut off".to_owned());
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len > max_bytes {
            return Err(format!(
                "{len} bytes of metadata, over the limit of {max_bytes}"
            ));
        }
        let end = 2 + len;
        if payload.len() < end {
            return Err(format!(
                "the metadata block claims {len} bytes; the payload has {}",
                payload.len() - 2
            ));
        }
        let mut entries: Vec<(String, Bytes)> = Vec::new();
        let mut at = 2;
        while at < end {
            if entries.len() == max_entries {
                return Err(format!(
                    "more than {max_entries} metadata entries, the limit"
                ));
            }
            let k = usize::from(payload[at]);
            let key = payload
                .get(at + 1..at + 1 + k)
                .filter(|_| at + 1 + k <= end)
                .ok_or("a metadata key runs past the block")?;
            check_key(key)?;
            let key = std::str::from_utf8(key)
                .map_err(|_| "a metadata key is not ASCII".to_owned())?
                .to_owned();
            at += 1 + k;
            let v = payload
                .get(at..at + 2)
                .filter(|_| at + 2 <= end)
                .ok_or("a metadata value's length runs past the block")?;
            let v = usize::from(u16::from_be_bytes([v[0], v[1]]));
            at += 2;
            if at + v > end {
                return Err("a metadata value runs past the block".to_owned());
            }
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(format!("metadata key `{key}` appears twice"));
            }
            entries.push((key, payload.slice(at..at + v)));
            at += v;
        }
        Ok((Metadata { entries }, end))
    }
}

fn check_key(key: &[u8]) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a metadata key (1 to {MAX_KEY_LEN} bytes of a-z, 0-9, `-`, `_`, `.`)",
            String::from_utf8_lossy(&key[..key.len().min(80)])
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(md: &Metadata) -> Bytes {
        let mut out = Vec::new();
        md.encode(&mut out);
        out.extend_from_slice(b"args");
        Bytes::from(out)
    }

    #[test]
    fn round_trips_and_says_where_the_arguments_start() {
        let md = Metadata::new()
            .with(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .with("empty", Vec::new())
            .with("bin", vec![0u8, 255]);
        let bytes = encoded(&md);
        let (back, used) = Metadata::decode(&bytes, 64, 16 << 10).expect("decodes");
        assert_eq!(back, md);
        assert_eq!(&bytes[used..], b"args");
        assert_eq!(back.get("bin"), Some(&[0u8, 255][..]));
        assert_eq!(back.get_str("nope"), None);
    }

    #[test]
    fn hostile_blocks_are_refused_with_a_reason() {
        let refused = |bytes: &[u8], entries: usize, max: usize| {
            Metadata::decode(&Bytes::copy_from_slice(bytes), entries, max).expect_err("refused")
        };
        assert!(refused(&[0], 8, 100).contains("cut off"));
        assert!(refused(&[0, 200, 1], 8, 1000).contains("claims 200"));
        assert!(refused(&[0, 200], 8, 100).contains("over the limit"));
        // A key that runs past the block, though not past the payload.
        assert!(refused(&[0, 2, 5, b'a', b'b', b'c', b'd', b'e'], 8, 100).contains("key runs past"));
        assert!(refused(&[0, 4, 1, b'A', 0, 0], 8, 100).contains("not a metadata key"));
        assert!(refused(&[0, 4, 0, 0, 0, 0], 8, 100).contains("not a metadata key"));
        assert!(refused(&[0, 4, 1, b'a', 0, 9], 8, 100).contains("value runs past"));
        assert!(refused(&[0, 3, 1, b'a', 0], 8, 100).contains("length runs past"));
        let twice = [0, 8, 1, b'a', 0, 0, 1, b'a', 0, 0];
        assert!(refused(&twice, 8, 100).contains("twice"));
        let two = [0, 8, 1, b'a', 0, 0, 1, b'b', 0, 0];
        assert!(refused(&two, 1, 100).contains("more than 1"));
    }

    #[test]
    fn the_sender_checks_what_the_receiver_would_refuse() {
        assert!(Metadata::new().with("Bad", "x").check(8, 100).is_err());
        assert!(Metadata::new()
            .with("k", vec![0; 70_000])
            .check(8, 1 << 20)
            .is_err());
        assert!(Metadata::new()
            .with("a", "1")
            .with("b", "2")
            .check(1, 100)
            .is_err());
        assert!(Metadata::new().with("a", vec![0; 50]).check(8, 40).is_err());
        assert_eq!(Metadata::new().with("a", "1").check(8, 100), Ok(()));
    }
}
