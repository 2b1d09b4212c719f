//! WatchTransactions across every group (DESIGN §11): the node a client
//! calls follows its own group's log and one node of each other group, and
//! merges the changes into one stream. A change's cursor there is a
//! [`Positions`]: where the watch stands in every group's log, so that a
//! client resuming with it misses nothing in any group and gets nothing
//! twice.
//!
//! Each other group is asked to mark its start (`mark_start`), so that its
//! position is known before its first change. A group none of whose nodes
//! answers, or whose node stops, is followed again with backoff from where
//! the watch stood in its log; the other groups' changes keep flowing
//! meanwhile. A group that says the watch fell behind (its buffer full)
//! ends the whole stream, as the node's own watch does, naming the cursor
//! to resume from.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use concord_proto::v1 as pb;
use futures::stream::{BoxStream, Stream, StreamExt};
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::super::convert;
use super::super::forward::{Forwarder, Hop};
use crate::model::{Change, Cursor};
use crate::runtime::watch::{WatchEnd, WatchStart};

/// The first character of a cursor of a watch of every group; a group's
/// own cursors start with a digit.
const MARK: char = '*';

/// How long a new watch of every group waits for each other group to mark
/// its start before it answers (a group that has not by then, or whose
/// nodes refuse the connection, is followed from whenever it answers).
const START_WAIT: Duration = Duration::from_secs(3);

/// At most this long between two tries to follow a group that does not
/// answer.
const RETRY_CAP: Duration = Duration::from_secs(10);

/// A watch of every group's position in each group's log: after which
/// change it stands (None: before the oldest change kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<String, Option<Cursor>>);

impl Positions {
    /// Reads a cursor a watch of every group gave; refuses a group's own
    /// cursor, saying how to use one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shown: String = text.chars().take(64).collect();
        let Some(body) = text.strip_prefix(MARK) else {
            return Err(format!(
                "{shown:?} is one group's cursor; a watch of every group resumes \
                 from a cursor such a watch gave (it starts with '{MARK}'), and one \
                 group's watch needs its group named in `group`"
            ));
        };
        let malformed = || format!("{shown:?} is not a cursor from a TransactionChange");
        let mut positions = BTreeMap::new();
        for entry in body.split(',').filter(|entry| !entry.is_empty()) {
            let (name, cursor) = entry.split_once('=').ok_or_else(malformed)?;
            let name = unescape(name).ok_or_else(malformed)?;
            let cursor = match cursor {
                "" => None,
                cursor => Some(cursor.parse::<Cursor>().map_err(|_| malformed())?),
            };
            if positions.insert(name, cursor).is_some() {
                return Err(malformed());
            }
        }
        Ok(Self(positions))
    }

    /// The cursor a client resumes with: `*` then `group=epoch-seq`
    /// entries (`group=` before the oldest change), the names escaped.
    pub fn encode(&self) -> String {
        let mut out = String::from(MARK);
        for (i, (name, cursor)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            escape(name, &mut out);
            out.push('=');
            if let Some(cursor) = cursor {
                let _ = write!(out, "{cursor}");
            }
        }
        out
    }

    pub fn get(&self, group: &str) -> Option<Option<Cursor>> {
        self.0.get(group).copied()
    }

    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn set(&mut self, group: &str, cursor: Option<Cursor>) {
        self.0.insert(group.to_owned(), cursor);
    }
}

