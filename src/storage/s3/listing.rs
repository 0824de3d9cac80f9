//! A ListObjectsV2 answer, read as a value: the keys and sizes of one page
//! and where the next page starts. Elements are matched by their local
//! names, whatever namespace the server declares: AWS's
//! (`http://s3.amazonaws.com/doc/2006-03-01/`), s3rver's and, as reported,
//! GCS's XML API (`http://doc.s3.amazonaws.com/2006-03-01/`), or none; the
//! AWS SDKs read listings the same way. Fields walsync does not use (`ETag`,
//! `LastModified`, `StorageClass`, `Owner`, …) may be missing (rusty-s3
//! issue #163: entries without `ETag`). What walsync relies on stays
//! strict: the root element, one `Key` per entry, a `Size` that is a
//! number, a continuation token whenever the page says it is truncated (a
//! listing that ended early would make a restore or a prune plan from part
//! of the bucket). Pure; nothing panics on any input (ARCHITECTURE.md
//! invariant 9), and an `Err` names the problem.
//!
//! API reference:
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html>.
//! A listing with a delimiter (`Storage::list_children`) also gives the
//! `CommonPrefixes`: the "folders" under the prefix.

use xmlparser::{ElementEnd, Token, Tokenizer};

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListingPage {
    pub(super) objects: Vec<ListedObject>,
    /// The `<CommonPrefixes>` entries' `<Prefix>`es (with a delimiter only).
    pub(super) prefixes: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub(super) next_continuation_token: Option<String>,
}

/// One `<Contents>` entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListedObject {
    pub(super) key: String,
    /// `None` if the entry has no `<Size>` (`listed_size` refuses it).
    pub(super) size: Option<u64>,
}

/// The root element of a ListObjectsV2 answer.
const ROOT: &str = "ListBucketResult";

/// Deepest nesting accepted. A listing is four deep (`Owner` in `Contents`);
/// the limit keeps the stack of open elements small on hostile input.
const MAX_DEPTH: usize = 32;

/// The fields of the page being read.
#[derive(Default)]
struct Reading {
    objects: Vec<ListedObject>,
    /// The entry being read, if inside `<Contents>`: its key and size.
    entry: Option<(Option<String>, Option<u64>)>,
    prefixes: Vec<String>,
    token: Option<String>,
    truncated: Option<bool>,
    url_encoded: bool,
}

/// What the text of the element being closed is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Key,
    Size,
    CommonPrefix,
    Token,
    Truncated,
    EncodingType,
}

/// The field whose text the element at `path` (local names from the root)
/// holds, if walsync reads it.
fn field(path: &[&str]) -> Option<Field> {
    match path {
        [_, "Contents", "Key"] => Some(Field::Key),
        [_, "Contents", "Size"] => Some(Field::Size),
        [_, "CommonPrefixes", "Prefix"] => Some(Field::CommonPrefix),
        [_, "NextContinuationToken"] => Some(Field::Token),
        [_, "IsTruncated"] => Some(Field::Truncated),
        [_, "EncodingType"] => Some(Field::EncodingType),
        _ => None,
    }
}

