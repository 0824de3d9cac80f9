//! What S3 answered, as values. An unsuccessful answer (status and the start
//! of its body) or a transport error becomes the `StorageError` to report
//! and whether trying again may help (`Failure`): `meaning` is that
//! decision as a table of statuses and error codes, worded apart. The
//! answers of successful requests are checked here too: the ETag and echoed
//! CRC32 of a stored object or part, an UploadId, a completed upload, a
//! ranged read, a listing page and the sizes it gives. Pure: nothing here
//! sends, reads a socket or sleeps (`attempt` does). Never puts a URL (it
//! may hold a signature) into an error.

use std::fmt::Write as _;

use super::listing::{parse_listing, ListingPage};
use super::requests::CHECKSUM_HEADER;
use crate::storage::StorageError;

/// One failed attempt: the error to report and whether trying again may help.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: StorageError,
    pub(super) retryable: bool,
    /// The server refused the upload's CRC32 header itself (its words):
    /// the retry loop sends the request again at once with `Content-MD5`
    /// (`integrity::refuses_checksum_header`).
    pub(super) checksum_header_refused: Option<String>,
}

impl Failure {
    pub(super) fn fatal(error: StorageError) -> Failure {
        Failure {
            error,
            retryable: false,
            checksum_header_refused: None,
        }
    }

    pub(super) fn retryable(error: StorageError) -> Failure {
        Failure {
            error,
            retryable: true,
            checksum_header_refused: None,
        }
    }
}

/// S3 error codes that mean our credentials or signature were refused.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidSecurity",
    "InvalidToken",
    "MissingSecurityHeader",
    "NotSignedUp",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "AuthorizationQueryParametersError",
];

/// S3 error codes worth retrying whatever their status: the throttling and
/// transient codes the AWS SDKs retry (aws-sdk-js-v3,
/// <https://github.com/aws/aws-sdk-js-v3/blob/main/packages/service-error-classification/src/constants.ts>),
/// and Tigris's `RequestCanceled`, the 408 it sheds load with
/// (<https://github.com/earth-mover/icechunk/issues/1563>).
/// `RequestTimeTooSkewed` is not one: it is an `AUTH_CODES` answer that
/// only a corrected clock fixes.
pub(super) const RETRY_CODES: &[&str] = &[
    "InternalError",
    "OperationAborted",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestCanceled",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
];

/// Statuses retried whatever the body says: 408 Request Timeout (the
/// server gave up waiting or shed the request; RFC 9110 section 15.5.9 lets
/// the client repeat it, and Tigris answers it under load), 429 Too Many
/// Requests, and every 5xx.
fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// S3 error codes saying the bytes did not match their declared checksum.
pub(super) const CHECKSUM_CODES: &[&str] = &[
    "BadDigest",
    "InvalidDigest",
    "XAmzContentChecksumMismatch",
    "InvalidChecksum",
];

/// S3 error codes saying the bucket is in another region or behind another
/// endpoint.
const REGION_CODES: &[&str] = &[
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "TemporaryRedirect",
];

/// S3's largest object.
const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;

/// The text of the first `<tag>…</tag>` in `xml`, with the five predefined
/// entities decoded. Enough for S3 error documents (`<Code>`, `<Message>`).
pub(super) fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    let raw = xml[start..start + len].trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// If `text` is an HTML page (a web server, a console or a proxy answered
/// instead of the S3 API), a short description naming its title.
fn html_page(text: &str) -> Option<String> {
    let head: String = text
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    let head = head.trim_start();
    if !(head.starts_with("<!doctype html") || head.starts_with("<html")) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .map(|start| start + "<title>".len())
        .and_then(|start| {
            let len = lower[start..].find("</title>")?;
            text.get(start..start + len)
        })
        .map(excerpt)
        .filter(|t| !t.is_empty());
    Some(match title {
        Some(t) => format!("an HTML page titled {t:?}"),
        None => "an HTML page".to_owned(),
    })
}

/// A short single-line excerpt of a body that is not an S3 error document.
fn excerpt(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if cleaned.chars().count() > 80 {
        let cut: String = cleaned.chars().take(80).collect();
        format!("{cut}…")
    } else {
        cleaned
    }
}

/// What an unsuccessful answer means, before it is worded as an error: the
/// decision `classify_status` makes, apart from its wording so that it reads
/// (and is tested) as a table of statuses and error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    /// The bucket is in another region or behind another endpoint.
    WrongRegion,
    /// Our credentials or signature were refused.
    Auth,
    NoSuchBucket,
    /// No object under the key.
    NotFound,
    /// The server is busy or failed for now: worth trying again.
    Transient,
    /// The bytes sent do not match their declared CRC32.
    ChecksumMismatch,
    /// The server refused the request for good.
    Refused,
    /// Not an answer from the S3 API (an HTML page, a proxy's text).
    NotS3,
}

impl Meaning {
    /// Whether trying the same request again may help.
    fn retryable(self) -> bool {
        self == Meaning::Transient
    }
}

