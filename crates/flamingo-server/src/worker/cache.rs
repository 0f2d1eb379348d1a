//! Bounded least-recently-used cache of resampled image features, keyed by the hash of the image
//! bytes: few-shot prompts resend the same example images, and the vision tower plus resampler is
//! the most expensive part of a prefill.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

pub type Key = [u8; 32];

/// The worker inserts; request preparation looks up before decoding (and keeps what it finds).
pub type SharedFeatureCache = std::sync::Arc<std::sync::Mutex<FeatureCache>>;

pub struct FeatureCache {
    capacity: usize,
    /// Value and the tick of its last use.
    entries: HashMap<Key, (Tensor, u64)>,
    /// Last-use tick -> key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    pub hits: u64,
    pub misses: u64,
}

impl FeatureCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            hits: 0,
            misses: 0,
        }
    }

    fn touch(&mut self, key: &Key) {
        self.tick += 1;
        if let Some((_, last)) = self.entries.get_mut(key) {
            self.order.remove(last);
            *last = self.tick;
            self.order.insert(self.tick, *key);
        }
    }

    pub fn get(&mut self, key: &Key) -> Option<Tensor> {
        match self.entries.get(key).map(|(t, _)| t.clone()) {
            Some(t) => {
                self.hits += 1;
                self.touch(key);
                Some(t)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn insert(&mut self, key: Key, value: Tensor) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if let Some((_, last)) = self.entries.insert(key, (value, self.tick)) {
            self.order.remove(&last);
        }
        self.order.insert(self.tick, key);
        while self.entries.len() > self.capacity {
            match self.order.pop_first() {
                Some((_, old)) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t() -> Tensor {
        Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut c = FeatureCache::new(2);
        c.insert([1; 32], t());
        c.insert([2; 32], t());
        assert!(c.get(&[1; 32]).is_some());
        c.insert([3; 32], t());
        assert!(c.get(&[2; 32]).is_none(), "2 was the least recently used");
        assert!(c.get(&[1; 32]).is_some());
        assert!(c.get(&[3; 32]).is_some());
        assert_eq!(c.len(), 2);
        assert_eq!((c.hits, c.misses), (3, 1));
    }

    #[test]
    fn reinserting_refreshes_and_zero_capacity_stores_nothing() {
        let mut c = FeatureCache::new(2);
        c.insert([1; 32], t());
        c.insert([2; 32], t());
        c.insert([1; 32], t());
        c.insert([3; 32], t());
        assert!(c.get(&[1; 32]).is_some());
        assert!(c.get(&[2; 32]).is_none());
        let mut z = FeatureCache::new(0);
        z.insert([1; 32], t());
        assert!(z.is_empty());
    }
}
