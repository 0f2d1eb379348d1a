//! Cache-affinity key for routing: requests that carry the same images in the same order get the
//! same key, so a balancer hashing on it (nginx `hash $http_x_flamingo_affinity consistent`)
//! sends them to the replica that already holds those images' features in its cache.
//!
//! Formula (clients that know their few-shot images can compute it themselves):
//! `image_set_key = hex(SHA-256(h_1 || h_2 || ... || h_n))[..16]`, where `h_i` is the raw 32-byte
//! SHA-256 of the i-th image's bytes (after base64 decoding, exactly the bytes sent), in order.
//! A request's key (`request_key`) covers the images that repeat across requests: all but the
//! last one (the few-shot examples, not the query), or the only image of a one-image request
//! (the same picture asked about again).
//! The key only routes: a collision costs a cache miss, never a wrong answer (the feature cache
//! itself is keyed by the full per-image hash).

use sha2::{Digest, Sha256};

/// Response header that tells the client the key of its request's image set.
pub const RESPONSE_HEADER: &str = "x-flamingo-affinity";
/// Request header a client sends the key back in; the balancer hashes on it.
pub const REQUEST_HEADER: &str = "x-flamingo-affinity";
/// Hex characters in a key (64 bits: enough to spread keys evenly over any number of replicas).
pub const KEY_HEX_LEN: usize = 16;

/// The affinity key of an ordered set of image hashes (`ImageInput::hash`), or `None` for a
/// request without images (it has nothing to be affine to; balancers spread such requests).
pub fn image_set_key(hashes: &[[u8; 32]]) -> Option<String> {
    if hashes.is_empty() {
        return None;
    }
    let mut digest = Sha256::new();
    for h in hashes {
        digest.update(h);
    }
    let out = digest.finalize();
    let mut key = String::with_capacity(KEY_HEX_LEN);
    for b in out.iter().take(KEY_HEX_LEN / 2) {
        key.push_str(&format!("{b:02x}"));
    }
    Some(key)
}

/// The affinity key of a request from its images in prompt order: the examples of a few-shot
/// prompt (every image but the last, the query), or the image of a one-image request.
pub fn request_key(hashes: &[[u8; 32]]) -> Option<String> {
    let shared = hashes.len().saturating_sub(1).max(1).min(hashes.len());
    image_set_key(&hashes[..shared])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn no_images_no_key() {
        assert_eq!(image_set_key(&[]), None);
    }

    #[test]
    fn key_is_short_lowercase_hex_and_stable() {
        let k = image_set_key(&[h(b"a"), h(b"b")]).unwrap();
        assert_eq!(k.len(), KEY_HEX_LEN);
        assert!(k.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        assert_eq!(image_set_key(&[h(b"a"), h(b"b")]).unwrap(), k);
    }

    #[test]
    fn key_matches_the_documented_formula() {
        // hex(SHA-256(h1 || h2))[..16], computed independently of image_set_key.
        let (h1, h2) = (h(b"first image"), h(b"second image"));
        let mut cat = Vec::new();
        cat.extend_from_slice(&h1);
        cat.extend_from_slice(&h2);
        let full: String = Sha256::digest(&cat)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(image_set_key(&[h1, h2]).unwrap(), full[..KEY_HEX_LEN]);
    }

    #[test]
    fn request_key_covers_the_examples_not_the_query() {
        let (a, b, q1, q2) = (h(b"a"), h(b"b"), h(b"q1"), h(b"q2"));
        let examples = image_set_key(&[a, b]).unwrap();
        assert_eq!(request_key(&[a, b, q1]).unwrap(), examples);
        assert_eq!(request_key(&[a, b, q2]).unwrap(), examples);
        assert_eq!(request_key(&[q1]), image_set_key(&[q1]));
        assert_eq!(request_key(&[]), None);
    }

    #[test]
    fn order_and_content_change_the_key() {
        let (a, b, c) = (h(b"a"), h(b"b"), h(b"c"));
        let ab = image_set_key(&[a, b]).unwrap();
        assert_ne!(ab, image_set_key(&[b, a]).unwrap());
        assert_ne!(ab, image_set_key(&[a, c]).unwrap());
        assert_ne!(ab, image_set_key(&[a]).unwrap());
        assert_ne!(ab, image_set_key(&[a, b, b]).unwrap());
    }
}
