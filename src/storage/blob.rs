//! Blob service operations on small text blobs: the timer watermarks the host writes through
//! its blob output bindings, read back by `status` and `check`.

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
        let create = self.url(true, container, &[("restype", "container")]);
        match self
            .send("creating the container", Method::PUT, create, None, &[])
            .await
        {
            Ok(_) => {}
            Err(StorageError::Status { status: 409, .. }) => {}
            Err(e) => return Err(e),
        }
        let url = self.url(true, &format!("{container}/{blob}"), &[]);
        self.send(
            "writing a blob",
            Method::PUT,
            url,
            Some(("application/json", text.to_owned())),
            &[("x-ms-blob-type", "BlockBlob".to_owned())],
        )
        .await
        .map(|_| ())
    }
}
