//! What the gateway needs to know of the cluster's actions — which are published, their params
//! schemas — computed from the registry once per change of it, not per request.

use crate::broker::{Broker, PUBLISH_HTTP_SETTING};
use rustc_hash::FxHashMap as HashMap;
use serde_json::Value;
use std::sync::{Arc, RwLock};

/// The actions served by available nodes now.
#[derive(Debug, Default)]
pub(super) struct ActionTable {
    actions: HashMap<String, Entry>,
    /// Published action names, sorted.
    published: Vec<String>,
}

#[derive(Debug, Default)]
struct Entry {
    schema: Option<Value>,
}

impl ActionTable {
    fn build(broker: &Broker) -> Self {
        let mut table = Self::default();
        let registry = broker.inner.registry();
        for service in registry.announced_services() {
            let published = service.settings.get(PUBLISH_HTTP_SETTING) == Some(&Value::Bool(true));
            for action in &service.actions {
                let entry = table.actions.entry(action.name.clone()).or_default();
                if entry.schema.is_none() {
                    entry.schema = action.params_schema.clone();
                }
                if published {
                    table.published.push(action.name.clone());
                }
            }
        }
        table.published.sort();
        table.published.dedup();
        table
    }

    /// Whether an available node serves `action`.
    pub(super) fn serves(&self, action: &str) -> bool {
        self.actions.contains_key(action)
    }

    /// Whether `action` belongs to a service that publishes itself on gateways.
    pub(super) fn is_published(&self, action: &str) -> bool {
        self.published
            .binary_search_by(|a| a.as_str().cmp(action))
            .is_ok()
    }

    /// The published actions, sorted.
    pub(super) fn published(&self) -> impl Iterator<Item = &str> {
        self.published.iter().map(String::as_str)
    }

    /// The params schema `action` declares, if any.
    pub(super) fn schema(&self, action: &str) -> Option<&Value> {
        self.actions.get(action).and_then(|e| e.schema.as_ref())
    }
}

/// The table, recomputed when the registry has changed since it was last computed.
#[derive(Debug, Default)]
pub(super) struct TableCache(RwLock<Option<(u64, Arc<ActionTable>)>>);

impl TableCache {
    pub(super) fn current(&self, broker: &Broker) -> Arc<ActionTable> {
        let generation = broker.inner.registry_generation();
        if let Some((seen, table)) = &*self.0.read().expect("table lock")
            && *seen == generation
        {
            return table.clone();
        }
        let table = Arc::new(ActionTable::build(broker));
        *self.0.write().expect("table lock") = Some((generation, table.clone()));
        table
    }
}
