//! The first decision on every frame a connection receives: what it is, or why it is refused
//! and whom that concerns. Bytes in, a [`Received`] out; no state, no clock.
//!
//! ```
//! use courier_proto::ids::{InterfaceId, MethodId};
//! use courier_proto::received::{receive, Received, Refusal};
//! use courier_proto::wire::{FrameKind, FrameProblem, Header};
//!
//! let call = Header::new(FrameKind::Call, 7, InterfaceId::new(1), MethodId::new(2)).to_bytes();
//! assert!(matches!(receive(&call, 1 << 20), Received::Call(h) if h.call_id == 7));
//!
//! // A frame too large fails the call it claims, with its size and the limit.
//! let big = vec![0u8; 2048];
//! match receive(&big, 1024) {
//!     Received::Refused(Refusal::AnswerPeer { problem, .. }) => {
//!         assert_eq!(problem, FrameProblem::TooLarge { len: 2048, limit: 1024 })
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::time::{Duration, Instant};

use crate::metadata::Metadata;
use crate::wire::{Claims, FrameError, FrameKind, FrameProblem, Header, HEADER_LEN};

/// What a received frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A Call or OneWay from the peer, its header checked. Its metadata and arguments are
    /// read with [`call_arguments`].
    Call(Header),
    /// An Ack, Reply or Error for one of this side's calls.
    Answer(Header),
    /// The peer cancels its call `call_id`.
    Cancel(Header),
    /// A Release: the client holds every outcome below `watermark`.
    Release {
        /// The watermark (the header's call id).
        watermark: u64,
    },
    /// A goodbye (a Release with call id `u64::MAX`): the peer is done with the session.
    Goodbye,
    /// A frame that cannot be accepted.
    Refused(Refusal),
}

/// A refused frame, and whom the refusal concerns: one call fails, never the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A malformed answer: this side's own call `call_id` fails with `problem`.
    FailOwnCall {
        /// The call the answer claimed.
        call_id: u64,
        /// What was wrong.
        problem: FrameProblem,
    },
    /// A malformed call (or a frame too short to say what it is): the peer is answered with
    /// an Error that echoes `claims` (PROTOCOL.md §6).
    AnswerPeer {
        /// What the frame's bytes claimed, for the Error's header.
        claims: Claims,
        /// What was wrong.
        problem: FrameProblem,
    },
    /// A malformed frame nobody is owed an answer for (a OneWay, a Cancel): only logged.
    Drop {
        /// What was wrong.
        problem: FrameProblem,
    },
}

/// Checks `frame` against the protocol and the frame size limit `max_frame_size` and says what
/// it is.
///
/// A frame whose header declares more than the limit is refused as too large even when only
/// its header arrived: a transport that refuses to read an oversized frame hands over the
/// header alone, and the size reported is the declared one.
#[inline]
pub fn receive(frame: &[u8], max_frame_size: usize) -> Received {
    if frame.len() > max_frame_size {
        let problem = FrameProblem::TooLarge {
            len: frame.len(),
            limit: max_frame_size,
        };
        return refuse(frame, problem);
    }
    let header = match Header::decode(frame) {
        Ok(header) => header,
        Err(FrameError {
            problem: FrameProblem::LengthMismatch { declared, .. },
            ..
        }) if HEADER_LEN + declared as usize > max_frame_size => {
            let problem = FrameProblem::TooLarge {
                len: HEADER_LEN + declared as usize,
                limit: max_frame_size,
            };
            return refuse(frame, problem);
        }
        Err(e) => return refuse(frame, e.problem),
    };
    match header.kind {
        FrameKind::Call | FrameKind::OneWay => Received::Call(header),
        FrameKind::Ack | FrameKind::Reply | FrameKind::Error => Received::Answer(header),
        FrameKind::Cancel => Received::Cancel(header),
        FrameKind::Release if header.call_id == u64::MAX => Received::Goodbye,
        FrameKind::Release => Received::Release {
            watermark: header.call_id,
        },
    }
}

