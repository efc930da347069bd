//! The service registry: every node of the cluster, its services, and the endpoints that serve
//! each action and event.
//!
//! Remote nodes enter with their `INFO` packet and leave when their link drops, their heartbeat
//! lease expires or they say `DISCONNECT`; local services enter when they start. Picking an
//! endpoint prefers this node's own (a direct call), then nodes on the same host, then the
//! rest, and balances within that tier with the broker's [`Strategy`] (or the action's own).

mod circuit;
mod endpoint_stats;
mod pattern;
mod strategy;

pub use circuit::BreakerState;
pub(crate) use endpoint_stats::{EndpointStats, InFlightCall};
pub use pattern::pattern_matches;
pub use strategy::{Candidate, Strategy};

use crate::cluster::{ActionInfo, EventInfo};
use crate::handler::{ActionFn, EventFn};
use crate::protocol::packet::{Info, ServiceInfo};
use crate::transport::LinkKind;
use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A node as the registry knows it.
#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    pub(crate) info: Info,
    pub(crate) link: LinkKind,
    pub(crate) available: bool,
    /// Milliseconds since the registry's epoch when the node was last heard from.
    last_seen_ms: Arc<AtomicU64>,
    /// Requests from this node being served here right now.
    serving: Arc<AtomicUsize>,
    /// Event handlers running here right now for events from this node.
    handling_events: Arc<AtomicUsize>,
    pub(crate) in_flight: u32,
    pub(crate) cpu: Option<f32>,
}

/// A handler of this broker with its service's full name and what the broker keeps with the
/// service (`L`: its own middleware; the registry only stores it).
#[derive(Clone)]
pub(crate) struct LocalHandler<L> {
    pub(crate) handler: ActionFn,
    pub(crate) service: Arc<str>,
    pub(crate) layers: L,
}

/// Where a call goes, borrowed from the registry.
pub(crate) enum Target<'r, L> {
    /// A handler of this broker: call it directly.
    Local(&'r Arc<LocalHandler<L>>),
    /// Another node, and what this node has measured of the endpoint.
    Remote(&'r Arc<str>, &'r Arc<EndpointStats>),
}

/// Whether an endpoint (action, node) may be chosen now: the middleware's veto, handed down.
pub(crate) type Admission = dyn Fn(&str, &str) -> bool + Send + Sync;

/// One of [`Registry::pick`]'s filters over the endpoints of an action.
type EndpointFilter<'f, L> = dyn Fn(&&ActionEndpoint<L>) -> bool + 'f;

/// What a call asks of [`Registry::pick`].
pub(crate) struct Pick<'a> {
    pub(crate) action: &'a str,
    /// Only this node.
    pub(crate) node_id: Option<&'a str>,
    /// Nodes to skip when another can serve.
    pub(crate) avoid: &'a [Arc<str>],
    /// Whether an endpoint (action, node) may be chosen now (an open circuit may not); `None`
    /// when nothing vetoes.
    pub(crate) admits: Option<&'a Admission>,
    /// The shard key of the call, for [`Strategy::Shard`].
    pub(crate) shard_key: Option<&'a str>,
}

struct ActionEndpoint<L> {
    node_id: Arc<str>,
    /// Its service declares the action safe to run twice.
    idempotent: bool,
    /// Shared, so taking it out of the registry for a call costs one reference count.
    handler: Option<Arc<LocalHandler<L>>>,
    stats: Arc<EndpointStats>,
}

struct ActionSet<L> {
    endpoints: Vec<ActionEndpoint<L>>,
    /// How many of the endpoints are this node's own.
    local: usize,
    counter: AtomicUsize,
}

impl<L> Default for ActionSet<L> {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            local: 0,
            counter: AtomicUsize::new(0),
        }
    }
}

struct EventEndpoint<L> {
    pattern: String,
    group: String,
    node_id: Arc<str>,
    handler: Option<LocalListener<L>>,
}

