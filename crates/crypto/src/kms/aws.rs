//! The [`Kms`] trait on AWS KMS (cargo feature `aws-kms`).
//!
//! Data keys come from `GenerateDataKey` (AES_256); unwrapping is `Decrypt`
//! pinned to the expected key; re-wrapping is `ReEncrypt` (the data key never
//! leaves KMS); rotation is `RotateKeyOnDemand`. The envelope's encryption
//! context is passed as the KMS encryption context, so CloudTrail shows what
//! each unwrap was for, and a wrong context fails inside KMS.
//!
//! IAM permissions on the key: `kms:GenerateDataKey`, `kms:Decrypt`,
//! `kms:ReEncryptFrom` and `kms:ReEncryptTo` (for re-wrapping), `kms:DescribeKey`,
//! `kms:ListKeyRotations` (describe), `kms:RotateKeyOnDemand` (rotate), and for
//! the rotation schedule (`Kms::rotation_schedule` and
//! `Kms::schedule_rotation`, which a clinic's scheduled rotation calls)
//! `kms:GetKeyRotationStatus`, `kms:EnableKeyRotation` and
//! `kms:DisableKeyRotation`. The rotation calls take a key id or ARN, never
//! an alias: a key named by alias is resolved with `DescribeKey` first, so a
//! key policy that grants them on a `kms:RequestAlias` condition does not
//! match them; grant them on the key itself.
//!
//! Against real AWS: leave [`AwsKmsConfig::endpoint`] unset, give the region
//! (or let the standard chain find it) and run with credentials that hold the
//! permissions above on the key (a key policy or an IAM policy with the key's
//! ARN as resource). Name keys by id, ARN or `alias/...`. The tests run the
//! same code against two KMS API servers on loopback (moto and LocalStack's
//! KMS, started by `scripts/test.sh`), with `endpoint` pointing at them.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyMetadata};
use zeroize::Zeroizing;

use super::{KeyDescription, Kms, KmsKeyId, RotationSchedule, WrappedKey};
use crate::context::EncryptionContext;
use crate::error::{Error, KmsError, Misuse};
use crate::key::DataKey;
use crate::suite::KEY_LEN;

/// Settings for [`AwsKms::connect`].
#[derive(Debug, Clone)]
pub struct AwsKmsConfig {
    /// Region, e.g. `eu-west-2`; `None` takes the standard AWS chain's.
    pub region: Option<String>,
    /// Endpoint URL for private endpoints or a local test server.
    pub endpoint: Option<String>,
    /// Time allowed for one attempt (connect + request).
    pub attempt_timeout: Duration,
    /// Time allowed for a whole call, retries included.
    pub operation_timeout: Duration,
    /// Attempts per call (1 = no retry). Retries use AWS's standard backoff.
    pub max_attempts: u32,
}

impl Default for AwsKmsConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            attempt_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            max_attempts: 3,
        }
    }
}

/// AWS KMS as a [`Kms`]. Credentials come from the standard AWS chain
/// (environment, profile, instance role...).
#[derive(Debug, Clone)]
pub struct AwsKms {
    client: Client,
}

impl AwsKms {
    /// Builds a client with explicit timeouts and retries.
    pub async fn connect(config: &AwsKmsConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.attempt_timeout)
                    .operation_attempt_timeout(config.attempt_timeout)
                    .operation_timeout(config.operation_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)));
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        Self::from_client(Client::new(&loader.load().await))
    }

    /// Wraps a client configured by the caller.
    pub fn from_client(client: Client) -> Self {
        Self { client }
    }
}

/// The rotation periods AWS KMS accepts, in days.
pub const ROTATION_PERIOD_DAYS: std::ops::RangeInclusive<u32> = 90..=2560;

fn is_alias(key: &KmsKeyId) -> bool {
    key.as_str().starts_with("alias/") || key.as_str().contains(":alias/")
}

impl AwsKms {
    /// The key an alias points at (its ARN): the rotation operations take
    /// a key id or ARN, never an alias. Other names pass through.
    async fn resolve(&self, key: &KmsKeyId) -> Result<String, Error> {
        if !is_alias(key) {
            return Ok(key.as_str().to_owned());
        }
        self.key_metadata(key)
            .await?
            .arn()
            .map(str::to_owned)
            .ok_or_else(|| missing("KeyMetadata.Arn"))
    }

