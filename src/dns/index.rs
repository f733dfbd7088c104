//! The zone's read-side name table: a flat open-addressing hash table
//! (linear probing, at most half full) over every name of a snapshot, with
//! the names' bytes in one arena. A lookup touches one slot, the arena and
//! the node, where the persistent map the zone is built in walks a tree of
//! separately allocated levels. Built whole, never changed: the zone keeps
//! the names changed since in a small overlay and builds a new table when
//! the overlay grows (see `zone`).

use std::hash::BuildHasher;
use std::sync::Arc;

/// One slot: the name's hash, where its bytes are in the arena, its node.
#[derive(Debug)]
struct Slot<T> {
    hash: u64,
    at: u32,
    len: u32,
    value: Option<Arc<T>>,
}

/// An immutable map from wire-form names to shared nodes.
#[derive(Debug)]
pub struct FlatIndex<T> {
    slots: Box<[Slot<T>]>,
    mask: usize,
    names: Box<[u8]>,
    hasher: foldhash::fast::RandomState,
    len: usize,
}

impl<T> FlatIndex<T> {
    /// A table of the `len` `entries` (names must be distinct).
    pub fn build<'a>(len: usize, entries: impl Iterator<Item = (&'a [u8], &'a Arc<T>)>) -> Self
    where
        T: 'a,
    {
        let capacity = (len * 2).next_power_of_two().max(16);
        let mask = capacity - 1;
        let hasher = foldhash::fast::RandomState::default();
        let mut slots: Vec<Slot<T>> = (0..capacity)
            .map(|_| Slot {
                hash: 0,
                at: 0,
                len: 0,
                value: None,
            })
            .collect();
        let mut names = Vec::new();
        let mut len = 0;
        for (name, value) in entries {
            len += 1;
            let hash = hasher.hash_one(name);
            let mut i = hash as usize & mask;
            while slots[i].value.is_some() {
                i = (i + 1) & mask;
            }
            slots[i] = Slot {
                hash,
                at: names.len() as u32,
                len: name.len() as u32,
                value: Some(value.clone()),
            };
            names.extend_from_slice(name);
        }
        Self {
            slots: slots.into_boxed_slice(),
            mask,
            names: names.into_boxed_slice(),
            hasher,
            len,
        }
    }

    /// The node of `name`, if the table holds it.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<T>> {
        let hash = self.hasher.hash_one(name);
        let mut i = hash as usize & self.mask;
        loop {
            let slot = &self.slots[i];
            let value = slot.value.as_ref()?;
            if slot.hash == hash
                && self
                    .names
                    .get(slot.at as usize..(slot.at + slot.len) as usize)
                    == Some(name)
            {
                return Some(value);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// How many names the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #[test]
        fn finds_every_name_it_holds_and_no_other(
            names in prop::collection::btree_set(prop::collection::vec(any::<u8>(), 0..24), 0..300),
            others in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..50),
        ) {
            let map: BTreeMap<Vec<u8>, Arc<usize>> =
                names.into_iter().enumerate().map(|(i, n)| (n, Arc::new(i))).collect();
            let index = FlatIndex::build(map.len(), map.iter().map(|(k, v)| (k.as_slice(), v)));
            prop_assert_eq!(index.len(), map.len());
            for (k, v) in &map {
                prop_assert!(index.get(k).is_some_and(|found| Arc::ptr_eq(found, v)));
            }
            for o in &others {
                prop_assert_eq!(index.get(o).map(|v| **v), map.get(o).map(|v| **v));
            }
        }
    }
}