/// What changed when an INFO was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeChange {
    /// First INFO from this node (or first since it went down).
    Joined,
    /// A newer INFO replaced the node's services.
    Updated,
    /// A stale or repeated INFO.
    Unchanged,
}

/// An event handler of this node with its service's full name and middleware.
#[derive(Clone)]
pub(crate) struct LocalListener<L> {
    pub(crate) handler: EventFn,
    pub(crate) service: Arc<str>,
    pub(crate) layers: L,
}

/// Event handlers of this node chosen for one event.
pub(crate) type LocalListeners<L> = Vec<LocalListener<L>>;

/// The registry of one broker; `L` is what the broker keeps with each local service.
pub(crate) struct Registry<L> {
    local_id: Arc<str>,
    strategy: Strategy,
    nodes: HashMap<Arc<str>, NodeEntry>,
    actions: HashMap<String, ActionSet<L>>,
    events: Vec<EventEndpoint<L>>,
    local_services: Vec<ServiceInfo>,
    local_host: String,
    /// Strategies chosen for single actions.
    overrides: HashMap<String, Strategy>,
    event_counter: AtomicUsize,
    epoch: Instant,
    /// Buses whose connection is down: their nodes' leases do not run.
    buses_down: Vec<LinkKind>,
}

impl<L: Clone> Registry<L> {
    pub(crate) fn new(
        local_id: Arc<str>,
        local_host: String,
        strategy: Strategy,
        overrides: HashMap<String, Strategy>,
    ) -> Self {
        Self {
            local_id,
            strategy,
            nodes: HashMap::default(),
            actions: HashMap::default(),
            events: Vec::new(),
            local_services: Vec::new(),
            local_host,
            overrides,
            event_counter: AtomicUsize::new(0),
            epoch: Instant::now(),
            buses_down: Vec::new(),
        }
    }

    /// Registers a service of this broker with its handlers.
    pub(crate) fn add_local_service(
        &mut self,
        info: ServiceInfo,
        actions: Vec<(String, ActionFn)>,
        events: Vec<(String, String, EventFn)>,
        layers: L,
    ) {
        let service: Arc<str> = info.full_name.as_str().into();
        for (name, handler) in actions {
            let idempotent = info.actions.iter().any(|a| a.name == name && a.idempotent);
            let set = self.actions.entry(name).or_default();
            set.local += 1;
            set.endpoints.push(ActionEndpoint {
                node_id: self.local_id.clone(),
                idempotent,
                handler: Some(Arc::new(LocalHandler {
                    handler,
                    service: service.clone(),
                    layers: layers.clone(),
                })),
                stats: Arc::default(),
            });
        }
        for (pattern, group, handler) in events {
            self.events.push(EventEndpoint {
                pattern,
                group,
                node_id: self.local_id.clone(),
                handler: Some(LocalListener {
                    handler,
                    service: service.clone(),
                    layers: layers.clone(),
                }),
            });
        }
        self.local_services.push(info);
    }

    /// Services of this broker, as announced in INFO.
    pub(crate) fn local_services(&self) -> &[ServiceInfo] {
        &self.local_services
    }