/// The meaning of an unsuccessful answer with `status`: `code` is the
/// `<Code>` of its S3 error document (`None` if the body is not one),
/// `names_region` whether that document names the bucket's region, and
/// `blank` whether the body is empty or only whitespace.
fn meaning(status: u16, code: Option<&str>, names_region: bool, blank: bool) -> Meaning {
    let Some(code) = code else {
        return match status {
            401 | 403 => Meaning::Auth,
            404 if blank => Meaning::NotFound,
            status if retryable_status(status) => Meaning::Transient,
            _ => Meaning::NotS3,
        };
    };
    // AWS names the bucket's region in the error of a request signed for
    // another one (AuthorizationHeaderMalformed, or
    // AuthorizationQueryParametersError for a presigned URL like ours).
    if REGION_CODES.contains(&code) || names_region {
        Meaning::WrongRegion
    } else if AUTH_CODES.contains(&code) {
        Meaning::Auth
    } else if code == "NoSuchBucket" {
        Meaning::NoSuchBucket
    } else if code == "NoSuchKey" {
        Meaning::NotFound
    } else if RETRY_CODES.contains(&code) || retryable_status(status) {
        Meaning::Transient
    } else if CHECKSUM_CODES.contains(&code) {
        Meaning::ChecksumMismatch
    } else if status == 401 || status == 403 {
        Meaning::Auth
    } else {
        Meaning::Refused
    }
}

/// The parts of an S3 error document (`<Error>…</Error>`) that an error
/// message uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorDocument {
    code: String,
    /// Empty if the document has none.
    message: String,
    /// The bucket's region, if the document names one.
    region: Option<String>,
    /// The endpoint the server suggests, if any.
    endpoint: Option<String>,
}

impl ErrorDocument {
    /// The document in `text`, if `text` is an S3 error document with a
    /// `<Code>`.
    fn parse(text: &str) -> Option<ErrorDocument> {
        if !text.contains("<Error>") {
            return None;
        }
        Some(ErrorDocument {
            code: xml_text(text, "Code")?,
            message: xml_text(text, "Message").unwrap_or_default(),
            region: xml_text(text, "Region").filter(|r| !r.is_empty()),
            endpoint: xml_text(text, "Endpoint"),
        })
    }
}

/// Turns an unsuccessful answer (`status` and up to `ERROR_BODY_LIMIT` of its
/// body) into the error to report and whether to retry. `key` is the object
/// key (or the listed prefix) the request was about.
pub(super) fn classify_status(status: u16, body: &[u8], location: &str, key: &str) -> Failure {
    let text = String::from_utf8_lossy(body);
    let document = ErrorDocument::parse(&text);
    let meaning = meaning(
        status,
        document.as_ref().map(|d| d.code.as_str()),
        document.as_ref().is_some_and(|d| d.region.is_some()),
        text.trim().is_empty(),
    );
    let error = match document {
        Some(document) => s3_error(status, &document, meaning, location, key),
        None => other_error(status, &text, meaning, location, key),
    };
    Failure {
        error,
        retryable: meaning.retryable(),
        checksum_header_refused: None,
    }
}

/// The error for an answer with an S3 error document, worded for its
/// `meaning`.
fn s3_error(
    status: u16,
    document: &ErrorDocument,
    meaning: Meaning,
    location: &str,
    key: &str,
) -> StorageError {
    let location = location.to_owned();
    let code = &document.code;
    let detail = if document.message.is_empty() {
        code.clone()
    } else {
        format!("{code}: {}", document.message)
    };
    let server = |detail: String| StorageError::Server {
        location: location.clone(),
        key: key.to_owned(),
        status,
        detail,
    };
    match meaning {
        Meaning::WrongRegion => {
            let mut detail = detail;
            if let Some(region) = &document.region {
                let _ = write!(detail, "; the bucket is in region {region:?}");
            }
            if let Some(endpoint) = &document.endpoint {
                let _ = write!(detail, "; the server suggests endpoint {endpoint}");
            }
            StorageError::WrongRegion { location, detail }
        }
        Meaning::Auth => {
            let detail = if code == "RequestTimeTooSkewed" {
                format!("{detail}; check this machine's clock")
            } else {
                detail
            };
            StorageError::Auth { location, detail }
        }
        Meaning::NoSuchBucket => StorageError::NoSuchBucket { location },
        Meaning::NotFound => StorageError::NotFound {
            key: key.to_owned(),
        },
        Meaning::ChecksumMismatch => server(format!(
            "{detail}; the bytes sent do not match their checksum ({CHECKSUM_HEADER} or Content-MD5): the local data changed while uploading or is corrupt"
        )),
        Meaning::Transient | Meaning::Refused | Meaning::NotS3 => server(detail),
    }
}

/// The error for an answer whose body is not an S3 error document (empty,
/// an HTML page, a proxy's text), worded for its `meaning`.
fn other_error(
    status: u16,
    text: &str,
    meaning: Meaning,
    location: &str,
    key: &str,
) -> StorageError {
    let location = location.to_owned();
    match meaning {
        Meaning::Auth => StorageError::Auth {
            location,
            detail: format!("status {status} without an S3 error code"),
        },
        Meaning::NotFound => StorageError::NotFound {
            key: key.to_owned(),
        },
        Meaning::Transient => StorageError::Server {
            location,
            key: key.to_owned(),
            status,
            detail: if text.trim().is_empty() {
                "no error details".to_owned()
            } else {
                format!("not an S3 error body: {}", excerpt(text))
            },
        },
        _ => StorageError::BadResponse {
            location,
            detail: match html_page(text) {
                Some(page) => format!("status {status} for {key:?} with {page}, not S3 XML"),
                None => format!(
                    "status {status} for {key:?} with a body that is not an S3 error: {:?}",
                    excerpt(text)
                ),
            },
        },
    }
}

