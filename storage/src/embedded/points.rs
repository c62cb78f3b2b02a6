//! The current value of recently read keys, in memory, so that a point read
//! (a GET) of a hot key opens no redb transaction and reads no page.
//!
//! Only this process writes the file (redb locks it), and every write goes
//! through the writer thread, which tells the cache about each key it
//! changes on both sides of its commit:
//!
//! - before the commit, the key is marked as being written: it is dropped,
//!   not served and not filled until the commit is over;
//! - after the commit (or its failure), the mark goes, the key is dropped
//!   again and its shard's generation is raised — all before any caller
//!   hears of the write.
//!
//! A reader that missed takes a [`Ticket`] (its shard's generation) before
//! it opens its read transaction, and fills the cache only if no commit
//! touched the shard meanwhile. So a value read before a commit can never
//! be filled after it, and an acknowledged write is never followed by a
//! read of the value it replaced. Absent keys are not cached.
//!
//! Memory is bounded by a byte budget (keys, values and a fixed overhead
//! per entry), evicted by CLOCK: an entry read since the hand last passed
//! it gets a second chance. Nothing is filled for a key nobody reads, so an
//! idle VC costs nothing here.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use bytes::Bytes;
use indexmap::IndexMap;

use crate::keyspace::Key;
use crate::store::{KeyValue, Revision};

/// Shards, each under its own lock.
const SHARDS: usize = 64;
/// What an entry costs beyond its key's and value's bytes (map slots,
/// the value's shared header, the revisions).
const ENTRY_OVERHEAD: usize = 96;

pub(super) struct PointCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Bytes each shard may hold.
    shard_budget: usize,
}

#[derive(Default)]
struct Shard {
    entries: IndexMap<String, Entry>,
    bytes: usize,
    /// The CLOCK hand: an index into `entries`.
    hand: usize,
    /// Keys of commits in flight (how many commits hold each).
    writing: HashMap<String, u32>,
    /// Raised after every commit that changed a key of this shard.
    generation: u64,
}

struct Entry {
    value: Bytes,
    create_revision: Revision,
    mod_revision: Revision,
    /// Read since the hand last passed.
    referenced: bool,
}

impl Entry {
    fn cost(key: &str, value: &Bytes) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }
}

/// A miss's permission to fill: the shard's generation when it was taken.
#[derive(Debug)]
pub(super) struct Ticket {
    shard: usize,
    generation: u64,
}

impl PointCache {
    /// A cache of at most `budget` bytes (0: nothing is ever kept).
    pub fn new(budget: usize) -> PointCache {
        PointCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_budget: budget / SHARDS,
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        // A panic under the lock leaves at worst an entry dropped or kept
        // that is still a committed value: nothing to repair.
        self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key's current value if cached; otherwise a ticket to fill it
    /// once read from the file (`None`: a commit is writing the key, so
    /// the file must be read and the value not kept).
    pub fn get(&self, key: &Key) -> Result<KeyValue, Option<Ticket>> {
        if self.shard_budget == 0 {
            return Err(None);
        }
        let shard = self.shard_of(key.as_str());
        let mut s = self.lock(shard);
        if s.writing.contains_key(key.as_str()) {
            return Err(None);
        }
        match s.entries.get_mut(key.as_str()) {
            Some(entry) => {
                entry.referenced = true;
                Ok(KeyValue {
                    key: key.clone(),
                    value: entry.value.clone(),
                    create_revision: entry.create_revision,
                    mod_revision: entry.mod_revision,
                })
            }
            None => Err(Some(Ticket {
                shard,
                generation: s.generation,
            })),
        }
    }

    /// Keeps `kv`, read from the file after `ticket` was taken, unless a
    /// commit changed the ticket's shard since.
    pub fn fill(&self, ticket: Ticket, kv: &KeyValue) {
        let cost = Entry::cost(kv.key.as_str(), &kv.value);
        if cost > self.shard_budget {
            return;
        }
        let mut s = self.lock(ticket.shard);
        if s.generation != ticket.generation || s.writing.contains_key(kv.key.as_str()) {
            return;
        }
        let entry = Entry {
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            referenced: false,
        };
        if let Some(old) = s.entries.insert(kv.key.as_str().to_owned(), entry) {
            s.bytes -= Entry::cost(kv.key.as_str(), &old.value);
        }
        s.bytes += cost;
        s.evict(self.shard_budget);
    }

    /// A commit is about to change `keys`: they are dropped and neither
    /// served nor filled until [`PointCache::end`].
    pub fn begin<'k>(&self, keys: impl Iterator<Item = &'k str>) {
        if self.shard_budget == 0 {
            return;
        }
        for key in keys {
            let mut s = self.lock(self.shard_of(key));
            *s.writing.entry(key.to_owned()).or_default() += 1;
            s.remove(key);
        }
    }

