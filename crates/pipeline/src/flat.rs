//! A hash table from u128 keys to small values, open addressing with linear probing:
//! a key and its value share a slot, so a lookup that misses the cache costs one miss
//! (a general-purpose table costs two: its control bytes, then the slot). Callers with
//! a batch of keys [`Flat::touch`] them all first: those loads are independent, so
//! the processor overlaps their misses, and the updates that follow hit the cache.
//!
//! Key 0 marks an empty slot; a real key 0 is held beside the slots.

/// The table.
#[derive(Debug, Clone)]
pub(crate) struct Flat<V> {
    /// Key and value, not aligned to a cache line on purpose: with a 32-byte value a slot
    /// is 48 bytes, and aligning it to 64 made the table a third larger, which cost more
    /// (once it outgrows the cache, a miss per lookup) than the slots that straddle two
    /// lines (docs/benchmarks.md).
    slots: Vec<(u128, V)>,
    zero: Option<V>,
    len: usize,
    /// log2 of the slot count.
    bits: u32,
}

impl<V: Copy + Default> Default for Flat<V> {
    fn default() -> Self {
        Flat::with_bits(10)
    }
}

fn hash(k: u128) -> u64 {
    let mut x = (k as u64) ^ ((k >> 64) as u64).rotate_left(29);
    x ^= x >> 32;
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

impl<V: Copy + Default> Flat<V> {
    /// An empty table with room for `keys` keys without growing.
    pub(crate) fn with_room(keys: usize) -> Flat<V> {
        let mut bits = 10;
        while keys * 8 > (1usize << bits) * 5 {
            bits += 1;
        }
        Flat::with_bits(bits)
    }

    fn with_bits(bits: u32) -> Flat<V> {
        Flat {
            slots: vec![(0, V::default()); 1 << bits],
            zero: None,
            len: 0,
            bits,
        }
    }

    fn home(&self, k: u128) -> usize {
        (hash(k) >> (64 - self.bits)) as usize
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the home slot of `k`, key and value (a slot may span two cache lines), to
    /// warm the cache before [`Flat::get_or_insert`]; the result means nothing.
    #[inline]
    pub(crate) fn touch(&self, k: u128) -> (u128, V) {
        self.slots[self.home(k)]
    }

    /// The value of `k`; a new default one unless `full` (then None). The bool is true
    /// when the key is new.
    #[inline]
    pub(crate) fn get_or_insert(&mut self, k: u128, full: bool) -> Option<(&mut V, bool)> {
        if k == 0 {
            let new = self.zero.is_none();
            if new && full {
                return None;
            }
            self.len += usize::from(new);
            return Some((self.zero.get_or_insert_with(V::default), new));
        }
        // At most 5/8 full: probes stay short.
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(k);
        loop {
            let key = self.slots[i].0;
            if key == k {
                return Some((&mut self.slots[i].1, false));
            }
            if key == 0 {
                if full {
                    return None;
                }
                self.slots[i].0 = k;
                self.len += 1;
                return Some((&mut self.slots[i].1, true));
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let old = std::mem::replace(self, Flat::with_bits(self.bits + 1));
        self.zero = old.zero;
        self.len = usize::from(old.zero.is_some());
        let mask = self.slots.len() - 1;
        for (k, v) in old.slots {
            if k == 0 {
                continue;
            }
            let mut i = self.home(k);
            while self.slots[i].0 != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = (k, v);
            self.len += 1;
        }
    }

    /// Empties it, keeping its slots.
    pub(crate) fn clear(&mut self) {
        if self.len > 0 {
            self.slots.fill((0, V::default()));
        }
        self.zero = None;
        self.len = 0;
    }

    /// Every key and value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u128, &V)> {
        self.zero.iter().map(|v| (0, v)).chain(
            self.slots
                .iter()
                .filter(|(k, _)| *k != 0)
                .map(|(k, v)| (*k, v)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the keys (incl. 0 and colliding ones), it sums like a HashMap.
        #[test]
        fn sums_like_a_hash_map(keys in prop::collection::vec(prop_oneof![
            Just(0u128), 0..64u128, any::<u128>(), (0..64u128).prop_map(|x| x << 100)
        ], 0..3000)) {
            let mut flat: Flat<u64> = Flat::default();
            let mut reference = std::collections::HashMap::new();
            for (i, k) in keys.iter().enumerate() {
                let _ = flat.touch(*k);
                let (v, new) = flat.get_or_insert(*k, false).expect("room");
                prop_assert_eq!(new, !reference.contains_key(k));
                *v += i as u64;
                *reference.entry(*k).or_insert(0) += i as u64;
            }
            prop_assert_eq!(flat.len(), reference.len());
            let got: std::collections::HashMap<u128, u64> =
                flat.iter().map(|(k, v)| (k, *v)).collect();
            prop_assert_eq!(got, reference);
            flat.clear();
            prop_assert!(flat.is_empty());
            prop_assert_eq!(flat.iter().count(), 0);
        }
    }

    #[test]
    fn a_full_table_takes_no_new_key_but_updates_held_ones() {
        let mut f: Flat<u8> = Flat::default();
        *f.get_or_insert(7, false).expect("room").0 += 1;
        assert!(f.get_or_insert(8, true).is_none());
        assert!(f.get_or_insert(0, true).is_none());
        let (v, new) = f.get_or_insert(7, true).expect("held");
        *v += 1;
        assert!(!new);
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![(7, &2)]);
    }

    #[test]
    fn a_table_with_room_for_another_s_keys_takes_them_without_growing() {
        for n in [0u128, 1, 639, 640, 641, 100_000] {
            let mut a: Flat<u8> = Flat::default();
            for k in 1..=n {
                a.get_or_insert(k, false).expect("room");
            }
            let mut b: Flat<u8> = Flat::with_room(a.len());
            let slots = b.slots.len();
            for k in 1..=n {
                b.get_or_insert(k << 64, false).expect("room");
            }
            assert_eq!(b.slots.len(), slots, "{n} keys");
            assert!(
                slots <= a.slots.len(),
                "{n} keys: {slots} > {}",
                a.slots.len()
            );
        }
    }
}
