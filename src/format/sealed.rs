//! The sealed-object envelope: an object's bytes encrypted and authenticated
//! with a key only its owner holds (issue 15). `Envelope` is what every
//! object walsync writes goes through (sealed when the database has a key,
//! else as it is), `open` what every object read goes through (a sealed
//! one is told by its magic, so a bucket may mix both).
//!
//! ```text
//! header (36 bytes)
//!   magic "WSEA", version u8 = 1, reserved [u8; 3]
//!   algorithm u8 (1 = ChaCha20-Poly1305, 2 = AES-256-GCM), chunk_shift u8 (chunks of
//!     2^chunk_shift bytes; 16 = 64 KiB), reserved [u8; 2]
//!   key_id [u8; 8]   which key sealed it (keyfile.rs)
//!   salt [u8; 16]    random, fresh for every object
//! chunks: each 2^chunk_shift bytes of ciphertext + a 16-byte tag, the last
//!   one shorter (0 bytes only when the whole plaintext is empty)
//! ```
//! The plaintext is the whole object as `segment`/`snapshot`/`mark` encode it
//! (header, LZ4 frame, CRC32 trailer), so opening it gives exactly what a
//! plain backup holds and the inner CRC32 is still checked.
//!
//! The construction is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015), as
//! in age: the object's key is HKDF-SHA256(key, salt, "walsync-sealed-v1"),
//! chunk i is sealed with nonce = i (88 bits, big-endian) || final flag
//! (1 byte: 1 for the last chunk, else 0), and every chunk's associated data
//! is the header followed by the object's key in the bucket. So:
//! - a flipped bit anywhere fails (the header and the object key are
//!   authenticated by every tag);
//! - dropping chunks at the end fails (the new last chunk was not sealed as
//!   final), as does reordering chunks (nonce = position) or adding any;
//! - an object copied or renamed to another key (prefix, generation, txid
//!   range) fails;
//! - nonces never repeat under one derived key (a counter), and two objects
//!   share a derived key only if their 128-bit random salts collide:
//!   probability below n²/2^129 for n objects under one key, under 2^-49
//!   after a trillion objects.
//!
//! The algorithm is the writer's choice (`Algorithm::for_this_cpu`), and
//! every reader opens both: AES-256-GCM where the CPU has AES and carry-less
//! multiply instructions (x86_64 AES-NI and PCLMULQDQ, ARMv8 AES and PMULL),
//! where it runs at several GB/s; ChaCha20-Poly1305 elsewhere (many ARM edge
//! boards walsync runs on, the Raspberry Pi 4's Cortex-A72 among them, have
//! no AES instructions), where it is the fast one and constant-time in
//! software. Both are ring's, which rustls links already.
//!
//! Memory is one chunk whatever the object's size (ARCHITECTURE.md
//! invariant 7); the reader never trusts a length field (invariant 9). Pure:
//! the salt is a parameter (`fresh_salt` draws one), no file or socket.

use std::fmt;
use std::io::{self, Read, Write};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};

use super::{CrcWriter, Fields};
use crate::keyfile::{Key, KeyId};

const MAGIC: &[u8; 4] = b"WSEA";
const VERSION: u8 = 1;
pub const HEADER_SIZE: usize = 36;
pub const SALT_BYTES: usize = 16;
const TAG: usize = 16;

/// The AEAD of a sealed object (the header's algorithm byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    ChaCha20Poly1305 = 1,
    Aes256Gcm = 2,
}

impl Algorithm {
    fn from_byte(b: u8) -> Option<Algorithm> {
        match b {
            1 => Some(Algorithm::ChaCha20Poly1305),
            2 => Some(Algorithm::Aes256Gcm),
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Algorithm::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Algorithm::Aes256Gcm => &AES_256_GCM,
        }
    }

    /// The faster on this CPU: AES-256-GCM with AES and carry-less
    /// multiply instructions, else ChaCha20-Poly1305.
    pub fn for_this_cpu() -> Algorithm {
        #[cfg(target_arch = "x86_64")]
        let aes = std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq");
        #[cfg(target_arch = "aarch64")]
        let aes = std::arch::is_aarch64_feature_detected!("aes");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let aes = false;
        if aes {
            Algorithm::Aes256Gcm
        } else {
            Algorithm::ChaCha20Poly1305
        }
    }
}
/// 64 KiB chunks: the tag costs 0.02 % of the size, the memory is small.
const CHUNK_SHIFT: u8 = 16;
/// Chunk sizes a reader accepts: 1 KiB to 1 MiB.
const CHUNK_SHIFTS: std::ops::RangeInclusive<u8> = 10..=20;
const HKDF_INFO: &[u8] = b"walsync-sealed-v1";

