//! The TLS roots of the S3 agent: a PEM bundle named by `AWS_CA_BUNDLE` or
//! `SSL_CERT_FILE` (for a server behind a private CA), else the bundled
//! webpki roots. Reads the bundle file; the environment is a parameter.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use ureq::tls::{PemItem, RootCerts};

use crate::storage::StorageError;

/// The TLS roots: a PEM bundle named by `AWS_CA_BUNDLE` (first) or
/// `SSL_CERT_FILE`, else the bundled webpki roots. `var` reads the environment.
pub(super) fn root_certs_from_env(
    var: impl Fn(&str) -> Option<OsString>,
) -> Result<RootCerts, StorageError> {
    for name in ["AWS_CA_BUNDLE", "SSL_CERT_FILE"] {
        if let Some(path) = var(name).filter(|p| !p.is_empty()) {
            return load_ca_bundle(name, Path::new(&path));
        }
    }
    Ok(RootCerts::WebPki)
}

fn load_ca_bundle(var_name: &str, path: &Path) -> Result<RootCerts, StorageError> {
    let fail = |kind: io::ErrorKind, what: String| StorageError::Io {
        path: path.to_owned(),
        source: io::Error::new(kind, format!("{var_name} names this CA bundle, but {what}")),
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.kind(), format!("it cannot be read: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(fail(
                    io::ErrorKind::InvalidData,
                    format!("it is not a valid PEM file: {e}"),
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(fail(
            io::ErrorKind::InvalidData,
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(RootCerts::from(certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUQIIS7uu6cklgvqIFNkPoavPlZ/IwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPd2Fsc3luYyB0ZXN0IENBMCAXDTI2MTEyNTIwNTAzM1oYDzIx
MjYxMTAxMjA1MDMzWjAaMRgwFgYDVQQDDA93YWxzeW5jIHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASkbHdVvL/brQNSn0PMbOO+BZKJvdGr58rg8cEF
xOI7NwfNpdggbId9HmkHwyVuPUtD3F14+WCi2nDnA6S5+K3mo1MwUTAdBgNVHQ4E
FgQUVhmfz2MaUySKhHnNIZo0omTnEOwwHwYDVR0jBBgwFoAUVhmfz2MaUySKhHnN
IZo0omTnEOwwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAtDkH
896avKbO7sXDnXcTSbI/cjKKV1IGhG9kx+tH8mICIH4ItINDAORREvOjXj9QODa0
n88mt2TK+7GHU3TH4s4O
-----END CERTIFICATE-----
";

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("walsync-s3-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("temp dir is writable");
        path
    }

    #[test]
    fn ca_bundle_from_env_is_loaded_or_named_in_the_error() {
        assert!(matches!(
            root_certs_from_env(|_| None),
            Ok(RootCerts::WebPki)
        ));

        let good = temp_file("good.pem", TEST_CA);
        let roots =
            root_certs_from_env(|name| (name == "SSL_CERT_FILE").then(|| good.clone().into()));
        assert!(matches!(roots, Ok(RootCerts::Specific(certs)) if certs.len() == 1));

        let bad = temp_file("bad.pem", "not a certificate\n");
        let err = root_certs_from_env(|name| (name == "AWS_CA_BUNDLE").then(|| bad.clone().into()))
            .expect_err("a file without certificates is refused");
        let text = err.to_string();
        assert!(
            text.contains("AWS_CA_BUNDLE") && text.contains("bad.pem"),
            "{text}"
        );

        let missing = std::env::temp_dir().join("walsync-no-such-bundle.pem");
        let err =
            root_certs_from_env(|name| (name == "AWS_CA_BUNDLE").then(|| missing.clone().into()))
                .expect_err("a missing file is refused");
        assert!(err.to_string().contains("AWS_CA_BUNDLE"), "{err}");

        let _ = std::fs::remove_file(good);
        let _ = std::fs::remove_file(bad);
    }
}
