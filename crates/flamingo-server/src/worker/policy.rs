//! Admission: which waiting requests join the running batch before the next step. Pure, so the
//! rules are unit-tested without a model.
//!
//! * First in, first out: a request that does not fit blocks those behind it, so a long prompt is
//!   never starved by a stream of short ones.
//! * Rows: the batch decodes at most `max_batch_size` rows (a beam search takes one per beam).
//! * Tokens: one step processes at most `max_batch_tokens` tokens (the prompts being prefilled
//!   plus one per decoding row), which bounds the latency a joining prompt adds to everyone's step.
//! * An empty batch always takes the head of the queue, so a prompt larger than the token budget
//!   still runs (alone) instead of waiting forever.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub prompt_tokens: usize,
    /// Rows it will decode with once prefilled (beam search: one per beam).
    pub rows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
}

/// The running batch as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Running {
    /// Rows decoding now (beams count each).
    pub rows: usize,
    /// Tokens the next step will process for them.
    pub tokens: usize,
}

/// How many requests from the head of `queue` to admit.
pub fn admit(queue: &[Waiting], running: Running, limits: BatchLimits) -> usize {
    let (mut rows, mut tokens) = (running.rows, running.tokens);
    let mut admitted = 0;
    for w in queue {
        let empty = rows == 0 && admitted == 0;
        let fits = rows + w.rows <= limits.max_batch_size
            && tokens + w.prompt_tokens <= limits.max_batch_tokens;
        if !(empty || fits) {
            break;
        }
        rows += w.rows;
        tokens += w.prompt_tokens;
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
    };
    fn w(prompt_tokens: usize) -> Waiting {
        Waiting {
            prompt_tokens,
            rows: 1,
        }
    }
    fn running(rows: usize, tokens: usize) -> Running {
        Running { rows, tokens }
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
