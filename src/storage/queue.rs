//! Queue service operations (REST, XML bodies): depth, peek, receive with a visibility
//! timeout, put, update (visibility and content) and delete by pop receipt; and the message
//! text encoding of the Functions queue binding (`messageEncoding`, base64 by default).

use base64::Engine;
use reqwest::Method;
use time::OffsetDateTime;

use super::client::{StorageClient, StorageError, parse_http_date};

/// How the Functions host encodes queue message text (host.json
/// `extensions.queues.messageEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageEncoding {
    /// Base64 of the UTF-8 text (the host's default).
    #[default]
    Base64,
    /// The text itself.
    None,
}

impl MessageEncoding {
    /// Parses host.json's value (`base64` or `none`, any casing).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "base64" => Some(Self::Base64),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// The `MessageText` for `text`.
    pub fn encode(self, text: &str) -> String {
        match self {
            Self::Base64 => base64::engine::general_purpose::STANDARD.encode(text),
            Self::None => text.to_owned(),
        }
    }

    /// The text of a `MessageText` written either way: base64 that decodes to UTF-8 is
    /// decoded, anything else is taken as it is. Returns the text and how it was written.
    pub fn decode(message_text: &str) -> (String, Self) {
        let trimmed = message_text.trim();
        if !trimmed.is_empty()
            && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(trimmed)
            && let Ok(text) = String::from_utf8(bytes)
        {
            return (text, Self::Base64);
        }
        (message_text.to_owned(), Self::None)
    }
}

/// A message id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// An id as the service gave it (or as an operator typed it).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as the service gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pop receipt of a received (or updated, or just put) message: needed to update or
/// delete it, and invalid once someone else receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopReceipt(String);

/// A message seen with Peek Messages (not taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedMessage {
    /// `MessageId`.
    pub id: MessageId,
    /// `MessageText` (as stored: base64 when the writer encoded it).
    pub text: String,
    /// `DequeueCount`.
    pub dequeue_count: u32,
    /// `InsertionTime`.
    pub inserted: Option<OffsetDateTime>,
}

/// A message taken with Get Messages: invisible to others until its visibility timeout ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// `MessageId`.
    pub id: MessageId,
    /// `PopReceipt`.
    pub pop_receipt: PopReceipt,
    /// `MessageText` (as stored).
    pub text: String,
    /// `DequeueCount`.
    pub dequeue_count: u32,
    /// `InsertionTime`.
    pub inserted: Option<OffsetDateTime>,
}

/// What Put Message answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    /// The new message's id.
    pub id: MessageId,
}

