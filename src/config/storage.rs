//! The `[storage]` table: a local directory, or an S3 bucket whose
//! endpoint, region and credentials come from the table or the `AWS_*`
//! environment ([`super::s3_settings`]), checked so that `S3Storage::new`
//! accepts them.

use toml::Spanned;

use super::error::Document;
use super::s3_settings::{
    check_credential, credentials_from_env, endpoint_from_env, region_from_env, validate_bucket,
    validate_endpoint, validate_region, virtual_host_problem, Credentials,
};
use super::schema::RawStorage;
use super::{ConfigError, StorageConfig};
use crate::storage::s3::S3Settings;

const CREDENTIALS_FIX: &str = "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus \
     AWS_SESSION_TOKEN for temporary credentials), or set access_key_id and secret_access_key \
     in [storage]";

impl Document<'_> {
    pub(super) fn storage(
        &self,
        raw: Option<Spanned<RawStorage>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<StorageConfig, ConfigError> {
        let Some(raw) = raw else {
            return Err(self.error(
                None,
                "storage",
                "there is no [storage] table",
                "add [storage] with bucket = \"...\" (S3) or dir = \"...\" (a local directory)",
            ));
        };
        let header = raw.span();
        let raw = raw.into_inner();
        let bucket = match (raw.bucket, raw.dir) {
            (Some(_), Some(dir)) => {
                return Err(self.error(
                    Some(dir.span()),
                    "storage.dir",
                    "both `bucket` and `dir` are set",
                    "keep exactly one: bucket for S3, dir for a local directory",
                ));
            }
            (None, None) => {
                return Err(self.error(
                    Some(header),
                    "storage.bucket",
                    "[storage] has neither `bucket` nor `dir`",
                    "add bucket = \"...\" (S3) or dir = \"...\" (a local directory)",
                ));
            }
            (None, Some(dir)) => {
                let s3_only = [
                    ("endpoint", raw.endpoint.map(|v| v.span())),
                    ("region", raw.region.map(|v| v.span())),
                    ("path_style", raw.path_style.map(|v| v.span())),
                    ("access_key_id", raw.access_key_id.map(|v| v.span())),
                    ("secret_access_key", raw.secret_access_key.map(|v| v.span())),
                ];
                if let Some((key, span)) = s3_only.into_iter().find_map(|(k, s)| Some((k, s?))) {
                    return Err(self.error(
                        Some(span),
                        &format!("storage.{key}"),
                        format!("`{key}` only applies to an S3 bucket, but [storage] sets `dir`"),
                        format!("remove `{key}`, or replace `dir` with `bucket`"),
                    ));
                }
                let path = self.local_path(&dir, "storage.dir")?;
                return Ok(StorageConfig::Dir(path));
            }
            (Some(bucket), None) => bucket,
        };
        validate_bucket(bucket.get_ref()).map_err(|problem| {
            self.error(
                Some(bucket.span()),
                "storage.bucket",
                problem,
                "write just the bucket name, e.g. bucket = \"my-backups\"",
            )
        })?;
        let endpoint = match endpoint_from_env(env)? {
            Some(url) => Some(url),
            None => match &raw.endpoint {
                Some(url) => Some(validate_endpoint(url.get_ref()).map_err(|problem| {
                    self.error(
                        Some(url.span()),
                        "storage.endpoint",
                        problem,
                        "write an http(s) URL such as \"http://127.0.0.1:9000\", or remove it for AWS",
                    )
                })?),
                None => None,
            },
        };
        let region = match &raw.region {
            Some(region) => {
                validate_region(region.get_ref()).map_err(|problem| {
                    self.error(
                        Some(region.span()),
                        "storage.region",
                        problem,
                        "write a region name such as \"us-east-1\"",
                    )
                })?;
                region.get_ref().clone()
            }
            None => region_from_env(env)?,
        };
        let credentials_given = (raw.access_key_id.is_some(), raw.secret_access_key.is_some());
        let credentials = match (raw.access_key_id, raw.secret_access_key) {
            (Some(id), Some(secret)) => {
                for (key, value) in [("access_key_id", &id), ("secret_access_key", &secret)] {
                    check_credential(value.get_ref()).map_err(|problem| {
                        self.error(
                            Some(value.span()),
                            &format!("storage.{key}"),
                            problem,
                            format!("copy the {key} again, without spaces or line breaks"),
                        )
                    })?;
                }
                Credentials {
                    access_key_id: id.into_inner(),
                    secret_access_key: secret.into_inner(),
                    // A token in the environment belongs to the environment's keys.
                    session_token: None,
                }
            }
            (Some(set), None) | (None, Some(set)) => {
                let present = if credentials_given.0 {
                    "access_key_id"
                } else {
                    "secret_access_key"
                };
                let absent = if credentials_given.0 {
                    "secret_access_key"
                } else {
                    "access_key_id"
                };
                return Err(self.error(
                    Some(set.span()),
                    &format!("storage.{absent}"),
                    format!("[storage] sets `{present}` but not `{absent}`"),
                    "set both access_key_id and secret_access_key in [storage], or neither to use \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                ));
            }
            (None, None) => credentials_from_env(env, |missing| {
                let key = if missing.first() != Some(&"AWS_SECRET_ACCESS_KEY") {
                    "storage.access_key_id"
                } else {
                    "storage.secret_access_key"
                };
                self.error(
                    Some(header.clone()),
                    key,
                    format!(
                        "no credentials for bucket {:?}: {} not set and [storage] has no access_key_id \
                         or secret_access_key",
                        bucket.get_ref(),
                        missing.join(" and ")
                    ),
                    CREDENTIALS_FIX,
                )
            })?,
        };
        let path_style = raw
            .path_style
            .as_ref()
            .map_or(endpoint.is_some(), |p| *p.get_ref());
        if !path_style {
            if let Some(problem) = virtual_host_problem(bucket.get_ref(), endpoint.as_deref()) {
                let (key, span) = match &raw.path_style {
                    Some(p) => ("storage.path_style", p.span()),
                    None => ("storage.bucket", bucket.span()),
                };
                return Err(self.error(
                    Some(span),
                    key,
                    problem,
                    "set path_style = true in [storage]",
                ));
            }
        }
        Ok(StorageConfig::S3(S3Settings {
            bucket: bucket.into_inner(),
            path_style,
            endpoint,
            region,
            access_key_id: credentials.access_key_id,
            secret_access_key: credentials.secret_access_key,
            session_token: credentials.session_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn missing_credentials_name_the_environment_variables() {
        let text = format!("workers = 2\n{STORAGE}{DATABASE}");
        let err = parse_with(&text, &[]).expect_err("no credentials");
        let message = err.to_string();
        assert_eq!(err.line(), Some(2), "the [storage] line: {message}");
        assert!(
            message.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set"),
            "{message}"
        );
        assert!(message.contains("storage.access_key_id"), "{message}");

        let err = parse_with(
            &text,
            &[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "")],
        )
        .expect_err("empty secret counts as unset");
        let message = err.to_string();
        assert!(
            message.contains("AWS_SECRET_ACCESS_KEY not set"),
            "{message}"
        );
        assert!(!message.contains("AWS_ACCESS_KEY_ID not set"), "{message}");
        assert_eq!(err.key(), Some("storage.secret_access_key"));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let text = format!("{STORAGE}{DATABASE}");
        for (name, value) in [
            ("AWS_ENDPOINT_URL_S3", "minio:9000"),
            ("AWS_REGION", "us east"),
            ("AWS_DEFAULT_REGION", "a/b"),
            ("AWS_SECRET_ACCESS_KEY", "with space"),
        ] {
            let mut vars = CREDENTIALS.to_vec();
            vars.retain(|(k, _)| *k != name);
            vars.push((name, value));
            let err = parse_with(&text, &vars).expect_err(name);
            assert_eq!(err.key(), Some(name), "{err}");
            assert!(err.to_string().starts_with(&format!("{name}: ")), "{err}");
            assert!(err.to_string().contains("; fix: "), "{err}");
        }
    }

    #[test]
    fn endpoint_env_overrides_the_file_and_turns_on_path_style() {
        let text = format!(
            "[storage]\nbucket = \"b\"\nendpoint = \"https://s3.example.com/\"\n{DATABASE}"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(
            s3(&config).endpoint.as_deref(),
            Some("https://s3.example.com")
        );
        assert!(s3(&config).path_style);

        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000"));
        let config = parse_with(&text, &vars).expect("valid");
        assert_eq!(
            s3(&config).endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );

        let config = parse_with(&format!("{STORAGE}{DATABASE}"), &vars).expect("valid");
        assert!(
            s3(&config).path_style,
            "an endpoint from the environment also means path style"
        );

        let text = format!("[storage]\nbucket = \"b\"\nendpoint = \"http://minio.internal:9000\"\npath_style = false\n{DATABASE}");
        let config = parse(&text).expect("valid");
        assert!(!s3(&config).path_style);
    }

    #[test]
    fn region_comes_from_the_file_then_aws_region_then_aws_default_region() {
        let with_region = format!("[storage]\nbucket = \"b\"\nregion = \"eu-west-3\"\n{DATABASE}");
        let without = format!("{STORAGE}{DATABASE}");
        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_DEFAULT_REGION", "ap-south-1"));
        assert_eq!(
            s3(&parse_with(&without, &vars).unwrap()).region,
            "ap-south-1"
        );
        vars.push(("AWS_REGION", "us-west-2"));
        assert_eq!(
            s3(&parse_with(&without, &vars).unwrap()).region,
            "us-west-2"
        );
        assert_eq!(
            s3(&parse_with(&with_region, &vars).unwrap()).region,
            "eu-west-3"
        );
        vars.push(("AWS_REGION", ""));
        vars.retain(|(k, v)| *k != "AWS_REGION" || v.is_empty());
        assert_eq!(
            s3(&parse_with(&without, &vars).unwrap()).region,
            "ap-south-1",
            "empty AWS_REGION is unset"
        );
    }

    #[test]
    fn session_token_goes_with_environment_credentials_only() {
        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_SESSION_TOKEN", "env-token"));
        let config = parse_with(&format!("{STORAGE}{DATABASE}"), &vars).unwrap();
        assert_eq!(s3(&config).session_token.as_deref(), Some("env-token"));

        let text = format!(
            "[storage]\nbucket = \"b\"\naccess_key_id = \"AKIDFILE\"\nsecret_access_key = \"file-secret\"\n{DATABASE}"
        );
        let config = parse_with(&text, &vars).unwrap();
        let settings = s3(&config);
        assert_eq!(settings.access_key_id, "AKIDFILE");
        assert_eq!(settings.secret_access_key, "file-secret");
        assert_eq!(settings.session_token, None);
    }

    #[test]
    fn resolved_s3_settings_are_accepted_by_the_s3_backend() {
        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_SESSION_TOKEN", "token"));
        for text in [
            include_str!("../../walsync.toml.example").to_string(),
            format!("{STORAGE}{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\nendpoint = \"http://[::1]:9000/\"\n{DATABASE}"),
        ] {
            let config = parse_with(&text, &vars).expect("valid");
            let settings = s3(&config).clone();
            if let Err(e) = crate::storage::s3::S3Storage::new(settings) {
                panic!("S3Storage refused {:?}: {e}", s3(&config));
            }
        }
    }
}
