//! The checksum probe: whether the server really checks the checksum an
//! upload carries, found out rather than assumed. One small object whose
//! `x-amz-checksum-crc32` (or `Content-MD5`, after a fallback) is wrong on
//! purpose goes up under `<root>walsync-upload-probe`; a server that
//! refuses it as a mismatch checks, one that stores it does not. The probe
//! is deleted whatever the answer (s3s-fs 0.14.1 answers 400 `BadDigest`
//! but has stored the bytes by then). Costs a PUT and a DELETE (one more
//! PUT if the server refuses the CRC32 header itself), once per process
//! (`S3Storage::upload_check` keeps the answer). What the answers mean is
//! decided in `integrity::probe_answer` (pure).

use super::answers::xml_text;
use super::integrity::{probe_answer, Digest, ProbeAnswer, UploadDigest};
use super::md5::md5;
use super::S3Storage;
use crate::storage::{StorageError, UploadCheck};

/// The probe's name under the root it is given.
pub(super) const PROBE_NAME: &str = "walsync-upload-probe";

/// The probe's bytes, which say what it is to anyone who finds one left.
const PROBE_BYTES: &[u8] =
    b"walsync checksum probe: uploaded under a wrong checksum on purpose, and deleted at once\n";

/// A digest of the probe's bytes that is wrong on purpose, in the header
/// uploads carry now.
fn wrong_digest(digest: UploadDigest) -> Digest {
    match digest {
        UploadDigest::Crc32 => Digest::crc32(!crc32fast::hash(PROBE_BYTES)),
        UploadDigest::ContentMd5 => {
            let mut sum = md5(PROBE_BYTES);
            sum[0] ^= 0xff;
            Digest::md5(sum)
        }
    }
}

impl S3Storage {
    /// Runs the probe under `root` and says what it found (the commands
    /// report it: `watch` in its log, `list` and `verify` on stderr).
    pub(super) fn probe_upload_check(&self, root: &str) -> UploadCheck {
        let key = format!("{root}{PROBE_NAME}");
        let (check, sent) = self.probe(&key);
        if sent {
            match self.retry("delete", &key, || self.delete_once(&key)) {
                Ok(()) | Err(StorageError::NotFound { .. }) => {}
                Err(e) if matches!(check, UploadCheck::Unknown { .. }) => {
                    log::debug!("cannot delete the checksum probe {key:?}: {e}")
                }
                Err(e) => log::warn!(
                    "cannot delete the checksum probe {key:?} ({e}); it is walsync's and may be deleted"
                ),
            }
        }
        log::debug!("{}: {check}", self.location);
        check
    }

    /// What the server makes of the probe under `key`, and whether a PUT
    /// reached it (so that there may be something to delete).
    fn probe(&self, key: &str) -> (UploadCheck, bool) {
        let mut sent = false;
        // Twice at most: a refusal of the CRC32 header switches uploads to
        // Content-MD5, and that is probed too.
        for _ in 0..2 {
            let mode = self.upload_digest();
            let digest = wrong_digest(mode);
            let answer = self.retry("put", key, || {
                self.put_probe_once(key, PROBE_BYTES, &digest)
            });
            let (status, body) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    let reason = format!("the probe object {key:?} could not be written: {e}");
                    return (UploadCheck::Unknown { reason }, sent);
                }
            };
            sent = true;
            let header = digest.header;
            match probe_answer(status, &body) {
                ProbeAnswer::Stored => return (UploadCheck::NotChecked { header }, sent),
                ProbeAnswer::Mismatch => return (UploadCheck::Checked { header }, sent),
                ProbeAnswer::HeaderRefused(said) if mode == UploadDigest::Crc32 => {
                    self.fall_back_to_md5(&said)
                }
                ProbeAnswer::HeaderRefused(_) | ProbeAnswer::Other => {
                    // The server's words only: a read-only key refused here
                    // is no fault to fix (`verify` may well run with one).
                    let text = String::from_utf8_lossy(&body);
                    let said = match (xml_text(&text, "Code"), xml_text(&text, "Message")) {
                        (Some(code), Some(message)) if !message.is_empty() => {
                            format!(" {code}: {message}")
                        }
                        (Some(code), _) => format!(" {code}"),
                        _ => String::new(),
                    };
                    let said: String = said.chars().take(160).collect();
                    let reason = format!("the probe object {key:?} was refused: {status}{said}");
                    return (UploadCheck::Unknown { reason }, sent);
                }
            }
        }
        let reason = "the server refused both x-amz-checksum-crc32 and Content-MD5".to_owned();
        (UploadCheck::Unknown { reason }, sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_digests_are_wrong_in_the_header_uploads_carry() {
        let crc = wrong_digest(UploadDigest::Crc32);
        assert_eq!(crc.header, "x-amz-checksum-crc32");
        assert_ne!(crc, Digest::crc32(crc32fast::hash(PROBE_BYTES)));
        let md5 = wrong_digest(UploadDigest::ContentMd5);
        assert_eq!(md5.header, "content-md5");
        assert_ne!(md5, Digest::md5_of(PROBE_BYTES));
        assert_eq!(md5.value.len(), Digest::md5_of(PROBE_BYTES).value.len());
    }
}