/// The page in `text`, or what keeps it from being a ListObjectsV2 answer.
pub(super) fn parse_listing(text: &str) -> Result<ListingPage, String> {
    // (prefix, local name) of each open element, the root first.
    let mut open: Vec<(&str, &str)> = Vec::new();
    // The element just started, until its start tag ends (`>` or `/>`).
    let mut starting: Option<(&str, &str)> = None;
    let mut seen_root = false;
    // The text of the open element whose field walsync reads.
    let mut value = String::new();
    let mut page = Reading::default();
    for token in Tokenizer::from(text) {
        let token = token.map_err(|e| format!("not well-formed XML: {e}"))?;
        match token {
            Token::ElementStart { prefix, local, .. } => {
                if open.is_empty() && local.as_str() != ROOT {
                    return Err(format!(
                        "the root element is <{}>, not <{ROOT}>",
                        local.as_str()
                    ));
                }
                if open.len() >= MAX_DEPTH {
                    return Err(format!("elements are nested deeper than {MAX_DEPTH}"));
                }
                let names: Vec<&str> = open.iter().map(|&(_, local)| local).collect();
                if let Some(field) = field(&names) {
                    return Err(format!(
                        "<{}> holds an element, <{}>",
                        field_name(field),
                        local.as_str()
                    ));
                }
                seen_root = true;
                starting = Some((prefix.as_str(), local.as_str()));
            }
            Token::Attribute { .. } => {}
            Token::ElementEnd { end, .. } => match end {
                ElementEnd::Open => {
                    let element = starting.take().ok_or("a start tag ends twice")?;
                    open.push(element);
                    value.clear();
                    if local_names(&open).as_slice() == [ROOT, "Contents"] {
                        page.entry = Some((None, None));
                    }
                }
                ElementEnd::Empty => {
                    let element = starting.take().ok_or("a start tag ends twice")?;
                    open.push(element);
                    value.clear();
                    if local_names(&open).as_slice() == [ROOT, "Contents"] {
                        page.entry = Some((None, None));
                    }
                    close(&mut open, &mut page, &value)?;
                }
                ElementEnd::Close(prefix, local) => {
                    match open.last() {
                        Some(&(p, l)) if p == prefix.as_str() && l == local.as_str() => {}
                        Some(&(_, l)) => {
                            return Err(format!(
                                "</{}> closes <{l}>",
                                qualified(prefix.as_str(), local.as_str())
                            ))
                        }
                        None => {
                            return Err(format!(
                                "</{}> closes nothing",
                                qualified(prefix.as_str(), local.as_str())
                            ))
                        }
                    }
                    close(&mut open, &mut page, &value)?;
                    value.clear();
                }
            },
            Token::Text { text } => {
                if field(&local_names(&open)).is_some() {
                    decode_into(text.as_str(), &mut value)?;
                }
            }
            Token::Cdata { text, .. } => {
                if field(&local_names(&open)).is_some() {
                    value.push_str(text.as_str());
                }
            }
            Token::DtdStart { .. } | Token::EmptyDtd { .. } | Token::EntityDeclaration { .. } => {
                return Err("it has a DOCTYPE".to_owned());
            }
            Token::Declaration { .. }
            | Token::ProcessingInstruction { .. }
            | Token::Comment { .. }
            | Token::DtdEnd { .. } => {}
        }
    }
    if !seen_root {
        return Err("it has no XML element".to_owned());
    }
    if let Some(&(_, local)) = open.last() {
        return Err(format!("it ends inside <{local}>"));
    }
    let next_continuation_token = match (page.truncated, page.token) {
        (Some(false), _) => None,
        (_, Some(token)) if !token.is_empty() => Some(token),
        (Some(true), _) => {
            return Err("it says it is truncated but gives no <NextContinuationToken>".to_owned())
        }
        (None, _) => None,
    };
    let mut objects = page.objects;
    let mut prefixes = page.prefixes;
    if page.url_encoded {
        let decode = |key: &mut String| {
            *key = url_decoded(key).ok_or_else(|| {
                format!("the key {key:?} is not URL-encoded, though <EncodingType> says url")
            })?;
            Ok::<_, String>(())
        };
        for object in &mut objects {
            decode(&mut object.key)?;
        }
        for prefix in &mut prefixes {
            decode(prefix)?;
        }
    }
    Ok(ListingPage {
        objects,
        prefixes,
        next_continuation_token,
    })
}

/// The local names of the open elements.
fn local_names<'a>(open: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    open.iter().map(|&(_, local)| local).collect()
}

fn qualified(prefix: &str, local: &str) -> String {
    if prefix.is_empty() {
        local.to_owned()
    } else {
        format!("{prefix}:{local}")
    }
}

fn field_name(field: Field) -> &'static str {
    match field {
        Field::Key => "Key",
        Field::Size => "Size",
        Field::CommonPrefix => "Prefix",
        Field::Token => "NextContinuationToken",
        Field::Truncated => "IsTruncated",
        Field::EncodingType => "EncodingType",
    }
}