    /// Applies an INFO from `node_id`, replacing what the node had announced before.
    pub(crate) fn apply_info(
        &mut self,
        node_id: &Arc<str>,
        info: Info,
        link: LinkKind,
    ) -> NodeChange {
        let change = match self.nodes.get_mut(node_id) {
            Some(known)
                if known.available
                    && known.info.instance_id == info.instance_id
                    && known.info.seq >= info.seq =>
            {
                // The same INFO over a faster link (shared memory) moves the node to it.
                known.link = known.link.min(link);
                return NodeChange::Unchanged;
            }
            Some(known) if known.available => NodeChange::Updated,
            _ => NodeChange::Joined,
        };
        self.remove_endpoints(node_id);
        for service in &info.services {
            for action in &service.actions {
                self.actions
                    .entry(action.name.clone())
                    .or_default()
                    .endpoints
                    .push(ActionEndpoint {
                        node_id: node_id.clone(),
                        idempotent: action.idempotent,
                        handler: None,
                        stats: Arc::default(),
                    });
            }
            for event in &service.events {
                self.events.push(EventEndpoint {
                    pattern: event.name.clone(),
                    group: event.group.clone(),
                    node_id: node_id.clone(),
                    handler: None,
                });
            }
        }
        let link = match self.nodes.get(node_id) {
            Some(known) if known.available => known.link.min(link),
            _ => link,
        };
        let (serving, handling_events) = self
            .nodes
            .get(node_id)
            .map(|known| (known.serving.clone(), known.handling_events.clone()))
            .unwrap_or_default();
        self.nodes.insert(
            node_id.clone(),
            NodeEntry {
                info,
                link,
                available: true,
                last_seen_ms: Arc::new(AtomicU64::new(self.now_ms())),
                serving,
                handling_events,
                in_flight: 0,
                cpu: None,
            },
        );
        change
    }

    /// Marks `node_id` unavailable and drops its endpoints. Returns whether it was available.
    pub(crate) fn node_down(&mut self, node_id: &str) -> bool {
        let was_available = match self.nodes.get_mut(node_id) {
            Some(node) => std::mem::replace(&mut node.available, false),
            None => false,
        };
        self.remove_endpoints(node_id);
        was_available
    }

    fn remove_endpoints(&mut self, node_id: &str) {
        self.actions.retain(|_, set| {
            set.endpoints.retain(|ep| &*ep.node_id != node_id);
            !set.endpoints.is_empty()
        });
        self.events.retain(|ep| &*ep.node_id != node_id);
    }

    /// The known node `node_id`, available or not.
    /// Whether every endpoint of `action` declares it safe to run twice.
    pub(crate) fn is_idempotent(&self, action: &str) -> bool {
        self.actions.get(action).is_some_and(|set| {
            !set.endpoints.is_empty() && set.endpoints.iter().all(|e| e.idempotent)
        })
    }

    /// How many other nodes the registry holds (down ones included, until pruned).
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn node(&self, node_id: &str) -> Option<&NodeEntry> {
        self.nodes.get(node_id)
    }

    /// Records traffic from an available node (heartbeat lease); returns its INFO seq, or `None`
    /// when the node is unknown or was declared down.
    pub(crate) fn touch(&self, node_id: &str) -> Option<u64> {
        let node = self.nodes.get(node_id).filter(|n| n.available)?;
        node.last_seen_ms.store(self.now_ms(), Ordering::Relaxed);
        Some(node.info.seq)
    }

    /// Records traffic from an available node and returns the count of its requests being
    /// served here.
    pub(crate) fn serving(&self, node_id: &str) -> Option<Arc<AtomicUsize>> {
        self.touch(node_id)?;
        self.nodes.get(node_id).map(|n| n.serving.clone())
    }

    /// Records traffic from an available node and returns the count of event handlers running
    /// here for its events.
    pub(crate) fn handling_events(&self, node_id: &str) -> Option<Arc<AtomicUsize>> {
        self.touch(node_id)?;
        self.nodes.get(node_id).map(|n| n.handling_events.clone())
    }

    /// Records a heartbeat's load figures along with the traffic.
    pub(crate) fn record_load(
        &mut self,
        node_id: &str,
        in_flight: u32,
        cpu: Option<f32>,
    ) -> Option<u64> {
        let seq = self.touch(node_id)?;
        if let Some(node) = self.nodes.get_mut(node_id) {
            node.in_flight = in_flight;
            // A peer's figure is a claim: only a real percentage takes part in `Cpu` picks.
            node.cpu = cpu.filter(|c| c.is_finite()).map(|c| c.clamp(0.0, 100.0));
        }
        Some(seq)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records whether the bus of link kind `link` is down.
    pub(crate) fn set_bus_down(&mut self, link: LinkKind, down: bool) {
        self.buses_down.retain(|l| *l != link);
        if down {
            self.buses_down.push(link);
        }
    }

    /// Removes the nodes that have been down since before `cutoff` and returns their ids: a
    /// node gone for that long is forgotten (it is a new member if it ever comes back).
    pub(crate) fn prune_down(&mut self, cutoff: Instant) -> Vec<Arc<str>> {
        let epoch = self.epoch;
        let gone: Vec<Arc<str>> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                !n.available
                    && epoch + Duration::from_millis(n.last_seen_ms.load(Ordering::Relaxed))
                        < cutoff
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.nodes.remove(id);
        }
        gone
    }

