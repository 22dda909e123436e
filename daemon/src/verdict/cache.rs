//! Verdict lookup with an in-memory front (warm lookups without touching disk), the persistent
//! store behind it, and coalescing: concurrent requests for the same key share one verification.

use std::future::Future;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::OnceCell;
use tracing::warn;

use super::store::{VerdictKey, VerdictStore, FAILURE_TTL_SECS};
use super::{Outcome, Verdict};
use crate::verify::time::now_unix;

/// In-memory entries kept before the memory front is emptied (the store still has them): bounds
/// memory whatever the number of images seen.
pub const MAX_MEMORY_ENTRIES: usize = 65_536;

/// Cached, persisted, coalesced verdicts.
pub struct VerdictCache {
    store: Option<Arc<VerdictStore>>,
    memory: DashMap<VerdictKey, Verdict>,
    inflight: DashMap<VerdictKey, Arc<OnceCell<Verdict>>>,
}

impl VerdictCache {
    /// A cache persisting to `store` (or memory only with `None`).
    pub fn new(store: Option<VerdictStore>) -> Self {
        VerdictCache {
            store: store.map(Arc::new),
            memory: DashMap::new(),
            inflight: DashMap::new(),
        }
    }

    fn remember(&self, key: &VerdictKey, v: &Verdict) {
        if self.memory.len() >= MAX_MEMORY_ENTRIES {
            self.memory.clear();
        }
        self.memory.insert(key.clone(), v.clone());
    }

    fn fresh(v: &Verdict, now: i64) -> bool {
        v.outcome == Outcome::Trusted || now < v.decided_at + FAILURE_TTL_SECS
    }

    /// A cached verdict, if still valid.
    pub fn lookup(&self, key: &VerdictKey) -> Option<Verdict> {
        let now = now_unix();
        if let Some(v) = self.memory.get(key) {
            if Self::fresh(&v, now) {
                return Some(v.clone());
            }
        }
        let store = self.store.as_ref()?;
        match store.get(key, now) {
            Ok(Some(v)) => {
                self.remember(key, &v);
                Some(v)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "verdict store read failed; verifying again");
                None
            }
        }
    }

    /// Forgets the verdicts of every policy but the one hashed `keep` (in memory and on disk):
    /// called when the policy changes, at a reload and at start-up, so verdicts of policies no
    /// longer in force do not pile up. Returns how many stored records went.
    pub async fn keep_only_policy(&self, keep: &str) -> usize {
        self.memory.retain(|key, _| key.policy_hash == keep);
        let Some(store) = self.store.clone() else {
            return 0;
        };
        let keep = keep.to_owned();
        match tokio::task::spawn_blocking(move || store.prune(&keep, now_unix())).await {
            Ok(Ok(removed)) => removed,
            Ok(Err(e)) => {
                warn!(error = %e, "pruning the verdict store failed");
                0
            }
            Err(e) => {
                warn!(error = %e, "verdict store pruning task failed");
                0
            }
        }
    }

    /// Stores a trusted verdict computed elsewhere (early verification, which may lack context a
    /// later request has, such as the index that lists the manifest: only a trusted verdict is
    /// independent of that context, so nothing else is offered).
    pub async fn offer_trusted(&self, key: VerdictKey, verdict: Verdict) {
        if verdict.outcome != Outcome::Trusted {
            return;
        }
        self.remember(&key, &verdict);
        if let Some(store) = self.store.clone() {
            match tokio::task::spawn_blocking(move || store.put(&key, &verdict)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "verdict not persisted"),
                Err(e) => warn!(error = %e, "verdict persistence task failed"),
            }
        }
    }

    /// The verdict for `key`: cached, or computed by `verify` exactly once however many callers
    /// ask concurrently, then stored.
    pub async fn get_or_verify<F, Fut>(&self, key: VerdictKey, verify: F) -> Verdict
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Verdict>,
    {
        if let Some(v) = self.lookup(&key) {
            crate::metrics::global().cache_hit();
            return v;
        }
        crate::metrics::global().cache_miss();
        let cell = self
            .inflight
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let verdict = cell
            .get_or_init(|| async {
                let v = verify().await;
                self.remember(&key, &v);
                if let Some(store) = self.store.clone() {
                    let (k, val) = (key.clone(), v.clone());
                    let res = tokio::task::spawn_blocking(move || store.put(&k, &val)).await;
                    match res {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!(error = %e, "verdict not persisted"),
                        Err(e) => warn!(error = %e, "verdict persistence task failed"),
                    }
                }
                v
            })
            .await
            .clone();
        self.inflight.remove_if(&key, |_, c| Arc::ptr_eq(c, &cell));
        verdict
    }
}
