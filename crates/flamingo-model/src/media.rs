//! Which image each text token cross-attends to (docs/architecture.md §7), as 1-based image
//! indices (0 = none).

use crate::config::MediaRule;

/// Media times of a prompt's tokens.
pub fn prompt_media_time(rule: MediaRule, tokens: &[u32], image_token: u32) -> Vec<u32> {
    let images = tokens.iter().filter(|&&t| t == image_token).count() as u32;
    let mut seen = 0u32;
    tokens
        .iter()
        .map(|&t| {
            let is_image = t == image_token;
            seen += is_image as u32;
            match rule {
                // v1: `<image>` sees its own image, every other token the next one; tokens
                // after the last image see none.
                MediaRule::NextImage => {
                    let time = seen + (!is_image) as u32;
                    if time > images {
                        0
                    } else {
                        time
                    }
                }
                MediaRule::PreviousImage => seen,
            }
        })
        .collect()
}

/// Media time of a generated token in a prompt that had `images` images.
pub fn generated_media_time(rule: MediaRule, token: u32, image_token: u32, images: usize) -> u32 {
    match rule {
        // v1 recomputes media locations from the single new token: only a generated `<image>`
        // would see (the first) image.
        MediaRule::NextImage => (token == image_token && images > 0) as u32,
        // v2 keeps attending to the last prompt image.
        MediaRule::PreviousImage => images as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 401;
    const EOC: u32 = 400;

    #[test]
    fn v1_attends_to_the_next_image() {
        // <s><image>Output:A cat.<|endofchunk|><image>Output:
        let tokens = [1, IMG, 10, 11, 12, 13, EOC, IMG, 10, 11];
        assert_eq!(
            prompt_media_time(MediaRule::NextImage, &tokens, IMG),
            vec![1, 1, 2, 2, 2, 2, 2, 2, 0, 0]
        );
        assert_eq!(generated_media_time(MediaRule::NextImage, 10, IMG, 2), 0);
        assert_eq!(generated_media_time(MediaRule::NextImage, IMG, IMG, 2), 1);
    }

    #[test]
    fn v2_attends_to_the_previous_image() {
        let tokens = [1, IMG, 10, EOC, IMG, 10];
        assert_eq!(
            prompt_media_time(MediaRule::PreviousImage, &tokens, IMG),
            vec![0, 1, 1, 1, 2, 2]
        );
        assert_eq!(
            generated_media_time(MediaRule::PreviousImage, 10, IMG, 2),
            2
        );
    }

    #[test]
    fn text_only_sees_nothing() {
        assert_eq!(
            prompt_media_time(MediaRule::NextImage, &[1, 5, 6], IMG),
            vec![0, 0, 0]
        );
    }
}