    /// `DescribeKey`.
    async fn key_metadata(&self, key: &KmsKeyId) -> Result<KeyMetadata, Error> {
        self.client
            .describe_key()
            .key_id(key.as_str())
            .send()
            .await
            .map_err(|e| map_err(key, e))?
            .key_metadata
            .ok_or_else(|| missing("KeyMetadata"))
    }

    /// Turns on scheduled rotation (`EnableKeyRotation`); `period_days`
    /// `None` keeps the server's default (365 days on AWS). Periods outside
    /// [`ROTATION_PERIOD_DAYS`] are refused before any call.
    ///
    /// # Errors
    ///
    /// [`Misuse::RotationPeriod`]; otherwise as the other calls (unknown or
    /// unusable key, access denied, KMS unreachable).
    pub async fn enable_rotation(
        &self,
        key: &KmsKeyId,
        period_days: Option<u32>,
    ) -> Result<(), Error> {
        let period = match period_days {
            Some(d) if ROTATION_PERIOD_DAYS.contains(&d) => i32::try_from(d).ok(),
            Some(_) => return Err(Error::Misuse(Misuse::RotationPeriod)),
            None => None,
        };
        let target = self.resolve(key).await?;
        self.client
            .enable_key_rotation()
            .key_id(&target)
            .set_rotation_period_in_days(period)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(())
    }

    /// Turns off scheduled rotation (`DisableKeyRotation`); on-demand
    /// rotation ([`Kms::rotate`]) still works.
    ///
    /// # Errors
    ///
    /// Unknown or unusable key, access denied, KMS unreachable.
    pub async fn disable_rotation(&self, key: &KmsKeyId) -> Result<(), Error> {
        let target = self.resolve(key).await?;
        self.client
            .disable_key_rotation()
            .key_id(&target)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(())
    }

    /// Reads the rotation schedule (`GetKeyRotationStatus`).
    ///
    /// # Errors
    ///
    /// Unknown key, access denied, KMS unreachable.
    pub async fn rotation_status(&self, key: &KmsKeyId) -> Result<RotationSchedule, Error> {
        let target = self.resolve(key).await?;
        let out = self
            .client
            .get_key_rotation_status()
            .key_id(&target)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(RotationSchedule {
            enabled: out.key_rotation_enabled(),
            period_days: out
                .rotation_period_in_days()
                .and_then(|d| u32::try_from(d).ok()),
            next_rotation_unix: out.next_rotation_date().map(|d| d.secs()),
        })
    }
}

fn context_pairs(ctx: &EncryptionContext) -> std::collections::HashMap<String, String> {
    ctx.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Maps an SDK error to a typed one, keeping the cause: the operation's own
/// service error (code and message) for answers, the SDK error for transport
/// failures. Neither holds key material.
fn map_err<E, R>(key: &KmsKeyId, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let kms = match e {
        SdkError::ServiceError(se) => {
            let err = se.into_err();
            let code = err.code().map(str::to_owned);
            let message = err.message().map(str::to_owned);
            let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
            match code.as_deref() {
                Some("NotFoundException") => KmsError::KeyNotFound {
                    key: key.to_string(),
                    cause: Some(boxed),
                },
                Some(
                    "DisabledException" | "KMSInvalidStateException" | "KeyUnavailableException",
                ) => KmsError::KeyUnusable {
                    reason: format!(
                        "{key}: {}",
                        message.as_deref().unwrap_or("disabled or pending deletion")
                    ),
                    cause: Some(boxed),
                },
                Some("AccessDeniedException" | "IncorrectKeyException") => {
                    KmsError::AccessDenied { cause: Some(boxed) }
                }
                Some("ThrottlingException" | "LimitExceededException") => {
                    KmsError::Throttled { cause: Some(boxed) }
                }
                Some("InvalidCiphertextException") => KmsError::UnwrapFailed { cause: Some(boxed) },
                _ => KmsError::Other(boxed),
            }
        }
        e @ (SdkError::TimeoutError(_)
        | SdkError::DispatchFailure(_)
        | SdkError::ResponseError(_)) => KmsError::Unavailable(Box::new(e)),
        e => KmsError::Other(Box::new(e)),
    };
    Error::Kms(kms)
}

/// A response without the field the operation promises: the server is not
/// behaving like KMS.
fn missing(field: &'static str) -> Error {
    Error::Kms(KmsError::Other(Box::new(std::io::Error::other(format!(
        "KMS response without {field}"
    )))))
}

fn data_key(bytes: &[u8]) -> Result<DataKey, Error> {
    let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
        KmsError::Other(Box::new(std::io::Error::other(
            "KMS returned a data key that is not 32 bytes",
        )))
    })?;
    Ok(DataKey::from_bytes(Zeroizing::new(arr)))
}

