//! Calls this node made that wait for their RESPONSE, by request id. Sharded by id (ids are
//! consecutive, so calls spread evenly): callers on different threads rarely meet on one lock.

use crate::error::Error;
use crate::protocol::packet::Response;
use crate::transport::ReplySender;
use rustc_hash::FxHashMap as HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Number of independently locked shards.
const SHARDS: usize = 16;

/// One call waiting for its answer.
pub(super) struct PendingCall {
    /// The node the request went to: only it may answer.
    pub(super) node_id: Arc<str>,
    pub(super) reply: ReplySender,
}

/// The waiting calls.
pub(super) struct PendingCalls {
    shards: [Mutex<HashMap<u64, PendingCall>>; SHARDS],
}

impl Default for PendingCalls {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl PendingCalls {
    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, PendingCall>> {
        self.shards[id as usize % SHARDS]
            .lock()
            .expect("pending shard lock")
    }

    /// Waits for the answer to request `id`.
    pub(super) fn insert(&self, id: u64, call: PendingCall) {
        self.shard(id).insert(id, call);
    }

    /// Stops waiting for request `id` (answered, timed out or abandoned).
    pub(super) fn remove(&self, id: u64) {
        self.shard(id).remove(&id);
    }

    /// Hands `response` to its caller if `sender` is the node the request went to.
    pub(super) fn complete(&self, sender: &str, response: Response) {
        let id = response.id;
        let mut shard = self.shard(id);
        match shard.get(&id) {
            Some(call) if &*call.node_id == sender => {
                if let Some(call) = shard.remove(&id) {
                    drop(shard);
                    call.reply.send(Ok(response));
                }
            }
            Some(_) => {
                tracing::warn!(peer = %sender, id, "response from the wrong node ignored")
            }
            None => tracing::debug!(peer = %sender, id, "response to an unknown or finished call"),
        }
    }

    /// Fails every call waiting on `node_id` with `error`.
    pub(super) fn fail_node(&self, node_id: &str, error: &Error) {
        for shard in &self.shards {
            let failed: Vec<PendingCall> = {
                let mut calls = shard.lock().expect("pending shard lock");
                let ids: Vec<u64> = calls
                    .iter()
                    .filter(|(_, c)| &*c.node_id == node_id)
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter().filter_map(|id| calls.remove(id)).collect()
            };
            for call in failed {
                call.reply.send(Err(error.clone().with_node(node_id)));
            }
        }
    }

    /// Fails every waiting call with `error`.
    pub(super) fn fail_all(&self, error: &Error) {
        for shard in &self.shards {
            let calls: Vec<PendingCall> = shard
                .lock()
                .expect("pending shard lock")
                .drain()
                .map(|(_, c)| c)
                .collect();
            for call in calls {
                call.reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::transport::PendingReply;

    fn wait(calls: &PendingCalls, id: u64, node: &str) -> PendingReply {
        let (reply, pending) = PendingReply::channel();
        calls.insert(
            id,
            PendingCall {
                node_id: node.into(),
                reply,
            },
        );
        pending
    }

    #[tokio::test]
    async fn only_the_called_node_answers_and_a_lost_node_fails_its_calls() {
        let calls = PendingCalls::default();
        let (mut a, b) = (wait(&calls, 1, "a"), wait(&calls, 2, "b"));
        let c = wait(&calls, 18, "a"); // same shard as 2
        calls.complete(
            "b",
            Response {
                id: 1,
                ..Response::default()
            },
        );
        assert!(!a.is_ready(), "b cannot answer a's call");
        calls.complete(
            "b",
            Response {
                id: 2,
                ..Response::default()
            },
        );
        assert_eq!(b.await.unwrap().id, 2);
        calls.fail_node("a", &Error::rejected("gone"));
        assert_eq!(a.await.unwrap_err().kind(), ErrorKind::Rejected);
        assert_eq!(c.await.unwrap_err().node(), Some("a"));
    }
}