/// Whom a refusal of `frame` for `problem` concerns.
fn refuse(frame: &[u8], problem: FrameProblem) -> Received {
    let claims = Claims::read(frame);
    Received::Refused(match claims.call_id {
        Some(call_id) if claims.kind.is_some_and(FrameKind::is_answer) => {
            Refusal::FailOwnCall { call_id, problem }
        }
        Some(_) if claims.is(FrameKind::Cancel) => Refusal::Drop { problem },
        // Nothing ever answers a one-way call, not even a malformed one, once its header is
        // whole enough to say it is one.
        _ if claims.is(FrameKind::OneWay) && frame.len() >= HEADER_LEN => Refusal::Drop { problem },
        _ => Refusal::AnswerPeer { claims, problem },
    })
}

/// The metadata of a call and where its arguments start in `frame`: the metadata block when
/// the header's METADATA flag says there is one (checked against `max_entries` and
/// `max_bytes`), else none. An error says what is wrong with the block.
#[inline]
pub fn call_arguments(
    frame: &bytes::Bytes,
    header: &Header,
    max_entries: usize,
    max_bytes: usize,
) -> Result<(Metadata, usize), String> {
    if !header.flags.contains(crate::wire::Flags::METADATA) {
        return Ok((Metadata::default(), HEADER_LEN));
    }
    let payload = frame.slice(HEADER_LEN..);
    let (metadata, used) = Metadata::decode(&payload, max_entries, max_bytes)?;
    Ok((metadata, HEADER_LEN + used))
}

/// The budget a call's header carries for a caller that gives up at `deadline`, sent at `now`:
/// microseconds left, rounded up so that a sub-microsecond budget is not mistaken for "none"
/// (0); a budget too long for the field is sent as none (the caller enforces it alone).
/// `None` if the deadline has passed already: the call should not be sent.
#[inline]
pub fn budget_micros(now: Instant, deadline: Option<Instant>) -> Option<u32> {
    let Some(deadline) = deadline else {
        return Some(0);
    };
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() {
        return None;
    }
    Some(u32::try_from(left.as_micros().max(1)).unwrap_or(0))
}

