//! The shared feed: a Redis Stream every node's primary reads in full (no consumer group:
//! every node sees every interaction, as every ORS node sees every call on a shared
//! T-Server). Entries are flat field lists, so a producer in any language can write one:
//!
//! ```text
//! XADD ors:interactions * id call-1 kind new src call.scxml data {"ani":"5550100"}
//! XADD ors:interactions * id call-1 kind event event released data {}
//! ```
//!
//! Each node keeps its read position in the same Redis (`<key>:pos:<node>`), so a backup
//! that takes its node over goes on where the primary stopped.
//!
//! Pulled interactions (the multimedia model) go to a second stream, `<key>:pulled`, read
//! through the consumer group [`GROUP`]: each entry is given to one node, acknowledged
//! once its session's start is durable, and taken over by another node (XAUTOCLAIM) when
//! its node died before acknowledging it.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::streams::XReadResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the feed carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// The interaction's id (a call's connection id, a chat's id, ...).
    pub id: String,
    /// What happened to it.
    #[serde(flatten)]
    pub kind: Kind,
}

/// What happened to an interaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// It arrived: start a session of `src` with `data` for it.
    New {
        /// The document to run.
        src: String,
        /// Values for the document's `<data>` items of the same ids.
        #[serde(default)]
        data: Value,
    },
    /// Something happened to it later (released, transferred, data updated): the event
    /// `event` for its session, wherever that runs.
    Event {
        /// The event's name.
        event: String,
        /// `_event.data`.
        #[serde(default)]
        data: Value,
    },
}