#[async_trait]
impl Kms for AwsKms {
    async fn generate_data_key(
        &self,
        key: &KmsKeyId,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedKey), Error> {
        let out = self
            .client
            .generate_data_key()
            .key_id(key.as_str())
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context_pairs(ctx)))
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        let plain = out.plaintext().ok_or_else(|| missing("Plaintext"))?;
        let dek = data_key(plain.as_ref())?;
        let wrapped = out
            .ciphertext_blob()
            .ok_or_else(|| missing("CiphertextBlob"))?;
        Ok((dek, WrappedKey::new(wrapped.as_ref().to_vec())?))
    }

    async fn decrypt(
        &self,
        key: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, Error> {
        let out = self
            .client
            .decrypt()
            .key_id(key.as_str())
            .ciphertext_blob(Blob::new(wrapped.as_bytes().to_vec()))
            .set_encryption_context(Some(context_pairs(ctx)))
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        data_key(
            out.plaintext()
                .ok_or_else(|| missing("Plaintext"))?
                .as_ref(),
        )
    }

    async fn re_encrypt(
        &self,
        from: &KmsKeyId,
        wrapped: &WrappedKey,
        ctx: &EncryptionContext,
        to: &KmsKeyId,
    ) -> Result<WrappedKey, Error> {
        let pairs = context_pairs(ctx);
        let out = self
            .client
            .re_encrypt()
            .source_key_id(from.as_str())
            .ciphertext_blob(Blob::new(wrapped.as_bytes().to_vec()))
            .set_source_encryption_context(Some(pairs.clone()))
            .destination_key_id(to.as_str())
            .set_destination_encryption_context(Some(pairs))
            .send()
            .await
            .map_err(|e| map_err(from, e))?;
        WrappedKey::new(
            out.ciphertext_blob()
                .ok_or_else(|| missing("CiphertextBlob"))?
                .as_ref()
                .to_vec(),
        )
    }

    async fn rotate(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        let target = self.resolve(key).await?;
        self.client
            .rotate_key_on_demand()
            .key_id(&target)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        self.describe(key).await
    }

    async fn rotation_schedule(&self, key: &KmsKeyId) -> Result<Option<RotationSchedule>, Error> {
        self.rotation_status(key).await.map(Some)
    }

    async fn schedule_rotation(
        &self,
        key: &KmsKeyId,
        period_days: u32,
    ) -> Result<RotationSchedule, Error> {
        self.enable_rotation(key, Some(period_days)).await?;
        self.rotation_status(key).await
    }

    async fn describe(&self, key: &KmsKeyId) -> Result<KeyDescription, Error> {
        let meta = self.key_metadata(key).await?;
        let enabled = meta.enabled();
        // ListKeyRotations takes a key id or ARN, not an alias.
        let target = meta.arn().unwrap_or(key.as_str()).to_owned();
        // AWS keeps every backing key of a KMS key; versions here count them,
        // over every page. A typed failure (access denied, throttled, down...)
        // is reported; only an answer we cannot classify (a local server
        // without ListKeyRotations, such as LocalStack's community edition)
        // is read as "never rotated".
        let mut pages = self
            .client
            .list_key_rotations()
            .key_id(&target)
            .into_paginator()
            .items()
            .send();
        let mut rotations = 0u32;
        while let Some(item) = pages.next().await {
            match item.map_err(|e| map_err(key, e)) {
                Ok(_) => rotations = rotations.saturating_add(1),
                Err(Error::Kms(KmsError::Other(_))) if rotations == 0 => break,
                Err(e) => return Err(e),
            }
        }
        let current = rotations.saturating_add(1);
        Ok(KeyDescription {
            key: key.clone(),
            current_version: current,
            enabled_versions: if enabled {
                (1..=current).collect()
            } else {
                Vec::new()
            },
            destroyed_versions: Vec::new(),
            current_since: None,
        })
    }
}
