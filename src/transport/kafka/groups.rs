//! Balanced events over Kafka consumer groups: the cluster, not the emitter's registry, picks
//! the member of a group that handles each event.
//!
//! Every subscription — a group and the pattern its services listen with — has a topic,
//! `phx.<ns>.event.<group>.<pattern>`, with several partitions (12 unless
//! [`group_partitions`](super::KafkaTransportBuilder::group_partitions) says otherwise). A node
//! whose services listen in a group joins that group's consumer group,
//! `phx.<ns>.group.<group>`, subscribed to the topics of its patterns, and Kafka gives each
//! partition to one member. An emitter whose registry picks a Kafka-reached node for a group
//! publishes the event to a partition of the topic of the pattern that node listens with, the
//! partitions in turn, so the group's members share the events and each is handled once. When a
//! member leaves or stops answering (its session times out), its partitions move to the others
//! and what was not yet read there is read by them: balanced events wait out a member's crash
//! instead of being lost.
//!
//! A service's start returns once the node holds its share of the group (or after the session
//! timeout, if the cluster is slow to assign it: what is published meanwhile waits in the
//! topic), so the cluster sees the service only when its events can reach it. A group that the
//! node no longer listens in — and every group when the broker stops — is left at once, and its
//! partitions go to the remaining members.
//!
//! Records are signed by their member and bound to their partition (the signature covers the
//! topic and partition), so nobody can move one elsewhere; replays are refused per member and
//! partition. Offsets are committed every second and when partitions move, so a group's event
//! is handled once unless a member crashes between reading it and committing (at least once).

use super::{Records, Shared, client_config, create_topics, kafka_error, read_records};
use crate::error::Result;
use crate::protocol::packet::{EventInfo, Packet};
use crate::transport::bus::token;
use crate::transport::{Direction, LinkKind};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Kafka's limit on a topic name's length.
const MAX_TOPIC_NAME: usize = 249;
/// Group topics whose partition counts an emitter keeps; beyond, the cache starts over.
const MAX_KNOWN_TOPICS: usize = 4096;

/// The patterns this node's services listen with, by group.
pub(super) type Subscriptions = BTreeMap<String, BTreeSet<String>>;

/// Sorts subscriptions by group.
pub(super) fn by_group(subscriptions: &[EventInfo]) -> Subscriptions {
    let mut groups = Subscriptions::new();
    for subscription in subscriptions {
        groups
            .entry(subscription.group.clone())
            .or_default()
            .insert(subscription.name.clone());
    }
    groups
}

/// The topic of a group's events listened to with `pattern`, under `base`.
pub(super) fn event_topic(base: &str, group: &str, pattern: &str) -> String {
    let topic = format!("{base}.event.{}.{}", token(group), token(pattern));
    if topic.len() <= MAX_TOPIC_NAME {
        return topic;
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{group}\0{pattern}").as_bytes(),
    );
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}.event.h{hex}")
}

/// The consumer group of a group's members, under `base`.
fn group_id(base: &str, group: &str) -> String {
    format!("{base}.group.{}", token(group))
}

/// What a signed group record is bound to: its topic and partition.
pub(super) fn partition_subject(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// Publishes `packet` (an EVENT for `listening.group`) to the next partition of the topic of
/// `listening.name`, signed for that partition.
pub(super) async fn emit(
    shared: &Shared,
    producer: &FutureProducer<super::Watch>,
    listening: &EventInfo,
    packet: &Packet,
) -> Result<()> {
    let topic = event_topic(&shared.topics.base, &listening.group, &listening.name);
    let partitions = partitions_of(shared, producer, &topic).await?;
    let turn = shared.next_partition.fetch_add(1, Ordering::Relaxed);
    let partition = (turn % u64::from(partitions)) as i32;
    let frame = shared.ctx.codec.encode(packet)?;
    let _in_order = shared.in_order.lock().await;
    let signed = shared
        .envelopes
        .sign(&partition_subject(&topic, partition), &frame)?;
    shared
        .ctx
        .traffic
        .record("*", LinkKind::Kafka, Direction::Sent, signed.len());
    shared.enqueue(producer, &topic, Some(partition), &signed)
}

/// How many partitions a group topic has, asked of the cluster once.
async fn partitions_of(
    shared: &Shared,
    producer: &FutureProducer<super::Watch>,
    topic: &str,
) -> Result<u32> {
    if let Some(&known) = shared
        .partitions
        .lock()
        .expect("partitions lock")
        .get(topic)
    {
        return Ok(known);
    }
    let client = producer.clone();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(5))
    })
    .await
    .map_err(|e| kafka_error("metadata lookup failed", e))?
    .map_err(|e| kafka_error("cannot read a group topic's metadata", e))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as u32);
    if partitions == 0 {
        return Err(kafka_error(
            "no such group topic",
            format!("{topic} (its members create it when they join)"),
        ));
    }
    let mut known = shared.partitions.lock().expect("partitions lock");
    if known.len() >= MAX_KNOWN_TOPICS {
        known.clear();
    }
    known.insert(topic.to_owned(), partitions);
    Ok(partitions)
}

/// This node's memberships in balanced groups, while connected.
#[derive(Default)]
pub(super) struct Members(BTreeMap<String, Member>);

/// This node in one group: its consumer, the topics it is subscribed to and the task reading
/// them.
struct Member {
    consumer: Arc<StreamConsumer<Rebalances>>,
    topics: BTreeSet<String>,
    reader: JoinHandle<()>,
    /// Counts the assignments the cluster has given this member.
    assigned: watch::Receiver<u64>,
}