/// What can go wrong with the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Redis refused or could not be reached.
    #[error("the interaction feed: {0}")]
    Redis(#[from] fred::error::Error),
    /// An entry that is not an interaction.
    #[error("feed entry {entry}: {reason}")]
    Malformed {
        /// The entry's stream id.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The feed's Redis stream.
pub struct Feed {
    /// For XREAD with BLOCK, which holds its connection while it waits.
    reader: Client,
    /// For XREADGROUP with BLOCK: on the reader's connection it would hold back the
    /// shared feed's reads (and they its) for the whole block.
    puller: Client,
    /// For everything else.
    writer: Client,
    key: String,
    /// The stream of pulled interactions (`<key>:pulled`), read through a consumer group.
    pulled: String,
}

/// A stream entry as Redis gives it: its id and its fields.
type RawEntry = (String, HashMap<String, String>);

/// A stream entry read: its id, and its fields as an interaction (or why they are not one).
pub type Entry = (String, Result<Interaction, FeedError>);

/// The consumer group every node's primary pulls from (each node a consumer by its id).
pub const GROUP: &str = "ors";

async fn connect(url: &str) -> Result<Client, FeedError> {
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

impl Feed {
    /// Connects to the stream `key` at `url`: `redis://host:port`, or a Redis Cluster as
    /// `redis-cluster://host:port?node=host:port&node=...` (each command names one key).
    pub async fn connect(url: &str, key: &str) -> Result<Feed, FeedError> {
        Ok(Feed {
            reader: connect(url).await?,
            puller: connect(url).await?,
            writer: connect(url).await?,
            key: key.to_string(),
            pulled: format!("{key}:pulled"),
        })
    }

    /// Appends an interaction to the shared feed (every node sees it), or with `pulled`
    /// to the queue that one node pulls it from; returns its entry id.
    pub async fn append(&self, it: &Interaction, pulled: bool) -> Result<String, FeedError> {
        let (kind, what_key, what, data) = match &it.kind {
            Kind::New { src, data } => ("new", "src", src, data),
            Kind::Event { event, data } => ("event", "event", event, data),
        };
        let fields: Vec<(&str, String)> = vec![
            ("id", it.id.clone()),
            ("kind", kind.to_string()),
            (what_key, what.clone()),
            ("data", data.to_string()),
        ];
        let key = if pulled { &self.pulled } else { &self.key };
        Ok(self.writer.xadd(key, false, None, "*", fields).await?)
    }

    /// Creates the pull queue and its consumer group if they do not exist.
    pub async fn ensure_group(&self) -> Result<(), FeedError> {
        let made: Result<(), fred::error::Error> = self
            .writer
            .xgroup_create(&self.pulled, GROUP, "0", true)
            .await;
        match made {
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Pulls up to `count` entries for `consumer`: new ones (`from` = `>`), or those it
    /// was given and has not acknowledged (`from` = `0`, after a restart).
    pub async fn pull(
        &self,
        consumer: &str,
        from: &str,
        count: u64,
        block_ms: u64,
    ) -> Result<Vec<Entry>, FeedError> {
        let raw: fred::types::Value = self
            .puller
            .xreadgroup(
                GROUP,
                consumer,
                Some(count),
                Some(block_ms),
                false,
                &self.pulled,
                from,
            )
            .await?;
        entries(raw)
    }

    /// Takes over, for `consumer`, entries another consumer was given at least
    /// `min_idle_ms` ago and never acknowledged (its node died): up to `count`, from
    /// `start`; returns where to go on (`0-0`: the end) and the entries.
    pub async fn reclaim(
        &self,
        consumer: &str,
        min_idle_ms: u64,
        start: &str,
        count: u64,
    ) -> Result<(String, Vec<Entry>), FeedError> {
        let (next, values): (String, Vec<RawEntry>) = self
            .writer
            .xautoclaim_values(
                &self.pulled,
                GROUP,
                consumer,
                min_idle_ms,
                start,
                Some(count),
                false,
            )
            .await?;
        Ok((next, values.into_iter().map(parsed).collect()))
    }

    /// Acknowledges pulled entries: their sessions exist.
    pub async fn ack(&self, entries: &[String]) -> Result<(), FeedError> {
        if entries.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .writer
            .xack(&self.pulled, GROUP, entries.to_vec())
            .await?;
        Ok(())
    }

    /// Up to `count` entries after `after`, waiting up to `block_ms` for one.
    pub async fn read(
        &self,
        after: &str,
        count: u64,
        block_ms: u64,
    ) -> Result<Vec<Entry>, FeedError> {
        let raw: fred::types::Value = self
            .reader
            .xread(Some(count), Some(block_ms), &self.key, after)
            .await?;
        entries(raw)
    }

    /// Where node `node` stopped reading.
    pub async fn position(&self, node: &str) -> Result<Option<String>, FeedError> {
        Ok(self.writer.get(self.position_key(node)).await?)
    }

    /// Records where node `node` stopped reading.
    pub async fn save_position(&self, node: &str, entry: &str) -> Result<(), FeedError> {
        let _: () = self
            .writer
            .set(self.position_key(node), entry, None, None, false)
            .await?;
        Ok(())
    }

    fn position_key(&self, node: &str) -> String {
        format!("{}:pos:{node}", self.key)
    }
}

/// The entries of an XREAD or XREADGROUP answer, parsed.
fn entries(raw: fred::types::Value) -> Result<Vec<Entry>, FeedError> {
    // Nothing arrived in time (or the stream does not exist yet): nil, not a map.
    if raw.is_null() {
        return Ok(Vec::new());
    }
    let resp: XReadResponse<String, String, String, String> = raw.into_xread_response()?;
    Ok(resp.into_values().flatten().map(parsed).collect())
}

/// An entry, with its fields read as an interaction.
fn parsed((entry, fields): RawEntry) -> Entry {
    let it = parse(&entry, &fields);
    (entry, it)
}

/// An entry's fields as an interaction.
fn parse(entry: &str, f: &HashMap<String, String>) -> Result<Interaction, FeedError> {
    let bad = |reason: &str| FeedError::Malformed {
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let field = |name: &str| f.get(name).filter(|v| !v.is_empty());
    let id = field("id").ok_or_else(|| bad("no id"))?.clone();
    let data = match field("data") {
        None => Value::Null,
        Some(d) => serde_json::from_str(d).map_err(|e| bad(&format!("data is not JSON: {e}")))?,
    };
    let kind = match field("kind").map(String::as_str).unwrap_or("new") {
        "new" => Kind::New {
            src: field("src")
                .ok_or_else(|| bad("a new interaction needs src"))?
                .clone(),
            data,
        },
        "event" => Kind::Event {
            event: field("event")
                .ok_or_else(|| bad("an interaction event needs event"))?
                .clone(),
            data,
        },
        other => return Err(bad(&format!("unknown kind {other:?} (new, event)"))),
    };
    Ok(Interaction { id, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_entries_and_refuses_malformed_ones() {
        let it = parse(
            "1-0",
            &fields(&[("id", "c1"), ("src", "call.scxml"), ("data", r#"{"a":1}"#)]),
        )
        .unwrap();
        assert_eq!(
            it.kind,
            Kind::New {
                src: "call.scxml".into(),
                data: serde_json::json!({ "a": 1 })
            }
        );
        let ev = parse(
            "2-0",
            &fields(&[("id", "c1"), ("kind", "event"), ("event", "released")]),
        );
        assert!(matches!(ev.unwrap().kind, Kind::Event { event, .. } if event == "released"));
        for bad in [
            fields(&[("src", "x")]),
            fields(&[("id", "c1")]),
            fields(&[("id", "c1"), ("kind", "event")]),
            fields(&[("id", "c1"), ("kind", "other"), ("src", "x")]),
            fields(&[("id", "c1"), ("src", "x"), ("data", "{not json")]),
        ] {
            assert!(parse("3-0", &bad).is_err(), "{bad:?}");
        }
    }
}
