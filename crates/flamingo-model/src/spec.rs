//! What a loaded model accepts, fixed when it is loaded: the immutable facts request validation
//! needs (vocabulary, special ids, context, image preprocessing), with no access to the weights.

use crate::config::MediaRule;
use crate::engine::GenerationParams;
use crate::error::{ModelError, Result};
use crate::preprocess::PixelSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Rows of the input embeddings (the base vocabulary + OpenFlamingo's 3 added tokens).
    pub vocab_size: usize,
    pub image_token_id: u32,
    pub end_of_chunk_token_id: u32,
    pub pad_token_id: u32,
    /// Positions a sequence may use, prompt and generated tokens together.
    pub max_positions: usize,
    pub pixels: PixelSpec,
    pub media_rule: MediaRule,
}

impl ModelSpec {
    /// The model's rules for one sequence: ids in the vocabulary, one `<image>` per image, at
    /// least one new token and one beam, the whole sequence within the context.
    pub fn validate(
        &self,
        tokens: &[u32],
        num_images: usize,
        params: &GenerationParams,
    ) -> Result<()> {
        let bad = |m: String| Err(ModelError::Input(m));
        if tokens.is_empty() {
            return bad("empty prompt".into());
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return bad(format!("token id {t} is outside the vocabulary"));
        }
        let markers = tokens.iter().filter(|&&t| t == self.image_token_id).count();
        if markers != num_images {
            return bad(format!(
                "the prompt has {markers} <image> markers but {num_images} images"
            ));
        }
        if params.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if params.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        let total = tokens.len() + params.max_new_tokens;
        if total > self.max_positions {
            return bad(format!(
                "prompt ({} tokens) + max_new_tokens ({}) exceeds the model's {} positions",
                tokens.len(),
                params.max_new_tokens,
                self.max_positions
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec {
            vocab_size: 403,
            image_token_id: 401,
            end_of_chunk_token_id: 400,
            pad_token_id: 402,
            max_positions: 16,
            pixels: PixelSpec::default(),
            media_rule: MediaRule::NextImage,
        }
    }

    fn params(max_new_tokens: usize, num_beams: usize) -> GenerationParams {
        GenerationParams {
            max_new_tokens,
            num_beams,
            ..Default::default()
        }
    }

    #[test]
    fn the_rules_for_one_sequence() {
        let s = spec();
        assert!(s.validate(&[1, 401, 5], 1, &params(4, 1)).is_ok());
        assert!(s.validate(&[], 0, &params(4, 1)).is_err(), "empty");
        assert!(
            s.validate(&[1, 403], 0, &params(4, 1)).is_err(),
            "outside the vocabulary"
        );
        assert!(
            s.validate(&[1, 401], 2, &params(4, 1)).is_err(),
            "markers vs images"
        );
        assert!(s.validate(&[1], 0, &params(0, 1)).is_err(), "no new token");
        assert!(s.validate(&[1], 0, &params(4, 0)).is_err(), "no beam");
        assert!(
            s.validate(&[1; 10], 0, &params(6, 1)).is_ok(),
            "exactly the context"
        );
        assert!(
            s.validate(&[1; 10], 0, &params(7, 1)).is_err(),
            "past the context"
        );
    }
}
