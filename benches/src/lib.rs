//! Shared payloads and helpers for Courier's benchmarks.
//!
//! The criterion benches live in `benches/`; run them with `cargo bench -p courier-benches`.
//! Figures and the commands that produced them are kept in `benches/RESULTS.md`.
//!
//! ```
//! let p = courier_benches::payloads::small();
//! assert_eq!(p.id, 42);
//! ```

pub mod matrix;
pub mod quic;
pub mod spin;

/// The payloads every codec bench uses, so that figures compare like with like.
pub mod payloads {
    use serde::{Deserialize, Serialize};

    /// A small struct typical of an RPC argument.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Small {
        /// An id.
        pub id: u64,
        /// A short name.
        pub name: String,
        /// Some flags.
        pub flags: u32,
        /// A ratio.
        pub ratio: f64,
        /// A few small numbers.
        pub tags: Vec<u16>,
        /// An optional count.
        pub limit: Option<u32>,
    }

    /// The small struct.
    pub fn small() -> Small {
        Small {
            id: 42,
            name: "courier-bench".to_owned(),
            flags: 0b1011,
            ratio: 0.75,
            tags: vec![1, 2, 3, 5, 8],
            limit: Some(100),
        }
    }

    /// 64 KiB of bytes, carried as a byte string (`serde_bytes`).
    pub fn blob() -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }

    /// 10,000 `u32`s.
    pub fn numbers() -> Vec<u32> {
        (0..10_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect()
    }
}
