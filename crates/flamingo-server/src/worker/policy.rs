//! Which waiting requests join the running batch before the next step (pure, FIFO).

/// What admission needs to know about a waiting request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub prompt_tokens: usize,
    /// Rows it will decode with (beam search: one per beam).
    pub rows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
}

/// How many requests from the head of `queue` to admit, given `running` sequences that will
/// decode `running_rows` tokens next step. First in, first out: a request that does not fit
/// blocks those behind it (no starvation of long prompts). An empty batch always takes one, so a
/// prompt longer than the token budget still runs (alone).
pub fn admit(queue: &[Waiting], running: usize, running_rows: usize, limits: BatchLimits) -> usize {
    let mut sequences = running;
    let mut tokens = running_rows;
    let mut admitted = 0;
    for w in queue {
        let fits_size = sequences < limits.max_batch_size;
        let fits_tokens = tokens + w.prompt_tokens <= limits.max_batch_tokens;
        let first_in_empty = sequences == 0 && admitted == 0;
        if !(first_in_empty || (fits_size && fits_tokens)) {
            break;
        }
        sequences += 1;
        tokens += w.prompt_tokens.max(w.rows);
        admitted += 1;
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: BatchLimits = BatchLimits { max_batch_size: 3, max_batch_tokens: 100 };
    fn w(prompt_tokens: usize) -> Waiting {
        Waiting { prompt_tokens, rows: 1 }
    }

    #[test]
    fn fills_up_to_batch_size() {
        assert_eq!(admit(&[w(1), w(1), w(1), w(1)], 0, 0, L), 3);
        assert_eq!(admit(&[w(1), w(1)], 2, 2, L), 1);
        assert_eq!(admit(&[w(1)], 3, 3, L), 0);
    }

    #[test]
    fn respects_the_token_budget_in_order() {
        assert_eq!(admit(&[w(60), w(50), w(1)], 0, 0, L), 1);
        assert_eq!(admit(&[w(60)], 1, 50, L), 0);
    }

    #[test]
    fn an_empty_batch_takes_an_oversized_prompt() {
        assert_eq!(admit(&[w(500), w(1)], 0, 0, L), 1);
    }

    #[test]
    fn empty_queue_admits_nothing() {
        assert_eq!(admit(&[], 0, 0, L), 0);
    }
}
