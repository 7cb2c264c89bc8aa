//! Byte-level building blocks shared by keys and values: big-endian integers that sort, length-prefixed
//! strings that cannot run into each other, and LEB128 varints for compact values.

use crate::error::{Error, Result};

/// Appends `s` as a 2-byte big-endian length, then its bytes. Injective: no two sequences of strings
/// encode to the same bytes, so keys built from them never collide across tenants or customers.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    debug_assert!(s.len() <= u16::MAX as usize);
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Signed minutes or times are stored with the sign bit flipped so that big-endian bytes sort numerically.
pub fn put_i64_sortable(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub fn put_zigzag(out: &mut Vec<u8>, v: i128) {
    put_varint(out, ((v << 1) ^ (v >> 127)) as u128);
}

/// Reads what the `put_*` functions wrote, failing with `Corrupt` rather than panicking on bad bytes.
pub struct Reader<'a> {
    pub bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::Corrupt(format!("wanted {n} bytes, {} left", self.bytes.len())));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    pub fn i64_sortable(&mut self) -> Result<i64> {
        Ok((self.u64()? ^ (1 << 63)) as i64)
    }

    pub fn str_bytes(&mut self) -> Result<&'a [u8]> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().unwrap()) as usize;
        self.take(len)
    }

    pub fn str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.str_bytes()?).map_err(|e| Error::Corrupt(e.to_string()))
    }

    #[inline]
    pub fn varint(&mut self) -> Result<u128> {
        // Most varints (lengths, counts) fit one byte: the path bulk reads of aggregates take.
        if let Some((&byte, rest)) = self.bytes.split_first() {
            if byte < 0x80 {
                self.bytes = rest;
                return Ok(byte as u128);
            }
        }
        let mut v: u128 = 0;
        for shift in (0..128).step_by(7) {
            let byte = self.u8()?;
            v |= ((byte & 0x7f) as u128) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Corrupt("varint longer than 128 bits".into()))
    }

    pub fn zigzag(&mut self) -> Result<i128> {
        let v = self.varint()?;
        Ok(((v >> 1) as i128) ^ -((v & 1) as i128))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<i128>(), u in any::<u128>()) {
            let mut out = Vec::new();
            put_zigzag(&mut out, v);
            put_varint(&mut out, u);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.zigzag().unwrap(), v);
            prop_assert_eq!(r.varint().unwrap(), u);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn sortable_integers_sort_like_numbers(a in any::<i64>(), b in any::<i64>()) {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            put_i64_sortable(&mut x, a);
            put_i64_sortable(&mut y, b);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(Reader::new(&x).i64_sortable().unwrap(), a);
        }

        #[test]
        fn string_sequences_are_injective(a in proptest::collection::vec(".{0,6}", 0..4),
                                          b in proptest::collection::vec(".{0,6}", 0..4)) {
            let enc = |parts: &Vec<String>| {
                let mut out = Vec::new();
                for p in parts { put_str(&mut out, p.as_bytes()); }
                out
            };
            prop_assert_eq!(enc(&a) == enc(&b), a == b);
        }

        #[test]
        fn truncated_input_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut r = Reader::new(&bytes);
            let _ = r.str();
            let _ = r.varint();
            let _ = r.i64_sortable();
        }
    }
}