/// Closes the innermost open element, whose text is `value`, into `page`.
fn close(open: &mut Vec<(&str, &str)>, page: &mut Reading, value: &str) -> Result<(), String> {
    let names = local_names(open);
    let closing_entry = names.as_slice() == [ROOT, "Contents"];
    let field = field(&names);
    open.pop();
    if closing_entry {
        let Some((key, size)) = page.entry.take() else {
            return Ok(());
        };
        let key = key.ok_or("an entry (<Contents>) has no <Key>")?;
        page.objects.push(ListedObject { key, size });
        return Ok(());
    }
    let Some(field) = field else {
        return Ok(());
    };
    let twice = |name: &str| format!("<{name}> is given twice");
    let twice_in_entry = |name: &str| format!("an entry (<Contents>) has two <{name}> elements");
    match field {
        Field::Key => {
            let entry = page.entry.get_or_insert((None, None));
            if entry.0.is_some() {
                return Err(twice_in_entry("Key"));
            }
            entry.0 = Some(value.to_owned());
        }
        Field::Size => {
            let entry = page.entry.get_or_insert((None, None));
            if entry.1.is_some() {
                return Err(twice_in_entry("Size"));
            }
            let size = value.trim().parse::<u64>().map_err(|_| {
                format!(
                    "an entry's <Size> is {:?}, not a number of bytes",
                    excerpt(value)
                )
            })?;
            entry.1 = Some(size);
        }
        Field::CommonPrefix => page.prefixes.push(value.to_owned()),
        Field::Token => {
            if page.token.is_some() {
                return Err(twice("NextContinuationToken"));
            }
            page.token = Some(value.to_owned());
        }
        Field::Truncated => {
            if page.truncated.is_some() {
                return Err(twice("IsTruncated"));
            }
            page.truncated = Some(match value.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(format!(
                        "<IsTruncated> is {:?}, not true or false",
                        excerpt(other)
                    ))
                }
            });
        }
        Field::EncodingType => {
            page.url_encoded = value.trim().eq_ignore_ascii_case("url");
        }
    }
    Ok(())
}

