//! Lineage: who started a call or an event and where it sits in its chain — the part of a context
//! that travels to the next hop. Every child call, emit and arriving packet derives its own here,
//! so the rules (same request id, parent = the caller's context, level + 1, meta and headers
//! merged) are written once.

use super::Context;
use crate::protocol::packet::{Event, Headers, Meta, Request};
use std::sync::Arc;

/// The chain a call or event belongs to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lineage {
    /// Shared by every call and event of one chain.
    pub(crate) request_id: u64,
    /// The context that made this call or event.
    pub(crate) parent_id: Option<u64>,
    /// Full name of the service whose handler made it.
    pub(crate) caller: Option<Arc<str>>,
    /// Depth in the chain: 1 outside any handler.
    pub(crate) level: u32,
    pub(crate) meta: Option<Arc<Meta>>,
    pub(crate) headers: Option<Arc<Headers>>,
}

impl Lineage {
    /// The start of a new chain (a call or emit made outside any handler).
    pub(crate) fn root(request_id: u64) -> Self {
        Self {
            request_id,
            level: 1,
            ..Self::default()
        }
    }

    /// What a call or emit made from `parent`'s handler inherits.
    pub(crate) fn child_of(parent: &Context) -> Self {
        let from = &parent.lineage;
        Self {
            request_id: from.request_id,
            parent_id: Some(parent.id),
            caller: parent.service.clone(),
            level: from.level + 1,
            meta: from.meta.clone(),
            headers: from.headers.clone(),
        }
    }

    /// A child of `parent` if there is one, else the root of a chain numbered `request_id`.
    pub(crate) fn new(parent: Option<&Context>, request_id: u64) -> Self {
        parent.map_or_else(|| Self::root(request_id), Self::child_of)
    }

    /// Adds a call's own meta and headers over the inherited ones.
    pub(crate) fn with(mut self, meta: Option<&Meta>, headers: Option<&Headers>) -> Self {
        if let Some(extra) = meta {
            let mut all = self.meta.as_deref().cloned().unwrap_or_default();
            all.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            self.meta = Some(Arc::new(all));
        }
        if let Some(extra) = headers {
            let mut all = self.headers.as_deref().cloned().unwrap_or_default();
            all.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            self.headers = Some(Arc::new(all));
        }
        self
    }

    /// The lineage a REQUEST carries (its caller's, as the caller derived it).
    pub(crate) fn of_request(request: &mut Request) -> Self {
        Self {
            request_id: request.request_id,
            parent_id: request.parent_id,
            caller: request.caller.take().map(Into::into),
            level: request.level,
            meta: request.meta.take().map(Arc::new),
            headers: request.headers.take().map(Arc::new),
        }
    }

    /// The lineage an EVENT carries.
    pub(crate) fn of_event(event: &mut Event) -> Self {
        Self {
            request_id: event.request_id,
            parent_id: None,
            caller: event.caller.take().map(Into::into),
            level: event.level,
            meta: event.meta.take().map(Arc::new),
            headers: event.headers.take().map(Arc::new),
        }
    }

    /// Writes this lineage into an outgoing REQUEST.
    pub(crate) fn stamp_request(&self, request: &mut Request) {
        request.request_id = self.request_id;
        request.parent_id = self.parent_id;
        request.caller = self.caller.as_deref().map(str::to_owned);
        request.level = self.level;
        request.meta = self.meta.as_deref().cloned();
        request.headers = self.headers.as_deref().cloned();
    }

    /// Writes this lineage into an outgoing EVENT (events carry no parent id).
    pub(crate) fn stamp_event(&self, event: &mut Event) {
        event.request_id = self.request_id;
        event.caller = self.caller.as_deref().map(str::to_owned);
        event.level = self.level;
        event.meta = self.meta.as_deref().cloned();
        event.headers = self.headers.as_deref().cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_merges_its_meta_over_the_inherited_one() {
        let mut inherited = Meta::new();
        inherited.insert("tenant".into(), "acme".into());
        inherited.insert("user".into(), "ada".into());
        let parent = Lineage {
            meta: Some(Arc::new(inherited)),
            ..Lineage::root(7)
        };
        let mut own = Meta::new();
        own.insert("user".into(), "bob".into());
        let merged = parent.with(Some(&own), None);
        let meta = merged.meta.expect("meta");
        assert_eq!(meta["tenant"], "acme");
        assert_eq!(meta["user"], "bob");
        assert!(merged.headers.is_none());
    }

    #[test]
    fn a_request_round_trips_its_lineage() {
        let mut headers = Headers::new();
        headers.insert("x-trace".into(), "abc".into());
        let sent = Lineage {
            request_id: 9,
            parent_id: Some(4),
            caller: Some("v2.cart".into()),
            level: 3,
            meta: None,
            headers: Some(Arc::new(headers)),
        };
        let mut request = Request::default();
        sent.stamp_request(&mut request);
        let got = Lineage::of_request(&mut request);
        assert_eq!(
            (
                got.request_id,
                got.parent_id,
                got.caller.as_deref(),
                got.level
            ),
            (9, Some(4), Some("v2.cart"), 3)
        );
        assert_eq!(got.headers.expect("headers")["x-trace"], "abc");
    }
}
