//! What each VC stores, in bytes and objects, and the limits on it
//! (`VirtualCluster.spec.limits.storedBytes` and `.objects`).
//!
//! The counts come from the watch cache's feed, which sees every write of
//! every server sharing the store: a VC's keys are scanned once, in pages,
//! the first time its use is needed (its first write, or a read of its
//! status), and each change after the scan's revision moves the counts by
//! the difference it makes. A write that would take a VC past a limit is
//! refused before it is stored; while it is in flight, and until the feed
//! has counted it, its size is reserved, so writes racing each other cannot
//! pass a limit together. Deletes are never refused.
//!
//! A VC has an entry only once its use was needed, and loses it when it
//! holds nothing (a deleted VC). While the feed is down (etcd unreachable)
//! use cannot be kept: every count is forgotten and limits are not enforced
//! until it is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use kplex_storage::{
    Event, Key, KeyValue, RangeRequest, Revision, Store, StoreError, StoreResult, TenantKeyspace,
};

/// How much one VC may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Keys and values, in bytes.
    pub bytes: u64,
    /// Objects (keys).
    pub objects: u64,
}

/// Stored bytes a VC may hold unless its spec or `kplex serve` says otherwise.
pub const DEFAULT_STORED_BYTES: u64 = 1 << 30;
/// Objects a VC may hold unless its spec or `kplex serve` says otherwise.
pub const DEFAULT_OBJECTS: u64 = 200_000;

impl Default for StorageLimits {
    fn default() -> StorageLimits {
        StorageLimits {
            bytes: DEFAULT_STORED_BYTES,
            objects: DEFAULT_OBJECTS,
        }
    }
}

/// What a VC stores now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Used {
    /// Keys and values, in bytes.
    pub bytes: u64,
    /// Objects.
    pub objects: u64,
}

/// Where a VC's own limits are read (the server's index of VC records).
pub type LimitsSource = Box<dyn Fn(&str) -> Option<kplex_api::limits::Limits> + Send + Sync>;

/// See the module documentation.
#[derive(Default)]
pub struct Usage {
    defaults: RwLock<StorageLimits>,
    /// Each VC's own limits (`spec.limits`), by UID.
    source: RwLock<Option<LimitsSource>>,
    vcs: Mutex<HashMap<String, Entry>>,
    /// Whether the feed is running (counts are kept only while it is).
    live: AtomicBool,
    /// Wakes writers waiting for a VC's scan.
    scanned: tokio::sync::Notify,
    /// Numbers claims.
    next_claim: AtomicU64,
    /// Raised whenever the feed stops or starts: an entry, scan or claim
    /// of another generation counts nothing (what it saw may be stale).
    generation: AtomicU64,
}

#[derive(Default)]
struct Entry {
    /// The [`Usage::generation`] it was made in.
    generation: u64,
    bytes: i64,
    objects: i64,
    /// What writes claimed and the feed has not counted yet: each until
    /// the feed counts a change of its key (then it is in the counts), or
    /// its write fails.
    claims: Vec<Claim>,
    /// `None` while the first scan runs (changes seen meanwhile wait in
    /// `deltas`); then the scan's revision: changes up to it are in the counts.
    since: Option<Revision>,
    deltas: Vec<(Revision, i64, i64)>,
}

struct Claim {
    id: u64,
    key: String,
    amount: Used,
    /// Its write was stored (only the feed lets it go now).
    stored: bool,
}

/// A write's claim on its VC's limits; give it back with
/// [`Reservation::stored`] or by dropping it (the write failed).
#[must_use]
pub struct Reservation<'a> {
    usage: &'a Usage,
    vc: String,
    id: u64,
    generation: u64,
}