    /// Available remote nodes silent since before `cutoff`.
    pub(crate) fn expired(&self, cutoff: Instant) -> Vec<Arc<str>> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                let last_seen =
                    self.epoch + Duration::from_millis(n.last_seen_ms.load(Ordering::Relaxed));
                n.available && last_seen < cutoff && !self.buses_down.contains(&n.link)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every known remote node.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&Arc<str>, &NodeEntry)> {
        self.nodes.iter()
    }

    /// The strategy for `action`: its own if one was chosen, else the broker's.
    pub(crate) fn strategy_for(&self, action: &str) -> &Strategy {
        if self.overrides.is_empty() {
            return &self.strategy;
        }
        self.overrides.get(action).unwrap_or(&self.strategy)
    }

    /// Chooses the endpoint for a call: this node's own if it has one, then one on this host,
    /// then any, skipping avoided and vetoed endpoints while others remain.
    pub(crate) fn pick(&self, pick: &Pick<'_>) -> Option<Target<'_, L>> {
        let set = self.actions.get(pick.action)?;
        if let Some(wanted) = pick.node_id {
            let ep = set.endpoints.iter().find(|ep| &*ep.node_id == wanted)?;
            return Some(target(ep));
        }
        let strategy = self.strategy_for(pick.action);
        let simple = pick.avoid.is_empty() && pick.admits.is_none();
        if simple && set.local > 0 {
            let i = if set.local == 1 {
                0
            } else {
                let turn = set.counter.fetch_add(1, Ordering::Relaxed);
                strategy.pick_nth(set.local, turn)
            };
            return set
                .endpoints
                .iter()
                .filter(|ep| ep.handler.is_some())
                .nth(i)
                .map(target);
        }
        let admitted = |ep: &&ActionEndpoint<L>| {
            pick.admits
                .is_none_or(|admits| admits(pick.action, &ep.node_id))
        };
        let fresh = |ep: &&ActionEndpoint<L>| !pick.avoid.contains(&ep.node_id);
        // Preference tiers; within the first non-empty one the strategy decides.
        let tiers: [&EndpointFilter<'_, L>; 3] = [
            &|ep| ep.handler.is_some(),
            &|ep| self.same_host(&ep.node_id),
            &|_| true,
        ];
        for filters in [
            &[&fresh as &EndpointFilter<'_, L>, &admitted][..],
            &[&admitted],
        ] {
            for tier in tiers {
                // On the stack for the usual handful of replicas: a pick allocates nothing.
                let chosen: SmallVec<[&ActionEndpoint<L>; 8]> = set
                    .endpoints
                    .iter()
                    .filter(|ep| tier(ep) && filters.iter().all(|f| f(ep)))
                    .collect();
                match chosen[..] {
                    [] => continue,
                    // Whatever the strategy, the only one: no figures to gather.
                    [only] => return Some(target(only)),
                    _ => {}
                }
                let candidates: SmallVec<[Candidate<'_>; 8]> =
                    chosen.iter().map(|ep| self.candidate(ep)).collect();
                let turn = set.counter.fetch_add(1, Ordering::Relaxed);
                let i = strategy.choose(&candidates, turn, pick.shard_key);
                return Some(target(chosen[i]));
            }
        }
        None
    }

    fn same_host(&self, node_id: &str) -> bool {
        self.nodes
            .get(node_id)
            .is_some_and(|n| !n.info.host_id.is_empty() && n.info.host_id == self.local_host)
    }

    fn candidate<'e>(&self, ep: &'e ActionEndpoint<L>) -> Candidate<'e> {
        Candidate {
            node_id: &ep.node_id,
            latency: ep.stats.latency(),
            in_flight: ep.stats.in_flight(),
            cpu: self.nodes.get(&ep.node_id).and_then(|n| n.cpu),
        }
    }

    /// Available remote nodes, distinct actions and event subscriptions.
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (
            self.nodes.values().filter(|n| n.available).count(),
            self.actions.len(),
            self.events.len(),
        )
    }

    /// Whether any endpoint serves `action`.
    pub(crate) fn has_action(&self, action: &str) -> bool {
        self.actions.contains_key(action)
    }

    /// The services of this node and of every available node, as they were announced.
    pub(crate) fn announced_services(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.local_services.iter().chain(
            self.nodes
                .values()
                .filter(|n| n.available)
                .flat_map(|n| n.info.services.iter()),
        )
    }

    /// Whether a service named `full_name` runs on any available node (this one included).
    pub(crate) fn has_service(&self, full_name: &str) -> bool {
        self.local_services.iter().any(|s| s.full_name == full_name)
            || self
                .nodes
                .values()
                .any(|n| n.available && n.info.services.iter().any(|s| s.full_name == full_name))
    }

    /// Balanced emit: one endpoint per listening group. Returns this node's listeners and, per
    /// remote node, the groups it should run.
    pub(crate) fn emit_targets(
        &self,
        event: &str,
    ) -> (LocalListeners<L>, BTreeMap<Arc<str>, Vec<String>>) {
        let mut by_group: BTreeMap<&str, Vec<&EventEndpoint<L>>> = BTreeMap::new();
        for ep in self
            .events
            .iter()
            .filter(|ep| pattern_matches(&ep.pattern, event))
        {
            by_group.entry(ep.group.as_str()).or_default().push(ep);
        }
        let mut local = Vec::new();
        let mut remote: BTreeMap<Arc<str>, Vec<_>> = BTreeMap::new();
        // One turn per emit, shared by its groups, so every group rotates through its nodes.
        let turn = self
            .event_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (group, endpoints) in by_group {
            let local_eps: Vec<_> = endpoints.iter().filter(|ep| ep.handler.is_some()).collect();
            if !local_eps.is_empty() {
                // Every local handler of the chosen group on this node runs (one per service).
                local.extend(local_eps.iter().filter_map(|ep| ep.handler.clone()));
                continue;
            }
            let mut nodes: Vec<&Arc<str>> = endpoints.iter().map(|ep| &ep.node_id).collect();
            nodes.sort();
            nodes.dedup();
            let chosen = nodes[self.strategy.pick_nth(nodes.len(), turn)];
            remote
                .entry(chosen.clone())
                .or_default()
                .push(group.to_owned());
        }
        (local, remote)
    }

    /// The pattern `node_id` listens to `event` with in `group`: where a bus that balances
    /// groups itself carries the event so that node's listeners read it.
    pub(crate) fn listening_pattern(
        &self,
        node_id: &str,
        group: &str,
        event: &str,
    ) -> Option<String> {
        self.events
            .iter()
            .find(|ep| {
                &*ep.node_id == node_id && ep.group == group && pattern_matches(&ep.pattern, event)
            })
            .map(|ep| ep.pattern.clone())
    }

    /// The event subscriptions of this node's services, each pattern and group once.
    pub(crate) fn local_subscriptions(&self) -> Vec<crate::protocol::packet::EventInfo> {
        let mut subscriptions: Vec<_> = self
            .local_services()
            .iter()
            .flat_map(|s| s.events.iter().cloned())
            .collect();
        subscriptions.sort_by(|a, b| (&a.group, &a.name).cmp(&(&b.group, &b.name)));
        subscriptions.dedup();
        subscriptions
    }

    /// Remote nodes with at least one subscription matching `event`.
    pub(crate) fn broadcast_targets(&self, event: &str) -> Vec<Arc<str>> {
        let mut nodes: Vec<Arc<str>> = self
            .events
            .iter()
            .filter(|ep| ep.handler.is_none() && pattern_matches(&ep.pattern, event))
            .map(|ep| ep.node_id.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// This node's handlers for `event`, limited to `groups` when given.
    pub(crate) fn local_listeners(
        &self,
        event: &str,
        groups: Option<&[String]>,
    ) -> LocalListeners<L> {
        self.events
            .iter()
            .filter(|ep| pattern_matches(&ep.pattern, event))
            .filter(|ep| groups.is_none_or(|g| g.contains(&ep.group)))
            .filter_map(|ep| ep.handler.clone())
            .collect()
    }

    /// Actions with the nodes serving them, for `$node.actions`.
    pub(crate) fn action_views(&self) -> Vec<ActionInfo> {
        let proto = |name: &str| {
            self.announced_services()
                .flat_map(|s| s.actions.iter())
                .find(|a| a.name == name)
                .and_then(|a| a.proto.clone())
        };
        let mut views: Vec<ActionInfo> = self
            .actions
            .iter()
            .map(|(name, set)| ActionInfo {
                proto: proto(name),
                name: name.clone(),
                nodes: set
                    .endpoints
                    .iter()
                    .map(|ep| ep.node_id.to_string())
                    .collect(),
                local: set.endpoints.iter().any(|ep| ep.handler.is_some()),
                idempotent: set.endpoints.iter().all(|ep| ep.idempotent),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Event subscriptions grouped by pattern and group, for `$node.events`.
    pub(crate) fn event_views(&self) -> Vec<EventInfo> {
        let mut map: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for ep in &self.events {
            map.entry((&ep.pattern, &ep.group))
                .or_default()
                .push(ep.node_id.to_string());
        }
        map.into_iter()
            .map(|((name, group), nodes)| EventInfo {
                name: name.to_owned(),
                group: group.to_owned(),
                nodes,
            })
            .collect()
    }
}

fn target<L>(ep: &ActionEndpoint<L>) -> Target<'_, L> {
    match &ep.handler {
        Some(local) => Target::Local(local),
        None => Target::Remote(&ep.node_id, &ep.stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packet::{ActionInfo as AnnouncedAction, ServiceInfo};

    const HOST: &str = "host-1";

    /// A registry of node `me` on HOST; local services carry a `&str` tag instead of layers.
    fn registry() -> Registry<&'static str> {
        Registry::new(
            "me".into(),
            HOST.into(),
            Strategy::RoundRobin,
            HashMap::default(),
        )
    }

    fn handler() -> ActionFn {
        Arc::new(|_, _| Box::pin(std::future::ready(Ok(crate::Payload::local(())))))
    }

    fn service(actions: &[&str]) -> ServiceInfo {
        ServiceInfo {
            full_name: "math".into(),
            name: "math".into(),
            actions: actions
                .iter()
                .map(|a| AnnouncedAction {
                    name: (*a).into(),
                    ..AnnouncedAction::default()
                })
                .collect(),
            ..ServiceInfo::default()
        }
    }

    /// Node `id` on `host` serving `math.add`.
    fn join(registry: &mut Registry<&'static str>, id: &str, host: &str) {
        let info = Info {
            instance_id: format!("{id}-1"),
            namespace: "t".into(),
            host_id: host.into(),
            seq: 1,
            services: vec![service(&["math.add"])],
            ..Info::default()
        };
        let change = registry.apply_info(&id.into(), info, LinkKind::Quic);
        assert_eq!(change, NodeChange::Joined);
    }

    fn picked(registry: &Registry<&'static str>, pick: &Pick<'_>) -> Option<String> {
        registry.pick(pick).map(|target| match target {
            Target::Local(local) => format!("local:{}", local.layers),
            Target::Remote(node, _) => node.to_string(),
        })
    }

    fn pick(action: &str) -> Pick<'_> {
        Pick {
            action,
            node_id: None,
            avoid: &[],
            admits: None,
            shard_key: None,
        }
    }

    #[test]
    fn this_node_first_then_this_host_then_the_rest() {
        let mut registry = registry();
        join(&mut registry, "far", "host-2");
        assert_eq!(picked(&registry, &pick("math.add")).as_deref(), Some("far"));
        join(&mut registry, "near", HOST);
        for _ in 0..4 {
            assert_eq!(
                picked(&registry, &pick("math.add")).as_deref(),
                Some("near")
            );
        }
        registry.add_local_service(
            service(&["math.add"]),
            vec![("math.add".into(), handler())],
            Vec::new(),
            "own",
        );
        assert_eq!(
            picked(&registry, &pick("math.add")).as_deref(),
            Some("local:own")
        );
        assert_eq!(picked(&registry, &pick("math.sub")), None);
    }

    #[test]
    fn avoided_and_vetoed_endpoints_are_skipped_while_others_can_serve() {
        let mut registry = registry();
        join(&mut registry, "a", "host-2");
        join(&mut registry, "b", "host-2");
        let avoid: [Arc<str>; 1] = ["a".into()];
        for _ in 0..4 {
            let p = Pick {
                avoid: &avoid,
                ..pick("math.add")
            };
            assert_eq!(picked(&registry, &p).as_deref(), Some("b"));
        }
        let not_b = |_: &str, node: &str| node != "b";
        for _ in 0..4 {
            let p = Pick {
                admits: Some(&not_b),
                ..pick("math.add")
            };
            assert_eq!(picked(&registry, &p).as_deref(), Some("a"));
        }
        // Avoiding the only admitted node still beats choosing a vetoed one.
        let p = Pick {
            avoid: &avoid,
            admits: Some(&not_b),
            ..pick("math.add")
        };
        assert_eq!(picked(&registry, &p).as_deref(), Some("a"));
        let nobody = |_: &str, _: &str| false;
        let p = Pick {
            admits: Some(&nobody),
            ..pick("math.add")
        };
        assert_eq!(picked(&registry, &p), None, "every circuit open");
    }

    #[test]
    fn round_robin_spreads_and_a_node_that_goes_down_leaves() {
        let mut registry = registry();
        join(&mut registry, "a", "host-2");
        join(&mut registry, "b", "host-2");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.extend(picked(&registry, &pick("math.add")));
        }
        assert_eq!(seen.len(), 2);
        assert!(registry.node_down("a"));
        for _ in 0..4 {
            assert_eq!(picked(&registry, &pick("math.add")).as_deref(), Some("b"));
        }
        let only_a = Pick {
            node_id: Some("a"),
            ..pick("math.add")
        };
        assert_eq!(
            picked(&registry, &only_a),
            None,
            "a down: not even when asked by id"
        );
    }

    #[test]
    fn nodes_down_long_enough_are_forgotten_and_live_ones_kept() {
        let mut registry = registry();
        join(&mut registry, "a", "host-2");
        join(&mut registry, "b", "host-2");
        registry.node_down("a");
        assert!(
            registry
                .prune_down(Instant::now() - Duration::from_secs(60))
                .is_empty()
        );
        let later = Instant::now() + Duration::from_millis(10);
        assert_eq!(registry.prune_down(later), vec![Arc::<str>::from("a")]);
        assert_eq!(
            registry.node_count(),
            1,
            "b is up: kept however old its last word"
        );
    }

    #[test]
    fn a_peers_cpu_claim_must_be_a_percentage() {
        let mut registry = registry();
        join(&mut registry, "a", "host-2");
        for claim in [f32::NAN, -5.0, f32::INFINITY] {
            registry.record_load("a", 0, Some(claim));
            let cpu = registry.node("a").unwrap().cpu;
            assert!(
                cpu.is_none() || cpu.is_some_and(|c| (0.0..=100.0).contains(&c)),
                "{cpu:?}"
            );
        }
    }
}