/// Turns a transport error (no HTTP answer) into the error to report and
/// whether to retry. Never includes the URL.
pub(super) fn classify_transport(err: ureq::Error, location: &str) -> Failure {
    let transport = |detail: String| StorageError::Transport {
        location: location.to_owned(),
        detail,
        os_error: None,
    };
    match err {
        ureq::Error::Timeout(t) => Failure::retryable(transport(format!("timed out ({t})"))),
        ureq::Error::Io(e) => Failure::retryable(StorageError::Transport {
            location: location.to_owned(),
            detail: e.to_string(),
            os_error: e.raw_os_error(),
        }),
        ureq::Error::ConnectionFailed => {
            Failure::retryable(transport("connection failed".to_owned()))
        }
        ureq::Error::HostNotFound => Failure::retryable(transport("host not found".to_owned())),
        ureq::Error::Protocol(e) => Failure::fatal(StorageError::BadResponse {
            location: location.to_owned(),
            detail: format!("not a valid HTTP answer: {e}"),
        }),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => Failure::fatal(transport(
            "the endpoint does not give a valid request URL".to_owned(),
        )),
        e @ (ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_)) => {
            Failure::fatal(transport(format!(
                "TLS: {e}; if the server uses a private CA, point AWS_CA_BUNDLE at its PEM bundle"
            )))
        }
        e => Failure::fatal(transport(e.to_string())),
    }
}

/// Largest ListObjectsV2 page we accept (1000 keys are far below this).
pub(super) const LIST_PAGE_LIMIT: u64 = 32 * 1024 * 1024;

/// The ETag of a successful PutObject or UploadPart, checked: the answer
/// must carry one, and the CRC32 the server echoes (if it does) must be the
/// one sent. `request` names the request in messages (`PutObject of "k"`);
/// an `Err` is the detail of a bad response.
pub(super) fn stored_etag(
    request: &str,
    etag: Option<String>,
    echoed_checksum: Option<&str>,
    sent_checksum: &str,
) -> Result<String, String> {
    let Some(etag) = etag else {
        return Err(format!("{request} answered success without an ETag header"));
    };
    if let Some(echoed) = echoed_checksum.filter(|e| *e != sent_checksum) {
        return Err(format!(
            "{request} stored CRC32 {echoed}, but we sent {sent_checksum}"
        ));
    }
    Ok(etag)
}

/// The UploadId in the answer to CreateMultipartUpload of `key`; an `Err` is
/// the detail of a bad response.
pub(super) fn upload_id(key: &str, text: &str) -> Result<String, String> {
    match xml_text(text, "UploadId") {
        Some(id) if !id.is_empty() => Ok(id),
        _ => Err(format!(
            "CreateMultipartUpload of {key:?} answered without an UploadId: {:?}",
            excerpt(text)
        )),
    }
}

/// The object's `ChecksumCRC32`, if the server reports one, from the answer
/// `text` to a CompleteMultipartUpload of `key` with a success `status`. S3
/// may answer 200 and report an error in the body.
pub(super) fn completed_upload(
    status: u16,
    text: &str,
    location: &str,
    key: &str,
) -> Result<Option<String>, Failure> {
    if text.contains("<Error>") {
        return Err(classify_status(status, text.as_bytes(), location, key));
    }
    if !text.contains("<CompleteMultipartUploadResult") {
        return Err(Failure::fatal(StorageError::BadResponse {
            location: location.to_owned(),
            detail: format!(
                "CompleteMultipartUpload of {key:?} answered {:?}",
                excerpt(text)
            ),
        }));
    }
    Ok(xml_text(text, "ChecksumCRC32").filter(|c| !c.is_empty()))
}

