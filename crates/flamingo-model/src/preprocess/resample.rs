//! Pillow-exact resize (`ImagingResample`, bicubic and nearest) and torchvision's center crop.

use std::borrow::Cow;
use std::ops::Range;

use image::{DynamicImage, Rgb, RgbImage};

use super::decode::high_bytes;
use super::{PixelSpec, Resample};

/// Bits of fraction in Pillow's 8-bit resampling coefficients (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Support of Pillow's bicubic filter before antialias scaling.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Steps 1-3 (bicubic resize, center crop, RGB) for an image in Pillow's layout.
///
/// Always bicubic: for palette sources use [`SourceImage::resize_and_crop`](super::SourceImage::resize_and_crop).
pub fn resize_and_crop(img: &DynamicImage, spec: &PixelSpec) -> RgbImage {
    resize_and_crop_with(img, Resample::Bicubic, spec)
}

/// Steps 1-3 with an explicit filter. An image without pixels yields a black crop.
pub fn resize_and_crop_with(img: &DynamicImage, resample: Resample, spec: &PixelSpec) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return RgbImage::new(spec.size as u32, spec.size as u32);
    }
    let plan = Plan::new(width, height, spec);
    match pil_pixels(img) {
        PilPixels::Wide(data) => {
            let crop = resize_window::<u16, i32>(&data, width, height, 1, &plan, resample);
            crop.to_rgb(|px| {
                let v = px[0].clamp(0, 255) as u8;
                [v, v, v]
            })
        }
        PilPixels::Narrow { data, channels } => {
            let crop = resize_window::<u8, u8>(&data, width, height, channels, &plan, resample);
            crop.to_rgb(|px| match *px {
                [l] | [l, _] => [l, l, l],
                [r, g, b] | [r, g, b, _] => [r, g, b],
                _ => [0, 0, 0],
            })
        }
    }
}

enum PilPixels<'a> {
    /// `L`, `LA`, `RGB` or `RGBA`: 1-4 interleaved 8-bit channels.
    Narrow {
        data: Cow<'a, [u8]>,
        channels: usize,
    },
    /// 16-bit grey, which Pillow holds as mode `I` (32-bit integers).
    Wide(Cow<'a, [u16]>),
}

fn pil_pixels(img: &DynamicImage) -> PilPixels<'_> {
    fn borrowed(data: &[u8], channels: usize) -> PilPixels<'_> {
        PilPixels::Narrow {
            data: Cow::Borrowed(data),
            channels,
        }
    }
    match img {
        DynamicImage::ImageLuma8(b) => borrowed(b.as_raw(), 1),
        DynamicImage::ImageLumaA8(b) => borrowed(b.as_raw(), 2),
        DynamicImage::ImageRgb8(b) => borrowed(b.as_raw(), 3),
        DynamicImage::ImageRgba8(b) => borrowed(b.as_raw(), 4),
        DynamicImage::ImageLuma16(b) => PilPixels::Wide(Cow::Borrowed(b.as_raw())),
        other => {
            // 16-bit colour keeps its high bytes as in Pillow; float images have no Pillow
            // equivalent, so they go through `image`'s own 8-bit conversion.
            let converted = high_bytes(other).unwrap_or_else(|| {
                if other.color().has_alpha() {
                    DynamicImage::ImageRgba8(other.to_rgba8())
                } else {
                    DynamicImage::ImageRgb8(other.to_rgb8())
                }
            });
            PilPixels::Narrow {
                channels: usize::from(converted.color().channel_count()),
                data: Cow::Owned(converted.into_bytes()),
            }
        }
    }
}

/// torchvision's resize target and center-crop window, in resized-image coordinates.
struct Plan {
    resized: (usize, usize),
    cols: Range<usize>,
    rows: Range<usize>,
}

impl Plan {
    fn new(width: usize, height: usize, spec: &PixelSpec) -> Self {
        let (target, crop) = (spec.resize, spec.size.min(spec.resize));
        // `_compute_resized_output_size`: int(size * long / short) with Python's exact
        // int / int true division (both operands are exact in f64).
        let (short, long) = if width <= height {
            (width, height)
        } else {
            (height, width)
        };
        let new_long = (target as f64 * long as f64 / short as f64) as usize;
        let resized = if width <= height {
            (target, new_long)
        } else {
            (new_long, target)
        };
        // `center_crop`: int(round((size - crop) / 2.0)), Python rounds half to even.
        let offset = |size: usize| ((size - crop) as f64 / 2.0).round_ties_even() as usize;
        let (left, top) = (offset(resized.0), offset(resized.1));
        Self {
            resized,
            cols: left..left + crop,
            rows: top..top + crop,
        }
    }
}