/// Every change a key's event makes to its VC's use: bytes and objects.
fn change_of(event: &Event) -> Option<(i64, i64)> {
    let size = |kv: &KeyValue| (kv.key.as_str().len() + kv.value.len()) as i64;
    match event {
        Event::Put {
            kv,
            prev: Some(prev),
        } => Some((size(kv) - size(prev), 0)),
        Event::Put { kv, prev: None } if kv.create_revision == kv.mod_revision => {
            Some((size(kv), 1))
        }
        // An update whose previous value was compacted away: what it
        // changed is not known.
        Event::Put { .. } => None,
        Event::Delete { prev, .. } => Some((-size(prev), -1)),
    }
}

impl Usage {
    /// Sets the limits of VCs whose spec names none.
    pub fn set_defaults(&self, limits: StorageLimits) {
        *self.defaults.write().expect("usage defaults") = limits;
    }

    /// The defaults.
    pub fn defaults(&self) -> StorageLimits {
        *self.defaults.read().expect("usage defaults")
    }

    /// Where each VC's own limits are read from.
    pub fn set_source(&self, source: LimitsSource) {
        *self.source.write().expect("usage source") = Some(source);
    }

    /// The limits of the VC with `uid`: its own, else the defaults.
    pub fn limits_of(&self, uid: &str) -> StorageLimits {
        let defaults = self.defaults();
        let own = self
            .source
            .read()
            .expect("usage source")
            .as_ref()
            .and_then(|source| source(uid))
            .unwrap_or_default();
        StorageLimits {
            bytes: own.stored_bytes.unwrap_or(defaults.bytes),
            objects: own.objects.unwrap_or(defaults.objects),
        }
    }

    /// VCs whose use is counted now.
    pub fn counted(&self) -> usize {
        self.vcs.lock().expect("usage").len()
    }

    /// The feed is running (again).
    pub(crate) fn go_live(&self) {
        let mut vcs = self.vcs.lock().expect("usage");
        vcs.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.live.store(true, Ordering::Release);
        drop(vcs);
        self.scanned.notify_waiters();
    }

