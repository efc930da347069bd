//! The open links of a point-to-point transport, one per peer node id: what QUIC and shared
//! memory both keep, with the operations both need. Locks are held only inside these methods; sends only read.

use rustc_hash::FxHashMap as HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Links by peer node id.
#[derive(Debug)]
pub(crate) struct LinkTable<L> {
    /// Read on every send, written when a link comes or goes.
    links: RwLock<HashMap<Arc<str>, Arc<L>>>,
}

impl<L> Default for LinkTable<L> {
    fn default() -> Self {
        Self {
            links: RwLock::default(),
        }
    }
}

impl<L> LinkTable<L> {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<Arc<str>, Arc<L>>> {
        self.links.read().expect("link table lock")
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<L>>> {
        self.links.write().expect("link table lock")
    }

    /// The link to `node_id`.
    pub(crate) fn get(&self, node_id: &str) -> Option<Arc<L>> {
        self.read().get(node_id).cloned()
    }

    /// Whether a link to `node_id` is open.
    pub(crate) fn contains(&self, node_id: &str) -> bool {
        self.read().contains_key(node_id)
    }

    /// Every open link.
    pub(crate) fn all(&self) -> Vec<Arc<L>> {
        self.read().values().cloned().collect()
    }

    /// The linked node ids, sorted.
    pub(crate) fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().keys().map(|k| k.to_string()).collect();
        ids.sort();
        ids
    }

    /// Adds `link` to `node_id` if `keep` says so given the current one (if any); returns the
    /// link it replaced, if any, and whether `link` was kept. One lock for the whole decision.
    pub(crate) fn insert_if(
        &self,
        node_id: Arc<str>,
        link: Arc<L>,
        keep: impl FnOnce(Option<&L>) -> bool,
    ) -> (bool, Option<Arc<L>>) {
        let mut links = self.write();
        if !keep(links.get(&node_id).map(|l| &**l)) {
            return (false, None);
        }
        (true, links.insert(node_id, link))
    }

    /// Removes the link to `node_id`, if `current` says it is the one to remove.
    pub(crate) fn remove_if(
        &self,
        node_id: &str,
        current: impl FnOnce(&L) -> bool,
    ) -> Option<Arc<L>> {
        let mut links = self.write();
        if links.get(node_id).is_some_and(|l| current(l)) {
            return links.remove(node_id);
        }
        None
    }

    /// Removes the link to `node_id`.
    pub(crate) fn remove(&self, node_id: &str) -> Option<Arc<L>> {
        self.write().remove(node_id)
    }

    /// Removes and returns every link.
    pub(crate) fn drain(&self) -> Vec<Arc<L>> {
        self.write().drain().map(|(_, link)| link).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_link_per_peer_as_the_caller_decides() {
        let table = LinkTable::<u32>::default();
        assert_eq!(
            table.insert_if("b".into(), Arc::new(1), |_| true),
            (true, None)
        );
        let refused = table.insert_if("b".into(), Arc::new(2), |current| current.is_none());
        assert_eq!(refused, (false, None));
        let (kept, replaced) = table.insert_if("b".into(), Arc::new(3), |_| true);
        assert_eq!((kept, replaced.as_deref()), (true, Some(&1)));
        assert!(
            table.remove_if("b", |l| *l == 1).is_none(),
            "not the current one"
        );
        table.insert_if("a".into(), Arc::new(4), |_| true);
        assert_eq!(table.node_ids(), ["a", "b"]);
        assert_eq!(table.remove_if("b", |l| *l == 3).as_deref(), Some(&3));
        assert_eq!(table.drain().len(), 1);
        assert!(!table.contains("a"));
    }
}
