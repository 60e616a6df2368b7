//! Blob service operations on small text blobs: the timer watermarks the host writes through
//! its blob output bindings, read back by `status` and `check`; and conditional writes (create
//! only if absent, replace only if unchanged) for claims only one writer can win.

use reqwest::Method;
use time::OffsetDateTime;

use super::client::{StorageClient, StorageError, parse_http_date};

/// A text blob and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobText {
    /// The content as UTF-8 (invalid bytes replaced).
    pub text: String,
    /// `Last-Modified`.
    pub last_modified: Option<OffsetDateTime>,
    /// `ETag`, for [`StorageClient::replace_blob_if_unchanged`].
    pub etag: Option<String>,
}

impl StorageClient {
    /// The blob's text; `None` when the blob or its container does not exist.
    pub async fn blob_text(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<Option<BlobText>, StorageError> {
        let url = self.url(true, &format!("{container}/{blob}"), &[]);
        match self
            .send("reading a blob", Method::GET, url, None, &[])
            .await
        {
            Ok(answer) => Ok(Some(BlobText {
                last_modified: answer.header("last-modified").and_then(parse_http_date),
                etag: answer.header("etag").map(str::to_owned),
                text: answer.body,
            })),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a block blob with `text` (unconditionally, as the host's output binding does),
    /// creating the container when it is missing.
    pub async fn put_blob_text(
        &self,
        container: &str,
        blob: &str,
        text: &str,
    ) -> Result<(), StorageError> {
        self.ensure_container(container).await?;
        self.write_blob(container, blob, text, None)
            .await
            .map(|_| ())
    }

    /// Creates the blob with `text` only if it does not exist; `false` when it does (another
    /// writer created it first). Creates the container when it is missing.
    pub async fn create_blob_if_absent(
        &self,
        container: &str,
        blob: &str,
        text: &str,
    ) -> Result<bool, StorageError> {
        self.ensure_container(container).await?;
        self.write_blob(
            container,
            blob,
            text,
            Some(("If-None-Match", "*".to_owned())),
        )
        .await
    }

    /// Replaces the blob's content only while it still has `etag`; `false` when another
    /// writer changed (or deleted) it since it was read.
    pub async fn replace_blob_if_unchanged(
        &self,
        container: &str,
        blob: &str,
        text: &str,
        etag: &str,
    ) -> Result<bool, StorageError> {
        match self
            .write_blob(container, blob, text, Some(("If-Match", etag.to_owned())))
            .await
        {
            Err(StorageError::NotFound { .. }) => Ok(false),
            other => other,
        }
    }

    async fn ensure_container(&self, container: &str) -> Result<(), StorageError> {
        let create = self.url(true, container, &[("restype", "container")]);
        match self
            .send("creating the container", Method::PUT, create, None, &[])
            .await
        {
            Ok(_) | Err(StorageError::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `true` when written; `false` when the condition failed (409 or 412).
    async fn write_blob(
        &self,
        container: &str,
        blob: &str,
        text: &str,
        condition: Option<(&'static str, String)>,
    ) -> Result<bool, StorageError> {
        let url = self.url(true, &format!("{container}/{blob}"), &[]);
        let mut headers = vec![("x-ms-blob-type", "BlockBlob".to_owned())];
        headers.extend(condition);
        match self
            .send(
                "writing a blob",
                Method::PUT,
                url,
                Some(("application/json", text.to_owned())),
                &headers,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::Status {
                status: 409 | 412, ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
