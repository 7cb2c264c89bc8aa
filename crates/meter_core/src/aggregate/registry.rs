//! The set of live meters, indexed for the hot path (by tenant and event type) and for the API (by
//! slug). Immutable: the writer builds a new registry on every change and swaps it in, so readers never
//! take a lock longer than cloning an `Arc`.

use std::collections::HashMap;
use std::sync::Arc;

use super::meter::Meter;

#[derive(Default, Clone)]
pub struct Registry {
    by_type: HashMap<String, HashMap<String, Vec<Arc<Meter>>>>,
    by_slug: HashMap<String, HashMap<String, Arc<Meter>>>,
}

impl Registry {
    pub fn for_event(&self, tenant: &str, event_type: &str) -> &[Arc<Meter>] {
        self.by_type.get(tenant).and_then(|t| t.get(event_type)).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn get(&self, tenant: &str, slug: &str) -> Option<&Arc<Meter>> {
        self.by_slug.get(tenant)?.get(slug)
    }

    /// The tenant's meters, by slug.
    pub fn list(&self, tenant: &str) -> Vec<Arc<Meter>> {
        let mut all: Vec<_> = self.by_slug.get(tenant).map(|m| m.values().cloned().collect()).unwrap_or_default();
        all.sort_by(|a, b| a.slug().cmp(b.slug()));
        all
    }

    /// Every meter of every tenant, as (tenant, meter), in no particular order.
    pub fn all(&self) -> impl Iterator<Item = (&str, &Arc<Meter>)> {
        self.by_slug.iter().flat_map(|(tenant, meters)| meters.values().map(move |m| (tenant.as_str(), m)))
    }

    pub fn with(&self, tenant: &str, meter: Arc<Meter>) -> Registry {
        let mut next = self.clone();
        let spec = &meter.stored.spec;
        next.by_type
            .entry(tenant.to_owned())
            .or_default()
            .entry(spec.event_type.clone())
            .or_default()
            .push(meter.clone());
        next.by_slug.entry(tenant.to_owned()).or_default().insert(spec.slug.clone(), meter);
        next
    }

    pub fn without(&self, tenant: &str, slug: &str) -> Registry {
        let mut next = self.clone();
        if let Some(m) = next.by_slug.get_mut(tenant).and_then(|t| t.remove(slug)) {
            if let Some(list) = next.by_type.get_mut(tenant).and_then(|t| t.get_mut(&m.stored.spec.event_type)) {
                list.retain(|x| x.id() != m.id());
            }
        }
        next
    }
}