/// At most 40 characters of `text`, for messages.
fn excerpt(text: &str) -> String {
    let mut cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// Appends `raw` (character data between tags) to `out` with its entity and
/// character references replaced.
pub(super) fn decode_into(raw: &str, out: &mut String) -> Result<(), String> {
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after
            .find(';')
            .filter(|&end| end <= 10)
            .ok_or_else(|| format!("an '&' starts no reference: {:?}", excerpt(&rest[amp..])))?;
        let name = &after[..end];
        let c = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = name.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = name.strip_prefix('#') {
                    decimal.parse::<u32>().ok()
                } else {
                    None
                };
                let c = code
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown reference &{name};"))?;
                // XML 1.0's Char production.
                if c < ' ' && !matches!(c, '\t' | '\n' | '\r')
                    || matches!(c, '\u{fffe}' | '\u{ffff}')
                {
                    return Err(format!("&{name}; is not a character XML allows"));
                }
                c
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

/// `text` decoded as `encoding-type=url` answers are (`%XX`, and `+` for a
/// space as AWS and MinIO encode it), or `None` if it does not decode to
/// UTF-8.
fn url_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
    /// s3rver 3.7.1's, and reportedly GCS's XML API's.
    const OTHER_NS: &str = "http://doc.s3.amazonaws.com/2006-03-01/";

    fn object(key: &str, size: Option<u64>) -> ListedObject {
        ListedObject {
            key: key.to_owned(),
            size,
        }
    }

    fn page(objects: Vec<ListedObject>, token: Option<&str>) -> ListingPage {
        ListingPage {
            objects,
            prefixes: Vec::new(),
            next_continuation_token: token.map(str::to_owned),
        }
    }

    /// A listing of two entries under `root` (the root's start tag).
    fn two_entries(root: &str, close: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{root}<Name>b</Name><Prefix>p/</Prefix>\
             <KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>\
             <Contents><Key>p/a</Key><LastModified>2026-11-25T20:43:16.000Z</LastModified>\
             <ETag>&quot;e&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>\
             <Contents><Key>p/b</Key><Size>0</Size></Contents>{close}"
        )
    }

    #[test]
    fn listings_are_read_in_any_or_no_namespace() {
        let expected = page(vec![object("p/a", Some(3)), object("p/b", Some(0))], None);
        for (root, close) in [
            (
                format!("<ListBucketResult xmlns=\"{AWS_NS}\">"),
                "</ListBucketResult>",
            ),
            (
                format!("<ListBucketResult xmlns=\"{OTHER_NS}\">"),
                "</ListBucketResult>",
            ),
            ("<ListBucketResult>".to_owned(), "</ListBucketResult>"),
            (
                format!("<s3:ListBucketResult xmlns:s3=\"{AWS_NS}\">"),
                "</s3:ListBucketResult>",
            ),
        ] {
            let text = two_entries(&root, close);
            assert_eq!(parse_listing(&text), Ok(expected.clone()), "{root}");
        }
    }

    #[test]
    fn each_listing_gives_its_entries_and_next_page() {
        let open = format!("<ListBucketResult xmlns=\"{OTHER_NS}\">");
        let close = "</ListBucketResult>";
        // (the elements inside the root, the page)
        #[rustfmt::skip]
        let cases: Vec<(&str, ListingPage)> = vec![
            // s3rver's and MinIO's entries without ETag (rusty-s3 #163), or
            // with nothing but a key and a size.
            ("<Contents><Key>a</Key><Size>1</Size></Contents>", page(vec![object("a", Some(1))], None)),
            // No size: read, then refused by `listed_size` with its message.
            ("<Contents><Key>a</Key></Contents>", page(vec![object("a", None)], None)),
            ("", page(vec![], None)),
            ("<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>", page(vec![], None)),
            // Keys are taken as written: spaces, entities, CDATA.
            ("<Contents><Key> a b </Key><Size> 7 </Size></Contents>", page(vec![object(" a b ", Some(7))], None)),
            ("<Contents><Key>a&amp;b&#233;&#xE9;&lt;</Key><Size>1</Size></Contents>", page(vec![object("a&béé<", Some(1))], None)),
            ("<Contents><Key><![CDATA[a&b]]></Key><Size>1</Size></Contents>", page(vec![object("a&b", Some(1))], None)),
            // Truncation: the token, unless the page says it is complete.
            ("<IsTruncated>true</IsTruncated><NextContinuationToken>t+1/=</NextContinuationToken>", page(vec![], Some("t+1/="))),
            ("<NextContinuationToken>t</NextContinuationToken>", page(vec![], Some("t"))),
            ("<IsTruncated>false</IsTruncated><NextContinuationToken>t</NextContinuationToken>", page(vec![], None)),
            ("<NextContinuationToken></NextContinuationToken>", page(vec![], None)),
            ("<IsTruncated>0</IsTruncated>", page(vec![], None)),
            // Asked for or not, url-encoded keys are decoded.
            ("<EncodingType>url</EncodingType><Contents><Key>a%C3%A9+b%2B</Key><Size>1</Size></Contents>", page(vec![object("aé b+", Some(1))], None)),
            // Owners, comments, unknown elements anywhere are skipped.
            ("<!-- c --><Contents><Owner><ID>x</ID><DisplayName/></Owner><Key>a</Key><Size>2</Size><New><Key>z</Key></New></Contents><Other/>", page(vec![object("a", Some(2))], None)),
            // An empty element is an empty value.
            ("<Contents><Key/><Size>1</Size></Contents>", page(vec![object("", Some(1))], None)),
        ];
        for (inner, expected) in cases {
            let text = format!("{open}{inner}{close}");
            assert_eq!(parse_listing(&text), Ok(expected), "{inner}");
        }
        // An empty root element.
        assert_eq!(parse_listing("<ListBucketResult/>"), Ok(page(vec![], None)));
    }

    #[test]
    fn a_listing_with_a_delimiter_gives_its_common_prefixes() {
        let text = "<ListBucketResult><Prefix>t/</Prefix><Delimiter>/</Delimiter>\
                    <IsTruncated>true</IsTruncated><NextContinuationToken>t/b/</NextContinuationToken>\
                    <Contents><Key>t/x</Key><Size>1</Size></Contents>\
                    <CommonPrefixes><Prefix>t/a/</Prefix></CommonPrefixes>\
                    <CommonPrefixes><Prefix>t/b&amp;c/</Prefix></CommonPrefixes></ListBucketResult>";
        let mut expected = page(vec![object("t/x", Some(1))], Some("t/b/"));
        expected.prefixes = vec!["t/a/".to_owned(), "t/b&c/".to_owned()];
        assert_eq!(parse_listing(text), Ok(expected));
        let encoded = "<ListBucketResult><EncodingType>url</EncodingType>\
                       <CommonPrefixes><Prefix>t/a%20b+c/</Prefix></CommonPrefixes></ListBucketResult>";
        let page = parse_listing(encoded).expect("a listing");
        assert_eq!(page.prefixes, vec!["t/a b c/".to_owned()]);
        let bad = "<ListBucketResult><EncodingType>url</EncodingType>\
                   <CommonPrefixes><Prefix>%ff/</Prefix></CommonPrefixes></ListBucketResult>";
        assert!(parse_listing(bad).is_err_and(|e| e.contains("not URL-encoded")));
    }

    #[test]
    fn what_is_not_a_listing_is_named() {
        // (text, words of the error)
        #[rustfmt::skip]
        let cases = [
            ("", "has no XML element"),
            ("   ", "has no XML element"),
            ("nonsense", "not well-formed XML"),
            ("<Error><Code>AccessDenied</Code></Error>", "the root element is <Error>, not <ListBucketResult>"),
            ("<ListAllMyBucketsResult/>", "the root element is <ListAllMyBucketsResult>"),
            ("<!DOCTYPE x><ListBucketResult/>", "has a DOCTYPE"),
            ("<ListBucketResult><Contents><Key>a</Key>", "ends inside <Contents>"),
            ("<ListBucketResult></Other>", "</Other> closes <ListBucketResult>"),
            // xmlparser refuses a second root element.
            ("<ListBucketResult/><ListBucketResult/>", "not well-formed XML"),
            ("<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>", "an entry (<Contents>) has no <Key>"),
            ("<ListBucketResult><Contents><Key>a</Key><Key>b</Key></Contents></ListBucketResult>", "an entry (<Contents>) has two <Key> elements"),
            ("<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>", "<Size> is \"-1\", not a number of bytes"),
            ("<ListBucketResult><Contents><Key>a</Key><Size>99999999999999999999</Size></Contents></ListBucketResult>", "not a number of bytes"),
            ("<ListBucketResult><Contents><Key>a<b/></Key></Contents></ListBucketResult>", "<Key> holds an element, <b>"),
            ("<ListBucketResult><Contents><Key>a&nbsp;</Key></Contents></ListBucketResult>", "unknown reference &nbsp;"),
            ("<ListBucketResult><Contents><Key>a & b</Key></Contents></ListBucketResult>", "starts no reference"),
            ("<ListBucketResult><Contents><Key>&#0;</Key></Contents></ListBucketResult>", "&#0; is not a character XML allows"),
            ("<ListBucketResult><Contents><Key>&#xD800;</Key></Contents></ListBucketResult>", "unknown reference &#xD800;"),
            ("<ListBucketResult><IsTruncated>yes</IsTruncated></ListBucketResult>", "<IsTruncated> is \"yes\", not true or false"),
            ("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>", "truncated but gives no <NextContinuationToken>"),
            ("<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken/></ListBucketResult>", "truncated but gives no <NextContinuationToken>"),
            ("<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>%ff</Key></Contents></ListBucketResult>", "not URL-encoded"),
            ("<ListBucketResult><EncodingType>url</EncodingType><Contents><Key>%4</Key></Contents></ListBucketResult>", "not URL-encoded"),
        ];
        for (text, words) in cases {
            let err = parse_listing(text).expect_err(text);
            assert!(err.contains(words), "{text}: {err:?} lacks {words:?}");
        }
        let deep = format!("<ListBucketResult>{}", "<a>".repeat(100));
        let err = parse_listing(&deep).expect_err("too deep");
        assert!(err.contains("nested deeper than 32"), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    //! Listings come from the server: untrusted input.
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn listings_never_panic() {
        let listings = [
            r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>t/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken><EncodingType>url</EncodingType><Contents><Key>t/a%C3%A9/generations/x</Key><LastModified>2026-11-25T20:43:16.000Z</LastModified><ETag>&quot;e&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>t/b&amp;c</Key><Size>0</Size></Contents><CommonPrefixes><Prefix>t/x/</Prefix></CommonPrefixes></ListBucketResult>"#,
            r#"<ListBucketResult xmlns="http://doc.s3.amazonaws.com/2006-03-01/"><IsTruncated>false</IsTruncated><Contents><Key>a&#233;</Key><Size>3</Size></Contents><Contents><Key><![CDATA[b]]></Key><Size>0</Size></Contents></ListBucketResult>"#,
            "<s3:ListBucketResult xmlns:s3=\"x\"><s3:Contents><s3:Key>k</s3:Key></s3:Contents></s3:ListBucketResult>",
        ];
        for listing in listings {
            assert!(parse_listing(listing).is_ok(), "{listing}");
        }
        fuzz_text("listing parser", 0x53_0004, 3000, &listings, |text| {
            parse_listing(text).is_ok()
        });
    }
}