    /// The commit that [`PointCache::begin`] announced is over (committed
    /// or failed): its keys are dropped once more and their shards' fills
    /// that started before it are refused.
    pub fn end<'k>(&self, keys: impl Iterator<Item = &'k str>) {
        if self.shard_budget == 0 {
            return;
        }
        for key in keys {
            let mut s = self.lock(self.shard_of(key));
            if let Some(n) = s.writing.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    s.writing.remove(key);
                }
            }
            s.remove(key);
            s.generation += 1;
        }
    }

    /// Bytes held, over all shards.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).bytes).sum()
    }
}

impl Shard {
    fn remove(&mut self, key: &str) {
        if let Some((index, key, old)) = self.entries.swap_remove_full(key) {
            self.bytes -= Entry::cost(&key, &old.value);
            // The last entry took the removed one's place: the hand
            // looks at it next instead of skipping it.
            if index < self.hand {
                self.hand = index;
            }
        }
    }

    /// CLOCK: drops entries not read since the hand last passed them until
    /// the shard is within `budget`.
    fn evict(&mut self, budget: usize) {
        while self.bytes > budget && !self.entries.is_empty() {
            if self.hand >= self.entries.len() {
                self.hand = 0;
            }
            let (_, entry) = self.entries.get_index_mut(self.hand).expect("in range");
            if entry.referenced {
                entry.referenced = false;
                self.hand += 1;
                continue;
            }
            let (key, old) = self.entries.swap_remove_index(self.hand).expect("in range");
            self.bytes -= Entry::cost(&key, &old.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Key {
        Key::from_backend(format!("/kplex{path}").as_bytes()).unwrap()
    }

    fn kv(path: &str, value: &str, rev: u64) -> KeyValue {
        KeyValue {
            key: key(path),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: Revision::new(1),
            mod_revision: Revision::new(rev),
        }
    }

    fn cached(cache: &PointCache, path: &str) -> Option<String> {
        cache
            .get(&key(path))
            .ok()
            .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
    }

    #[test]
    fn a_miss_fills_and_the_next_read_hits() {
        let cache = PointCache::new(1 << 20);
        let ticket = cache.get(&key("/a")).unwrap_err().unwrap();
        cache.fill(ticket, &kv("/a", "one", 2));
        let hit = cache.get(&key("/a")).unwrap();
        assert_eq!(hit.value, "one");
        assert_eq!(hit.mod_revision, Revision::new(2));
        assert_eq!(hit.key.as_str(), "/kplex/a");
    }

    #[test]
    fn a_value_read_before_a_commit_is_not_filled_after_it() {
        let cache = PointCache::new(1 << 20);
        // The reader misses and reads the old value from the file...
        let ticket = cache.get(&key("/a")).unwrap_err().unwrap();
        // ... while a commit changes the key.
        cache.begin([key("/a").as_str()].into_iter());
        cache.end([key("/a").as_str()].into_iter());
        cache.fill(ticket, &kv("/a", "old", 2));
        assert_eq!(cached(&cache, "/a"), None);
    }

    #[test]
    fn a_key_being_written_is_neither_served_nor_filled() {
        let cache = PointCache::new(1 << 20);
        let ticket = cache.get(&key("/a")).unwrap_err().unwrap();
        cache.fill(ticket, &kv("/a", "old", 2));
        cache.begin([key("/a").as_str()].into_iter());
        // Dropped, and no ticket while the commit is in flight.
        assert!(matches!(cache.get(&key("/a")), Err(None)));
        cache.end([key("/a").as_str()].into_iter());
        let ticket = cache.get(&key("/a")).unwrap_err().unwrap();
        cache.fill(ticket, &kv("/a", "new", 3));
        assert_eq!(cached(&cache, "/a").as_deref(), Some("new"));
    }

    #[test]
    fn overlapping_commits_of_one_key_keep_it_marked_until_both_end() {
        let cache = PointCache::new(1 << 20);
        cache.begin([key("/a").as_str()].into_iter());
        cache.begin([key("/a").as_str()].into_iter());
        cache.end([key("/a").as_str()].into_iter());
        assert!(matches!(cache.get(&key("/a")), Err(None)));
        cache.end([key("/a").as_str()].into_iter());
        assert!(matches!(cache.get(&key("/a")), Err(Some(_))));
    }

    #[test]
    fn the_budget_bounds_the_bytes_and_read_entries_get_a_second_chance() {
        let budget = SHARDS * 1024;
        let cache = PointCache::new(budget);
        let value = "x".repeat(200);
        for i in 0..2_000 {
            let path = format!("/k/{i}");
            if let Err(Some(ticket)) = cache.get(&key(&path)) {
                cache.fill(ticket, &kv(&path, &value, 2));
            }
            assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
            // One key is read after every fill: it must stay.
            if let Err(Some(ticket)) = cache.get(&key("/hot")) {
                cache.fill(ticket, &kv("/hot", &value, 2));
            }
        }
        assert!(cache.bytes() > budget / 2, "{}", cache.bytes());
        assert_eq!(cached(&cache, "/hot").as_deref(), Some(value.as_str()));
        assert_eq!(cached(&cache, "/k/0"), None);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = PointCache::new(0);
        assert!(matches!(cache.get(&key("/a")), Err(None)));
    }
}