/// The instant a call's deadline passes, for a call received at `now`: its budget is relative
/// (0 is none), so the two sides' clocks need not agree.
#[inline]
pub fn deadline(now: Instant, header: &Header) -> Option<Instant> {
    (header.budget_micros != 0)
        .then(|| now + Duration::from_micros(u64::from(header.budget_micros)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{InterfaceId, MethodId};
    use crate::wire::{forge, Flags};

    const LIMIT: usize = 1024;

    fn header(kind: FrameKind, id: u64) -> Header {
        Header::new(kind, id, InterfaceId::new(5), MethodId::new(6))
    }

    fn frame(header: Header, payload: &[u8]) -> Vec<u8> {
        let mut out = Header {
            payload_len: payload.len() as u32,
            ..header
        }
        .to_bytes()
        .to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn every_kind_is_told_apart() {
        use FrameKind::*;
        for kind in [Call, OneWay] {
            let h = header(kind, 1);
            assert_eq!(
                receive(&frame(h, b"ab"), LIMIT),
                Received::Call(Header {
                    payload_len: 2,
                    ..h
                })
            );
        }
        for kind in [Ack, Reply, Error] {
            assert!(
                matches!(receive(&frame(header(kind, 2), b""), LIMIT), Received::Answer(h) if h.kind == kind && h.call_id == 2)
            );
        }
        assert!(
            matches!(receive(&frame(header(Cancel, 3), b""), LIMIT), Received::Cancel(h) if h.call_id == 3)
        );
        assert_eq!(
            receive(&frame(header(Release, 64), b""), LIMIT),
            Received::Release { watermark: 64 }
        );
        assert_eq!(
            receive(&frame(header(Release, u64::MAX), b""), LIMIT),
            Received::Goodbye
        );
    }

    #[test]
    fn a_malformed_call_is_answered_with_what_it_claimed() {
        let mut bad = frame(header(FrameKind::Call, 9), b"");
        forge::set_reserved(&mut bad, 1);
        match receive(&bad, LIMIT) {
            Received::Refused(Refusal::AnswerPeer { claims, problem }) => {
                assert_eq!(problem, FrameProblem::Reserved);
                assert_eq!(
                    (claims.call_id, claims.interface, claims.method),
                    (Some(9), Some(InterfaceId::new(5)), Some(MethodId::new(6)))
                );
            }
            other => panic!("{other:?}"),
        }
        // A payload that disagrees with the header.
        let mut lying = frame(header(FrameKind::Call, 10), b"abc");
        lying.pop();
        assert!(matches!(
            receive(&lying, LIMIT),
            Received::Refused(Refusal::AnswerPeer {
                problem: FrameProblem::LengthMismatch {
                    declared: 3,
                    actual: 2
                },
                ..
            })
        ));
        // Unknown kind, flags, version: answered too.
        let mut kind = frame(header(FrameKind::Call, 11), b"");
        forge::set_kind(&mut kind, 42);
        assert!(matches!(
            receive(&kind, LIMIT),
            Received::Refused(Refusal::AnswerPeer {
                problem: FrameProblem::UnknownKind { got: 42 },
                ..
            })
        ));
        let mut flags = frame(header(FrameKind::Call, 12), b"");
        forge::set_flags(&mut flags, 0x80);
        assert!(matches!(
            receive(&flags, LIMIT),
            Received::Refused(Refusal::AnswerPeer {
                problem: FrameProblem::UnknownFlags { .. },
                ..
            })
        ));
        let mut version = frame(header(FrameKind::Call, 13), b"");
        forge::set_version(&mut version, 9);
        assert!(matches!(
            receive(&version, LIMIT),
            Received::Refused(Refusal::AnswerPeer {
                problem: FrameProblem::Version { got: 9 },
                ..
            })
        ));
    }

    #[test]
    fn a_frame_shorter_than_a_header_is_answered_whatever_its_kind() {
        for kind in [FrameKind::OneWay, FrameKind::Call, FrameKind::Cancel] {
            let short = &frame(header(kind, 14), b"")[..20];
            match receive(short, LIMIT) {
                Received::Refused(Refusal::AnswerPeer { claims, problem })
                    if kind != FrameKind::Cancel =>
                {
                    assert_eq!(problem, FrameProblem::Truncated { len: 20 });
                    assert_eq!(claims.call_id, Some(14));
                }
                // A Cancel long enough to name its call is nobody's to answer.
                Received::Refused(Refusal::Drop { .. }) if kind == FrameKind::Cancel => {}
                other => panic!("{kind:?}: {other:?}"),
            }
        }
        // Too short to name a call: answered with call id 0.
        assert!(
            matches!(receive(&[2, 1, 0], LIMIT), Received::Refused(Refusal::AnswerPeer { claims, .. }) if claims.call_id.is_none())
        );
    }

    #[test]
    fn malformed_one_way_calls_and_cancels_are_nobodys_to_answer() {
        let mut one_way = frame(header(FrameKind::OneWay, 15), b"");
        forge::set_reserved(&mut one_way, 1);
        assert_eq!(
            receive(&one_way, LIMIT),
            Received::Refused(Refusal::Drop {
                problem: FrameProblem::Reserved
            })
        );
        let mut cancel = frame(header(FrameKind::Cancel, 16), b"");
        forge::set_reserved(&mut cancel, 1);
        assert_eq!(
            receive(&cancel, LIMIT),
            Received::Refused(Refusal::Drop {
                problem: FrameProblem::Reserved
            })
        );
    }

    #[test]
    fn a_malformed_answer_fails_this_sides_call() {
        for kind in [FrameKind::Ack, FrameKind::Reply, FrameKind::Error] {
            let mut bad = frame(header(kind, 17), b"");
            forge::set_reserved(&mut bad, 1);
            assert_eq!(
                receive(&bad, LIMIT),
                Received::Refused(Refusal::FailOwnCall {
                    call_id: 17,
                    problem: FrameProblem::Reserved
                }),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn too_large_counts_the_whole_frame_or_what_its_header_declares() {
        let big = frame(header(FrameKind::Reply, 18), &[0; LIMIT]);
        assert_eq!(
            receive(&big, LIMIT),
            Received::Refused(Refusal::FailOwnCall {
                call_id: 18,
                problem: FrameProblem::TooLarge {
                    len: HEADER_LEN + LIMIT,
                    limit: LIMIT
                }
            })
        );
        // The header alone, declaring more than the limit: too large, not truncated.
        let alone = Header {
            payload_len: 5000,
            ..header(FrameKind::Call, 19)
        }
        .to_bytes();
        match receive(&alone, LIMIT) {
            Received::Refused(Refusal::AnswerPeer { claims, problem }) => {
                assert_eq!(
                    problem,
                    FrameProblem::TooLarge {
                        len: HEADER_LEN + 5000,
                        limit: LIMIT
                    }
                );
                assert_eq!(claims.call_id, Some(19));
            }
            other => panic!("{other:?}"),
        }
        // Declaring what fits but sending less is a length mismatch.
        let short = Header {
            payload_len: 10,
            ..header(FrameKind::Call, 20)
        }
        .to_bytes();
        assert!(matches!(
            receive(&short, LIMIT),
            Received::Refused(Refusal::AnswerPeer {
                problem: FrameProblem::LengthMismatch { .. },
                ..
            })
        ));
    }

    #[test]
    fn metadata_comes_before_the_arguments_when_the_flag_says() {
        let plain = bytes::Bytes::from(frame(header(FrameKind::Call, 21), b"args"));
        let h = Header::decode(&plain).expect("valid");
        assert_eq!(
            call_arguments(&plain, &h, 64, 1024),
            Ok((Metadata::default(), HEADER_LEN))
        );
        let mut block = Vec::new();
        Metadata::new().with("k", "v").encode(&mut block);
        let mut payload = block.clone();
        payload.extend_from_slice(b"args");
        let with = Header {
            flags: Flags::METADATA,
            ..header(FrameKind::Call, 22)
        };
        let with = bytes::Bytes::from(frame(with, &payload));
        let h = Header::decode(&with).expect("valid");
        let (metadata, at) = call_arguments(&with, &h, 64, 1024).expect("a valid block");
        assert_eq!(
            (metadata.get_str("k"), &with[at..]),
            (Some("v"), &b"args"[..])
        );
        // Over the entry limit: refused, saying why.
        let err = call_arguments(&with, &h, 0, 1024).expect_err("over the limit");
        assert!(err.contains("entries"), "{err}");
    }

    #[test]
    fn deadlines_are_instants_from_relative_budgets() {
        let now = Instant::now();
        let none = header(FrameKind::Call, 23);
        assert_eq!(deadline(now, &none), None);
        let d = |micros| Some(now + Duration::from_micros(micros));
        assert_eq!(budget_micros(now, None), Some(0), "no deadline, no budget");
        assert_eq!(budget_micros(now, d(1500)), Some(1500));
        assert_eq!(budget_micros(now, Some(now)), None, "passed: not sent");
        let soon = Some(now + Duration::from_nanos(10));
        assert_eq!(budget_micros(now, soon), Some(1), "rounded up, not none");
        let far = d(u64::from(u32::MAX) + 1);
        assert_eq!(
            budget_micros(now, far),
            Some(0),
            "too long for the field: none"
        );
        let timed = Header {
            budget_micros: 1_500,
            ..none
        };
        assert_eq!(
            deadline(now, &timed),
            Some(now + Duration::from_micros(1_500))
        );
    }
}
