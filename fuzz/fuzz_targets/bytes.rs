//! A cursor over the fuzzer's bytes: every read succeeds (zeros once the input runs out), so a
//! target decodes any input into a valid-looking request.

#![allow(dead_code)]

pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.u8() as usize % (hi - lo + 1)
    }

    /// A finite value on a grid of 1/`denom` within `[-128/denom, 127/denom]`.
    pub fn grid(&mut self, denom: f64) -> f64 {
        (self.u8() as i8) as f64 / denom
    }

    /// An index that is usually small and sometimes anything (out of range on purpose).
    pub fn index(&mut self) -> usize {
        match self.u8() {
            0..=239 => self.u8() as usize % 8,
            240..=249 => self.u16() as usize,
            _ => self.u64() as usize,
        }
    }

    /// The remaining bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