/// Why a sealed object cannot be opened. The caller adds the object's key.
#[derive(Debug)]
pub enum SealError {
    Io(io::Error),
    /// Not a sealed object (e.g. a plain one).
    BadMagic,
    UnsupportedVersion(u8),
    UnknownAlgorithm(u8),
    Invalid(String),
    /// Sealed with a key that was not given.
    KeyNeeded {
        needed: KeyId,
        given: Vec<KeyId>,
    },
    /// A chunk's tag does not match: the object was changed, cut, or is not
    /// stored under the key it was sealed for.
    Authentication {
        chunk: u64,
    },
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::Io(e) => write!(f, "read failed: {e}"),
            SealError::BadMagic => write!(f, "not an encrypted walsync object"),
            SealError::UnsupportedVersion(v) => write!(
                f,
                "encrypted by a newer walsync (envelope version {v}); upgrade walsync"
            ),
            SealError::UnknownAlgorithm(a) => write!(
                f,
                "encrypted with algorithm {a}, unknown to this walsync; upgrade walsync"
            ),
            SealError::Invalid(what) => write!(f, "corrupt: {what}"),
            SealError::KeyNeeded { needed, given } => {
                write!(f, "encrypted with key id {needed}, ")?;
                if given.is_empty() {
                    write!(f, "and no key was given")?;
                } else {
                    let ids: Vec<String> = given.iter().map(KeyId::to_string).collect();
                    write!(f, "not with the key(s) given ({})", ids.join(", "))?;
                }
                write!(f, "; give the key file of key id {needed}")
            }
            SealError::Authentication { chunk } => write!(
                f,
                "authentication failed at chunk {chunk}: the object was changed, truncated, \
                 or moved from the key it was written under"
            ),
        }
    }
}

impl std::error::Error for SealError {}

impl From<io::Error> for SealError {
    fn from(e: io::Error) -> Self {
        // An I/O error raised by `OpenReader::read` carries the SealError.
        if e.get_ref().is_some_and(|inner| inner.is::<SealError>()) {
            let inner = e.into_inner().expect("invariant: checked just above");
            return *inner
                .downcast::<SealError>()
                .expect("invariant: checked just above");
        }
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SealError::Invalid("truncated: the object ends inside its header".into())
        } else {
            SealError::Io(e)
        }
    }
}

/// A fresh random salt from the operating system.
pub fn fresh_salt() -> io::Result<[u8; SALT_BYTES]> {
    let mut salt = [0u8; SALT_BYTES];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| io::Error::other("the operating system's random source failed"))?;
    Ok(salt)
}

/// The header of a sealed object, as read from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedHeader {
    pub algorithm: Algorithm,
    pub key_id: KeyId,
    pub chunk_shift: u8,
    pub salt: [u8; SALT_BYTES],
}

impl SealedHeader {
    fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[..4].copy_from_slice(MAGIC);
        h[4] = VERSION;
        h[8] = self.algorithm as u8;
        h[9] = self.chunk_shift;
        h[12..20].copy_from_slice(&self.key_id.0);
        h[20..36].copy_from_slice(&self.salt);
        h
    }

    /// Reads a header; its fields are only trusted once a chunk's tag, which
    /// covers them, checks.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self, SealError> {
        let mut f = Fields::after_head(b, MAGIC, VERSION).map_err(|e| match e {
            super::FormatError::UnsupportedVersion(v) => SealError::UnsupportedVersion(v),
            _ => SealError::BadMagic,
        })?;
        let byte = f.u8();
        let algorithm = Algorithm::from_byte(byte).ok_or(SealError::UnknownAlgorithm(byte))?;
        let chunk_shift = f.u8();
        if !CHUNK_SHIFTS.contains(&chunk_shift) {
            return Err(SealError::Invalid(format!("chunk size 2^{chunk_shift}")));
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&b[12..20]);
        let mut salt = [0u8; SALT_BYTES];
        salt.copy_from_slice(&b[20..36]);
        Ok(SealedHeader {
            algorithm,
            key_id: KeyId(key_id),
            chunk_shift,
            salt,
        })
    }
}

/// The object's own key: HKDF-SHA256 of the key and the object's salt.
fn sealing_key(key: &Key, salt: &[u8; SALT_BYTES], algorithm: Algorithm) -> LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(key.secret());
    let okm = prk
        .expand(&[HKDF_INFO], algorithm.aead())
        .expect("invariant: 32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(chunk: u64, last: bool) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[3..11].copy_from_slice(&chunk.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

/// Associated data of every chunk: the header, then the object's key.
fn associated_data(header: &[u8; HEADER_SIZE], object_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_SIZE + object_key.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(object_key.as_bytes());
    aad
}

/// Seals everything written through it as the object `object_key`.
/// `finish` seals the last chunk; an object not finished cannot be opened.
pub struct SealWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    aad: Vec<u8>,
    chunk_size: usize,
    /// Plaintext of the chunk being filled; a full chunk is only sealed once
    /// more bytes follow, so that the last chunk is known to be the last.
    buf: Vec<u8>,
    chunk: u64,
    written: u64,
}