impl StorageClient {
    /// Creates a queue; an existing one is fine.
    pub async fn create_queue(&self, queue: &str) -> Result<(), StorageError> {
        match self
            .send(
                "creating the queue",
                Method::PUT,
                self.url(false, queue, &[]),
                None,
                &[],
            )
            .await
        {
            Ok(_) | Err(StorageError::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The approximate number of messages (visible or not); `None` when the queue does not
    /// exist. Also returns the service's clock.
    pub async fn queue_depth(
        &self,
        queue: &str,
    ) -> Result<(Option<u64>, Option<OffsetDateTime>), StorageError> {
        let answer = match self
            .send(
                "reading the queue depth",
                Method::GET,
                self.url(false, queue, &[("comp", "metadata")]),
                None,
                &[],
            )
            .await
        {
            Ok(answer) => answer,
            Err(StorageError::NotFound { .. }) => return Ok((None, None)),
            Err(e) => return Err(e),
        };
        let count = answer
            .header("x-ms-approximate-messages-count")
            .and_then(|v| v.parse().ok())
            .ok_or(StorageError::Unexpected {
                what: "reading the queue depth",
                detail: "no x-ms-approximate-messages-count header".into(),
            })?;
        Ok((Some(count), answer.date))
    }

    /// Up to `count` (1-32) visible messages, without taking them; none when the queue does
    /// not exist.
    pub async fn peek(&self, queue: &str, count: u32) -> Result<Vec<PeekedMessage>, StorageError> {
        let count = count.clamp(1, 32).to_string();
        let url = self.url(
            false,
            &format!("{queue}/messages"),
            &[("numofmessages", &count), ("peekonly", "true")],
        );
        match self
            .send("peeking at messages", Method::GET, url, None, &[])
            .await
        {
            Ok(answer) => Ok(parse_messages(&answer.body)
                .into_iter()
                .map(|m| PeekedMessage {
                    id: m.id,
                    text: m.text,
                    dequeue_count: m.dequeue_count,
                    inserted: m.inserted,
                })
                .collect()),
            Err(StorageError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Takes up to `count` (1-32) messages, invisible to others for `visibility_seconds`;
    /// none when the queue does not exist. Also returns the service's clock.
    pub async fn receive(
        &self,
        queue: &str,
        count: u32,
        visibility_seconds: u32,
    ) -> Result<(Vec<ReceivedMessage>, Option<OffsetDateTime>), StorageError> {
        let count = count.clamp(1, 32).to_string();
        let visibility = visibility_seconds.to_string();
        let url = self.url(
            false,
            &format!("{queue}/messages"),
            &[
                ("numofmessages", &count),
                ("visibilitytimeout", &visibility),
            ],
        );
        match self
            .send("receiving messages", Method::GET, url, None, &[])
            .await
        {
            Ok(answer) => {
                let messages = parse_messages(&answer.body)
                    .into_iter()
                    .map(|m| ReceivedMessage {
                        id: m.id,
                        pop_receipt: PopReceipt(m.pop_receipt),
                        text: m.text,
                        dequeue_count: m.dequeue_count,
                        inserted: m.inserted,
                    })
                    .collect();
                Ok((messages, answer.date))
            }
            Err(StorageError::NotFound { .. }) => Ok((Vec::new(), None)),
            Err(e) => Err(e),
        }
    }

    /// Puts a message whose `MessageText` is `message_text` (already encoded).
    pub async fn put_message(
        &self,
        queue: &str,
        message_text: &str,
    ) -> Result<PutReceipt, StorageError> {
        let answer = self
            .send(
                "putting a message",
                Method::POST,
                self.url(false, &format!("{queue}/messages"), &[]),
                Some(("application/xml; charset=utf-8", message_body(message_text))),
                &[],
            )
            .await?;
        let id = element(&answer.body, "MessageId").ok_or(StorageError::Unexpected {
            what: "putting a message",
            detail: "no MessageId in the answer".into(),
        })?;
        Ok(PutReceipt { id: MessageId(id) })
    }

    /// Updates a taken message: visible again after `visibility_seconds`, with new text when
    /// given. Returns the new pop receipt (the old one is no longer valid).
    pub async fn update_message(
        &self,
        queue: &str,
        message: &ReceivedMessage,
        visibility_seconds: u32,
        new_text: Option<&str>,
    ) -> Result<PopReceipt, StorageError> {
        let visibility = visibility_seconds.to_string();
        let url = self.url(
            false,
            &format!("{queue}/messages/{}", message.id),
            &[
                ("popreceipt", &message.pop_receipt.0),
                ("visibilitytimeout", &visibility),
            ],
        );
        let body = new_text.map(|t| ("application/xml; charset=utf-8", message_body(t)));
        let answer = self
            .send("updating a message", Method::PUT, url, body, &[])
            .await?;
        answer
            .header("x-ms-popreceipt")
            .map(|r| PopReceipt(r.to_owned()))
            .ok_or(StorageError::Unexpected {
                what: "updating a message",
                detail: "no x-ms-popreceipt header".into(),
            })
    }

    /// Deletes a taken message with its (latest) pop receipt.
    pub async fn delete_message(
        &self,
        queue: &str,
        id: &MessageId,
        pop_receipt: &PopReceipt,
    ) -> Result<(), StorageError> {
        let url = self.url(
            false,
            &format!("{queue}/messages/{id}"),
            &[("popreceipt", &pop_receipt.0)],
        );
        self.send("deleting a message", Method::DELETE, url, None, &[])
            .await
            .map(|_| ())
    }
}

fn message_body(message_text: &str) -> String {
    format!(
        "<QueueMessage><MessageText>{}</MessageText></QueueMessage>",
        xml_escape(message_text)
    )
}

struct RawMessage {
    id: MessageId,
    pop_receipt: String,
    text: String,
    dequeue_count: u32,
    inserted: Option<OffsetDateTime>,
}

fn parse_messages(xml: &str) -> Vec<RawMessage> {
    xml.split("<QueueMessage>")
        .skip(1)
        .filter_map(|part| {
            let get = |name| element(part, name).unwrap_or_default();
            let id = element(part, "MessageId")?;
            Some(RawMessage {
                id: MessageId(id),
                pop_receipt: get("PopReceipt"),
                text: get("MessageText"),
                dequeue_count: get("DequeueCount").parse().unwrap_or(0),
                inserted: parse_http_date(&get("InsertionTime")),
            })
        })
        .collect()
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
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
    out
}

fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The unescaped text of the first `<name>…</name>` in `xml`.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml_unescape(&xml[start..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_read_in_either_encoding() {
        let json = r#"{"referralId":"r1","error":"x"}"#;
        let cases = [
            (
                MessageEncoding::Base64.encode(json),
                json,
                MessageEncoding::Base64,
            ),
            (json.to_owned(), json, MessageEncoding::None),
            (
                "c5fbb3b6-be74-4795-9fb5-4324c73fed37".to_owned(),
                "c5fbb3b6-be74-4795-9fb5-4324c73fed37",
                MessageEncoding::None,
            ),
            // Base64 of bytes that are not UTF-8 is taken as text.
            ("//79".to_owned(), "//79", MessageEncoding::None),
            (String::new(), "", MessageEncoding::None),
        ];
        for (stored, text, encoding) in cases {
            assert_eq!(
                MessageEncoding::decode(&stored),
                (text.to_owned(), encoding),
                "{stored}"
            );
        }
        assert_eq!(
            MessageEncoding::parse("Base64"),
            Some(MessageEncoding::Base64)
        );
        assert_eq!(MessageEncoding::parse("none"), Some(MessageEncoding::None));
        assert_eq!(MessageEncoding::parse("utf8"), None);
    }

    #[test]
    fn message_lists_parse_and_unescape() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList><QueueMessage>\
            <MessageId>m1</MessageId><InsertionTime>Mon, 23 Nov 2026 08:00:00 GMT</InsertionTime>\
            <PopReceipt>p+1/x==</PopReceipt><TimeNextVisible>t</TimeNextVisible>\
            <DequeueCount>3</DequeueCount><MessageText>a &amp; &lt;b&gt; &#x41;</MessageText>\
            </QueueMessage><QueueMessage><MessageId>m2</MessageId><MessageText></MessageText>\
            </QueueMessage></QueueMessagesList>";
        let messages = parse_messages(xml);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].id.as_str(), "m1");
        assert_eq!(messages[0].pop_receipt, "p+1/x==");
        assert_eq!(messages[0].dequeue_count, 3);
        assert_eq!(messages[0].text, "a & <b> A");
        assert_eq!(
            messages[0].inserted.map(|t| t.unix_timestamp()),
            parse_http_date("Mon, 23 Nov 2026 08:00:00 GMT").map(|t| t.unix_timestamp())
        );
        assert_eq!(messages[1].text, "");
        assert_eq!(xml_unescape(&xml_escape("<&'\">")), "<&'\">");
        assert_eq!(
            message_body("a<b"),
            "<QueueMessage><MessageText>a&lt;b</MessageText></QueueMessage>"
        );
    }
}