/// One ListObjectsV2 page of `prefix` from the bytes of its answer (at
/// most `LIST_PAGE_LIMIT` of them, or one more to say it is larger); an
/// `Err` is the detail of a bad response.
pub(super) fn listing_page(prefix: &str, bytes: Vec<u8>) -> Result<ListingPage, String> {
    if bytes.len() as u64 > LIST_PAGE_LIMIT {
        return Err(format!(
            "a listing page of {prefix:?} is larger than {LIST_PAGE_LIMIT} bytes"
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("the listing of {prefix:?} is not UTF-8"))?;
    parse_listing(&text).map_err(|e| match html_page(&text) {
        Some(page) => format!("the listing of {prefix:?} is {page}, not a ListObjectsV2 result"),
        None => format!(
            "the listing of {prefix:?} is not a ListObjectsV2 result ({e}): {:?}",
            excerpt(&text)
        ),
    })
}

/// Whether the answer to a GetObject of `len` bytes from `start` (a `Range`
/// request) holds those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RangeAnswer {
    /// Its body is the range.
    Holds,
    /// An error status: classify it with `classify_status`.
    Unsuccessful,
    /// A success that cannot be used; the detail of a bad response.
    Unusable(String),
}

/// What the answer with `status` (and `content_length`, if given) to a
/// GetObject of `key` for `len` bytes from `start` is.
pub(super) fn range_answer(
    key: &str,
    status: u16,
    start: u64,
    len: u64,
    content_length: Option<u64>,
) -> RangeAnswer {
    if status == 416 {
        return RangeAnswer::Unusable(format!(
            "object {key:?}: {}",
            crate::storage::range_short(start, len, start)
        ));
    }
    if !(200..300).contains(&status) {
        return RangeAnswer::Unsuccessful;
    }
    // 206 with exactly the range; a server that ignores `Range` answers
    // 200 with the whole object, usable only when the range is all of it.
    if status != 206 && (start != 0 || content_length != Some(len)) {
        return RangeAnswer::Unusable(format!(
            "GetObject of {key:?} with a Range header answered {status}, not 206 Partial Content"
        ));
    }
    RangeAnswer::Holds
}

/// The size a listing gives `key`, if it is one an S3 object can have. A
/// restore plans its downloads from these sizes (a list of 2 MiB ranges), so
/// a server claiming 16 EiB would make it allocate without end.
pub(super) fn listed_size(prefix: &str, key: &str, size: Option<u64>) -> Result<u64, String> {
    match size {
        None => Err(format!(
            "the listing of {prefix:?} gives no size for {key:?}"
        )),
        Some(size) if size > MAX_OBJECT_BYTES => Err(format!(
            "the listing of {prefix:?} gives {key:?} a size of {size} bytes, more than an S3 \
             object can have (5 TiB); check that the endpoint is an S3 server"
        )),
        Some(size) => Ok(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    const LOCATION: &str = "s3://b (endpoint http://127.0.0.1:1)";

    fn s3_error(code: &str, message: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
             <RequestId>1</RequestId></Error>"
        )
        .into_bytes()
    }

    #[test]
    fn signature_mismatch_is_auth_and_final() {
        let f = classify_status(
            403,
            &s3_error("SignatureDoesNotMatch", "nope"),
            LOCATION,
            "k",
        );
        assert!(!f.retryable);
        assert!(
            matches!(&f.error, StorageError::Auth { detail, .. } if detail.contains("SignatureDoesNotMatch"))
        );
        let f = classify_status(403, &s3_error("InvalidAccessKeyId", "who"), LOCATION, "k");
        assert!(!f.retryable && matches!(f.error, StorageError::Auth { .. }));
        let f = classify_status(401, b"", LOCATION, "k");
        assert!(!f.retryable && matches!(f.error, StorageError::Auth { .. }));
        let f = classify_status(
            403,
            &s3_error("RequestTimeTooSkewed", "late"),
            LOCATION,
            "k",
        );
        assert!(f.error.to_string().contains("clock"));
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        for (status, body) in [
            (
                503,
                s3_error("SlowDown", "Please reduce your request rate."),
            ),
            (500, s3_error("InternalError", "oops")),
            (429, Vec::new()),
            (502, b"<html><body>Bad Gateway</body></html>".to_vec()),
            (400, s3_error("RequestTimeout", "socket idle")),
            (408, s3_error("RequestCanceled", "request canceled")),
            (408, Vec::new()),
        ] {
            let f = classify_status(status, &body, LOCATION, "k");
            assert!(f.retryable, "{status}");
            assert!(matches!(f.error, StorageError::Server { status: s, .. } if s == status));
        }
    }

    #[test]
    fn missing_key_and_bucket_are_told_apart() {
        let f = classify_status(404, &s3_error("NoSuchKey", "gone"), LOCATION, "a/b");
        assert!(!f.retryable && matches!(&f.error, StorageError::NotFound { key } if key == "a/b"));
        let f = classify_status(404, b"", LOCATION, "a/b");
        assert!(matches!(f.error, StorageError::NotFound { .. }));
        let f = classify_status(404, &s3_error("NoSuchBucket", "none"), LOCATION, "a/b");
        assert!(!f.retryable && matches!(f.error, StorageError::NoSuchBucket { .. }));
    }

    #[test]
    fn html_answers_are_bad_responses() {
        let html = b"<!DOCTYPE html><html><head><title>Not Found</title></head></html>";
        let f = classify_status(404, html, LOCATION, "k");
        assert!(!f.retryable);
        assert!(matches!(&f.error, StorageError::BadResponse { detail, .. }
                if detail.contains("an HTML page titled \"Not Found\"")));
        assert_eq!(
            html_page("<html><body>x</body></html>").as_deref(),
            Some("an HTML page")
        );
        assert_eq!(html_page("<?xml version=\"1.0\"?><Error/>"), None);
        let f = classify_status(400, b"plain text", LOCATION, "k");
        assert!(matches!(f.error, StorageError::BadResponse { .. }));
    }

    #[test]
    fn checksum_and_region_errors_say_what_to_check() {
        let f = classify_status(
            400,
            &s3_error("BadDigest", "checksum_crc32 mismatch"),
            LOCATION,
            "k",
        );
        assert!(!f.retryable);
        assert!(
            f.error.to_string().contains("do not match their checksum"),
            "{}",
            f.error
        );
        let body = b"<Error><Code>PermanentRedirect</Code><Message>m</Message>\
                     <Endpoint>b.s3.eu-west-1.amazonaws.com</Endpoint></Error>";
        let f = classify_status(301, body, LOCATION, "k");
        assert!(!f.retryable);
        let text = f.error.to_string();
        assert!(
            text.contains("region") && text.contains("eu-west-1"),
            "{text}"
        );
        // AWS's answer to a presigned URL scoped to the wrong region is an
        // authorization error that names the bucket's region.
        let body =
            b"<Error><Code>AuthorizationQueryParametersError</Code><Message>Error parsing the \
                     X-Amz-Credential parameter; the region 'us-east-1' is wrong; expecting \
                     'eu-west-3'</Message><Region>eu-west-3</Region></Error>";
        let f = classify_status(400, body, LOCATION, "k");
        assert!(!f.retryable && f.error.is_storage_wide());
        assert!(matches!(f.error, StorageError::WrongRegion { .. }));
        let text = f.error.to_string();
        assert!(
            text.contains("in region \"eu-west-3\"") && text.contains("AWS_REGION"),
            "{text}"
        );
    }

    #[test]
    fn xml_text_decodes_entities() {
        let xml = "<Error><Code>X</Code><Message>a &lt;b&gt; &amp; &quot;c&quot;</Message></Error>";
        assert_eq!(xml_text(xml, "Code").as_deref(), Some("X"));
        assert_eq!(xml_text(xml, "Message").as_deref(), Some("a <b> & \"c\""));
        assert_eq!(xml_text(xml, "Missing"), None);
    }

    #[test]
    fn transport_errors_are_retried_but_tls_errors_are_not() {
        let f = classify_transport(ureq::Error::ConnectionFailed, LOCATION);
        assert!(f.retryable && matches!(f.error, StorageError::Transport { .. }));
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert!(classify_transport(ureq::Error::Io(io), LOCATION).retryable);
        let f = classify_transport(ureq::Error::Tls("bad certificate"), LOCATION);
        assert!(!f.retryable);
        assert!(f.error.to_string().contains("AWS_CA_BUNDLE"));
        let f = classify_transport(
            ureq::Error::BadUri("http://h/b/k?X-Amz-Signature=abc".to_owned()),
            LOCATION,
        );
        assert!(!f.error.to_string().contains("Signature"));
    }

    #[test]
    fn listed_sizes_are_those_of_s3_objects() {
        assert_eq!(listed_size("p", "p/k", Some(0)), Ok(0));
        assert_eq!(
            listed_size("p", "p/k", Some(MAX_OBJECT_BYTES)),
            Ok(MAX_OBJECT_BYTES)
        );
        let err = listed_size("p", "p/k", Some(u64::MAX)).expect_err("16 EiB");
        assert!(err.contains("\"p/k\"") && err.contains("5 TiB"), "{err}");
        let err = listed_size("p", "p/k", None).expect_err("no size");
        assert!(err.contains("no size"), "{err}");
    }

    /// The name of an error's variant, for tables.
    fn kind(error: &StorageError) -> &'static str {
        match error {
            StorageError::NotFound { .. } => "NotFound",
            StorageError::Auth { .. } => "Auth",
            StorageError::NoSuchBucket { .. } => "NoSuchBucket",
            StorageError::Server { .. } => "Server",
            StorageError::Transport { .. } => "Transport",
            StorageError::Io { .. } => "Io",
            StorageError::BadResponse { .. } => "BadResponse",
            StorageError::WrongRegion { .. } => "WrongRegion",
            StorageError::InvalidKey { .. } => "InvalidKey",
        }
    }

    #[test]
    fn meaning_of_each_status_and_error_code() {
        use Meaning::*;
        // (status, code, names a region, blank body, meaning)
        #[rustfmt::skip]
        let cases: &[(u16, Option<&str>, bool, bool, Meaning)] = &[
            // Without an S3 error code, the status decides.
            (401, None, false, true, Auth),
            (403, None, false, false, Auth),
            (404, None, false, true, NotFound),
            (404, None, false, false, NotS3),
            (429, None, false, true, Transient),
            (500, None, false, false, Transient),
            (502, None, false, false, Transient),
            (503, None, false, true, Transient),
            (599, None, false, true, Transient),
            (600, None, false, true, NotS3),
            (301, None, false, true, NotS3),
            (400, None, false, false, NotS3),
            // Tigris sheds load with 408, with or without its error code
            // (https://github.com/earth-mover/icechunk/issues/1563).
            (408, None, false, true, Transient),
            (408, None, false, false, Transient),
            (416, None, false, true, NotS3),
            // With one, the code first, then the status.
            (301, Some("PermanentRedirect"), false, false, WrongRegion),
            (307, Some("TemporaryRedirect"), false, false, WrongRegion),
            (400, Some("AuthorizationHeaderMalformed"), false, false, WrongRegion),
            (400, Some("IllegalLocationConstraintException"), false, false, WrongRegion),
            (400, Some("AuthorizationQueryParametersError"), true, false, WrongRegion),
            (400, Some("AuthorizationQueryParametersError"), false, false, Auth),
            (503, Some("SlowDown"), true, false, WrongRegion),
            (403, Some("AccessDenied"), false, false, Auth),
            (403, Some("SignatureDoesNotMatch"), false, false, Auth),
            (500, Some("ExpiredToken"), false, false, Auth),
            (404, Some("NoSuchBucket"), false, false, NoSuchBucket),
            (404, Some("NoSuchKey"), false, false, NotFound),
            (503, Some("NoSuchKey"), false, false, NotFound),
            (503, Some("SlowDown"), false, false, Transient),
            (400, Some("RequestTimeout"), false, false, Transient),
            (409, Some("OperationAborted"), false, false, Transient),
            (429, Some("Anything"), false, false, Transient),
            (500, Some("InternalError"), false, false, Transient),
            (501, Some("NotImplemented"), false, false, Transient),
            (400, Some("BadDigest"), false, false, ChecksumMismatch),
            (400, Some("XAmzContentChecksumMismatch"), false, false, ChecksumMismatch),
            (500, Some("BadDigest"), false, false, Transient),
            (403, Some("SomethingNew"), false, false, Auth),
            (401, Some(""), false, false, Auth),
            (400, Some("InvalidArgument"), false, false, Refused),
            (400, Some(""), false, false, Refused),
            (404, Some("NoSuchUpload"), false, false, Refused),
            (408, Some("RequestCanceled"), false, false, Transient),
            (400, Some("RequestCanceled"), false, false, Transient),
            (408, Some("Anything"), false, false, Transient),
            (400, Some("TooManyRequestsException"), false, false, Transient),
            // A skewed clock is not cured by trying again.
            (403, Some("RequestTimeTooSkewed"), false, false, Auth),
            (408, Some("RequestTimeTooSkewed"), false, false, Auth),
            (409, Some("BucketAlreadyExists"), false, false, Refused),
        ];
        for &(status, code, names_region, blank, expected) in cases {
            assert_eq!(
                meaning(status, code, names_region, blank),
                expected,
                "{status} {code:?} region {names_region} blank {blank}"
            );
        }
        // Every code of each list, with status 400.
        for (codes, expected) in [
            (REGION_CODES, WrongRegion),
            (AUTH_CODES, Auth),
            (RETRY_CODES, Transient),
            (CHECKSUM_CODES, ChecksumMismatch),
        ] {
            for &code in codes {
                assert_eq!(meaning(400, Some(code), false, false), expected, "{code}");
            }
        }
    }

    #[test]
    fn only_transient_answers_are_retried() {
        use Meaning::*;
        for (meaning, retryable) in [
            (WrongRegion, false),
            (Auth, false),
            (NoSuchBucket, false),
            (NotFound, false),
            (Transient, true),
            (ChecksumMismatch, false),
            (Refused, false),
            (NotS3, false),
        ] {
            assert_eq!(meaning.retryable(), retryable, "{meaning:?}");
        }
    }

    #[test]
    fn error_documents_are_read_for_code_message_region_and_endpoint() {
        let doc = ErrorDocument::parse(
            "<Error><Code>PermanentRedirect</Code><Message>a &amp; b</Message>\
             <Region>eu-west-1</Region><Endpoint>s3.eu-west-1.amazonaws.com</Endpoint></Error>",
        );
        assert_eq!(
            doc,
            Some(ErrorDocument {
                code: "PermanentRedirect".to_owned(),
                message: "a & b".to_owned(),
                region: Some("eu-west-1".to_owned()),
                endpoint: Some("s3.eu-west-1.amazonaws.com".to_owned()),
            })
        );
        let doc = ErrorDocument::parse("<Error><Code>SlowDown</Code><Region></Region></Error>");
        assert_eq!(
            doc,
            Some(ErrorDocument {
                code: "SlowDown".to_owned(),
                message: String::new(),
                region: None,
                endpoint: None,
            })
        );
        // Not an error document: no <Error>, or no <Code>.
        for text in [
            "",
            "<Code>SlowDown</Code>",
            "<Error><Message>m</Message></Error>",
            "<html><title>Error</title></html>",
        ] {
            assert_eq!(ErrorDocument::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn each_answer_is_worded_as_its_error() {
        // (status, body, error variant, retryable, words the message has)
        #[rustfmt::skip]
        let cases: &[(u16, &[u8], &str, bool, &str)] = &[
            (401, b"", "Auth", false, "status 401 without an S3 error code"),
            (403, b"<html>denied</html>", "Auth", false, "status 403"),
            (404, b" \n", "NotFound", false, "\"k\""),
            (500, b"", "Server", true, "no error details"),
            (408, b"", "Server", true, "no error details"),
            (408, b"<Error><Code>RequestCanceled</Code><Message>canceled</Message></Error>", "Server", true, "RequestCanceled: canceled"),
            (503, b"busy, try later", "Server", true, "not an S3 error body: busy, try later"),
            (400, b"plain", "BadResponse", false, "status 400 for \"k\" with a body that is not an S3 error: \"plain\""),
            (404, b"<html><title>Gone</title></html>", "BadResponse", false, "an HTML page titled \"Gone\""),
            (503, b"<Error><Code>SlowDown</Code><Message>slow</Message></Error>", "Server", true, "SlowDown: slow"),
            (400, b"<Error><Code>InvalidArgument</Code></Error>", "Server", false, "InvalidArgument"),
            (400, b"<Error><Code>BadDigest</Code></Error>", "Server", false, "x-amz-checksum-crc32"),
            (403, b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>", "Auth", false, "AccessDenied: no"),
            (403, b"<Error><Code>RequestTimeTooSkewed</Code></Error>", "Auth", false, "check this machine's clock"),
            (403, b"<Error><Code>Odd</Code></Error>", "Auth", false, "Odd"),
            (404, b"<Error><Code>NoSuchBucket</Code></Error>", "NoSuchBucket", false, "s3://b"),
            (404, b"<Error><Code>NoSuchKey</Code></Error>", "NotFound", false, "\"k\""),
            (301, b"<Error><Code>PermanentRedirect</Code><Endpoint>e.example</Endpoint></Error>", "WrongRegion", false, "the server suggests endpoint e.example"),
            (400, b"<Error><Code>X</Code><Region>ap-south-1</Region></Error>", "WrongRegion", false, "the bucket is in region \"ap-south-1\""),
        ];
        for &(status, body, variant, retryable, words) in cases {
            let f = classify_status(status, body, LOCATION, "k");
            let text = f.error.to_string();
            assert_eq!(
                (kind(&f.error), f.retryable),
                (variant, retryable),
                "{status} {:?}: {text}",
                String::from_utf8_lossy(body)
            );
            assert!(text.contains(words), "{status}: {text:?} lacks {words:?}");
        }
    }

    #[test]
    fn each_transport_error_is_retried_or_not() {
        use ureq::Timeout;
        let io = |kind| ureq::Error::Io(io::Error::new(kind, "io"));
        // (error, retryable, error variant)
        #[rustfmt::skip]
        let cases = [
            (ureq::Error::Timeout(Timeout::Connect), true, "Transport"),
            (ureq::Error::Timeout(Timeout::RecvBody), true, "Transport"),
            (io(io::ErrorKind::ConnectionReset), true, "Transport"),
            (io(io::ErrorKind::BrokenPipe), true, "Transport"),
            (ureq::Error::ConnectionFailed, true, "Transport"),
            (ureq::Error::HostNotFound, true, "Transport"),
            (ureq::Error::BadUri("x".to_owned()), false, "Transport"),
            (ureq::Error::Tls("bad"), false, "Transport"),
            (ureq::Error::BodyExceedsLimit(1), false, "Transport"),
            (ureq::Error::StatusCode(500), false, "Transport"),
        ];
        for (error, retryable, variant) in cases {
            let name = format!("{error:?}");
            let f = classify_transport(error, LOCATION);
            assert_eq!(
                (f.retryable, kind(&f.error)),
                (retryable, variant),
                "{name}"
            );
        }
        let f = classify_transport(ureq::Error::Timeout(Timeout::Global), LOCATION);
        assert!(f.error.to_string().contains("timed out"), "{}", f.error);
    }

    #[test]
    fn stored_answers_need_an_etag_and_the_crc32_sent() {
        let sent = "y/Q5Jg==";
        // (etag, echoed checksum, result)
        let cases = [
            (Some("\"e\""), None, Ok("\"e\"")),
            (Some("\"e\""), Some(sent), Ok("\"e\"")),
            (
                Some("\"e\""),
                Some("AAAAAA=="),
                Err("PutObject of \"k\" stored CRC32 AAAAAA==, but we sent y/Q5Jg=="),
            ),
            (
                None,
                Some(sent),
                Err("PutObject of \"k\" answered success without an ETag header"),
            ),
            (
                None,
                Some("AAAAAA=="),
                Err("PutObject of \"k\" answered success without an ETag header"),
            ),
        ];
        for (etag, echoed, expected) in cases {
            assert_eq!(
                stored_etag("PutObject of \"k\"", etag.map(str::to_owned), echoed, sent),
                expected.map(str::to_owned).map_err(str::to_owned),
                "{etag:?} {echoed:?}"
            );
        }
    }

    #[test]
    fn upload_ids_are_read_from_the_answer() {
        let answer = "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>\
                      <UploadId>abc&amp;1</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(upload_id("k", answer), Ok("abc&1".to_owned()));
        for text in [
            "<UploadId></UploadId>",
            "<InitiateMultipartUploadResult/>",
            "",
        ] {
            let err = upload_id("k", text).expect_err("no UploadId");
            assert!(err.contains("without an UploadId"), "{err}");
        }
    }

    #[test]
    fn completion_answers_give_the_checksum_or_the_error() {
        let ok = "<CompleteMultipartUploadResult><ETag>\"e-2\"</ETag>\
                  <ChecksumCRC32>abc=-2</ChecksumCRC32></CompleteMultipartUploadResult>";
        assert_eq!(
            completed_upload(200, ok, LOCATION, "k").expect("completed"),
            Some("abc=-2".to_owned())
        );
        let no_checksum = "<CompleteMultipartUploadResult><ChecksumCRC32></ChecksumCRC32>\
                           </CompleteMultipartUploadResult>";
        assert_eq!(
            completed_upload(200, no_checksum, LOCATION, "k").expect("completed"),
            None
        );
        // S3 may answer 200 with an error in the body.
        let f = completed_upload(
            200,
            "<Error><Code>InternalError</Code></Error>",
            LOCATION,
            "k",
        )
        .expect_err("an error document");
        assert!(f.retryable && kind(&f.error) == "Server", "{}", f.error);
        let f = completed_upload(
            200,
            "<Error><Code>InvalidPart</Code></Error>",
            LOCATION,
            "k",
        )
        .expect_err("an error document");
        assert!(!f.retryable, "{}", f.error);
        let f = completed_upload(200, "hello", LOCATION, "k").expect_err("not a result");
        assert!(
            !f.retryable && kind(&f.error) == "BadResponse",
            "{}",
            f.error
        );
    }

    #[test]
    fn ranged_answers_hold_the_range_or_say_why_not() {
        // (status, start, len, content-length, answer, words of its detail)
        #[rustfmt::skip]
        let cases = [
            (206, 10, 5, Some(5), "Holds", ""),
            (206, 10, 5, None, "Holds", ""),
            (200, 0, 5, Some(5), "Holds", ""),
            (200, 0, 5, Some(9), "Unusable", "answered 200, not 206 Partial Content"),
            (200, 0, 5, None, "Unusable", "answered 200, not 206 Partial Content"),
            (200, 10, 5, Some(5), "Unusable", "answered 200, not 206 Partial Content"),
            (204, 0, 5, Some(5), "Holds", ""),
            (204, 0, 5, Some(0), "Unusable", "answered 204, not 206 Partial Content"),
            (416, 10, 5, None, "Unusable", "bytes 10..15 were asked for but the object ends at byte 10"),
            (404, 10, 5, None, "Unsuccessful", ""),
            (503, 0, 5, Some(5), "Unsuccessful", ""),
            (301, 0, 5, Some(5), "Unsuccessful", ""),
        ];
        for (status, start, len, content_length, answer, words) in cases {
            let (got, detail) = match range_answer("k", status, start, len, content_length) {
                RangeAnswer::Holds => ("Holds", String::new()),
                RangeAnswer::Unsuccessful => ("Unsuccessful", String::new()),
                RangeAnswer::Unusable(detail) => ("Unusable", detail),
            };
            assert_eq!(
                got, answer,
                "{status} {start}+{len} {content_length:?}: {detail}"
            );
            assert!(detail.contains(words), "{detail}");
            assert!(detail.is_empty() || detail.contains("\"k\""), "{detail}");
        }
    }

    #[test]
    fn listing_pages_are_parsed_or_named_as_what_they_are() {
        let listing = "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                       <Name>b</Name><Prefix>p/</Prefix><KeyCount>1</KeyCount>\
                       <MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>\
                       <Contents><Key>p/a</Key><Size>3</Size></Contents></ListBucketResult>";
        let page = listing_page("p/", listing.as_bytes().to_vec()).expect("a listing");
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].key, "p/a");
        assert_eq!(page.objects[0].size, Some(3));
        // (bytes, words the error has)
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![b' '; LIST_PAGE_LIMIT as usize + 1], "larger than"),
            (vec![0xff, 0xfe], "not UTF-8"),
            (
                b"<!DOCTYPE html><title>Login</title>".to_vec(),
                "is an HTML page titled \"Login\", not a ListObjectsV2 result",
            ),
            (b"nonsense".to_vec(), "is not a ListObjectsV2 result"),
        ];
        for (bytes, words) in cases {
            let err = listing_page("p/", bytes).expect_err("not a listing");
            assert!(err.contains(words) && err.contains("\"p/\""), "{err}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! What a server answers is input from outside: listings, error
    //! documents, HTML pages from proxies.
    use super::*;
    use crate::testing::fuzz_text;

    const LISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>t/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken><EncodingType>url</EncodingType><Contents><Key>t/a%C3%A9/generations/x</Key><LastModified>2026-11-25T20:43:16.000Z</LastModified><ETag>&quot;e&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>t/b&amp;c</Key><Size>0</Size></Contents><CommonPrefixes><Prefix>t/x/</Prefix></CommonPrefixes></ListBucketResult>"#;

    #[test]
    fn listings_never_panic() {
        assert!(listing_page("t/", LISTING.as_bytes().to_vec()).is_ok());
        fuzz_text("listing answer", 0x53_0001, 3000, &[LISTING], |text| {
            let Ok(page) = listing_page("t/", text.as_bytes().to_vec()) else {
                return false;
            };
            for object in &page.objects {
                let _ = listed_size("t/", &object.key, object.size);
            }
            true
        });
    }

    #[test]
    fn error_answers_never_panic() {
        let bodies = [
            "<?xml version=\"1.0\"?><Error><Code>PermanentRedirect</Code><Message>a &amp; b</Message><Region>eu-west-1</Region><Endpoint>s3.eu-west-1.amazonaws.com</Endpoint></Error>",
            "<Error><Code>SlowDown</Code></Error>",
            "<!DOCTYPE html><html><head><title>Console – Login</title></head></html>",
            "<html><TITLE>é</TITLE>",
        ];
        fuzz_text(
            "error answer classifier",
            0x53_0002,
            3000,
            &bodies,
            |text| {
                let status = [301, 400, 403, 404, 416, 500, 503][text.len() % 7];
                let failure = classify_status(status, text.as_bytes(), "s3://b", "t/k");
                let _ = failure.error.to_string();
                failure.retryable
            },
        );
    }
}