/// Resizes (as Pillow) but computes only the output pixels inside the crop window; every
/// output pixel of Pillow's separable resampler depends only on its own coefficient row,
/// so this is exact while bounding the work for extreme aspect ratios.
fn resize_window<S, T>(
    src: &[S],
    width: usize,
    height: usize,
    channels: usize,
    plan: &Plan,
    resample: Resample,
) -> Raster<T>
where
    S: Copy,
    T: Sample + From<S>,
{
    if plan.resized == (width, height) {
        // `Image.resize` returns a plain copy: no premultiplication round trip.
        let cols: Vec<_> = plan.cols.clone().map(Some).collect();
        let rows: Vec<_> = plan.rows.clone().map(Some).collect();
        return Raster::gather(src, width, channels, &cols, &rows);
    }
    match resample {
        Resample::Nearest => {
            let cols = nearest_indices(width, plan.resized.0, plan.cols.clone());
            let rows = nearest_indices(height, plan.resized.1, plan.rows.clone());
            Raster::gather(src, width, channels, &cols, &rows)
        }
        Resample::Bicubic => bicubic_window(src, width, height, channels, plan),
    }
}

fn bicubic_window<S, T>(
    src: &[S],
    width: usize,
    height: usize,
    channels: usize,
    plan: &Plan,
) -> Raster<T>
where
    S: Copy,
    T: Sample + From<S>,
{
    // Pillow skips a pass whose size does not change.
    let horizontal =
        (plan.resized.0 != width).then(|| windows::<T>(width, plan.resized.0, plan.cols.clone()));
    let vertical =
        (plan.resized.1 != height).then(|| windows::<T>(height, plan.resized.1, plan.rows.clone()));
    let cols = horizontal.as_deref().map_or(plan.cols.clone(), span);
    let rows = vertical.as_deref().map_or(plan.rows.clone(), span);

    // Pillow resizes LA/RGBA as premultiplied La/RGBa and converts back afterwards.
    let alpha = T::HAS_PREMULTIPLY && (channels == 2 || channels == 4);
    let mut region = match &horizontal {
        // The horizontal pass reads the source rows in place: no copy of the (possibly
        // 36 MB) source region.
        Some(win) if !alpha => T::convolve_rows(src, width, channels, 0, rows.clone(), win),
        _ => {
            let mut region = Raster::<T>::extract(src, width, channels, cols.clone(), rows.clone());
            if alpha {
                region.pixels_mut().for_each(T::premultiply);
            }
            if let Some(win) = &horizontal {
                let all = 0..region.height;
                region = T::convolve_rows::<T>(
                    &region.data,
                    region.width,
                    channels,
                    cols.start,
                    all,
                    win,
                );
            }
            region
        }
    };
    if let Some(win) = &vertical {
        region = region.convolve_cols(rows.start, win);
    }
    if alpha {
        region.pixels_mut().for_each(T::unpremultiply);
    }
    region
}

/// Source range read by a set of windows.
fn span<W>(windows: &[Window<W>]) -> Range<usize> {
    let start = windows.iter().map(|w| w.start).min().unwrap_or(0);
    let end = windows
        .iter()
        .map(|w| w.start + w.weights.len())
        .max()
        .unwrap_or(0);
    start..end
}

/// Pillow's NEAREST resize (`ImagingScaleAffine`): the source coordinate is accumulated
/// by repeated addition, not multiplication, so rounding drift is reproduced exactly.
fn nearest_indices(in_size: usize, out_size: usize, outputs: Range<usize>) -> Vec<Option<usize>> {
    // The box edges are C floats, the step a double.
    let step = f64::from(in_size as f32) / out_size as f64;
    let mut pos = step * 0.5;
    let mut map = Vec::with_capacity(outputs.len());
    for i in 0..outputs.end {
        if i >= outputs.start {
            // COORD(): truncation toward zero; positions are never negative here.
            map.push(Some(pos as usize).filter(|&x| x < in_size));
        }
        pos += step;
    }
    map
}

/// Pillow's `bicubic_filter` (a = -0.5), evaluated with the same operation order.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output sample's taps: source indices `start..start + weights.len()`.
struct Window<W> {
    start: usize,
    weights: Vec<W>,
}

/// Pillow's `precompute_coeffs` for the output indices in `outputs` only.
fn windows<T: Sample>(
    in_size: usize,
    out_size: usize,
    outputs: Range<usize>,
) -> Vec<Window<T::Weight>> {
    let scale = f64::from(in_size as f32) / out_size as f64;
    // Antialiasing: widen the kernel when downscaling.
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let inv = 1.0 / filter_scale;
    outputs
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C `(int)` casts truncate toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            Window {
                start: xmin as usize,
                weights: T::weights(&k),
            }
        })
        .collect()
}

