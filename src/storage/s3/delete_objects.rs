//! DeleteObjects (`POST /?delete`), as values: the body of a batch of at
//! most `MAX_KEYS_PER_BATCH` keys, what its answer says (the keys the
//! server did not delete, and why), and whether an unsuccessful answer
//! means the server lacks the operation, so that walsync deletes one key
//! per request instead. Pure: nothing here sends anything (`attempt` does).
//!
//! The body goes with a signed `Content-MD5` header (`md5`): S3 requires
//! an integrity header on DeleteObjects (`Content-MD5` or an
//! `x-amz-checksum-*` one), older MinIO insists on `Content-MD5`, and
//! some servers refuse the `x-amz-checksum-*` headers (R2 until 2025, B2;
//! see `integrity`). A server that still answers 400 naming `Content-MD5`
//! counts as lacking the operation here. Falling back is never wrong, only
//! slower, so any answer that may mean "not supported" does.
//!
//! API reference:
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html>.

use xmlparser::{ElementEnd, Token, Tokenizer};

use super::answers::{xml_text, Failure, RETRY_CODES};
use super::listing::decode_into;
use crate::storage::StorageError;

/// S3 takes at most 1,000 keys in one DeleteObjects request.
pub(super) const MAX_KEYS_PER_BATCH: usize = 1000;

/// The body of a DeleteObjects request for `keys`, in quiet mode (the
/// answer lists only the keys that were not deleted). Keys are XML-escaped;
/// `check_key` has already refused control characters, which XML 1.0
/// cannot carry.
pub(super) fn delete_objects_xml(keys: &[String]) -> String {
    let mut xml = String::with_capacity(128 + keys.iter().map(|k| k.len() + 26).sum::<usize>());
    xml.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>",
    );
    for key in keys {
        xml.push_str("<Object><Key>");
        escape_into(key, &mut xml);
        xml.push_str("</Key></Object>");
    }
    xml.push_str("</Delete>");
    xml
}

/// Appends `text` with the five XML special characters escaped.
fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// One `<Error>` entry of a DeleteObjects answer: a key the server did not
/// delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NotDeleted {
    pub(super) key: String,
    pub(super) code: String,
    /// Empty if the entry has none.
    pub(super) message: String,
}

/// The root element of a DeleteObjects answer.
const ROOT: &str = "DeleteResult";

/// The `<Error>` entries of a DeleteObjects answer (`<Deleted>` entries,
/// which quiet mode leaves out anyway, are skipped), matched by local
/// names whatever the namespace; or what keeps `text` from being one.
pub(super) fn parse_delete_result(text: &str) -> Result<Vec<NotDeleted>, String> {
    let mut path: Vec<String> = Vec::new();
    let mut value = String::new();
    let mut entry: Option<(Option<String>, Option<String>, Option<String>)> = None;
    let mut errors = Vec::new();
    let mut seen_root = false;
    for token in Tokenizer::from(text) {
        let token = token.map_err(|e| format!("not well-formed XML: {e}"))?;
        match token {
            Token::ElementStart { local, .. } => {
                if path.is_empty() && local.as_str() != ROOT {
                    return Err(format!(
                        "the root element is <{}>, not <{ROOT}>",
                        local.as_str()
                    ));
                }
                if path.len() >= 8 {
                    return Err("elements are nested deeper than 8".to_owned());
                }
                seen_root = true;
                path.push(local.as_str().to_owned());
                value.clear();
                if path.len() == 2 && path[1] == "Error" {
                    entry = Some((None, None, None));
                }
            }
            Token::ElementEnd { end, .. } => {
                let closing = match end {
                    ElementEnd::Open => continue,
                    ElementEnd::Empty | ElementEnd::Close(..) => path.len(),
                };
                if closing == 0 {
                    return Err("an end tag closes nothing".to_owned());
                }
                match (path.len(), path.last().map(String::as_str), entry.as_mut()) {
                    (2, Some("Error"), Some(_)) => {
                        let (key, code, message) = entry.take().unwrap_or_default();
                        errors.push(NotDeleted {
                            key: key.ok_or("an <Error> entry has no <Key>")?,
                            code: code.ok_or("an <Error> entry has no <Code>")?,
                            message: message.unwrap_or_default(),
                        });
                    }
                    (3, Some("Key"), Some(e)) => e.0 = Some(value.clone()),
                    (3, Some("Code"), Some(e)) => e.1 = Some(value.trim().to_owned()),
                    (3, Some("Message"), Some(e)) => e.2 = Some(value.trim().to_owned()),
                    _ => {}
                }
                path.pop();
                value.clear();
            }
            Token::Text { text } if path.len() == 3 && entry.is_some() => {
                decode_into(text.as_str(), &mut value)?;
            }
            Token::Cdata { text, .. } if path.len() == 3 && entry.is_some() => {
                value.push_str(text.as_str());
            }
            Token::DtdStart { .. } | Token::EmptyDtd { .. } | Token::EntityDeclaration { .. } => {
                return Err("it has a DOCTYPE".to_owned());
            }
            _ => {}
        }
    }
    if !seen_root {
        return Err("it has no XML element".to_owned());
    }
    if let Some(open) = path.last() {
        return Err(format!("it ends inside <{open}>"));
    }
    Ok(errors)
}

