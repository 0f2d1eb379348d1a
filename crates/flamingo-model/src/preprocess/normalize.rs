//! `ToTensor()` and `Normalize(mean, std)`.

use image::RgbImage;

use super::PixelSpec;

/// Steps 4-5: `ToTensor()` then `Normalize(spec.mean, spec.std)`, as CHW f32 (`3 * w * h`
/// values; only the spec's mean and std are used).
pub fn normalize(crop: &RgbImage, spec: &PixelSpec) -> Vec<f32> {
    let plane = crop.width() as usize * crop.height() as usize;
    let mut out = vec![0.0_f32; 3 * plane];
    for (i, px) in crop.pixels().enumerate() {
        for c in 0..3 {
            // Same f32 operations, in the same order, as torch: div(255), sub_(mean), div_(std).
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    out
}
