//! Admission: which waiting requests join the running batch before the next step. Pure, so the
//! rules are unit-tested without a model.
//!
//! * First in, first out: a request that does not fit blocks those behind it, so a long prompt is
//!   never starved by a stream of short ones.
//! * Rows: the batch decodes at most `max_batch_size` rows (a beam search takes one per beam).
//! * Tokens: one step processes at most `max_batch_tokens` tokens (the prompts being prefilled
//!   plus one per decoding row), which bounds the latency a joining prompt adds to everyone's step.
//! * KV memory: the batch's sequences together reserve at most `max_kv_bytes` of KV cache (each
//!   reserves its whole prompt + `max_new_tokens` for every row up front, so a step can never
//!   run out of memory half-way; validation refuses a request that could never fit).
//! * An empty batch always takes the head of the queue, so a prompt larger than the token budget
//!   still runs (alone) instead of waiting forever.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub prompt_tokens: usize,
    /// Rows it will decode with once prefilled (beam search: one per beam).
    pub rows: usize,
    /// KV-cache bytes it reserves (see [`KvShape::reservation`]).
    pub kv_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_kv_bytes: usize,
}

/// The running batch as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Running {
    /// Rows decoding now (beams count each).
    pub rows: usize,
    /// Tokens the next step will process for them.
    pub tokens: usize,
    /// KV-cache bytes they reserve.
    pub kv_bytes: usize,
}

/// KV-cache bytes a sequence holds, from the model's shape and activation dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Keys and values of every decoder layer for one position of one row.
    pub per_token: usize,
    /// Keys and values of every cross-attention layer for one image's latents, per row.
    pub per_image: usize,
}

impl KvShape {
    /// What a request reserves: all its positions (prompt + new tokens) and images, per row.
    pub fn reservation(&self, rows: usize, positions: usize, images: usize) -> usize {
        rows.saturating_mul(
            positions
                .saturating_mul(self.per_token)
                .saturating_add(images.saturating_mul(self.per_image)),
        )
    }
}

/// How many requests from the head of `queue` to admit.
pub fn admit(queue: &[Waiting], running: Running, limits: BatchLimits) -> usize {
    let (mut rows, mut tokens, mut kv) = (running.rows, running.tokens, running.kv_bytes);
    let mut admitted = 0;
    for w in queue {
        let empty = rows == 0 && admitted == 0;
        let fits = rows + w.rows <= limits.max_batch_size
            && tokens + w.prompt_tokens <= limits.max_batch_tokens
            && kv + w.kv_bytes <= limits.max_kv_bytes;
        if !(empty || fits) {
            break;
        }
        rows += w.rows;
        tokens += w.prompt_tokens;
        kv += w.kv_bytes;
        admitted += 1;
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: BatchLimits = BatchLimits {
        max_batch_size: 3,
        max_batch_tokens: 100,
        max_kv_bytes: 1000,
    };
    fn w(prompt_tokens: usize) -> Waiting {
        Waiting {
            prompt_tokens,
            rows: 1,
            kv_bytes: 0,
        }
    }
    fn running(rows: usize, tokens: usize) -> Running {
        Running {
            rows,
            tokens,
            kv_bytes: 0,
        }
    }

    #[test]
    fn respects_the_kv_budget_in_order() {
        let kv = |kv_bytes| Waiting { kv_bytes, ..w(1) };
        assert_eq!(admit(&[kv(600), kv(500), kv(1)], Running::default(), L), 1);
        let busy = Running {
            kv_bytes: 900,
            ..running(1, 1)
        };
        assert_eq!(
            admit(&[kv(101)], busy, L),
            0,
            "would overflow the KV budget"
        );
        assert_eq!(admit(&[kv(100)], busy, L), 1);
        // Alone, a request always runs (validation refused any that cannot fit at all).
        assert_eq!(admit(&[kv(1000), kv(1)], Running::default(), L), 1);
    }

    #[test]
    fn a_reservation_counts_every_row_position_and_image() {
        let shape = KvShape {
            per_token: 10,
            per_image: 100,
        };
        assert_eq!(shape.reservation(1, 5, 0), 50);
        assert_eq!(shape.reservation(3, 5, 2), 3 * (50 + 200));
        assert_eq!(shape.reservation(usize::MAX, 5, 2), usize::MAX, "saturates");
    }

    #[test]
    fn fills_up_to_batch_size() {
        assert_eq!(admit(&[w(1), w(1), w(1), w(1)], Running::default(), L), 3);
        assert_eq!(admit(&[w(1), w(1)], running(2, 2), L), 1);
        assert_eq!(admit(&[w(1)], running(3, 3), L), 0);
    }

    #[test]
    fn respects_the_token_budget_in_order() {
        assert_eq!(
            admit(&[w(60), w(50), w(1)], Running::default(), L),
            1,
            "FIFO: w(1) may not jump w(50)"
        );
        assert_eq!(admit(&[w(60)], running(1, 50), L), 0);
        assert_eq!(admit(&[w(49)], running(1, 51), L), 1);
    }

    #[test]
    fn an_empty_batch_takes_an_oversized_prompt_alone() {
        assert_eq!(admit(&[w(500), w(1)], Running::default(), L), 1);
    }

    #[test]
    fn beams_take_one_row_each() {
        let beams = Waiting {
            prompt_tokens: 5,
            rows: 3,
            kv_bytes: 0,
        };
        assert_eq!(admit(&[beams], running(1, 1), L), 0);
        assert_eq!(admit(&[beams, w(1)], Running::default(), L), 1);
        assert_eq!(admit(&[w(1), beams], Running::default(), L), 1);
    }

    #[test]
    fn empty_queue_admits_nothing() {
        assert_eq!(admit(&[], Running::default(), L), 0);
    }
}
