//! A well-formedness check of CBOR input, run before ciborium sees it.
//!
//! ciborium trusts what the input declares; this pass does not. In one iterative walk (no
//! recursion, so no input can overflow the stack) it checks that the input is exactly one
//! well-formed data item (RFC 8949 §3, Appendix C) within the codec's policy:
//!
//! - every declared length fits in the bytes that remain, so nothing later allocates what the
//!   input merely claims;
//! - nesting stays within the depth limit;
//! - indefinite-length strings consist of definite chunks of the same major type (§3.2.3) and
//!   text is valid UTF-8, chunk by chunk;
//! - a break appears only where an indefinite-length item may end, and never splits a map pair;
//! - no two keys of one map have the same encoding;
//! - tags are refused, except 2 and 3 (bignums) on a byte string of at most 16 bytes, which is
//!   how ciborium encodes `u128` and `i128` beyond 64 bits;
//! - simple values other than false, true, null and undefined are refused;
//! - nothing follows the item.
//!
//! Its memory is bounded by the input: a stack of at most `max_depth` entries and the key spans
//! of the map being checked.

use crate::Error;

enum Container {
    Array {
        remaining: Option<u64>,
    },
    Map {
        /// Items (keys and values) left, or `None` for indefinite length.
        remaining: Option<u64>,
        /// Items seen so far; even ones are keys.
        seen: u64,
        /// Where the item being read at this level began.
        item_start: usize,
        /// Byte spans of the keys, to find duplicates when the map ends.
        keys: Vec<(usize, usize)>,
    },
}

struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .input
            .get(self.pos)
            .ok_or(Error::Truncated { offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn left(&self) -> usize {
        self.input.len() - self.pos
    }

    /// Reads the argument of a head whose additional information is `ai` (not 31).
    fn argument(&mut self, ai: u8, at: usize) -> Result<u64, Error> {
        let n = match ai {
            0..=23 => return Ok(u64::from(ai)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => {
                return Err(Error::Malformed {
                    offset: at,
                    reason: "reserved additional information (28-30)",
                })
            }
        };
        if self.left() < n {
            return Err(Error::Truncated {
                offset: self.input.len(),
            });
        }
        let v = self.input[self.pos..self.pos + n]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        self.pos += n;
        Ok(v)
    }

    /// Skips `len` bytes of string content, checking UTF-8 for text.
    fn content(&mut self, len: u64, text: bool, at: usize) -> Result<(), Error> {
        let available = self.left();
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= available)
            .ok_or(Error::LengthBeyondInput {
                offset: at,
                declared: len,
                available,
            })?;
        let bytes = &self.input[self.pos..self.pos + len];
        if text && std::str::from_utf8(bytes).is_err() {
            return Err(Error::InvalidUtf8 { offset: self.pos });
        }
        self.pos += len;
        Ok(())
    }

    /// The chunks of an indefinite-length string, up to and including the break.
    fn chunks(&mut self, major: u8) -> Result<(), Error> {
        loop {
            let at = self.pos;
            let b = self.byte()?;
            if b == 0xff {
                return Ok(());
            }
            if b >> 5 != major || b & 0x1f == 31 {
                return Err(Error::Malformed {
                    offset: at,
                    reason: "a chunk of an indefinite-length string must be a definite string of the same type",
                });
            }
            let len = self.argument(b & 0x1f, at)?;
            self.content(len, major == 3, at)?;
        }
    }
}

fn check_count(declared: u64, per_item: u64, left: usize, at: usize) -> Result<Option<u64>, Error> {
    // Every item takes at least one byte, so a count the remaining input cannot hold is a lie.
    match declared.checked_mul(per_item) {
        Some(items) if items <= left as u64 => Ok(Some(items)),
        _ => Err(Error::LengthBeyondInput {
            offset: at,
            declared,
            available: left,
        }),
    }
}

fn duplicate_key(input: &[u8], keys: &mut [(usize, usize)]) -> Option<usize> {
    keys.sort_unstable_by(|a, b| input[a.0..a.1].cmp(&input[b.0..b.1]));
    keys.windows(2)
        .find(|w| input[w[0].0..w[0].1] == input[w[1].0..w[1].1])
        .map(|w| w[0].0.max(w[1].0))
}

/// Checks that `input` is exactly one well-formed CBOR item within the policy above.
pub(crate) fn scan(input: &[u8], max_depth: usize) -> Result<(), Error> {
    let mut s = Scanner { input, pos: 0 };
    let mut stack: Vec<Container> = Vec::new();
    loop {
        let at = s.pos;
        let b = s.byte()?;

        // A break ends the innermost container if it is of indefinite length.
        if b == 0xff {
            match stack.last() {
                Some(Container::Array { remaining: None }) => {}
                Some(Container::Map {
                    remaining: None,
                    seen,
                    ..
                }) if seen % 2 == 0 => {}
                Some(Container::Map {
                    remaining: None, ..
                }) => {
                    return Err(Error::Malformed {
                        offset: at,
                        reason: "break between a map key and its value",
                    })
                }
                _ => {
                    return Err(Error::Malformed {
                        offset: at,
                        reason: "break outside an indefinite-length item",
                    })
                }
            }
            close(input, &mut stack)?;
            if complete(input, &mut stack, s.pos)? {
                break;
            }
            continue;
        }

        if let Some(Container::Map { item_start, .. }) = stack.last_mut() {
            *item_start = at;
        }
        let major = b >> 5;
        let ai = b & 0x1f;
        let indefinite = ai == 31;
        match major {
            0 | 1 => {
                if indefinite {
                    return Err(Error::Malformed {
                        offset: at,
                        reason: "integers have no indefinite length",
                    });
                }
                s.argument(ai, at)?;
            }
            2 | 3 => {
                if indefinite {
                    s.chunks(major)?;
                } else {
                    let len = s.argument(ai, at)?;
                    s.content(len, major == 3, at)?;
                }
            }
            4 | 5 => {
                if stack.len() >= max_depth {
                    return Err(Error::DepthLimit {
                        limit: max_depth,
                        offset: at,
                    });
                }
                let remaining = if indefinite {
                    None
                } else {
                    let n = s.argument(ai, at)?;
                    check_count(n, if major == 4 { 1 } else { 2 }, s.left(), at)?
                };
                if remaining != Some(0) {
                    stack.push(if major == 4 {
                        Container::Array { remaining }
                    } else {
                        Container::Map {
                            remaining,
                            seen: 0,
                            item_start: s.pos,
                            keys: Vec::new(),
                        }
                    });
                    continue;
                }
            }
            6 => {
                if indefinite {
                    return Err(Error::Malformed {
                        offset: at,
                        reason: "tags have no indefinite length",
                    });
                }
                let tag = s.argument(ai, at)?;
                // Bignums, as ciborium writes u128/i128: a definite byte string of ≤ 16 bytes.
                let next = input.get(s.pos).copied();
                let bignum =
                    matches!(tag, 2 | 3) && next.is_some_and(|n| n >> 5 == 2 && (n & 0x1f) <= 16);
                if !bignum {
                    return Err(Error::Tag { offset: at, tag });
                }
                let head = s.pos;
                s.pos += 1;
                s.content(u64::from(input[head] & 0x1f), false, head)?;
            }
            _ => match ai {
                20..=23 => {}                   // false, true, null, undefined
                25 => s.content(2, false, at)?, // half float
                26 => s.content(4, false, at)?, // single
                27 => s.content(8, false, at)?, // double
                _ => {
                    return Err(Error::Malformed {
                        offset: at,
                        reason: "unsupported simple value",
                    })
                }
            },
        }
        if complete(input, &mut stack, s.pos)? {
            break;
        }
    }
    if s.pos != input.len() {
        return Err(Error::TrailingBytes {
            offset: s.pos,
            count: input.len() - s.pos,
        });
    }
    Ok(())
}

/// Counts a finished item (ending at `end`) against its container, closing every definite
/// container it fills. Returns true once the top-level item is complete.
fn complete(input: &[u8], stack: &mut Vec<Container>, end: usize) -> Result<bool, Error> {
    loop {
        let filled = match stack.last_mut() {
            None => return Ok(true),
            Some(Container::Array { remaining }) => match remaining {
                Some(r) => {
                    *r -= 1;
                    *r == 0
                }
                None => false,
            },
            Some(Container::Map {
                remaining,
                seen,
                item_start,
                keys,
            }) => {
                if *seen % 2 == 0 {
                    keys.push((*item_start, end));
                }
                *seen += 1;
                match remaining {
                    Some(r) => {
                        *r -= 1;
                        *r == 0
                    }
                    None => false,
                }
            }
        };
        if !filled {
            return Ok(false);
        }
        close(input, stack)?;
    }
}

/// Pops the innermost container, checking a map's keys for duplicates.
fn close(input: &[u8], stack: &mut Vec<Container>) -> Result<(), Error> {
    if let Some(Container::Map { mut keys, .. }) = stack.pop() {
        if let Some(offset) = duplicate_key(input, &mut keys) {
            return Err(Error::DuplicateKey { offset });
        }
    }
    Ok(())
}