/// Group names are any text; in a cursor (an ASCII header value) every
/// byte but letters, digits, `-`, `_` and `.` is written `%XX`.
fn escape(name: &str, out: &mut String) {
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

fn unescape(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.bytes();
    while let Some(byte) = rest.next() {
        match byte {
            b'%' => {
                let high = char::from(rest.next()?).to_digit(16)?;
                let low = char::from(rest.next()?).to_digit(16)?;
                bytes.push((high * 16 + low) as u8);
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') => bytes.push(b),
            _ => return None,
        }
    }
    String::from_utf8(bytes)
        .ok()
        .filter(|name| !name.is_empty())
}

/// What one group's stream gives the merge.
pub enum Event {
    /// Where the group's stream starts (its `mark_start` answer).
    Start(Option<Cursor>),
    /// A change, with its cursor in the group's log.
    Change(pb::TransactionChange, Cursor),
    /// None of the group's nodes answered; it is tried again after a
    /// backoff (a new watch need not wait for it to start).
    Unanswered,
    /// The group's stream ended the watch: the status, and where the group
    /// stood when it did (for this node's own watch, past changes it
    /// filtered out).
    End(Status, Option<Cursor>),
}

pub type GroupStream = Pin<Box<dyn Stream<Item = (String, Event)> + Send>>;

/// This node's own group's watch, as the merge reads it.
pub fn own_group(
    group: String,
    changes: tokio::sync::mpsc::Receiver<Result<Change, WatchEnd>>,
) -> GroupStream {
    Box::pin(futures::stream::unfold(
        Some((group, changes)),
        |state| async move {
            let (group, mut changes) = state?;
            let event = match changes.recv().await {
                Some(Ok(change)) => {
                    let cursor = change.cursor;
                    Event::Change(convert::change(change), cursor)
                }
                Some(Err(end)) => {
                    let resume = end.resume();
                    Event::End(convert::watch_end(end), resume)
                }
                // The watch's task ended without a word: the node is
                // stopping and the end did not fit the full buffer. The
                // whole stream ends with it (the other groups' too), or
                // the server's stop would wait on it.
                None => Event::End(Status::unavailable("the node is shutting down"), None),
            };
            let ended = matches!(event, Event::End(..));
            let item = (group.clone(), event);
            Some((item, (!ended).then_some((group, changes))))
        },
    ))
}

/// How to reach another group, for as long as the watch lasts.
pub struct OtherGroup {
    pub forward: Arc<Forwarder>,
    pub name: String,
    pub nodes: Vec<String>,
    /// The client's filters; cursor and start are set per try.
    pub request: pb::WatchTransactionsRequest,
    /// The headers of a call to another group (`Hop::to_group_stream`).
    pub metadata: MetadataMap,
}

/// One other group's changes: followed from `start`, and again from where
/// it stood each time its stream breaks, with capped exponential backoff
/// and jitter between tries.
pub fn other_group(group: OtherGroup, start: WatchStart) -> GroupStream {
    struct Following {
        group: OtherGroup,
        /// Where to follow from next: after this change, or from the oldest
        /// kept (`Some(None)`), or from the next (None: not known yet).
        at: Option<Option<Cursor>>,
        stream: Option<tonic::Streaming<pb::TransactionChange>>,
        backoff: Option<backon::ExponentialBackoff>,
        done: bool,
    }
    let at = match start {
        WatchStart::After(cursor) => Some(Some(cursor)),
        WatchStart::Oldest => Some(None),
        WatchStart::Next => None,
    };
    let following = Following {
        group,
        at,
        stream: None,
        backoff: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(following, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            let Some(stream) = f.stream.as_mut() else {
                if let Some(backoff) = f.backoff.as_mut() {
                    tokio::time::sleep(backoff.next().unwrap_or(RETRY_CAP)).await;
                }
                match follow(&f.group, f.at).await {
                    Ok(stream) => f.stream = Some(stream),
                    Err(status) if retried(&status) => {
                        tracing::warn!(group = %f.group.name, code = ?status.code(),
                            reason = status.message(),
                            "watching every group: this group is not answering; trying again");
                        f.backoff.get_or_insert_with(backoff);
                        return Some(((f.group.name.clone(), Event::Unanswered), f));
                    }
                    Err(status) => {
                        f.done = true;
                        let at = f.at.flatten();
                        return Some(((f.group.name.clone(), Event::End(status, at)), f));
                    }
                }
                continue;
            };
            let event = match stream.next().await {
                Some(Ok(change)) if change.transaction_id.is_empty() => {
                    let start = match change.cursor.as_str() {
                        "" => None,
                        cursor => match cursor.parse::<Cursor>() {
                            Ok(cursor) => Some(cursor),
                            Err(_) => {
                                f.done = true;
                                let status = bad_cursor(&f.group.name, cursor);
                                return Some(((f.group.name.clone(), Event::End(status, None)), f));
                            }
                        },
                    };
                    f.backoff = None;
                    if f.at.is_none() {
                        f.at = Some(start);
                    }
                    Event::Start(start)
                }
                Some(Ok(change)) => match change.cursor.parse::<Cursor>() {
                    Ok(cursor) => {
                        f.at = Some(Some(cursor));
                        Event::Change(change, cursor)
                    }
                    Err(_) => {
                        f.done = true;
                        let status = bad_cursor(&f.group.name, &change.cursor);
                        Event::End(status, f.at.flatten())
                    }
                },
                Some(Err(status)) if retried(&status) => {
                    tracing::warn!(group = %f.group.name, code = ?status.code(),
                        reason = status.message(),
                        "watching every group: this group's stream broke; following it again");
                    f.stream = None;
                    f.backoff.get_or_insert_with(backoff);
                    continue;
                }
                Some(Err(status)) => {
                    f.done = true;
                    Event::End(status, f.at.flatten())
                }
                // A stream ends only with a status; if one ends without,
                // it is followed again.
                None => {
                    f.stream = None;
                    f.backoff.get_or_insert_with(backoff);
                    continue;
                }
            };
            return Some(((f.group.name.clone(), event), f));
        }
    }))
}