impl<W: Write> SealWriter<W> {
    /// Writes the header. `salt` must be fresh (`fresh_salt`) for every
    /// object; tests pass fixed ones. The algorithm is this CPU's faster.
    pub fn new(out: W, key: &Key, object_key: &str, salt: [u8; SALT_BYTES]) -> io::Result<Self> {
        let algorithm = Algorithm::for_this_cpu();
        Self::with(out, key, object_key, salt, CHUNK_SHIFT, algorithm)
    }

    /// Smaller chunks keep the exhaustive tests fast; readers accept them.
    #[cfg(test)]
    pub(crate) fn with_chunk_shift(
        out: W,
        key: &Key,
        object_key: &str,
        salt: [u8; SALT_BYTES],
        chunk_shift: u8,
    ) -> io::Result<Self> {
        Self::with(
            out,
            key,
            object_key,
            salt,
            chunk_shift,
            Algorithm::for_this_cpu(),
        )
    }

    /// A writer with every choice given.
    pub(crate) fn with(
        mut out: W,
        key: &Key,
        object_key: &str,
        salt: [u8; SALT_BYTES],
        chunk_shift: u8,
        algorithm: Algorithm,
    ) -> io::Result<Self> {
        let header = SealedHeader {
            algorithm,
            key_id: key.id(),
            chunk_shift,
            salt,
        }
        .encode();
        out.write_all(&header)?;
        let chunk_size = 1usize << chunk_shift;
        Ok(SealWriter {
            out,
            key: sealing_key(key, &salt, algorithm),
            aad: associated_data(&header, object_key),
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG),
            chunk: 0,
            written: HEADER_SIZE as u64,
        })
    }

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.chunk, last),
                Aad::from(&self.aad),
                &mut self.buf,
            )
            .map_err(|_| io::Error::other("sealing a chunk failed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.out.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        self.chunk = self
            .chunk
            .checked_add(1)
            .ok_or_else(|| io::Error::other("object too large to seal"))?;
        Ok(())
    }

    /// Seals the last chunk; returns the writer and the sealed length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.seal_chunk(true)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.buf.len() == self.chunk_size {
            self.seal_chunk(false)?;
        }
        let n = (self.chunk_size - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Opens a sealed object as it is read: yields only authenticated
/// plaintext, one chunk at a time, and fails at the first chunk whose tag
/// does not match. The object is whole only once read to its end (0 from
/// `read`), which authenticates the last chunk.
pub struct OpenReader<R: Read> {
    inner: R,
    pub header: SealedHeader,
    key: LessSafeKey,
    aad: Vec<u8>,
    chunk_size: usize,
    /// The chunk being read: ciphertext and tag, then its plaintext in
    /// `buf[at..plain_len]`.
    buf: Vec<u8>,
    at: usize,
    plain_len: usize,
    /// The byte read past a full chunk, which shows it was not the last.
    lookahead: Option<u8>,
    chunk: u64,
    done: bool,
    /// A chunk failed: nothing more is given out.
    failed: bool,
}

impl<R: Read> OpenReader<R> {
    /// Reads the header and picks the key it names from `keys`.
    pub fn new(mut inner: R, keys: &[Key], object_key: &str) -> Result<Self, SealError> {
        let mut h = [0u8; HEADER_SIZE];
        inner.read_exact(&mut h)?;
        let header = SealedHeader::decode(&h)?;
        let key = keys
            .iter()
            .find(|k| k.id() == header.key_id)
            .ok_or_else(|| SealError::KeyNeeded {
                needed: header.key_id,
                given: keys.iter().map(Key::id).collect(),
            })?;
        let chunk_size = 1usize << header.chunk_shift;
        Ok(OpenReader {
            inner,
            key: sealing_key(key, &header.salt, header.algorithm),
            aad: associated_data(&h, object_key),
            header,
            chunk_size,
            buf: Vec::new(),
            at: 0,
            plain_len: 0,
            lookahead: None,
            chunk: 0,
            done: false,
            failed: false,
        })
    }

    /// Reads and opens the next chunk into `buf`.
    fn next_chunk(&mut self) -> Result<(), SealError> {
        let full = self.chunk_size + TAG;
        // Sized once (not cleared and zeroed again for every chunk).
        if self.buf.len() != full + 1 {
            self.buf.resize(full + 1, 0);
        }
        // Read one byte past a full chunk: if there is one, it was not the last.
        let mut filled = 0;
        if let Some(b) = self.lookahead.take() {
            self.buf[0] = b;
            filled = 1;
        }
        while filled < full + 1 {
            match self.inner.read(&mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SealError::Io(e)),
            }
        }
        let last = filled <= full;
        let len = if last {
            filled
        } else {
            self.lookahead = Some(self.buf[full]);
            full
        };
        // The last chunk holds at least one byte unless it is the only one.
        if len < TAG || (last && self.chunk > 0 && len == TAG) {
            return Err(SealError::Authentication { chunk: self.chunk });
        }
        let plain = self
            .key
            .open_in_place(
                nonce(self.chunk, last),
                Aad::from(&self.aad),
                &mut self.buf[..len],
            )
            .map_err(|_| SealError::Authentication { chunk: self.chunk })?;
        self.plain_len = plain.len();
        self.at = 0;
        self.done = last;
        self.chunk += 1;
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain_len && !self.done && !out.is_empty() {
            if self.failed {
                let e = SealError::Authentication { chunk: self.chunk };
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.next_chunk().map_err(|e| match e {
                SealError::Io(e) => e,
                e => {
                    self.failed = true;
                    io::Error::new(io::ErrorKind::InvalidData, e)
                }
            })?;
        }
        let n = (self.plain_len - self.at).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Where an object's encoding goes: straight to `out` (no key), or sealed
/// with a key as the object `object_key`. Either way `finish` gives the
/// bytes' length and the CRC32 of the bytes as stored, which the upload
/// declares (ARCHITECTURE.md invariant 4).
pub enum Envelope<W: Write> {
    Plain(W),
    Sealed(Box<SealWriter<CrcWriter<W>>>),
}

impl<W: Write> Envelope<W> {
    /// `seal`: the key and a fresh salt (`fresh_salt`), or `None` to write
    /// the object as it is.
    pub fn new(
        out: W,
        seal: Option<(&Key, [u8; SALT_BYTES])>,
        object_key: &str,
    ) -> io::Result<Self> {
        Ok(match seal {
            None => Envelope::Plain(out),
            Some((key, salt)) => Envelope::Sealed(Box::new(SealWriter::new(
                CrcWriter::new(out),
                key,
                object_key,
                salt,
            )?)),
        })
    }

    /// Ends the object: `plain` is the (length, CRC32) the encoder returned
    /// for the plaintext. Returns the writer, and the length and CRC32 of
    /// what was written to it.
    pub fn finish(self, plain: (u64, u32)) -> io::Result<(W, u64, u32)> {
        match self {
            Envelope::Plain(w) => Ok((w, plain.0, plain.1)),
            Envelope::Sealed(s) => s.finish()?.0.into_parts(),
        }
    }
}

impl<W: Write> Write for Envelope<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Envelope::Plain(w) => w.write(b),
            Envelope::Sealed(w) => w.write(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Envelope::Plain(w) => w.flush(),
            Envelope::Sealed(w) => w.flush(),
        }
    }
}

/// A small object encoded in memory (`plain`, with its CRC32), through
/// `Envelope`: its bytes and their CRC32 as stored.
pub fn envelope_bytes(
    plain: Vec<u8>,
    crc: u32,
    seal: Option<(&Key, [u8; SALT_BYTES])>,
    object_key: &str,
) -> io::Result<(Vec<u8>, u32)> {
    if seal.is_none() {
        return Ok((plain, crc));
    }
    let len = plain.len() as u64;
    let mut w = Envelope::new(
        Vec::with_capacity(plain.len() + HEADER_SIZE + TAG),
        seal,
        object_key,
    )?;
    w.write_all(&plain)?;
    let (out, _, crc) = w.finish((len, crc))?;
    Ok((out, crc))
}

/// Which key sealed the object whose first bytes are `head` (`HEADER_SIZE`
/// of them, or all of a shorter object): `None` for a plain object. Only
/// the header is read, so this says which key an object needs, not that
/// the key opens it.
pub fn sealed_by(head: &[u8]) -> Result<Option<KeyId>, SealError> {
    if !head.starts_with(MAGIC) {
        return Ok(None);
    }
    let h: &[u8; HEADER_SIZE] = head
        .get(..HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| SealError::Invalid("truncated: the object ends inside its header".into()))?;
    Ok(Some(SealedHeader::decode(h)?.key_id))
}

/// An object's first bytes, read to tell a sealed object from a plain one,
/// then given back in front of the rest.
pub type Peeked<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the first bytes of an object: whether it is sealed, and the whole
/// object still to read.
pub fn peek<R: Read>(mut r: R) -> io::Result<(bool, Peeked<R>)> {
    let mut head = Vec::with_capacity(MAGIC.len());
    (&mut r).take(MAGIC.len() as u64).read_to_end(&mut head)?;
    Ok((head == MAGIC, io::Cursor::new(head).chain(r)))
}

/// An object as read from the bucket: plain, or sealed and opened as it is
/// read. Either way, reading it gives the object's encoding.
pub enum Opened<R: Read> {
    Plain(Peeked<R>),
    Sealed(Box<OpenReader<Peeked<R>>>),
}

impl<R: Read> Opened<R> {
    /// The key that sealed the object, `None` for a plain one.
    pub fn sealed_with(&self) -> Option<KeyId> {
        match self {
            Opened::Plain(_) => None,
            Opened::Sealed(r) => Some(r.header.key_id),
        }
    }
}

/// Opens the object `object_key` whatever it is: plain, or sealed with one
/// of `keys` (the error names the key id needed).
pub fn open<R: Read>(r: R, keys: &[Key], object_key: &str) -> Result<Opened<R>, SealError> {
    let (sealed, r) = peek(r)?;
    open_peeked(sealed, r, keys, object_key)
}

/// `open`, after `peek`.
pub fn open_peeked<R: Read>(
    sealed: bool,
    r: Peeked<R>,
    keys: &[Key],
    object_key: &str,
) -> Result<Opened<R>, SealError> {
    Ok(if sealed {
        Opened::Sealed(Box::new(OpenReader::new(r, keys, object_key)?))
    } else {
        Opened::Plain(r)
    })
}

impl<R: Read> Read for Opened<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Opened::Plain(r) => r.read(out),
            Opened::Sealed(r) => r.read(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECT: &str = "db/app/00000001/0000000000000005-0000000000000007.seg";

    fn key(byte: u8) -> Key {
        Key::from_secret([byte; 32])
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn seal_with(key: &Key, object: &str, data: &[u8], chunk_shift: u8) -> Vec<u8> {
        let mut w =
            SealWriter::with_chunk_shift(Vec::new(), key, object, [5; SALT_BYTES], chunk_shift)
                .unwrap();
        // Written through in odd slices to exercise chunk filling.
        for part in data.chunks(333) {
            w.write_all(part).unwrap();
        }
        let (out, len) = w.finish().unwrap();
        assert_eq!(len as usize, out.len());
        out
    }

    fn seal(data: &[u8]) -> Vec<u8> {
        seal_with(&key(1), OBJECT, data, 10)
    }

    fn open(sealed: &[u8], keys: &[Key], object: &str) -> Result<Vec<u8>, SealError> {
        let mut r = OpenReader::new(sealed, keys, object)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn sealed_objects_open_to_their_plaintext() {
        for len in [0, 1, 1023, 1024, 1025, 2048, 5000, 70_000] {
            let data = plaintext(len);
            let sealed = seal(&data);
            let chunks = len.div_ceil(1024).max(1);
            assert_eq!(sealed.len(), HEADER_SIZE + len + chunks * TAG, "len {len}");
            assert_eq!(open(&sealed, &[key(1)], OBJECT).unwrap(), data, "len {len}");
        }
        // The default 64 KiB chunks.
        let data = plaintext(200_000);
        let mut w = SealWriter::new(Vec::new(), &key(1), OBJECT, fresh_salt().unwrap()).unwrap();
        w.write_all(&data).unwrap();
        let sealed = w.finish().unwrap().0;
        assert_eq!(sealed.len(), HEADER_SIZE + data.len() + 4 * TAG);
        let r = OpenReader::new(&sealed[..], &[key(2), key(1)], OBJECT).unwrap();
        assert_eq!(r.header.key_id, key(1).id());
        assert_eq!(r.header.chunk_shift, 16);
        assert_eq!(open(&sealed, &[key(1)], OBJECT).unwrap(), data);
    }

    #[test]
    fn plaintext_does_not_appear_in_the_sealed_object() {
        let marker = b"walsync-secret-marker";
        let data = marker.repeat(200);
        let sealed = seal(&data);
        assert!(!sealed.windows(8).any(|w| marker.windows(8).any(|m| m == w)));
        // A fresh salt gives a different object for the same plaintext.
        let seal_salted = |salt| {
            let mut w = SealWriter::new(Vec::new(), &key(1), OBJECT, salt).unwrap();
            w.write_all(&data).unwrap();
            w.finish().unwrap().0
        };
        assert_ne!(seal_salted([1; 16]), seal_salted([2; 16]));
    }

    #[test]
    fn every_flipped_bit_fails_to_open() {
        let sealed = seal(&plaintext(2500));
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut b = sealed.clone();
                b[i] ^= 1 << bit;
                assert!(
                    open(&b, &[key(1)], OBJECT).is_err(),
                    "flip of bit {bit} at {i}"
                );
            }
        }
    }

    #[test]
    fn both_algorithms_seal_open_and_refuse_every_flip() {
        let data = plaintext(2500);
        let mut sealed_by = Vec::new();
        for algorithm in [Algorithm::ChaCha20Poly1305, Algorithm::Aes256Gcm] {
            let mut w =
                SealWriter::with(Vec::new(), &key(1), OBJECT, [5; SALT_BYTES], 10, algorithm)
                    .unwrap();
            w.write_all(&data).unwrap();
            let sealed = w.finish().unwrap().0;
            assert_eq!(sealed[8], algorithm as u8);
            let r = OpenReader::new(&sealed[..], &[key(1)], OBJECT).unwrap();
            assert_eq!(r.header.algorithm, algorithm);
            assert_eq!(open(&sealed, &[key(1)], OBJECT).unwrap(), data);
            for i in 0..sealed.len() {
                let mut b = sealed.clone();
                b[i] ^= 1 << (i % 8);
                assert!(
                    open(&b, &[key(1)], OBJECT).is_err(),
                    "{algorithm:?}: flip at {i}"
                );
            }
            sealed_by.push(sealed);
        }
        // Same key, salt and plaintext: unrelated ciphertexts.
        assert_ne!(sealed_by[0][HEADER_SIZE..], sealed_by[1][HEADER_SIZE..]);
        // The writer's choice on this machine is one of them.
        let chosen = SealWriter::new(Vec::new(), &key(1), OBJECT, [5; 16]).unwrap();
        let chosen = chosen.finish().unwrap().0;
        assert_eq!(chosen[8], Algorithm::for_this_cpu() as u8);
    }

    #[test]
    fn truncation_anywhere_fails_to_open() {
        let sealed = seal(&plaintext(3 * 1024 + 10));
        for cut in 0..sealed.len() {
            assert!(
                open(&sealed[..cut], &[key(1)], OBJECT).is_err(),
                "cut at {cut}"
            );
        }
        // At each chunk boundary, the chunk before it was not sealed last.
        for chunks in 1..4 {
            let cut = HEADER_SIZE + chunks * (1024 + TAG);
            let err = open(&sealed[..cut], &[key(1)], OBJECT).unwrap_err();
            assert!(
                matches!(err, SealError::Authentication { chunk } if chunk == chunks as u64 - 1),
                "cut after {chunks} chunks: {err}"
            );
        }
        // A whole object of full chunks is still whole.
        let exact = seal(&plaintext(2048));
        assert_eq!(open(&exact, &[key(1)], OBJECT).unwrap(), plaintext(2048));
        let cut = HEADER_SIZE + 1024 + TAG;
        assert!(open(&exact[..cut], &[key(1)], OBJECT).is_err());
    }

    #[test]
    fn reordered_duplicated_or_appended_chunks_fail_to_open() {
        let sealed = seal(&plaintext(3 * 1024 + 10));
        let c = 1024 + TAG;
        let chunk =
            |i: usize| &sealed[HEADER_SIZE + i * c..(HEADER_SIZE + (i + 1) * c).min(sealed.len())];
        let rebuilt = |order: &[usize]| {
            let mut b = sealed[..HEADER_SIZE].to_vec();
            for &i in order {
                b.extend_from_slice(chunk(i));
            }
            b
        };
        assert!(open(&rebuilt(&[0, 1, 2, 3]), &[key(1)], OBJECT).is_ok());
        for order in [
            &[1, 0, 2, 3][..],
            &[0, 2, 1, 3],
            &[0, 1, 1, 3],
            &[0, 1, 2, 2, 3],
            &[0, 1, 2, 3, 3],
        ] {
            assert!(
                open(&rebuilt(order), &[key(1)], OBJECT).is_err(),
                "{order:?}"
            );
        }
        let mut appended = sealed.clone();
        appended.push(0);
        assert!(open(&appended, &[key(1)], OBJECT).is_err());
        // After a failed chunk, reading on gives nothing of the later ones.
        let bad = rebuilt(&[1, 0, 2, 3]);
        let mut r = OpenReader::new(&bad[..], &[key(1)], OBJECT).unwrap();
        let mut buf = vec![0u8; 4096];
        for _ in 0..4 {
            assert!(r.read(&mut buf).is_err());
        }
    }

    #[test]
    fn a_missing_key_is_named_by_its_id() {
        let sealed = seal(&plaintext(100));
        let needed = key(1).id();
        for given in [vec![], vec![key(2)], vec![key(2), key(3)]] {
            let err = open(&sealed, &given, OBJECT).unwrap_err();
            let SealError::KeyNeeded {
                needed: n,
                given: g,
            } = &err
            else {
                panic!("{err}")
            };
            assert_eq!(*n, needed);
            assert_eq!(g.len(), given.len());
            let text = err.to_string();
            assert!(text.contains(&format!("key id {needed}")), "{text}");
            for k in &given {
                assert!(text.contains(&k.id().to_string()), "{text}");
            }
        }
    }

    #[test]
    fn an_object_under_another_key_fails_to_open() {
        let sealed = seal(&plaintext(100));
        for other in [
            "db/app/00000001/0000000000000005-0000000000000008.seg",
            "db/app/00000002/0000000000000005-0000000000000007.seg",
            "db/other/00000001/0000000000000005-0000000000000007.seg",
            "",
        ] {
            let err = open(&sealed, &[key(1)], other).unwrap_err();
            assert!(
                matches!(err, SealError::Authentication { chunk: 0 }),
                "{other}: {err}"
            );
        }
        // A header naming another key's id with that key: tags still fail.
        let mut forged = sealed.clone();
        forged[12..20].copy_from_slice(&key(2).id().0);
        assert!(open(&forged, &[key(2)], OBJECT).is_err());
    }

    #[test]
    fn plain_objects_and_odd_headers_are_told_apart() {
        let mut plain = b"WSNP\x01\0\0\0".to_vec();
        plain.resize(100, 0);
        assert!(matches!(
            open(&plain, &[key(1)], OBJECT),
            Err(SealError::BadMagic)
        ));
        let sealed = seal(&plaintext(10));
        let with = |i: usize, v: u8| {
            let mut b = sealed.clone();
            b[i] = v;
            open(&b, &[key(1)], OBJECT).unwrap_err()
        };
        assert!(matches!(with(4, 2), SealError::UnsupportedVersion(2)));
        assert!(matches!(with(8, 3), SealError::UnknownAlgorithm(3)));
        assert!(matches!(with(8, 0), SealError::UnknownAlgorithm(0)));
        // The other algorithm's byte: the tags fail.
        let other = if sealed[8] == 1 { 2 } else { 1 };
        assert!(matches!(
            with(8, other),
            SealError::Authentication { chunk: 0 }
        ));
        assert!(matches!(with(9, 40), SealError::Invalid(_)));
        assert!(matches!(with(9, 9), SealError::Invalid(_)));
        assert!(matches!(
            open(&sealed[..10], &[key(1)], OBJECT),
            Err(SealError::Invalid(_))
        ));
    }

    #[test]
    fn sealed_snapshot_streams_through_the_decoder() {
        use crate::format::snapshot::{SnapshotDecoder, SnapshotEncoder, SnapshotHeader};
        let h = SnapshotHeader {
            page_size: 4096,
            page_count: 40,
            txid: 3,
            time_ms: 4,
            pos: None,
        };
        let seal = SealWriter::new(Vec::new(), &key(1), OBJECT, [9; 16]).unwrap();
        let mut e = SnapshotEncoder::new(seal, h).unwrap();
        for p in 0..40u32 {
            e.page(&plaintext(4096 + p as usize)[p as usize..]).unwrap();
        }
        let sealed = e.finish().unwrap().0.finish().unwrap().0;
        let r = OpenReader::new(&sealed[..], &[key(1)], OBJECT).unwrap();
        let mut d = SnapshotDecoder::new(r).unwrap();
        let mut page = vec![0u8; 4096];
        let mut n = 0;
        while d.next_page(&mut page).unwrap() {
            assert_eq!(page, plaintext(4096 + n)[n..]);
            n += 1;
        }
        assert_eq!(n, 40);
        d.finish().unwrap();
        // Cut: the decoder sees the failure as a read error.
        let cut = &sealed[..sealed.len() - TAG];
        let mut decode = || -> Result<(), crate::format::FormatError> {
            let r = OpenReader::new(cut, &[key(1)], OBJECT).expect("the header is whole");
            let mut d = SnapshotDecoder::new(r)?;
            while d.next_page(&mut page)? {}
            d.finish()
        };
        let err = decode().unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
    }

    #[test]
    fn the_envelope_writes_plain_or_sealed_and_open_reads_either() {
        use crate::format::segment::{CommitRecord, SegmentDecoder, SegmentEncoder, SegmentHeader};
        let header = SegmentHeader {
            page_size: 1024,
            commit_count: 1,
            first_txid: 5,
            last_txid: 5,
            first_time_ms: 1,
            last_time_ms: 1,
            start: crate::wal::WalPos {
                salt1: 1,
                salt2: 2,
                offset: 32,
                checksum: crate::wal::Checksum(3, 4),
            },
            end: crate::wal::WalPos {
                salt1: 1,
                salt2: 2,
                offset: 32 + 1048,
                checksum: crate::wal::Checksum(5, 6),
            },
        };
        let encode = |seal: Option<(&Key, [u8; SALT_BYTES])>| {
            let out = Envelope::new(Vec::new(), seal, OBJECT).unwrap();
            let mut e = SegmentEncoder::new(out, header).unwrap();
            e.commit(&CommitRecord {
                txid: 5,
                time_ms: 1,
                db_pages: 1,
                page_count: 1,
            })
            .unwrap();
            e.page(1, &plaintext(1024)).unwrap();
            let (out, len, crc) = e.finish().unwrap();
            out.finish((len, crc)).unwrap()
        };
        let (plain, len, crc) = encode(None);
        assert_eq!((len as usize, crc), (plain.len(), crc32fast::hash(&plain)));
        let (sealed, len, crc) = encode(Some((&key(1), [3; SALT_BYTES])));
        // What is uploaded declares the CRC32 of the sealed bytes.
        assert_eq!(
            (len as usize, crc),
            (sealed.len(), crc32fast::hash(&sealed))
        );
        assert_eq!(sealed.len(), HEADER_SIZE + plain.len() + TAG);
        for (bytes, sealed_with) in [(&plain, None), (&sealed, Some(key(1).id()))] {
            let mut r = super::open(&bytes[..], &[key(2), key(1)], OBJECT).unwrap();
            assert_eq!(r.sealed_with(), sealed_with);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
            let r = super::open(&bytes[..], &[key(1)], OBJECT).unwrap();
            let mut d = SegmentDecoder::new(r).unwrap();
            while d.next_commit().unwrap().is_some() {
                d.next_page(&mut vec![0; 1024]).unwrap();
            }
            d.finish().unwrap();
        }
        // A plain object needs no key; a sealed one names the one it needs.
        assert!(super::open(&plain[..], &[], OBJECT).is_ok());
        let Err(err) = super::open(&sealed[..], &[key(2)], OBJECT) else {
            panic!("opened without its key")
        };
        assert!(matches!(err, SealError::KeyNeeded { needed, .. } if needed == key(1).id()));
        // A flipped bit inside reaches the decoder as a sealed-object error.
        let mut bad = sealed.clone();
        bad[HEADER_SIZE + 40] ^= 1;
        let r = super::open(&bad[..], &[key(1)], OBJECT).unwrap();
        let err = SegmentDecoder::new(r).err().expect("the flip is caught");
        assert!(
            matches!(
                err,
                crate::format::FormatError::Sealed(SealError::Authentication { chunk: 0 })
            ),
            "{err}"
        );
        // Small objects in memory (marks) go through the same envelope.
        let (b, c) = envelope_bytes(plain.clone(), 7, None, OBJECT).unwrap();
        assert_eq!((b, c), (plain.clone(), 7));
        let (b, c) = envelope_bytes(plain.clone(), 7, Some((&key(1), [4; 16])), OBJECT).unwrap();
        assert_eq!(c, crc32fast::hash(&b));
        let mut out = Vec::new();
        super::open(&b[..], &[key(1)], OBJECT)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
        // Objects shorter than the magic are plain (and their decoder says so).
        for short in [&b""[..], b"WS", b"WSE"] {
            let mut r = super::open(short, &[], OBJECT).unwrap();
            assert_eq!(r.sealed_with(), None);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, short);
        }
    }

    /// Seal and open throughput on 64 MiB (release build):
    /// `cargo test --release --lib sealed::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        let data = plaintext(64 << 20);
        for algorithm in [Algorithm::ChaCha20Poly1305, Algorithm::Aes256Gcm] {
            let start = std::time::Instant::now();
            let mut w = SealWriter::with(
                Vec::with_capacity(data.len() + (1 << 20)),
                &key(1),
                OBJECT,
                fresh_salt().unwrap(),
                CHUNK_SHIFT,
                algorithm,
            )
            .unwrap();
            for part in data.chunks(1 << 16) {
                w.write_all(part).unwrap();
            }
            let sealed = w.finish().unwrap().0;
            let seal_secs = start.elapsed().as_secs_f64();
            let start = std::time::Instant::now();
            let mut r = OpenReader::new(&sealed[..], &[key(1)], OBJECT).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            let open_secs = start.elapsed().as_secs_f64();
            assert_eq!(total, data.len());
            let mb = data.len() as f64 / 1e6;
            eprintln!(
                "sealed ({algorithm:?}; this CPU writes {:?}): 64 MiB, seal {:.0} MB/s, open {:.0} MB/s",
                Algorithm::for_this_cpu(),
                mb / seal_secs,
                mb / open_secs
            );
        }
    }
}
