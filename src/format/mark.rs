//! Idle marks: a small object saying "at this txid the database file was
//! exactly what was shipped, and had this fingerprint".
//!
//! walsync writes one when it lets go of an idle database. After a restart
//! (or a kill), a WAL that no longer continues the shipped position can still
//! be proven continuous if the database file has the mark's fingerprint: the
//! whole current WAL is then new. Marks are an optimisation (they spare a
//! full snapshot); restore ignores them, and losing one loses nothing.
//!
//! ```text
//! magic "WMRK", version u8 = 1, reserved [u8; 3]
//! page_size u32, db_pages u32 (0: unknown)
//! fingerprint: len u64, crc32 u32, mix u64
//! WalPos (salt1 u32, salt2 u32, offset u64, cksum u32 u32) (offset 0: none)
//! CRC32 of all of the above (u32)
//! ```

use std::io::Write;

use super::{get_pos, put_pos, put_u32, put_u64, CrcWriter, Fields, FormatError};
use crate::wal::{valid_page_size, WalPos};

const MAGIC: &[u8; 4] = b"WMRK";
const VERSION: u8 = 1;
const BODY: usize = 60;

/// Length, CRC32 and a 64-bit multiplicative hash of a file's bytes: about
/// 96 bits, so an accidental match of a changed file is out of reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u64,
    pub crc: u32,
    pub mix: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub page_size: u32,
    pub db_pages: Option<u32>,
    pub fingerprint: Fingerprint,
    pub pos: Option<WalPos>,
}

impl Mark {
    /// The object's bytes and their CRC32.
    pub fn encode(&self) -> (Vec<u8>, u32) {
        let mut b = Vec::with_capacity(BODY);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&[VERSION, 0, 0, 0]);
        put_u32(&mut b, self.page_size);
        put_u32(&mut b, self.db_pages.unwrap_or(0));
        put_u64(&mut b, self.fingerprint.len);
        put_u32(&mut b, self.fingerprint.crc);
        put_u64(&mut b, self.fingerprint.mix);
        put_pos(&mut b, self.pos);
        debug_assert_eq!(b.len(), BODY);
        let mut w = CrcWriter::new(Vec::with_capacity(BODY + 4));
        w.write_all(&b)
            .expect("invariant: writing to a Vec cannot fail");
        let (out, _, crc) = w.finish().expect("invariant: writing to a Vec cannot fail");
        (out, crc)
    }

    pub fn decode(bytes: &[u8]) -> Result<Mark, FormatError> {
        if bytes.len() < BODY + 4 {
            return Err(FormatError::Truncated);
        }
        if bytes.len() > BODY + 4 {
            return Err(FormatError::TrailingData);
        }
        let stored = u32::from_be_bytes([
            bytes[BODY],
            bytes[BODY + 1],
            bytes[BODY + 2],
            bytes[BODY + 3],
        ]);
        let computed = crc32fast::hash(&bytes[..BODY]);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch { stored, computed });
        }
        let mut f = Fields::after_head(&bytes[..BODY], MAGIC, VERSION)?;
        let page_size = f.u32();
        if !valid_page_size(page_size) {
            return Err(FormatError::Invalid(format!("page size {page_size}")));
        }
        let db_pages = Some(f.u32()).filter(|&n| n != 0);
        let fingerprint = Fingerprint {
            len: f.u64(),
            crc: f.u32(),
            mix: f.u64(),
        };
        Ok(Mark {
            page_size,
            db_pages,
            fingerprint,
            pos: get_pos(&mut f),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Checksum;

    #[test]
    fn mark_round_trip_and_every_flip_detected() {
        let m = Mark {
            page_size: 4096,
            db_pages: Some(12),
            fingerprint: Fingerprint {
                len: 49152,
                crc: 0xdead_beef,
                mix: 42,
            },
            pos: Some(WalPos {
                salt1: 1,
                salt2: 2,
                offset: 32 + 4120,
                checksum: Checksum(5, 6),
            }),
        };
        let (bytes, crc) = m.encode();
        assert_eq!(crc, crc32fast::hash(&bytes));
        assert_eq!(Mark::decode(&bytes).unwrap(), m);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 4;
            assert!(Mark::decode(&b).is_err(), "flip at {i}");
        }
        assert!(Mark::decode(&bytes[..10]).is_err());
    }
}
