//! Round trips at the protocol level: a PING answered by the peer's PONG from its link reader —
//! no handler, no registry pick — so the time is the link's, not a service's.

use super::Broker;
use crate::error::{Error, Result};
use crate::protocol::packet::{Packet, PacketBody, Ping, Pong};
use rustc_hash::FxHashMap as HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A ping waiting for its PONG: the node it was sent to, and who waits.
type Waiting = (Arc<str>, oneshot::Sender<()>);

/// Pings waiting for their PONG, by probe id.
#[derive(Debug, Default)]
pub(crate) struct PendingPings(Mutex<HashMap<u64, Waiting>>);

/// Forgets a ping however its wait ends.
struct Forget<'a>(&'a PendingPings, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.0.lock().expect("pings lock").remove(&self.1);
    }
}

impl Broker {
    /// The round trip to `node_id` over its link: a PING and the PONG its reader answers.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use std::time::Duration;
    /// let broker = phalanx::Broker::builder().start().await?;
    /// // Only other nodes can be pinged.
    /// assert!(broker.ping("nobody", Duration::from_millis(100)).await.is_err());
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self, node_id: &str, timeout: Duration) -> Result<Duration> {
        let (transport, _) = self.transport_for(node_id)?;
        let id = self.next_id();
        let (answered, answer) = oneshot::channel();
        let pending = &self.inner.pings;
        pending
            .0
            .lock()
            .expect("pings lock")
            .insert(id, (Arc::from(node_id), answered));
        let _forget = Forget(pending, id);
        let started = Instant::now();
        let ping = Ping {
            id,
            time_us: super::dispatch::unix_micros(),
        };
        let packet = Packet::new(self.inner.node_id.clone(), PacketBody::Ping(ping));
        transport.send(node_id, &packet).await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(_)) => Err(Error::rejected(format!("node '{node_id}' went away"))),
            Err(_) => Err(Error::timeout("ping").with_node(node_id)),
        }
    }

    /// A PONG from `sender`: completes the ping it answers, if `sender` is who was pinged.
    pub(crate) fn on_pong(&self, sender: &str, pong: &Pong) {
        let mut pending = self.inner.pings.0.lock().expect("pings lock");
        if pending
            .get(&pong.id)
            .is_some_and(|(node, _)| &**node == sender)
            && let Some((_, answered)) = pending.remove(&pong.id)
        {
            let _ = answered.send(());
        }
    }
}
