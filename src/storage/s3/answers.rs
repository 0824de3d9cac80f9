//! What S3 answered, as values: an unsuccessful answer (status and the
//! start of its body) or a transport error turned into the `StorageError` to
//! report and whether trying again may help (`Failure`); the pieces of XML
//! and HTML that a classification reads; the sizes a listing may give.
//! Pure: nothing here sends, reads a socket or sleeps. Never puts a URL (it
//! may hold a signature) into an error.

use std::fmt::Write as _;

use super::requests::CHECKSUM_HEADER;
use crate::storage::StorageError;

/// One failed attempt: the error to report and whether trying again may help.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: StorageError,
    pub(super) retryable: bool,
}

impl Failure {
    pub(super) fn fatal(error: StorageError) -> Failure {
        Failure {
            error,
            retryable: false,
        }
    }

    pub(super) fn retryable(error: StorageError) -> Failure {
        Failure {
            error,
            retryable: true,
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

/// S3 error codes worth retrying whatever their status.
const RETRY_CODES: &[&str] = &[
    "InternalError",
    "OperationAborted",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
];

/// S3 error codes saying the bytes did not match their declared checksum.
const CHECKSUM_CODES: &[&str] = &[
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
pub(super) const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;

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
pub(super) fn html_page(text: &str) -> Option<String> {
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
pub(super) fn excerpt(text: &str) -> String {
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

/// Turns an unsuccessful answer (`status` and up to `ERROR_BODY_LIMIT` of its
/// body) into the error to report and whether to retry. `key` is the object
/// key (or the listed prefix) the request was about.
pub(super) fn classify_status(status: u16, body: &[u8], location: &str, key: &str) -> Failure {
    let text = String::from_utf8_lossy(body);
    let is_s3_error = text.contains("<Error>");
    let code = if is_s3_error {
        xml_text(&text, "Code")
    } else {
        None
    };
    let location = location.to_owned();

    let Some(code) = code else {
        let server = |detail: String| StorageError::Server {
            location: location.clone(),
            key: key.to_owned(),
            status,
            detail,
        };
        return match status {
            401 | 403 => Failure::fatal(StorageError::Auth {
                location,
                detail: format!("status {status} without an S3 error code"),
            }),
            404 if text.trim().is_empty() => Failure::fatal(StorageError::NotFound {
                key: key.to_owned(),
            }),
            429 | 500..=599 => Failure::retryable(server(if text.trim().is_empty() {
                "no error details".to_owned()
            } else {
                format!("not an S3 error body: {}", excerpt(&text))
            })),
            _ => Failure::fatal(StorageError::BadResponse {
                location,
                detail: match html_page(&text) {
                    Some(page) => format!("status {status} for {key:?} with {page}, not S3 XML"),
                    None => format!(
                        "status {status} for {key:?} with a body that is not an S3 error: {:?}",
                        excerpt(&text)
                    ),
                },
            }),
        };
    };

    let message = xml_text(&text, "Message").unwrap_or_default();
    let detail = if message.is_empty() {
        code.clone()
    } else {
        format!("{code}: {message}")
    };
    let server = |detail: String| StorageError::Server {
        location: location.clone(),
        key: key.to_owned(),
        status,
        detail,
    };
    let code = code.as_str();
    // AWS names the bucket's region in the error of a request signed for
    // another one (AuthorizationHeaderMalformed, or
    // AuthorizationQueryParametersError for a presigned URL like ours).
    let region = xml_text(&text, "Region").filter(|r| !r.is_empty());
    if REGION_CODES.contains(&code) || region.is_some() {
        let mut detail = detail;
        if let Some(region) = region {
            let _ = write!(detail, "; the bucket is in region {region:?}");
        }
        if let Some(endpoint) = xml_text(&text, "Endpoint") {
            let _ = write!(detail, "; the server suggests endpoint {endpoint}");
        }
        return Failure::fatal(StorageError::WrongRegion { location, detail });
    }
    if AUTH_CODES.contains(&code) {
        let detail = if code == "RequestTimeTooSkewed" {
            format!("{detail}; check this machine's clock")
        } else {
            detail
        };
        Failure::fatal(StorageError::Auth { location, detail })
    } else if code == "NoSuchBucket" {
        Failure::fatal(StorageError::NoSuchBucket { location })
    } else if code == "NoSuchKey" {
        Failure::fatal(StorageError::NotFound {
            key: key.to_owned(),
        })
    } else if RETRY_CODES.contains(&code) || status == 429 || status >= 500 {
        Failure::retryable(server(detail))
    } else if CHECKSUM_CODES.contains(&code) {
        Failure::fatal(server(format!(
            "{detail}; the bytes sent do not match their CRC32 ({CHECKSUM_HEADER}): the local data changed while uploading or is corrupt"
        )))
    } else if status == 401 || status == 403 {
        Failure::fatal(StorageError::Auth { location, detail })
    } else {
        Failure::fatal(server(detail))
    }
}

/// Turns a transport error (no HTTP answer) into the error to report and
/// whether to retry. Never includes the URL.
pub(super) fn classify_transport(err: ureq::Error, location: &str) -> Failure {
    let transport = |detail: String| StorageError::Transport {
        location: location.to_owned(),
        detail,
    };
    match err {
        ureq::Error::Timeout(t) => Failure::retryable(transport(format!("timed out ({t})"))),
        ureq::Error::Io(e) => Failure::retryable(transport(e.to_string())),
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
        assert!(f.error.to_string().contains("CRC32"), "{}", f.error);
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
}

#[cfg(test)]
mod fuzz {
    //! What a server answers is input from outside: listings, error
    //! documents, HTML pages from proxies.
    use super::*;
    use crate::testing::fuzz_text;
    use rusty_s3::actions::ListObjectsV2;

    const LISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>t/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken><EncodingType>url</EncodingType><Contents><Key>t/a%C3%A9/generations/x</Key><LastModified>2026-11-25T20:43:16.000Z</LastModified><ETag>&quot;e&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>t/b&amp;c</Key><Size>0</Size></Contents><CommonPrefixes><Prefix>t/x/</Prefix></CommonPrefixes></ListBucketResult>"#;

    #[test]
    fn listings_never_panic() {
        assert!(ListObjectsV2::parse_response(LISTING).is_ok());
        fuzz_text("listing parser", 0x53_0001, 3000, &[LISTING], |text| {
            ListObjectsV2::parse_response(text).is_ok()
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