/// A sample type Pillow resamples: `u8` bands (fixed point) or `I` integers (double).
trait Sample: Copy + Default {
    type Weight: Copy;
    type Acc: Copy;
    /// Whether LA/RGBA-style premultiplication applies.
    const HAS_PREMULTIPLY: bool;
    fn weights(normalised: &[f64]) -> Vec<Self::Weight>;
    /// The sum before the first tap.
    fn start() -> Self::Acc;
    fn tap(acc: Self::Acc, sample: Self, weight: Self::Weight) -> Self::Acc;
    /// Rounds and clips the sum to an output sample.
    fn finish(acc: Self::Acc) -> Self;
    fn premultiply(_pixel: &mut [Self]) {}
    fn unpremultiply(_pixel: &mut [Self]) {}

    /// Horizontal pass over `rows` of a `stride`-pixel-wide interleaved buffer whose column 0
    /// is source column `origin`: one output column per window. Taps are summed in order.
    fn convolve_rows<S: Copy>(
        src: &[S],
        stride: usize,
        channels: usize,
        origin: usize,
        rows: Range<usize>,
        windows: &[Window<Self::Weight>],
    ) -> Raster<Self>
    where
        Self: From<S>,
    {
        // Monomorphised per channel count so the per-tap loop over channels unrolls.
        let kernel = match channels {
            1 => row_in_order::<S, Self, 1>,
            2 => row_in_order::<S, Self, 2>,
            3 => row_in_order::<S, Self, 3>,
            _ => row_in_order::<S, Self, 4>,
        };
        Raster::horizontal(src, stride, channels, origin, rows, windows, kernel)
    }
}

/// Computes one row of the horizontal pass: (source row, windows, output row).
type RowKernel<S, T> = fn(&[S], &[Window<<T as Sample>::Weight>], &mut [T]);

/// One row of the horizontal pass, each output sample summed tap by tap in Pillow's order.
fn row_in_order<S: Copy, T: Sample + From<S>, const CH: usize>(
    src: &[S],
    windows: &[Window<T::Weight>],
    dst: &mut [T],
) {
    for (win, px) in windows.iter().zip(dst.chunks_exact_mut(CH)) {
        let taps = &src[win.start * CH..][..win.weights.len() * CH];
        let mut acc = [T::start(); CH];
        for (sample, &weight) in taps.chunks_exact(CH).zip(&win.weights) {
            for c in 0..CH {
                acc[c] = T::tap(acc[c], T::from(sample[c]), weight);
            }
        }
        for (v, a) in px.iter_mut().zip(acc) {
            *v = T::finish(a);
        }
    }
}

impl Sample for u8 {
    type Weight = i32;
    type Acc = i32;
    const HAS_PREMULTIPLY: bool = true;

    /// `normalize_coeffs_8bpc`: round half away from zero to 22 fractional bits.
    fn weights(normalised: &[f64]) -> Vec<i32> {
        let one = f64::from(1u32 << PRECISION_BITS);
        normalised
            .iter()
            .map(|&k| {
                if k < 0.0 {
                    (-0.5 + k * one) as i32
                } else {
                    (0.5 + k * one) as i32
                }
            })
            .collect()
    }

    /// Pillow starts at one half so that the final shift rounds.
    fn start() -> i32 {
        1 << (PRECISION_BITS - 1)
    }

    fn tap(acc: i32, sample: u8, weight: i32) -> i32 {
        acc + i32::from(sample) * weight
    }

    /// `clip8`: arithmetic shift (floor), then clamp.
    fn finish(acc: i32) -> u8 {
        (acc >> PRECISION_BITS).clamp(0, 255) as u8
    }

    /// `rgbA2rgba` / `lA2la`: colour * alpha / 255 with Pillow's MULDIV255 rounding.
    fn premultiply(pixel: &mut [u8]) {
        if let Some((&mut alpha, colour)) = pixel.split_last_mut() {
            for v in colour {
                let t = u32::from(*v) * u32::from(alpha) + 128;
                *v = (((t >> 8) + t) >> 8) as u8;
            }
        }
    }

    /// `rgba2rgbA` / `la2lA`: truncating division, untouched when alpha is 0 or 255.
    fn unpremultiply(pixel: &mut [u8]) {
        if let Some((&mut alpha, colour)) = pixel.split_last_mut() {
            if alpha != 0 && alpha != 255 {
                for v in colour {
                    *v = (255 * u32::from(*v) / u32::from(alpha)).min(255) as u8;
                }
            }
        }
    }
}