/// The failure to report for the `<Error>` entries of a DeleteObjects
/// answer with `status`, if any: `NoSuchKey` is no failure (deleting a
/// missing key is fine, as for a single DELETE). The error names the first
/// key left and its code, and how many more were left; it is retried (the
/// whole batch is sent again; deleting twice is harmless) when every code
/// left is a transient one (`InternalError`, `SlowDown`, …).
pub(super) fn batch_failure(errors: &[NotDeleted], status: u16, location: &str) -> Option<Failure> {
    let left: Vec<&NotDeleted> = errors.iter().filter(|e| e.code != "NoSuchKey").collect();
    let first = left.first()?;
    let mut detail = format!("DeleteObjects did not delete it: {}", first.code);
    if !first.message.is_empty() {
        detail.push_str(": ");
        detail.push_str(&first.message);
    }
    if left.len() > 1 {
        detail.push_str(&format!(" (and {} more keys not deleted)", left.len() - 1));
    }
    let error = StorageError::Server {
        location: location.to_owned(),
        key: first.key.clone(),
        status,
        detail,
    };
    Some(
        if left.iter().all(|e| RETRY_CODES.contains(&e.code.as_str())) {
            Failure::retryable(error)
        } else {
            Failure::fatal(error)
        },
    )
}

/// Whether an unsuccessful answer (`status`, the start of its body) to
/// DeleteObjects says the server lacks the operation, or will not take its
/// `Content-MD5`: 501 Not Implemented, 405
/// Method Not Allowed, or a 400 whose code or message names the operation,
/// `delete` or `Content-MD5`. Anything else (a missing bucket, refused
/// credentials, a busy server) is classified as for any other request.
/// `Some` holds the words to log.
pub(super) fn lacks_delete_objects(status: u16, body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let code = xml_text(&text, "Code");
    let message = xml_text(&text, "Message");
    let said = match (&code, &message) {
        (Some(code), Some(message)) if !message.is_empty() => format!("{code}: {message}"),
        (Some(code), _) => code.clone(),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    let said: String = said.chars().take(160).collect();
    let lower = said.to_ascii_lowercase();
    let names_it = [
        "notimplemented",
        "not implemented",
        "delete",
        "content-md5",
        "contentmd5",
    ]
    .iter()
    .any(|word| lower.contains(word));
    let lacks = match status {
        501 | 405 => true,
        400 => names_it,
        _ => false,
    };
    lacks.then(|| {
        if said.is_empty() {
            format!("status {status}")
        } else {
            format!("status {status}, {said}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"";

    #[test]
    fn the_body_lists_escaped_keys_in_quiet_mode() {
        let keys = vec![
            "db/a".to_owned(),
            "db/<&>\"'".to_owned(),
            "db/ünï +x".to_owned(),
        ];
        assert_eq!(
            delete_objects_xml(&keys),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete {NS}><Quiet>true</Quiet>\
                 <Object><Key>db/a</Key></Object>\
                 <Object><Key>db/&lt;&amp;&gt;&quot;&apos;</Key></Object>\
                 <Object><Key>db/ünï +x</Key></Object></Delete>"
            )
        );
        // The body reads back as the keys it was built from.
        let body = delete_objects_xml(&keys);
        let mut read = Vec::new();
        for part in body.split("<Key>").skip(1) {
            let raw = part.split("</Key>").next().expect("closed");
            let mut key = String::new();
            decode_into(raw, &mut key).expect("escaped");
            read.push(key);
        }
        assert_eq!(read, keys);
    }

    #[test]
    fn answers_give_the_keys_not_deleted() {
        let err = |key: &str, code: &str, message: &str| NotDeleted {
            key: key.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
        };
        // (answer, entries or the start of the error)
        #[rustfmt::skip]
        let cases: Vec<(String, Result<Vec<NotDeleted>, &str>)> = vec![
            (format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult {NS}/>"), Ok(vec![])),
            (format!("<DeleteResult {NS}></DeleteResult>"), Ok(vec![])),
            (format!("<DeleteResult {NS}><Deleted><Key>db/a</Key></Deleted></DeleteResult>"), Ok(vec![])),
            (
                format!("<DeleteResult {NS}><Deleted><Key>db/a</Key></Deleted>\
                         <Error><Key>db/b&amp;c</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>\
                         <Error><Key>db/d</Key><Code>NoSuchKey</Code></Error></DeleteResult>"),
                Ok(vec![err("db/b&c", "AccessDenied", "Access Denied"), err("db/d", "NoSuchKey", "")]),
            ),
            // Another namespace, or a prefixed one, is read the same.
            (
                "<s3:DeleteResult xmlns:s3=\"http://doc.s3.amazonaws.com/2006-03-01/\">\
                 <s3:Error><s3:Key>k</s3:Key><s3:Code>InternalError</s3:Code></s3:Error></s3:DeleteResult>".to_owned(),
                Ok(vec![err("k", "InternalError", "")]),
            ),
            ("<Error><Code>NoSuchBucket</Code></Error>".to_owned(), Err("the root element is <Error>")),
            ("<DeleteResult><Error><Code>X</Code></Error></DeleteResult>".to_owned(), Err("an <Error> entry has no <Key>")),
            ("<DeleteResult><Error><Key>k</Key></Error></DeleteResult>".to_owned(), Err("an <Error> entry has no <Code>")),
            ("<DeleteResult><Error>".to_owned(), Err("it ends inside <Error>")),
            ("".to_owned(), Err("it has no XML element")),
            ("not xml".to_owned(), Err("not well-formed XML")),
        ];
        for (answer, expected) in cases {
            match (parse_delete_result(&answer), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{answer}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{answer}: {got}"),
                (got, want) => panic!("{answer}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn keys_left_undeleted_fail_the_call_unless_missing() {
        let entry = |key: &str, code: &str| NotDeleted {
            key: key.to_owned(),
            code: code.to_owned(),
            message: String::new(),
        };
        assert!(batch_failure(&[], 200, "s3://b").is_none());
        assert!(batch_failure(&[entry("a", "NoSuchKey")], 200, "s3://b").is_none());

        let failure = batch_failure(
            &[
                entry("a", "NoSuchKey"),
                entry("db/b", "AccessDenied"),
                entry("db/c", "InternalError"),
            ],
            200,
            "s3://b",
        )
        .expect("AccessDenied is a failure");
        assert!(!failure.retryable);
        let text = failure.error.to_string();
        assert!(
            text.contains("\"db/b\"") && text.contains("AccessDenied"),
            "{text}"
        );
        assert!(text.contains("and 1 more"), "{text}");

        let failure = batch_failure(
            &[entry("db/b", "SlowDown"), entry("db/c", "InternalError")],
            200,
            "s3://b",
        )
        .expect("a failure");
        assert!(failure.retryable, "transient codes only: send again");
    }

    #[test]
    fn answers_meaning_the_operation_is_missing_make_walsync_delete_one_by_one() {
        let doc = |code: &str, message: &str| {
            format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>")
        };
        // (status, body, falls back)
        #[rustfmt::skip]
        let cases = [
            (501, doc("NotImplemented", "A header you provided implies functionality that is not implemented"), true),
            (501, String::new(), true),
            (405, doc("MethodNotAllowed", "The specified method is not allowed against this resource."), true),
            (400, doc("NotImplemented", "Multi-object delete is not supported"), true),
            (400, doc("InvalidArgument", "Invalid query parameter(s): [delete]"), true),
            (400, doc("MissingContentMD5", "Missing required header for this request: Content-Md5."), true),
            (400, doc("InvalidRequest", "Missing required header for this request: Content-MD5"), true),
            (400, doc("MalformedXML", "The XML you provided was not well-formed"), false),
            (400, doc("InvalidDigest", "The Content-MD5 you specified was invalid"), true),
            (400, doc("BadDigest", "The CRC32 you specified did not match the calculated checksum."), false),
            (404, doc("NoSuchBucket", "The specified bucket does not exist"), false),
            (403, doc("AccessDenied", "Access Denied"), false),
            (503, doc("SlowDown", "Please reduce your request rate."), false),
            (500, doc("NotImplemented", "x"), false),
        ];
        for (status, body, falls_back) in cases {
            let said = lacks_delete_objects(status, body.as_bytes());
            assert_eq!(said.is_some(), falls_back, "{status} {body}");
            if let Some(said) = said {
                assert!(said.starts_with(&format!("status {status}")), "{said}");
            }
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn delete_answers_never_panic() {
        fuzz_text(
            "DeleteObjects answer",
            0x53_0de1,
            3000,
            &[
                "<DeleteResult><Error><Key>k</Key><Code>AccessDenied</Code></Error></DeleteResult>",
                "<Error><Code>NotImplemented</Code></Error>",
            ],
            |text| {
                let _ = lacks_delete_objects(400, text.as_bytes());
                parse_delete_result(text).is_ok()
            },
        );
    }
}