/// Waits (at most [`START_WAIT`]) for another group's stream to mark its
/// start, so that a watch of the next change sees every change that group
/// records after the call, as it does this node's. The stream is given
/// back with where it starts (`Some(None)`: from the oldest change kept),
/// for the watch's first cursor; or, when its first event was something
/// else, with that event back in front. A group none of whose nodes
/// answers is not waited for.
pub async fn started(mut stream: GroupStream) -> (GroupStream, Option<Option<Cursor>>) {
    match tokio::time::timeout(START_WAIT, stream.next()).await {
        Ok(Some((_, Event::Start(start)))) => (stream, Some(start)),
        Ok(Some(first)) => (Box::pin(futures::stream::iter([first]).chain(stream)), None),
        Ok(None) | Err(_) => (stream, None),
    }
}

fn backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(RETRY_CAP)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A group that cannot be reached or whose node stops is followed again;
/// any other answer (a filter it refuses, a watch that fell behind, a
/// refused token) ends the watch.
fn retried(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

fn bad_cursor(group: &str, cursor: &str) -> Status {
    let shown: String = cursor.chars().take(64).collect();
    Status::internal(format!(
        "a node of group {group:?} sent the cursor {shown:?}, which is not one"
    ))
}

/// Opens `group`'s watch from `at`, asking for its start mark.
async fn follow(
    group: &OtherGroup,
    at: Option<Option<Cursor>>,
) -> Result<tonic::Streaming<pb::TransactionChange>, Status> {
    let mut request = group.request.clone();
    request.group.clone_from(&group.name);
    request.mark_start = true;
    (request.cursor, request.from_oldest) = match at {
        Some(Some(cursor)) => (cursor.to_string(), false),
        Some(None) => (String::new(), true),
        None => (String::new(), false),
    };
    let owners = group.forward.group(&group.nodes)?;
    let stream = owners
        .call(|mut node| {
            let call = tonic::Request::from_parts(
                group.metadata.clone(),
                tonic::Extensions::default(),
                request.clone(),
            );
            async move { node.watch_transactions(call).await }
        })
        .await?;
    Ok(stream.into_inner())
}

/// The merged stream: each change with the watch's position in every
/// group as its cursor; the first end of a group's stream ends it, saying
/// where to resume.
pub fn merge(
    groups: Vec<GroupStream>,
    positions: Positions,
) -> BoxStream<'static, Result<pb::TransactionChange, Status>> {
    let merged = futures::stream::select_all(groups);
    Box::pin(futures::stream::unfold(
        Some((merged, positions)),
        |state| async move {
            let (mut merged, mut positions) = state?;
            loop {
                let (group, event) = merged.next().await?;
                match event {
                    Event::Start(start) => {
                        if positions.get(&group).is_none() {
                            positions.set(&group, start);
                        }
                    }
                    Event::Unanswered => {}
                    Event::Change(mut change, cursor) => {
                        positions.set(&group, Some(cursor));
                        change.cursor = positions.encode();
                        return Some((Ok(change), Some((merged, positions))));
                    }
                    Event::End(status, at) => {
                        if let Some(at) = at {
                            positions.set(&group, Some(at));
                        }
                        return Some((Err(ended(&group, &status, &positions)), None));
                    }
                }
            }
        },
    ))
}

/// The status ending a watch of every group: the group's, saying the
/// cursor of the whole watch to resume from (message and trailer).
fn ended(group: &str, status: &Status, positions: &Positions) -> Status {
    let resume = positions.encode();
    // The group's own message names its own cursor; keep what went wrong.
    let what = status
        .message()
        .split("; reconnect with")
        .next()
        .unwrap_or_default();
    let mut ended = Status::new(
        status.code(),
        format!("group {group:?}: {what}; reconnect with cursor \"{resume}\" to miss nothing"),
    );
    if let Ok(value) = resume.parse() {
        ended
            .metadata_mut()
            .insert(concord_proto::metadata::RESUME_CURSOR, value);
    }
    ended
}

/// The start of each group's stream of a watch of every group resumed from
/// `positions` (a group it does not name, added since, from its oldest
/// change kept), or begun afresh from `start`.
pub fn start_of(group: &str, resumed: Option<&Positions>, start: WatchStart) -> WatchStart {
    match resumed {
        Some(positions) => match positions.get(group) {
            Some(Some(cursor)) => WatchStart::After(cursor),
            Some(None) | None => WatchStart::Oldest,
        },
        None => start,
    }
}