impl Sample for i32 {
    type Weight = f64;
    type Acc = f64;
    const HAS_PREMULTIPLY: bool = false;

    fn weights(normalised: &[f64]) -> Vec<f64> {
        normalised.to_vec()
    }

    fn start() -> f64 {
        0.0
    }

    /// `ImagingResample*_32bpc` accumulates in double precision.
    fn tap(acc: f64, sample: i32, weight: f64) -> f64 {
        acc + f64::from(sample) * weight
    }

    /// `ROUND_UP`: half away from zero.
    fn finish(acc: f64) -> i32 {
        (if acc >= 0.0 { acc + 0.5 } else { acc - 0.5 }) as i32
    }
}

/// Interleaved samples of a rectangle.
struct Raster<T> {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<T>,
}

impl<T: Sample> Raster<T> {
    fn new(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            data: vec![T::default(); width * height * channels],
        }
    }

    fn pixels_mut(&mut self) -> std::slice::ChunksExactMut<'_, T> {
        self.data.chunks_exact_mut(self.channels)
    }

    /// Copies `cols x rows` out of a `src_width`-wide interleaved buffer.
    fn extract<S: Copy>(
        src: &[S],
        src_width: usize,
        channels: usize,
        cols: Range<usize>,
        rows: Range<usize>,
    ) -> Self
    where
        T: From<S>,
    {
        let mut data = Vec::with_capacity(cols.len() * rows.len() * channels);
        for y in rows.clone() {
            let line = &src
                [(y * src_width + cols.start) * channels..(y * src_width + cols.end) * channels];
            data.extend(line.iter().map(|&v| T::from(v)));
        }
        Self {
            width: cols.len(),
            height: rows.len(),
            channels,
            data,
        }
    }

    /// Picks source pixels by index; `None` leaves the pixel zero (Pillow's fill).
    fn gather<S: Copy>(
        src: &[S],
        src_width: usize,
        channels: usize,
        cols: &[Option<usize>],
        rows: &[Option<usize>],
    ) -> Self
    where
        T: From<S>,
    {
        let mut out = Self::new(cols.len(), rows.len(), channels);
        for (y, sy) in rows.iter().enumerate() {
            let Some(sy) = sy else { continue };
            for (x, sx) in cols.iter().enumerate() {
                let Some(sx) = sx else { continue };
                let from = (sy * src_width + sx) * channels;
                let to = (y * out.width + x) * channels;
                for c in 0..channels {
                    out.data[to + c] = T::from(src[from + c]);
                }
            }
        }
        out
    }

    /// Runs `kernel` over `rows` of a `stride`-pixel-wide buffer whose column 0 is source
    /// column `origin`; `kernel` gets whole rows of `src`, indexed by source column.
    fn horizontal<S: Copy>(
        src: &[S],
        stride: usize,
        channels: usize,
        origin: usize,
        rows: Range<usize>,
        windows: &[Window<T::Weight>],
        kernel: RowKernel<S, T>,
    ) -> Self {
        let mut out = Self::new(windows.len(), rows.len(), channels);
        let width = windows.len() * channels;
        // Shift the windows so that they index the row slice as given.
        let shifted: Vec<Window<T::Weight>> = windows
            .iter()
            .map(|w| Window {
                start: w.start - origin,
                weights: w.weights.clone(),
            })
            .collect();
        let lines = src[rows.start * stride * channels..].chunks_exact(stride * channels);
        for (line, dst) in lines.zip(out.data.chunks_exact_mut(width)) {
            kernel(line, &shifted, dst);
        }
        out
    }

    /// Vertical pass; `origin` is the source row of `self`'s first row.
    fn convolve_cols(&self, origin: usize, windows: &[Window<T::Weight>]) -> Self {
        let stride = self.width * self.channels;
        let mut out = Self::new(self.width, windows.len(), self.channels);
        let mut acc = vec![T::start(); stride];
        for (win, dst) in windows.iter().zip(out.data.chunks_exact_mut(stride)) {
            acc.fill(T::start());
            let rows = self.data[(win.start - origin) * stride..].chunks_exact(stride);
            for (row, &weight) in rows.zip(&win.weights) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a = T::tap(*a, v, weight);
                }
            }
            for (v, &a) in dst.iter_mut().zip(&acc) {
                *v = T::finish(a);
            }
        }
        out
    }

    /// `convert("RGB")`, with `to_rgb` mapping one pixel's samples.
    fn to_rgb(&self, to_rgb: impl Fn(&[T]) -> [u8; 3]) -> RgbImage {
        RgbImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            let at = (y as usize * self.width + x as usize) * self.channels;
            Rgb(to_rgb(&self.data[at..at + self.channels]))
        })
    }
}
