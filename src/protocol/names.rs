//! Shared names: node and action names travel in every REQUEST and RESPONSE, and a link
//! carries the same few again and again, so each thread keeps the names it met last and hands
//! out an `Arc` clone instead of allocating a fresh string per frame.
//!
//! Bounded: a small ring per kind per thread, overwritten in turn, so a peer sending many
//! different names only turns the ring over (each stranger costs one allocation, as it would
//! without the ring).

use std::cell::RefCell;
use std::sync::Arc;
use std::thread::LocalKey;

/// How many names of one kind each thread keeps.
const KEPT: usize = 8;

thread_local! {
    static NODES: RefCell<Ring> = const { RefCell::new(Ring::new()) };
    static ACTIONS: RefCell<Ring> = const { RefCell::new(Ring::new()) };
}

/// A small ring of names, overwritten in turn.
struct Ring {
    names: [Option<Arc<str>>; KEPT],
    next: usize,
}

impl Ring {
    const fn new() -> Self {
        Self {
            names: [const { None }; KEPT],
            next: 0,
        }
    }

    fn share(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.iter().flatten().find(|known| &***known == name) {
            return known.clone();
        }
        let fresh: Arc<str> = Arc::from(name);
        self.names[self.next] = Some(fresh.clone());
        self.next = (self.next + 1) % KEPT;
        fresh
    }
}

fn shared(ring: &'static LocalKey<RefCell<Ring>>, name: &str) -> Arc<str> {
    ring.with_borrow_mut(|ring| ring.share(name))
}

/// `name`, a node's (a frame's sender), as a shared string.
pub(crate) fn node(name: &str) -> Arc<str> {
    shared(&NODES, name)
}

/// `name`, an action's (a request's, read from a frame or about to be sent), as a shared
/// string.
pub(crate) fn action(name: &str) -> Arc<str> {
    shared(&ACTIONS, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_met_again_is_shared_and_strangers_only_turn_the_ring() {
        let first = node("node-a");
        assert!(Arc::ptr_eq(&first, &node("node-a")));
        // Kinds keep their own rings: actions do not push nodes out.
        for i in 0..3 * KEPT {
            assert_eq!(
                &*action(&format!("svc.action-{i}")),
                format!("svc.action-{i}")
            );
        }
        assert!(Arc::ptr_eq(&first, &node("node-a")));
        for i in 0..3 * KEPT {
            assert_eq!(&*node(&format!("stranger-{i}")), format!("stranger-{i}"));
        }
        let again = node("node-a");
        assert_eq!(&*again, "node-a");
        assert!(!Arc::ptr_eq(&first, &again), "evicted, then made anew");
        NODES.with_borrow(|ring| assert_eq!(ring.names.iter().flatten().count(), KEPT));
        ACTIONS.with_borrow(|ring| assert_eq!(ring.names.iter().flatten().count(), KEPT));
    }
}
