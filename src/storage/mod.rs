//! The app's storage account as the operator commands see it: the queues `referral-sync`
//! and `referral-sync-poison` and the timer watermark blobs that the Functions host reads and
//! writes through its bindings. A small REST client (SharedKey or an Entra token), because the
//! Azure SDK's storage crates 1.x take Entra tokens and SAS URLs only, and Azurite and most
//! `AzureWebJobsStorage` values are account-key connection strings.

mod account;
mod blob;
mod client;
mod queue;
mod shared_key;

pub use account::{
    AccountKey, DEVELOPMENT_ACCOUNT, IdentityCredential, SETTING, StorageAccount, StorageAuth,
    StorageConfigError,
};
pub use blob::BlobText;
pub use client::{STORAGE_SCOPE, StorageClient, StorageError, http_date, parse_http_date};
pub use queue::{
    MessageEncoding, MessageId, PeekedMessage, PopReceipt, PutReceipt, ReceivedMessage,
};

/// The queue ReferralSync reads (function.json of ReferralSync and ReferralWebhook).
pub const SYNC_QUEUE: &str = "referral-sync";
/// Where given-up messages go (the host's `<queue>-poison`, and both functions' `poison` output).
pub const POISON_QUEUE: &str = "referral-sync-poison";
/// The container of the timer watermarks (function.json of CrmChanges and ReferralReconcile).
pub const WATERMARK_CONTAINER: &str = "referral-connector";
