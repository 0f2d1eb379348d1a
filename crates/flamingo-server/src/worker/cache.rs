//! Bounded least-recently-used cache of resampled image features, keyed by image hash.

use std::collections::{HashMap, VecDeque};

use candle_core::Tensor;

pub struct FeatureCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Tensor>,
    order: VecDeque<[u8; 32]>,
    pub hits: u64,
    pub misses: u64,
}

impl FeatureCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: HashMap::new(), order: VecDeque::new(), hits: 0, misses: 0 }
    }

    pub fn get(&mut self, key: &[u8; 32]) -> Option<Tensor> {
        let hit = self.entries.get(key).cloned();
        if hit.is_some() {
            self.hits += 1;
            self.order.retain(|k| k != key);
            self.order.push_back(*key);
        } else {
            self.misses += 1;
        }
        hit
    }

    pub fn insert(&mut self, key: [u8; 32], value: Tensor) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
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

    #[test]
    fn evicts_least_recently_used() {
        let t = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut c = FeatureCache::new(2);
        c.insert([1; 32], t.clone());
        c.insert([2; 32], t.clone());
        assert!(c.get(&[1; 32]).is_some());
        c.insert([3; 32], t);
        assert!(c.get(&[2; 32]).is_none());
        assert!(c.get(&[1; 32]).is_some());
        assert_eq!(c.len(), 2);
    }
}
