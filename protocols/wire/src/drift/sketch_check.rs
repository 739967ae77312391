//! Checks a DDSketch encoding from the wire before sketches-ddsketch decodes it.
//!
//! The library adds decoded counts and bin indexes without overflow checks (a panic in a debug
//! build, silently wrapped counts in a release build; found by the `drift_records` fuzz target).
//! This walks the same format (DataDog's Java-compatible binary encoding: flag bytes, LEB128
//! var-longs, var-doubles, 8-byte floats) with checked arithmetic and refuses any encoding whose
//! bin indexes or total count would overflow, so the decoder only ever sees sums that fit.

const FLAG_INDEX_MAPPING_LOG: u8 = 0x02;
const FLAG_ZERO_COUNT: u8 = 0x04;
const FLAG_COUNT: u8 = 0xA0;
const FLAG_SUM: u8 = 0x84;
const FLAG_MIN: u8 = 0x88;
const FLAG_MAX: u8 = 0x8C;

/// Why an encoding is refused before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SketchCheckError {
    /// The bytes end inside a field.
    #[error("truncated sketch")]
    Truncated,
    /// The bin counts (with the zero count) add up past `u64::MAX`.
    #[error("sketch counts overflow")]
    CountsOverflow,
    /// A bin index leaves the `i64` range.
    #[error("sketch bin index overflows")]
    IndexOverflow,
    /// A flag byte no encoder writes.
    #[error("invalid sketch flag {0:#04x}")]
    InvalidFlag(u8),
    /// A store encoding mode no encoder writes.
    #[error("invalid sketch store encoding {0}")]
    InvalidStoreEncoding(u8),
}

use SketchCheckError::*;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, SketchCheckError> {
        let (&b, rest) = self.0.split_first().ok_or(Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), SketchCheckError> {
        self.0 = self.0.get(n..).ok_or(Truncated)?;
        Ok(())
    }

    /// LEB128, at most 9 bytes (the ninth carries 8 bits).
    fn var_long(&mut self) -> Result<u64, SketchCheckError> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let next = self.byte()?;
            if next < 0x80 || shift == 56 {
                return Ok(value | (u64::from(next) << shift));
            }
            value |= (u64::from(next) & 0x7F) << shift;
            shift += 7;
        }
    }

    fn signed_var_long(&mut self) -> Result<i64, SketchCheckError> {
        let e = self.var_long()?;
        Ok(((e >> 1) as i64) ^ -((e & 1) as i64))
    }

    /// A var-double (7 bits per byte from the top, rotated by 6).
    fn var_double(&mut self) -> Result<f64, SketchCheckError> {
        let mut bits = 0u64;
        let mut shift = 57i32;
        loop {
            let next = self.byte()?;
            if shift == 1 {
                bits |= u64::from(next);
                break;
            }
            if next < 0x80 {
                bits |= u64::from(next) << shift;
                break;
            }
            bits |= (u64::from(next) & 0x7F) << shift;
            shift -= 7;
        }
        Ok(f64::from_bits(bits.rotate_right(6).wrapping_add(1f64.to_bits())) - 1.0)
    }

    /// A bin count as the decoder takes it (`as u64`: saturating, NaN and negatives to 0).
    fn var_double_count(&mut self) -> Result<u64, SketchCheckError> {
        Ok(self.var_double()? as u64)
    }
}

fn valid_flag(b: u8) -> bool {
    let sub = b >> 2;
    match b & 3 {
        0 => matches!(
            b,
            FLAG_ZERO_COUNT | FLAG_COUNT | FLAG_SUM | FLAG_MIN | FLAG_MAX
        ),
        1 | 3 => (1..=3).contains(&sub),
        _ => sub <= 4,
    }
}

/// `Ok` if sketches-ddsketch can decode `bytes` without an overflow (it may still refuse them).
pub(crate) fn check(bytes: &[u8]) -> Result<(), SketchCheckError> {
    let mut input = Input(bytes);
    if bytes.len() >= 2 && bytes[0] == FLAG_INDEX_MAPPING_LOG && valid_flag(bytes[1]) {
        input.skip(1)?;
    }
    let add = |a: u64, b: u64| a.checked_add(b).ok_or(CountsOverflow);
    // Per store (positive, negative), the last decoded store's total; and the zero count.
    let (mut pos, mut neg, mut zero) = (0u64, 0u64, 0f64);
    while !input.0.is_empty() {
        let flag = input.byte()?;
        match flag & 3 {
            2 => input.skip(16)?,
            0 => match flag {
                FLAG_ZERO_COUNT | FLAG_COUNT => {
                    let c = input.var_double()?;
                    if flag == FLAG_ZERO_COUNT {
                        // The decoder sums zero counts as floats, then casts.
                        zero += c;
                    }
                }
                FLAG_SUM | FLAG_MIN | FLAG_MAX => input.skip(8)?,
                _ => return Err(InvalidFlag(flag)),
            },
            kind => {
                let mode = flag >> 2;
                let bins = input.var_long()?;
                let mut total = 0u64;
                let mut index = 0i64;
                match mode {
                    1 | 2 => {
                        for _ in 0..bins {
                            index = index
                                .checked_add(input.signed_var_long()?)
                                .ok_or(IndexOverflow)?;
                            let c = if mode == 1 {
                                input.var_double_count()?
                            } else {
                                1
                            };
                            total = add(total, c)?;
                        }
                    }
                    3 => {
                        index = input.signed_var_long()?;
                        let delta = input.signed_var_long()?;
                        for _ in 0..bins {
                            total = add(total, input.var_double_count()?)?;
                            index = index.checked_add(delta).ok_or(IndexOverflow)?;
                        }
                    }
                    _ => return Err(InvalidStoreEncoding(mode)),
                }
                // A later store of the same sign replaces the earlier one.
                if kind == 1 {
                    pos = total;
                } else {
                    neg = total;
                }
            }
        }
    }
    add(add(pos, neg)?, zero as u64)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_sketches_pass_and_overflowing_counts_are_refused() {
        let mut s = sketches_ddsketch::DDSketch::new(sketches_ddsketch::Config::defaults());
        for i in 0..1000 {
            s.add(f64::from(i) - 500.0);
        }
        s.add(0.0);
        let bytes = s.to_java_bytes();
        assert_eq!(check(&bytes), Ok(()));
        // One positive store of two bins, each with a count near u64::MAX.
        let mut evil = vec![0x05, 2];
        for _ in 0..2 {
            evil.push(2); // index delta +1 (zigzag)
                          // var-double of 1.6e19 (> u64::MAX / 2): encode as the library does.
            let bits = (1.6e19f64 + 1.0)
                .to_bits()
                .wrapping_sub(1f64.to_bits())
                .rotate_left(6);
            let mut b = bits;
            for _ in 0..8 {
                let next = (b >> 57) as u8;
                b <<= 7;
                if b == 0 {
                    evil.push(next);
                    break;
                }
                evil.push(next | 0x80);
            }
            if b != 0 {
                evil.push((b >> 56) as u8);
            }
        }
        assert!(check(&evil).is_err(), "overflowing counts accepted");
        assert!(check(&[0x05, 3, 2]).is_err(), "truncated store accepted");
    }
}