/// Hears when the cluster assigns a member its partitions.
struct Rebalances(watch::Sender<u64>);

impl rdkafka::ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::debug!(partitions = partitions.count(), "Kafka group assignment");
            self.0.send_modify(|n| *n += 1);
        }
    }
}

impl Members {
    /// Joins the groups of `wanted` this node is not in (creating their topics), moves a
    /// membership whose patterns changed to its new topics, and leaves the groups no longer
    /// wanted; then waits, at most the session timeout, until the cluster has assigned every
    /// joined or moved member its partitions.
    pub(super) async fn reconcile(
        &mut self,
        shared: &Arc<Shared>,
        wanted: &Subscriptions,
    ) -> Result<()> {
        let gone: Vec<String> = self
            .0
            .keys()
            .filter(|group| !wanted.contains_key(*group))
            .cloned()
            .collect();
        for group in gone {
            if let Some(member) = self.0.remove(&group) {
                member.leave().await;
            }
        }
        let base = &shared.topics.base;
        let mut waits = Vec::new();
        for (group, patterns) in wanted {
            let topics: BTreeSet<String> = patterns
                .iter()
                .map(|pattern| event_topic(base, group, pattern))
                .collect();
            if self.0.get(group).is_some_and(|m| m.topics == topics) {
                continue;
            }
            let new: Vec<String> = topics.iter().cloned().collect();
            create_topics(&shared.config, &new, shared.config.group_partitions).await?;
            let (member, before) = match self.0.remove(group) {
                Some(mut member) => {
                    let before = *member.assigned.borrow();
                    member.subscribe(&topics)?;
                    (member, before)
                }
                None => (Member::join(shared, group, topics)?, 0),
            };
            let mut assigned = member.assigned.clone();
            waits.push(async move { assigned.wait_for(|n| *n > before).await.is_ok() });
            self.0.insert(group.clone(), member);
        }
        let all_assigned = futures_util::future::join_all(waits);
        if tokio::time::timeout(shared.config.group_session_timeout, all_assigned)
            .await
            .is_err()
        {
            tracing::warn!(
                "the Kafka cluster has not assigned this node its event groups yet: their events wait in their topics meanwhile"
            );
        }
        Ok(())
    }

    /// Leaves every group.
    pub(super) async fn leave_all(&mut self) {
        let members = std::mem::take(&mut self.0);
        futures_util::future::join_all(members.into_values().map(Member::leave)).await;
    }
}

impl Member {
    /// A consumer in `group`'s consumer group, subscribed to `topics`, and its reader.
    fn join(shared: &Arc<Shared>, group: &str, topics: BTreeSet<String>) -> Result<Self> {
        let config = &shared.config;
        let node = token(&shared.ctx.node_id);
        let session = config.group_session_timeout.as_millis();
        let (assignments, assigned) = watch::channel(0);
        let consumer: StreamConsumer<Rebalances> = client_config(
            config,
            &[
                ("group.id", group_id(&shared.topics.base, group)),
                ("client.id", format!("phalanx-member-{node}")),
                ("enable.auto.commit", "true".into()),
                ("auto.commit.interval.ms", "1000".into()),
                // A group's first member reads what was published before it was assigned.
                ("auto.offset.reset", "earliest".into()),
                ("session.timeout.ms", session.to_string()),
                ("heartbeat.interval.ms", (session / 3).max(100).to_string()),
                ("fetch.wait.max.ms", "10".into()),
                ("fetch.error.backoff.ms", "50".into()),
                ("queued.max.messages.kbytes", "16384".into()),
            ],
        )
        .create_with_context(Rebalances(assignments))
        .map_err(|e| kafka_error("cannot create a group consumer", e))?;
        let consumer = Arc::new(consumer);
        let mut member = Self {
            reader: tokio::spawn(read_records(
                consumer.clone(),
                shared.ctx.clone(),
                shared.envelopes.clone(),
                Records::Group(group.into()),
            )),
            consumer,
            topics: BTreeSet::new(),
            assigned,
        };
        member.subscribe(&topics)?;
        Ok(member)
    }

    /// Subscribes to `topics` (a rebalance follows).
    fn subscribe(&mut self, topics: &BTreeSet<String>) -> Result<()> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&names)
            .map_err(|e| kafka_error("cannot subscribe to the group topics", e))?;
        self.topics = topics.clone();
        Ok(())
    }

    /// Stops reading and leaves the group (committing what was read), off the runtime's
    /// threads: librdkafka's close blocks.
    async fn leave(self) {
        self.reader.abort();
        let _ = self.reader.await;
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_topics_are_per_group_and_pattern_and_stay_within_kafka_names() {
        assert_eq!(
            event_topic("phx.shop", "mailer", "user-created"),
            "phx.shop.event.mailer.user-created"
        );
        // `.` and `*` are escaped, so no group reaches into another's topics.
        assert_eq!(
            event_topic("phx.shop", "a", "b.*"),
            "phx.shop.event.a.x622e2a"
        );
        let long = event_topic("phx.shop", "g", &"order.".repeat(40));
        assert!(long.len() <= MAX_TOPIC_NAME && long.starts_with("phx.shop.event.h"));
        assert_eq!(group_id("phx.shop", "mailer"), "phx.shop.group.mailer");
        assert_eq!(partition_subject("t", 3), "t:3");
    }

    #[test]
    fn subscriptions_are_sorted_by_group() {
        let on = |name: &str, group: &str| EventInfo {
            name: name.into(),
            group: group.into(),
        };
        let groups = by_group(&[on("a.*", "g"), on("b", "g"), on("a.*", "h")]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups["g"].len(), 2);
    }
}
