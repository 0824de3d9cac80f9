//! S3 settings that do not come from the config file alone: the `AWS_*`
//! environment (credentials, endpoint, region), the command-line flags of
//! disaster recovery ([`s3_from_flags`], for when there is no config file),
//! and the checks of each S3 value (bucket, endpoint, region, credential,
//! virtual-host style) shared by the `[storage]` table and the flags. No
//! message ever echoes a credential or an endpoint that could hold one.

use super::{ConfigError, DEFAULT_REGION};
use crate::storage::s3::S3Settings;

/// S3 settings from command-line flags alone, for when there is no config
/// file (disaster recovery). A flag wins over the environment:
/// `--endpoint` over `AWS_ENDPOINT_URL_S3`, `--region` over `AWS_REGION`
/// then `AWS_DEFAULT_REGION` (else `us-east-1`). Path-style URLs default to
/// on when there is an endpoint. Credentials come from `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and, if set, `AWS_SESSION_TOKEN`.
pub fn s3_from_flags(
    bucket: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
    path_style: Option<bool>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<S3Settings, ConfigError> {
    let setting = |name: &str, problem: String, fix: &str| ConfigError::Setting {
        name: name.to_string(),
        problem,
        fix: fix.to_string(),
    };
    validate_bucket(bucket).map_err(|p| {
        setting(
            "--bucket",
            p,
            "pass the bucket name, e.g. --bucket my-backups",
        )
    })?;
    let endpoint = match endpoint {
        Some(url) => Some(validate_endpoint(url).map_err(|p| {
            setting(
                "--endpoint",
                p,
                "pass an http(s) URL, e.g. --endpoint http://127.0.0.1:9000",
            )
        })?),
        None => endpoint_from_env(env)?,
    };
    let region = match region {
        Some(region) => {
            validate_region(region)
                .map_err(|p| setting("--region", p, "pass e.g. --region us-east-1"))?;
            region.to_string()
        }
        None => region_from_env(env)?,
    };
    let credentials = credentials_from_env(env, |missing| {
        setting(
            missing.first().copied().unwrap_or("AWS_ACCESS_KEY_ID"),
            format!(
                "{} not set; with no config file, credentials come from the environment",
                missing.join(" and ")
            ),
            "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for \
             temporary credentials)",
        )
    })?;
    let use_path_style = path_style.unwrap_or(endpoint.is_some());
    if !use_path_style {
        if let Some(problem) = virtual_host_problem(bucket, endpoint.as_deref()) {
            let name = if path_style.is_some() {
                "--path-style"
            } else {
                "--bucket"
            };
            return Err(setting(name, problem, "use path-style URLs"));
        }
    }
    Ok(S3Settings {
        bucket: bucket.to_string(),
        path_style: use_path_style,
        endpoint,
        region,
        access_key_id: credentials.access_key_id,
        secret_access_key: credentials.secret_access_key,
        session_token: credentials.session_token,
    })
}

pub(super) struct Credentials {
    pub(super) access_key_id: String,
    pub(super) secret_access_key: String,
    pub(super) session_token: Option<String>,
}

/// Reads a variable, treating an empty value as unset.
pub(super) fn env_var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN`; `missing` builds the error from the names of the
/// required variables that are not set.
pub(super) fn credentials_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    missing: impl FnOnce(&[&str]) -> ConfigError,
) -> Result<Credentials, ConfigError> {
    let id = env_var(env, "AWS_ACCESS_KEY_ID");
    let secret = env_var(env, "AWS_SECRET_ACCESS_KEY");
    let (Some(id), Some(secret)) = (&id, &secret) else {
        let names: Vec<&str> = [
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| name)
        .collect();
        return Err(missing(&names));
    };
    for (name, value) in [("AWS_ACCESS_KEY_ID", id), ("AWS_SECRET_ACCESS_KEY", secret)] {
        check_credential(value).map_err(|problem| ConfigError::Setting {
            name: name.to_string(),
            problem,
            fix: format!("set {name} again, without spaces or line breaks"),
        })?;
    }
    Ok(Credentials {
        access_key_id: id.clone(),
        secret_access_key: secret.clone(),
        session_token: env_var(env, "AWS_SESSION_TOKEN"),
    })
}

/// `AWS_ENDPOINT_URL_S3`, checked, if set.
pub(super) fn endpoint_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    env_var(env, "AWS_ENDPOINT_URL_S3")
        .map(|url| {
            validate_endpoint(&url).map_err(|problem| ConfigError::Setting {
                name: "AWS_ENDPOINT_URL_S3".to_string(),
                problem,
                fix: "set it to an http(s) URL such as http://127.0.0.1:9000, or unset it"
                    .to_string(),
            })
        })
        .transpose()
}

/// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
pub(super) fn region_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    for name in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(region) = env_var(env, name) {
            validate_region(&region).map_err(|problem| ConfigError::Setting {
                name: name.to_string(),
                problem,
                fix: "set it to a region name such as us-east-1, or unset it".to_string(),
            })?;
            return Ok(region);
        }
    }
    Ok(DEFAULT_REGION.to_string())
}

/// Bucket names: no URL, no path, only characters S3-compatible servers
/// accept (`[A-Za-z0-9._-]`, lenient enough for legacy names).
pub(super) fn validate_bucket(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the bucket name is empty".to_string());
    }
    if name.contains("://") {
        return Err(format!(
            "{name:?} is a URL; the bucket is just its name (the server goes in `endpoint`)"
        ));
    }
    if name.contains('/') {
        return Err(format!(
            "{name:?} contains '/'; a path inside the bucket belongs in each database's prefix"
        ));
    }
    if name.len() > 255 {
        return Err(format!(
            "the bucket name is {} bytes long; the limit is 255",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}, which bucket names cannot contain"
        ));
    }
    Ok(())
}

const NO_HOST: &str = "the endpoint has no host";
const BAD_PORT: &str = "the endpoint's port is not a number from 1 to 65535";
const UNCLOSED_HOST: &str = "the endpoint's host is not closed by ']'";

/// An endpoint must be `http://` or `https://` with a host, and no
/// credentials, query or fragment. Host and port are read by the url crate,
/// the parser `S3Storage::new` uses, so an endpoint accepted here is one it
/// accepts. Returns it without a trailing `/`. The value is never echoed (it
/// could hold `user:password@`).
pub(super) fn validate_endpoint(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| "the endpoint must start with http:// or https://".to_string())?;
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("the endpoint contains whitespace".to_string());
    }
    // The authority as written: the url crate drops an empty `@` or `:` and
    // reads `http:///h` as `http://h`, all of which are refused here.
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "the endpoint contains credentials (user@); they are not allowed in the URL"
                .to_string(),
        );
    }
    if rest.contains('?') || rest.contains('#') {
        return Err("the endpoint has a query or fragment ('?' or '#')".to_string());
    }
    let url = url::Url::parse(endpoint).map_err(|e| {
        match e {
            url::ParseError::EmptyHost => NO_HOST,
            url::ParseError::InvalidPort => BAD_PORT,
            url::ParseError::InvalidIpv6Address => match authority.split_once(']') {
                None => UNCLOSED_HOST,
                Some(("[", _)) => NO_HOST,
                Some((_, after)) if !after.is_empty() && !after.starts_with(':') => UNCLOSED_HOST,
                Some(_) => "the endpoint's host is not a valid IPv6 address",
            },
            _ => "the endpoint's host is not a valid host name or IP address",
        }
        .to_string()
    })?;
    if authority.is_empty() {
        return Err(NO_HOST.to_string());
    }
    if authority.ends_with(':') || url.port() == Some(0) {
        return Err(BAD_PORT.to_string());
    }
    Ok(endpoint.trim_end_matches('/').to_string())
}