/// The metadata of the calls to other groups (credentials, the client's
/// deadline if any), taken once for every retry.
pub fn metadata(hop: &Hop) -> MetadataMap {
    hop.to_group_stream(()).into_parts().0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(epoch: u64, seq: u64) -> Cursor {
        Cursor { epoch, seq }
    }

    #[test]
    fn a_cursor_of_every_group_reads_back_as_written() {
        let mut positions = Positions::default();
        positions.set("g1", Some(cursor(0, 17)));
        positions.set("eu west, 2", Some(cursor(3, 4)));
        positions.set("empty", None);
        let text = positions.encode();
        assert_eq!(text, "*empty=,eu%20west%2C%202=3-4,g1=0-17");
        assert_eq!(Positions::parse(&text), Ok(positions));
        assert_eq!(Positions::parse("*"), Ok(Positions::default()));
    }

    #[test]
    fn a_bad_cursor_is_refused_saying_why() {
        let one = Positions::parse("0-17").expect_err("one group's cursor");
        assert!(one.contains("one group's cursor"), "{one}");
        for bad in [
            "*g1",
            "*g1=x",
            "*g1=1-2,g1=1-3",
            "*=1-2",
            "*g%2=1-2",
            "*g 1=1-2",
            "*g1=1-2-3",
        ] {
            let error = Positions::parse(bad).expect_err(bad);
            assert!(error.contains("is not a cursor"), "{bad}: {error}");
        }
    }

    fn change(group: &str, seq: u64) -> (String, Event) {
        (
            group.to_owned(),
            Event::Change(
                pb::TransactionChange {
                    transaction_id: format!("{group}-{seq}"),
                    cursor: format!("0-{seq}"),
                    ..Default::default()
                },
                cursor(0, seq),
            ),
        )
    }

    #[tokio::test]
    async fn the_merged_cursor_moves_each_group_on_its_own() {
        let g1: GroupStream = Box::pin(futures::stream::iter(vec![
            change("g1", 5),
            change("g1", 6),
        ]));
        let g2: GroupStream = Box::pin(futures::stream::iter(vec![
            ("g2".to_owned(), Event::Start(Some(cursor(0, 40)))),
            change("g2", 41),
        ]));
        let mut start = Positions::default();
        start.set("g1", Some(cursor(0, 4)));
        let changes: Vec<pb::TransactionChange> = merge(vec![g1, g2], start)
            .map(|item| item.expect("a change"))
            .collect()
            .await;
        let mut seen: Vec<&str> = changes.iter().map(|c| c.transaction_id.as_str()).collect();
        seen.sort_unstable();
        assert_eq!(seen, ["g1-5", "g1-6", "g2-41"]);
        // Each change's cursor moves its own group only; the last holds
        // both groups' last changes.
        let mut g1_before = Some(cursor(0, 4));
        for change in &changes {
            let at = Positions::parse(&change.cursor).expect("a cursor");
            if change.transaction_id.starts_with("g1") {
                assert!(at.get("g1") > Some(g1_before));
                g1_before = at.get("g1").flatten();
            }
        }
        let last = Positions::parse(&changes[2].cursor).expect("a cursor");
        assert_eq!(last.get("g1"), Some(Some(cursor(0, 6))));
        assert_eq!(last.get("g2"), Some(Some(cursor(0, 41))));
    }

    #[tokio::test]
    async fn a_group_that_ends_the_watch_names_the_cursor_of_every_group() {
        let g2: GroupStream = Box::pin(futures::stream::iter(vec![
            ("g2".to_owned(), Event::Start(Some(cursor(0, 40)))),
            change("g2", 41),
            (
                "g2".to_owned(),
                Event::End(
                    Status::resource_exhausted("fell behind; reconnect with cursor \"0-41\""),
                    None,
                ),
            ),
        ]));
        let mut start = Positions::default();
        start.set("g1", Some(cursor(0, 4)));
        let items: Vec<_> = merge(vec![g2], start).collect().await;
        assert_eq!(items.len(), 2);
        let status = items[1].as_ref().expect_err("the end");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("group \"g2\": fell behind; reconnect with cursor \"*"),
            "{}",
            status.message()
        );
        let resume = status
            .metadata()
            .get(concord_proto::metadata::RESUME_CURSOR)
            .and_then(|v| v.to_str().ok())
            .expect("a resume cursor");
        let resume = Positions::parse(resume).expect("parses");
        assert_eq!(resume.get("g1"), Some(Some(cursor(0, 4))));
        assert_eq!(resume.get("g2"), Some(Some(cursor(0, 41))));
    }
}
