//! The service registry: every node of the cluster, its services, and the endpoints that serve
//! each action and event.
//!
//! Remote nodes enter with their `INFO` packet and leave when their link drops, their heartbeat
//! lease expires or they say `DISCONNECT`; local services enter when they start. Picking an
//! endpoint prefers this node's own (a direct call), then balances the rest with the broker's
//! [`Strategy`].

mod pattern;
mod strategy;

pub use pattern::pattern_matches;
pub use strategy::Strategy;

use crate::handler::{ActionFn, EventFn};
use crate::packet::{Info, ServiceInfo};
use crate::transport::LinkKind;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
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
    pub(crate) in_flight: u32,
    pub(crate) cpu: Option<f32>,
}

/// Where a call goes, borrowed from the registry.
pub(crate) enum Target<'r> {
    /// A handler of this broker (and its service's full name): call it directly.
    Local(&'r ActionFn, &'r Arc<str>),
    /// Another node.
    Remote(&'r Arc<str>),
}

struct ActionEndpoint {
    node_id: Arc<str>,
    handler: Option<(ActionFn, Arc<str>)>,
}

#[derive(Default)]
struct ActionSet {
    endpoints: Vec<ActionEndpoint>,
    /// How many of the endpoints are this node's own.
    local: usize,
    counter: AtomicUsize,
}

struct EventEndpoint {
    pattern: String,
    group: String,
    node_id: Arc<str>,
    handler: Option<(EventFn, Arc<str>)>,
}

/// An action endpoint list entry for `$node.actions`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ActionView {
    pub(crate) name: String,
    pub(crate) nodes: Vec<String>,
    pub(crate) local: bool,
}

/// An event subscription entry for `$node.events`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EventView {
    pub(crate) name: String,
    pub(crate) group: String,
    pub(crate) nodes: Vec<String>,
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

/// Event handlers of this node chosen for one event.
pub(crate) type LocalListeners = Vec<(EventFn, Arc<str>)>;

/// The registry of one broker.
pub(crate) struct Registry {
    local_id: Arc<str>,
    strategy: Strategy,
    nodes: HashMap<Arc<str>, NodeEntry>,
    actions: HashMap<String, ActionSet>,
    events: Vec<EventEndpoint>,
    local_services: Vec<ServiceInfo>,
    event_counter: AtomicUsize,
    epoch: Instant,
    /// Buses whose connection is down: their nodes' leases do not run.
    buses_down: Vec<LinkKind>,
}

impl Registry {
    pub(crate) fn new(local_id: Arc<str>, strategy: Strategy) -> Self {
        Self {
            local_id,
            strategy,
            nodes: HashMap::default(),
            actions: HashMap::default(),
            events: Vec::new(),
            local_services: Vec::new(),
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
    ) {
        let service: Arc<str> = info.full_name.as_str().into();
        for (name, handler) in actions {
            let set = self.actions.entry(name).or_default();
            set.local += 1;
            set.endpoints.push(ActionEndpoint {
                node_id: self.local_id.clone(),
                handler: Some((handler, service.clone())),
            });
        }
        for (pattern, group, handler) in events {
            self.events.push(EventEndpoint {
                pattern,
                group,
                node_id: self.local_id.clone(),
                handler: Some((handler, service.clone())),
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
        let change = match self.nodes.get(node_id) {
            Some(known)
                if known.available
                    && known.info.instance_id == info.instance_id
                    && known.info.seq >= info.seq =>
            {
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
                        handler: None,
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
        let serving = self
            .nodes
            .get(node_id)
            .map(|known| known.serving.clone())
            .unwrap_or_default();
        self.nodes.insert(
            node_id.clone(),
            NodeEntry {
                info,
                link,
                available: true,
                last_seen_ms: Arc::new(AtomicU64::new(self.now_ms())),
                serving,
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
            node.cpu = cpu;
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

    /// Chooses the endpoint for `action`: this node's own if it has one, otherwise a remote one
    /// by strategy. `node_id` pins the call to one node.
    pub(crate) fn pick(&self, action: &str, node_id: Option<&str>) -> Option<Target<'_>> {
        let set = self.actions.get(action)?;
        if let Some(wanted) = node_id {
            let ep = set.endpoints.iter().find(|ep| &*ep.node_id == wanted)?;
            return Some(target(ep));
        }
        if set.local > 0 {
            let i = self.strategy.pick(set.local, &set.counter);
            return set
                .endpoints
                .iter()
                .filter(|ep| ep.handler.is_some())
                .nth(i)
                .map(target);
        }
        let i = self.strategy.pick(set.endpoints.len(), &set.counter);
        set.endpoints.get(i).map(target)
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
    ) -> (LocalListeners, BTreeMap<Arc<str>, Vec<String>>) {
        let mut by_group: BTreeMap<&str, Vec<&EventEndpoint>> = BTreeMap::new();
        for ep in self
            .events
            .iter()
            .filter(|ep| pattern_matches(&ep.pattern, event))
        {
            by_group.entry(ep.group.as_str()).or_default().push(ep);
        }
        let mut local = Vec::new();
        let mut remote: BTreeMap<Arc<str>, Vec<String>> = BTreeMap::new();
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
    pub(crate) fn local_listeners(&self, event: &str, groups: Option<&[String]>) -> LocalListeners {
        self.events
            .iter()
            .filter(|ep| pattern_matches(&ep.pattern, event))
            .filter(|ep| groups.is_none_or(|g| g.contains(&ep.group)))
            .filter_map(|ep| ep.handler.clone())
            .collect()
    }

    /// Actions with the nodes serving them, for `$node.actions`.
    pub(crate) fn action_views(&self) -> Vec<ActionView> {
        let mut views: Vec<ActionView> = self
            .actions
            .iter()
            .map(|(name, set)| ActionView {
                name: name.clone(),
                nodes: set
                    .endpoints
                    .iter()
                    .map(|ep| ep.node_id.to_string())
                    .collect(),
                local: set.endpoints.iter().any(|ep| ep.handler.is_some()),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Event subscriptions grouped by pattern and group, for `$node.events`.
    pub(crate) fn event_views(&self) -> Vec<EventView> {
        let mut map: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for ep in &self.events {
            map.entry((&ep.pattern, &ep.group))
                .or_default()
                .push(ep.node_id.to_string());
        }
        map.into_iter()
            .map(|((name, group), nodes)| EventView {
                name: name.to_owned(),
                group: group.to_owned(),
                nodes,
            })
            .collect()
    }
}

fn target(ep: &ActionEndpoint) -> Target<'_> {
    match &ep.handler {
        Some((handler, service)) => Target::Local(handler, service),
        None => Target::Remote(&ep.node_id),
    }
}