/// Why virtual-host style URLs (`bucket.host/key`) cannot work with this
/// bucket and endpoint, if they cannot: the bucket becomes part of a host
/// name, so it must be a valid one, and an IP address cannot take a
/// subdomain. (`S3Storage::new` would refuse these later, without a line.)
pub(super) fn virtual_host_problem(bucket: &str, endpoint: Option<&str>) -> Option<String> {
    if !bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    {
        return Some(format!(
            "virtual-host style URLs put the bucket in the host name, and {bucket:?} is not a \
             valid host name"
        ));
    }
    let url = url::Url::parse(endpoint?).ok()?;
    matches!(url.host()?, url::Host::Ipv4(_) | url::Host::Ipv6(_)).then(|| {
        "virtual-host style URLs put the bucket in the host name, and the endpoint's host is \
         an IP address"
            .to_string()
    })
}

pub(super) fn validate_region(region: &str) -> Result<(), String> {
    if region.is_empty() {
        return Err("the region is empty".to_string());
    }
    if region.len() > 64
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{region:?} is not a region name"));
    }
    Ok(())
}

/// Never echoes the value.
pub(super) fn check_credential(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty".to_string());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the value contains whitespace or control characters".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn endpoints_are_checked() {
        let scheme = "the endpoint must start with http:// or https://";
        let whitespace = "the endpoint contains whitespace";
        let credentials =
            "the endpoint contains credentials (user@); they are not allowed in the URL";
        let query = "the endpoint has a query or fragment ('?' or '#')";
        let bad_host = "the endpoint's host is not a valid host name or IP address";
        let bad_ipv6 = "the endpoint's host is not a valid IPv6 address";
        for (endpoint, expected) in [
            ("http://127.0.0.1:9000", Ok("http://127.0.0.1:9000")),
            (
                "https://s3.eu-west-1.amazonaws.com/",
                Ok("https://s3.eu-west-1.amazonaws.com"),
            ),
            ("http://[::1]:9000/", Ok("http://[::1]:9000")),
            (
                "http://minio.internal/base//",
                Ok("http://minio.internal/base"),
            ),
            ("http://h:65535", Ok("http://h:65535")),
            ("ftp://x", Err(scheme)),
            ("127.0.0.1:9000", Err(scheme)),
            ("HTTP://h", Err(scheme)),
            ("http://h x", Err(whitespace)),
            ("http://h\n", Err(whitespace)),
            ("http://user:pw@host", Err(credentials)),
            ("http://@host", Err(credentials)),
            ("http://h?x", Err(query)),
            ("http://h/#x", Err(query)),
            ("http://", Err(NO_HOST)),
            ("http://:9000", Err(NO_HOST)),
            ("http:///h", Err(NO_HOST)),
            ("http://[]:9000", Err(NO_HOST)),
            ("http://[::1", Err(UNCLOSED_HOST)),
            ("http://[::1]x", Err(UNCLOSED_HOST)),
            ("http://h:0", Err(BAD_PORT)),
            ("http://h:", Err(BAD_PORT)),
            ("http://h:99999", Err(BAD_PORT)),
            ("http://h:+1", Err(BAD_PORT)),
            ("http://a:b:c", Err(BAD_PORT)),
            ("http://[::1]:", Err(BAD_PORT)),
            ("http://a<b", Err(bad_host)),
            ("http://256.0.0.1", Err(bad_host)),
            ("http://[zz]", Err(bad_ipv6)),
        ] {
            let result = validate_endpoint(endpoint);
            assert_eq!(
                result,
                expected.map(str::to_string).map_err(str::to_string),
                "{endpoint:?}"
            );
        }
    }

    #[test]
    fn virtual_host_style_needs_a_host_name_for_the_bucket_and_the_endpoint() {
        for (bucket, endpoint, refused) in [
            ("my-backups", None, false),
            ("my-backups", Some("https://s3.example.com"), false),
            ("my.backups-1", Some("http://minio.internal:9000"), false),
            ("My-Backups", None, true),
            ("my_backups", Some("https://s3.example.com"), true),
            ("my-backups", Some("http://127.0.0.1:9000"), true),
            ("my-backups", Some("http://[::1]:9000"), true),
        ] {
            assert_eq!(
                virtual_host_problem(bucket, endpoint).is_some(),
                refused,
                "{bucket:?} {endpoint:?}"
            );
        }
    }

    #[test]
    fn flags_build_s3_settings() {
        let settings = s3_from_flags(
            "b",
            Some("http://127.0.0.1:9000/"),
            None,
            None,
            &env_of(&CREDENTIALS),
        )
        .unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(settings.path_style);
        assert_eq!(settings.region, "us-east-1");

        let mut vars = CREDENTIALS.to_vec();
        vars.extend([
            ("AWS_ENDPOINT_URL_S3", "http://env:9000"),
            ("AWS_REGION", "eu-north-1"),
            ("AWS_SESSION_TOKEN", "tok"),
        ]);
        let settings = s3_from_flags("b", None, None, Some(false), &env_of(&vars)).unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://env:9000"));
        assert!(!settings.path_style);
        assert_eq!(settings.region, "eu-north-1");
        assert_eq!(settings.session_token.as_deref(), Some("tok"));

        let settings =
            s3_from_flags("b", Some("https://flag"), Some("r1"), None, &env_of(&vars)).unwrap();
        assert_eq!(
            settings.endpoint.as_deref(),
            Some("https://flag"),
            "the flag wins over the environment"
        );
        assert_eq!(settings.region, "r1");

        let aws = s3_from_flags("b", None, None, None, &env_of(&CREDENTIALS)).unwrap();
        assert_eq!(aws.endpoint, None);
        assert!(!aws.path_style);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let env = env_of(&CREDENTIALS);
        let cases: [(Result<S3Settings, ConfigError>, &str); 7] = [
            (s3_from_flags("", None, None, None, &env), "--bucket"),
            (s3_from_flags("s3://b", None, None, None, &env), "--bucket"),
            (
                s3_from_flags("b", Some("localhost:9000"), None, None, &env),
                "--endpoint",
            ),
            (s3_from_flags("b", None, Some(""), None, &env), "--region"),
            (
                s3_from_flags("b", None, None, None, &env_of(&[])),
                "AWS_ACCESS_KEY_ID",
            ),
            (
                s3_from_flags("b", Some("http://10.0.0.1"), None, Some(false), &env),
                "--path-style",
            ),
            (s3_from_flags("B_b", None, None, None, &env), "--bucket"),
        ];
        for (result, name) in cases {
            let err = result.expect_err(name);
            assert_eq!(err.key(), Some(name), "{err}");
            assert!(err.to_string().starts_with(name), "{err}");
        }
        let err = s3_from_flags("b", None, None, None, &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    //! Every value of the config file, every `AWS_*` variable and every
    //! `--bucket`/`--endpoint`/`--region` flag is user input: the parsers
    //! must answer with an error for any of it, never panic.
    use super::*;
    use crate::config::testing::*;
    use crate::testing::{fuzz_text, text_input};

    #[test]
    fn names_prefixes_and_endpoints_never_panic() {
        let buckets = ["my-backups", "b", "a.b_c-d"];
        fuzz_text("bucket check", 0xc0f1_0004, 3000, &buckets, |s| {
            validate_bucket(s).is_ok() && virtual_host_problem(s, None).is_none()
        });
        let endpoints = [
            "http://127.0.0.1:9000",
            "https://s3.eu-west-1.amazonaws.com/",
            "http://[::1]:9000/",
            "https://minio.internal",
        ];
        fuzz_text("endpoint check", 0xc0f1_0005, 3000, &endpoints, |s| {
            let ok = validate_endpoint(s).is_ok();
            let _ = virtual_host_problem("my-backups", Some(s));
            ok
        });
        let regions = ["us-east-1", "eu-west-3", "auto"];
        fuzz_text("region check", 0xc0f1_0006, 3000, &regions, |s| {
            validate_region(s).is_ok() && check_credential(s).is_ok()
        });
        fuzz_text(
            "flags to S3 settings",
            0xc0f1_0008,
            3000,
            &endpoints,
            |endpoint| {
                let mut rng = rng_for(endpoint);
                let bucket = text_input(&mut rng, &buckets);
                let region = text_input(&mut rng, &regions);
                s3_from_flags(&bucket, Some(endpoint), Some(&region), None, &env).is_ok()
            },
        );
        // The same from the environment.
        let variables = ["AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_ACCESS_KEY_ID"];
        fuzz_text("AWS_* variables", 0xc0f1_0009, 3000, &endpoints, |value| {
            let fuzzed = variables[rng_for(value).below(variables.len())];
            let env = |name: &str| {
                if name == fuzzed {
                    Some(value.to_string())
                } else {
                    env(name)
                }
            };
            s3_from_flags("b", None, None, None, &env).is_ok()
        });
    }
}