    /// The entry of `uid`, if it is of this generation.
    fn entry<'a>(&self, vcs: &'a mut HashMap<String, Entry>, uid: &str) -> Option<&'a mut Entry> {
        let generation = self.generation.load(Ordering::Acquire);
        vcs.get_mut(uid).filter(|e| e.generation == generation)
    }

    /// The feed stopped: nothing can be counted until it is back.
    pub(crate) fn go_dark(&self) {
        let mut vcs = self.vcs.lock().expect("usage");
        self.live.store(false, Ordering::Release);
        vcs.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(vcs);
        self.scanned.notify_waiters();
    }

    /// Counts one change the feed saw (and lets go the claim of the write
    /// that made it).
    pub(crate) fn observe(&self, event: &Event) {
        let revision = event.revision();
        let Some(parts) = TenantKeyspace::parse(event.key()) else {
            return;
        };
        let mut vcs = self.vcs.lock().expect("usage");
        let Some(entry) = self.entry(&mut vcs, parts.vc_uid) else {
            return;
        };
        let Some((bytes, objects)) = change_of(event) else {
            // Not countable: count again from storage when next needed.
            if entry.since.is_some() {
                vcs.remove(parts.vc_uid);
            }
            return;
        };
        match entry.since {
            None => entry.deltas.push((revision, bytes, objects)),
            Some(since) if revision > since => {
                entry.bytes += bytes;
                entry.objects += objects;
            }
            Some(_) => {}
        }
        // A write to this key is counted now: its claim goes (one only:
        // two writes racing on one key leave the other's standing).
        let key = event.key().as_str();
        if let Some(at) = entry.claims.iter().position(|c| c.key == key) {
            entry.claims.swap_remove(at);
        }
        if entry.since.is_some() && entry.objects <= 0 && entry.claims.is_empty() {
            // Holds nothing (a deleted VC): no entry.
            vcs.remove(parts.vc_uid);
        }
    }

    /// What the VC with `uid` stores, if it is counted already (no scan:
    /// for decisions on the request path).
    pub fn peek(&self, uid: &str) -> Option<Used> {
        let mut vcs = self.vcs.lock().expect("usage");
        let entry = self.entry(&mut vcs, uid).filter(|e| e.since.is_some())?;
        Some(Used {
            bytes: entry.bytes.max(0) as u64,
            objects: entry.objects.max(0) as u64,
        })
    }

    /// What the VC with `uid` stores now (counting it first if it is not
    /// counted yet); `None` while the feed is down.
    pub async fn used(&self, store: &dyn Store, uid: &str) -> StoreResult<Option<Used>> {
        if !self.counting(store, uid).await? {
            return Ok(None);
        }
        let mut vcs = self.vcs.lock().expect("usage");
        Ok(self.entry(&mut vcs, uid).map(|e| Used {
            bytes: e.bytes.max(0) as u64,
            objects: e.objects.max(0) as u64,
        }))
    }

    /// Claims `amount` of the limits of the VC whose key `key` is, for a
    /// write about to be stored; `QuotaExceeded` if that passes a limit.
    /// `None` where nothing is claimed: not a VC's key, or the feed is down.
    pub async fn reserve(
        &self,
        store: &dyn Store,
        key: &Key,
        amount: Used,
    ) -> StoreResult<Option<Reservation<'_>>> {
        let Some(parts) = TenantKeyspace::parse(key) else {
            return Ok(None);
        };
        let uid = parts.vc_uid;
        if !self.counting(store, uid).await? {
            return Ok(None);
        }
        let limits = self.limits_of(uid);
        let mut vcs = self.vcs.lock().expect("usage");
        let generation = self.generation.load(Ordering::Acquire);
        let Some(entry) = self.entry(&mut vcs, uid) else {
            // Forgotten meanwhile (the feed broke): not enforced.
            return Ok(None);
        };
        let claimed = entry.claims.iter().fold(Used::default(), |sum, c| Used {
            bytes: sum.bytes + c.amount.bytes,
            objects: sum.objects + c.amount.objects,
        });
        let used = Used {
            bytes: entry.bytes.max(0) as u64 + claimed.bytes,
            objects: entry.objects.max(0) as u64 + claimed.objects,
        };
        let over = |name: &str, want: u64, used: u64, limit: u64| {
            StoreError::QuotaExceeded(
            format!("exceeded quota: virtual cluster limits, requested: {name}={want}, used: {name}={used}, limited: {name}={limit}"),
        )
        };
        if amount.objects > 0 && used.objects + amount.objects > limits.objects {
            return Err(over(
                "objects",
                amount.objects,
                used.objects,
                limits.objects,
            ));
        }
        if amount.bytes > 0 && used.bytes + amount.bytes > limits.bytes {
            return Err(over("storedBytes", amount.bytes, used.bytes, limits.bytes));
        }
        let id = self.next_claim.fetch_add(1, Ordering::Relaxed);
        entry.claims.push(Claim {
            id,
            key: key.as_str().to_owned(),
            amount,
            stored: false,
        });
        Ok(Some(Reservation {
            usage: self,
            vc: uid.to_owned(),
            id,
            generation,
        }))
    }

    /// Whether the VC's use is counted (scanning its keys first if needed).
    async fn counting(&self, store: &dyn Store, uid: &str) -> StoreResult<bool> {
        loop {
            let scanned = self.scanned.notified();
            tokio::pin!(scanned);
            scanned.as_mut().enable();
            if !self.live.load(Ordering::Acquire) {
                return Ok(false);
            }
            let scan = {
                let mut vcs = self.vcs.lock().expect("usage");
                let generation = self.generation.load(Ordering::Acquire);
                match self.entry(&mut vcs, uid) {
                    Some(entry) if entry.since.is_some() => return Ok(true),
                    // Another request is scanning: wait for it.
                    Some(_) => None,
                    // None, or of another generation: count afresh.
                    None => {
                        vcs.insert(
                            uid.to_owned(),
                            Entry {
                                generation,
                                ..Entry::default()
                            },
                        );
                        Some(generation)
                    }
                }
            };
            if let Some(generation) = scan {
                return self.scan(store, uid, generation).await;
            }
            scanned.await;
        }
    }

    /// Counts the VC's keys, in pages at one revision, then the changes
    /// the feed saw after that revision meanwhile.
    async fn scan(&self, store: &dyn Store, uid: &str, generation: u64) -> StoreResult<bool> {
        /// A scan abandoned halfway (its request went away) leaves no
        /// entry that others would wait on forever.
        struct Abandoned<'a>(Option<(&'a Usage, &'a str, u64)>);
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                if let Some((usage, uid, generation)) = self.0 {
                    let mut vcs = usage.vcs.lock().expect("usage");
                    if vcs
                        .get(uid)
                        .is_some_and(|e| e.since.is_none() && e.generation == generation)
                    {
                        vcs.remove(uid);
                    }
                    drop(vcs);
                    usage.scanned.notify_waiters();
                }
            }
        }
        let mut abandoned = Abandoned(Some((self, uid, generation)));
        let result = async {
            let prefix = TenantKeyspace::for_vc(uid)?.prefix().clone();
            let (mut bytes, mut objects) = (0i64, 0i64);
            let (mut after, mut revision) = (None, None);
            loop {
                let page = store
                    .range(RangeRequest {
                        prefix: prefix.clone(),
                        after: after.take(),
                        limit: Some(500),
                        revision,
                    })
                    .await?;
                for kv in &page.kvs {
                    bytes += (kv.key.as_str().len() + kv.value.len()) as i64;
                    objects += 1;
                }
                revision = Some(page.revision);
                after = page.kvs.last().map(|kv| kv.key.clone());
                if !page.more {
                    return Ok::<_, StoreError>((bytes, objects, page.revision));
                }
            }
        }
        .await;
        abandoned.0 = None;
        let mut vcs = self.vcs.lock().expect("usage");
        let counted = match result {
            Ok((bytes, objects, at)) => {
                match vcs.get_mut(uid).filter(|e| e.generation == generation) {
                    Some(entry) => {
                        entry.bytes = bytes;
                        entry.objects = objects;
                        for (revision, b, o) in std::mem::take(&mut entry.deltas) {
                            if revision > at {
                                entry.bytes += b;
                                entry.objects += o;
                            }
                        }
                        entry.since = Some(at);
                        Ok(true)
                    }
                    // The feed broke meanwhile.
                    None => Ok(false),
                }
            }
            // Storage failed the count: this write is not held to the
            // limits (as while the feed is down); the next one counts again.
            Err(e) => {
                if vcs.get(uid).is_some_and(|e| e.generation == generation) {
                    vcs.remove(uid);
                }
                tracing::warn!(error = %e, vc = uid, "cannot count what a VC stores; its limits wait");
                Ok(false)
            }
        };
        drop(vcs);
        self.scanned.notify_waiters();
        counted
    }
}

impl Reservation<'_> {
    /// The write was stored: its claim stands until the feed counts its
    /// change (if it has not already).
    pub fn stored(self) {
        let mut vcs = self.usage.vcs.lock().expect("usage");
        let generation = self.generation;
        if let Some(entry) = vcs.get_mut(&self.vc).filter(|e| e.generation == generation) {
            if let Some(claim) = entry.claims.iter_mut().find(|c| c.id == self.id) {
                claim.stored = true;
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut vcs = self.usage.vcs.lock().expect("usage");
        let generation = self.generation;
        if let Some(entry) = vcs.get_mut(&self.vc).filter(|e| e.generation == generation) {
            // A write that failed (or whose caller left before it was
            // stored) claims nothing.
            if let Some(at) = entry
                .claims
                .iter()
                .position(|c| c.id == self.id && !c.stored)
            {
                entry.claims.swap_remove(at);
            }
        }
    }
}
