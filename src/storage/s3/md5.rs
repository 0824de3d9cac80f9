//! MD5 (RFC 1321), for the `Content-MD5` header only: what walsync sends
//! instead of `x-amz-checksum-crc32` to a server that refuses that header
//! (`integrity`), and with every DeleteObjects body. Not a security
//! primitive: it guards bytes against damage on the way, as the header
//! is meant to. In-house because nothing walsync links has MD5 (ring
//! dropped it; rusty-s3 pulls the md-5 crate only with its "full"
//! feature, with serde and serde_json): ~80 lines against a new crate.
//! Pure: streaming, no I/O.

/// Per-round shift amounts (RFC 1321, section 3.4).
const SHIFTS: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, //
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, //
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, //
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// `floor(abs(sin(i + 1)) * 2^32)`, the table T of RFC 1321.
const SINES: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// An MD5 computation fed in pieces.
#[derive(Clone)]
pub(super) struct Md5 {
    state: [u32; 4],
    /// Bytes fed so far.
    len: u64,
    /// The start of a block not yet full.
    buffer: [u8; 64],
    buffered: usize,
}

impl Md5 {
    pub(super) fn new() -> Md5 {
        Md5 {
            state: [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476],
            len: 0,
            buffer: [0; 64],
            buffered: 0,
        }
    }

    pub(super) fn update(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        if self.buffered > 0 {
            let take = bytes.len().min(64 - self.buffered);
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&bytes[..take]);
            self.buffered += take;
            bytes = &bytes[take..];
            if self.buffered < 64 {
                return;
            }
            let block = self.buffer;
            self.compress(&block);
            self.buffered = 0;
        }
        let mut blocks = bytes.chunks_exact(64);
        for block in &mut blocks {
            self.compress(block);
        }
        let rest = blocks.remainder();
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// The 16-byte digest.
    pub(super) fn finalize(mut self) -> [u8; 16] {
        let bits = self.len.wrapping_mul(8);
        // A 1 bit, zeros up to 56 bytes into a block, the length in bits.
        let pad = if self.buffered < 56 {
            56 - self.buffered
        } else {
            120 - self.buffered
        };
        let mut tail = [0u8; 72];
        tail[0] = 0x80;
        tail[pad..pad + 8].copy_from_slice(&bits.to_le_bytes());
        let len = self.len;
        self.update(&tail[..pad + 8]);
        self.len = len;
        let mut digest = [0; 16];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_le_bytes());
        }
        digest
    }

    fn compress(&mut self, block: &[u8]) {
        let mut m = [0u32; 16];
        for (word, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let [mut a, mut b, mut c, mut d] = self.state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let rotated = a
                .wrapping_add(f)
                .wrapping_add(SINES[i])
                .wrapping_add(m[g])
                .rotate_left(SHIFTS[i]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(rotated);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// The MD5 of `bytes`.
pub(super) fn md5(bytes: &[u8]) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(bytes);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; 16]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc_1321_test_suite() {
        // RFC 1321, appendix A.5.
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(hex(md5(input.as_bytes())), expected, "{input:?}");
        }
    }

    /// Bytes `(i * 31 + 7) % 251`; the digests below are Python's
    /// `hashlib.md5` of them, at the lengths where the padding changes
    /// shape (55/56/57 bytes into a block, a whole block, two).
    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
    }

    #[test]
    fn agrees_with_python_hashlib_at_every_padding_boundary() {
        let cases = [
            (0, "d41d8cd98f00b204e9800998ecf8427e"),
            (1, "89e74e640b8c46257a29de0616794d5d"),
            (55, "d39f7454bbe034082797e66c125a31ad"),
            (56, "8e9dbcce67719f0304ad52c59ff3d743"),
            (57, "a299b8643026995363f4eb94158bce68"),
            (63, "19a31d9b1afbd6867266fd6cf4c8821f"),
            (64, "8d9cfa334d4e690843fa68e59c798b84"),
            (65, "72d8b171f7f46898ee558ad1a86fb907"),
            (119, "ae6c390e7155118a1660c98861bc0d69"),
            (120, "b4a4ce125f8932c19665e554892473c4"),
            (127, "57aaebf11a34753459f9b60e725d4f4a"),
            (128, "8ce39ed43121181a0846c282c5ce287a"),
            (129, "5a9404193c887c3ea510ca8550471c2c"),
            (1000, "e722bbb0c3185d08f1a31567e66a825b"),
            (65539, "b26aebc30fa5404a3f6538cf961f7d94"),
        ];
        for (len, expected) in cases {
            assert_eq!(hex(md5(&sample(len))), expected, "{len} bytes");
        }
    }

    #[test]
    fn any_split_into_pieces_gives_the_digest_of_the_whole() {
        let data = sample(777);
        let whole = md5(&data);
        let mut seed = 0x5eed_u64;
        for _ in 0..300 {
            let mut hasher = Md5::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 130) as usize % (rest.len() + 1);
                hasher.update(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(hasher.finalize(), whole);
        }
    }
}
