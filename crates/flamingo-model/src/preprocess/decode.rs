//! Decoding, and recovering the mode Pillow's `Image.open` would give the file.

use image::{DynamicImage, Rgb, RgbImage, Rgba};

use super::probe::{decode_limits, from_image_error, guarded, probe, reader_for};
use super::{ImageError, ImageLimits, Resample, SourceImage};

/// Decodes the first frame, refusing anything over `limits` before allocating it.
///
/// Use [`decode_source`] (or [`preprocess`](super::preprocess)) to get Pillow's exact behaviour for
/// palette images, which need nearest-neighbour resizing.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, ImageError> {
    decode_source(bytes, limits).map(|source| source.image)
}

/// Decodes like [`decode`] and also reports the resize filter Pillow would use.
pub fn decode_source(bytes: &[u8], limits: &ImageLimits) -> Result<SourceImage, ImageError> {
    let info = probe(bytes, limits)?;
    let (mut reader, _) = reader_for(bytes)?;
    reader.limits(decode_limits(limits));
    let image = guarded(|| decode_first_frame(reader, decode_limits(limits)))
        .map_err(|e| from_image_error(e, Some(&info)))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(ImageError::Decode("image has no pixels".into()));
    }
    let facts = SourceFacts::sniff(info.format, bytes);
    Ok(SourceImage {
        image: facts.apply(image),
        resample: facts.resample,
        info,
    })
}

/// `ImageReader::decode`, except that 8-bit images are decoded into a buffer allocated by
/// [`pixel_buffer`] (same limits: the decoder may allocate `max_alloc` less the pixels).
fn decode_first_frame(
    reader: super::probe::SliceReader<'_>,
    mut limits: image::Limits,
) -> image::ImageResult<DynamicImage> {
    use image::{ColorType, ImageBuffer, ImageDecoder};
    let mut decoder = reader.into_decoder()?;
    limits.reserve(decoder.total_bytes())?;
    decoder.set_limits(limits)?;
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    if !matches!(
        color,
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8
    ) {
        return DynamicImage::from_decoder(decoder);
    }
    let len = usize::try_from(decoder.total_bytes()).map_err(|_| {
        image::ImageError::Limits(image::error::LimitError::from_kind(
            image::error::LimitErrorKind::InsufficientMemory,
        ))
    })?;
    let mut buf = pixel_buffer(len);
    decoder.read_image(&mut buf)?;
    let image = match color {
        ColorType::L8 => ImageBuffer::from_raw(width, height, buf).map(DynamicImage::ImageLuma8),
        ColorType::La8 => ImageBuffer::from_raw(width, height, buf).map(DynamicImage::ImageLumaA8),
        ColorType::Rgb8 => ImageBuffer::from_raw(width, height, buf).map(DynamicImage::ImageRgb8),
        _ => ImageBuffer::from_raw(width, height, buf).map(DynamicImage::ImageRgba8),
    };
    image.ok_or_else(|| {
        image::ImageError::Parameter(image::error::ParameterError::from_kind(
            image::error::ParameterErrorKind::DimensionMismatch,
        ))
    })
}

/// A zeroed buffer for decoded pixels. A 12-megapixel RGB image is 36 MB: faulting that in 4 KiB
/// pages costs ~15 ms on the benchmark machine, a third of the JPEG decode, so on Linux the
/// 2 MiB-aligned middle of a large fresh buffer is marked for transparent huge pages (a hint:
/// without THP `madvise` mode it changes nothing; it never changes the contents).
fn pixel_buffer(len: usize) -> Vec<u8> {
    let buf = vec![0u8; len];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        if len >= 4 * HUGE {
            let start = (buf.as_ptr() as usize).next_multiple_of(HUGE);
            let end = (buf.as_ptr() as usize + len) & !(HUGE - 1);
            if end > start {
                // SAFETY: the range lies inside `buf`'s allocation; MADV_HUGEPAGE only sets a
                // paging policy on it and leaves the memory and its contents as they are.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
    buf
}

/// What Pillow's `Image.open` would make of a file, as far as preprocessing cares.
struct SourceFacts {
    resample: Resample,
    /// Whether Pillow's mode has an alpha band (`LA`/`RGBA`); if not, any alpha the
    /// `image` crate synthesised from `tRNS`/palette transparency is dropped.
    keep_alpha: bool,
    gif_canvas: Option<GifCanvas>,
}

/// GIF pixels outside the first frame's rectangle: Pillow fills them with the
/// transparent index (else index 0), `image` with transparent black.
struct GifCanvas {
    frame: [u32; 4],
    rgb: [u8; 3],
}

impl SourceFacts {
    const PLAIN: Self = Self {
        resample: Resample::Bicubic,
        keep_alpha: true,
        gif_canvas: None,
    };

    fn sniff(format: &str, bytes: &[u8]) -> Self {
        match format {
            "png" => png_facts(bytes),
            "gif" => gif_facts(bytes).unwrap_or(Self {
                resample: Resample::Nearest,
                keep_alpha: false,
                gif_canvas: None,
            }),
            "bmp" => bmp_facts(bytes).unwrap_or(Self::PLAIN),
            _ => Self::PLAIN,
        }
    }

    fn apply(&self, image: DynamicImage) -> DynamicImage {
        let image = match (&self.gif_canvas, image) {
            (Some(canvas), DynamicImage::ImageRgba8(mut buf)) => {
                canvas.paint(&mut buf);
                DynamicImage::ImageRgba8(buf)
            }
            (_, image) => image,
        };
        let image = if self.keep_alpha {
            image
        } else {
            drop_alpha(image)
        };
        high_bytes(&image).unwrap_or(image)
    }
}

impl GifCanvas {
    fn paint(&self, buf: &mut image::RgbaImage) {
        let [x0, y0, x1, y1] = self.frame;
        let [r, g, b] = self.rgb;
        for (x, y, px) in buf.enumerate_pixels_mut() {
            if x < x0 || x >= x1 || y < y0 || y >= y1 {
                *px = Rgba([r, g, b, 255]);
            }
        }
    }
}

fn png_facts(bytes: &[u8]) -> SourceFacts {
    // IHDR is always the first chunk: bit depth at byte 24, colour type at byte 25.
    let (depth, colour) = (bytes.get(24).copied(), bytes.get(25).copied());
    let palette_like = colour == Some(3) || (colour == Some(0) && depth == Some(1));
    SourceFacts {
        resample: if palette_like {
            Resample::Nearest
        } else {
            Resample::Bicubic
        },
        keep_alpha: matches!(colour, Some(4 | 6)),
        gif_canvas: None,
    }
}

/// Mirrors GifImagePlugin 9.5: the first frame is `P`, or `L` when its palette is the
/// identity grey ramp (`_is_palette_needed` is false).
fn gif_facts(bytes: &[u8]) -> Option<SourceFacts> {
    let flags = *bytes.get(10)?;
    let mut pos = 13;
    let mut global = None;
    if flags & 0x80 != 0 {
        let len = 3 << ((flags & 7) + 1);
        global = Some(bytes.get(pos..pos + len)?);
        pos += len;
    }
    let mut transparency = None;
    loop {
        match *bytes.get(pos)? {
            0x21 => {
                let block = gif_sub_block(bytes, pos + 2)?;
                // Graphic control extension: bit 0 of the packed byte flags a transparent index.
                if bytes[pos + 1] == 0xF9 && block.len() >= 4 && block[0] & 1 != 0 {
                    transparency = Some(block[3]);
                }
                pos = gif_skip_sub_blocks(bytes, pos + 2)?;
            }
            0x2C => {
                let desc = bytes.get(pos + 1..pos + 10)?;
                let field = |i: usize| u32::from(u16::from_le_bytes([desc[i], desc[i + 1]]));
                let (x0, y0) = (field(0), field(2));
                let frame = [x0, y0, x0 + field(4), y0 + field(6)];
                let local = if desc[8] & 0x80 != 0 {
                    let len = 3 << ((desc[8] & 7) + 1);
                    Some(bytes.get(pos + 10..pos + 10 + len)?)
                } else {
                    None
                };
                let palette = match local {
                    Some(p) => (!is_grey_ramp(p)).then_some(p),
                    None => global.filter(|p| !is_grey_ramp(p)),
                };
                let index = transparency.unwrap_or(0);
                let rgb = palette
                    .and_then(|p| p.get(usize::from(index) * 3..usize::from(index) * 3 + 3))
                    .map_or([index; 3], |c| [c[0], c[1], c[2]]);
                return Some(SourceFacts {
                    resample: if palette.is_some() {
                        Resample::Nearest
                    } else {
                        Resample::Bicubic
                    },
                    keep_alpha: false,
                    gif_canvas: Some(GifCanvas { frame, rgb }),
                });
            }
            _ => return None,
        }
    }
}

fn gif_sub_block(bytes: &[u8], pos: usize) -> Option<&[u8]> {
    let len = usize::from(*bytes.get(pos)?);
    bytes.get(pos + 1..pos + 1 + len)
}

fn gif_skip_sub_blocks(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = usize::from(*bytes.get(pos)?);
        pos += 1 + len;
        if len == 0 {
            return Some(pos);
        }
    }
}

fn is_grey_ramp(palette: &[u8]) -> bool {
    palette
        .chunks(3)
        .enumerate()
        .all(|(i, c)| c.len() == 3 && c.iter().all(|&v| usize::from(v) == i))
}

/// Mirrors BmpImagePlugin 9.5: <= 8-bit files are `P`, unless the palette is grey
/// (black/white for 2 colours -> `1`, the identity ramp otherwise -> `L`).
fn bmp_facts(bytes: &[u8]) -> Option<SourceFacts> {
    let header_size = u32::from_le_bytes(bytes.get(14..18)?.try_into().ok()?) as usize;
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let (bits, colours, stride) = match header_size {
        12 => (u16_at(24)?, 0, 3),
        40 | 64 | 108 | 124 => {
            let colours = u32::from_le_bytes(bytes.get(46..50)?.try_into().ok()?);
            (u16_at(28)?, colours as usize, 4)
        }
        _ => return None,
    };
    if !matches!(bits, 1 | 4 | 8) {
        return Some(SourceFacts::PLAIN);
    }
    let colours = if colours == 0 { 1 << bits } else { colours };
    let palette = bytes.get(14 + header_size..)?;
    let grey = |i: usize, v: usize| {
        palette
            .get(i * stride..i * stride + 3)
            .is_some_and(|c| c.iter().all(|&x| usize::from(x) == v))
    };
    let is_grey = if colours == 2 {
        grey(0, 0) && grey(1, 255)
    } else {
        colours <= 256 && (0..colours).all(|i| grey(i, i))
    };
    Some(SourceFacts {
        resample: if is_grey && colours != 2 {
            Resample::Bicubic
        } else {
            Resample::Nearest
        },
        ..SourceFacts::PLAIN
    })
}

fn drop_alpha(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLumaA8(buf) => DynamicImage::ImageLuma8(image::GrayImage::from_fn(
            buf.width(),
            buf.height(),
            |x, y| image::Luma([buf.get_pixel(x, y)[0]]),
        )),
        DynamicImage::ImageRgba8(buf) => {
            DynamicImage::ImageRgb8(RgbImage::from_fn(buf.width(), buf.height(), |x, y| {
                let [r, g, b, _] = buf.get_pixel(x, y).0;
                Rgb([r, g, b])
            }))
        }
        DynamicImage::ImageLumaA16(buf) => DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(
            buf.width(),
            buf.height(),
            |x, y| image::Luma([buf.get_pixel(x, y)[0]]),
        )),
        DynamicImage::ImageRgba16(buf) => DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(
            buf.width(),
            buf.height(),
            |x, y| {
                let [r, g, b, _] = buf.get_pixel(x, y).0;
                Rgb([r, g, b])
            },
        )),
        other => other,
    }
}

/// Pillow opens 16-bit RGB(A)/LA PNGs as 8-bit by keeping the high byte of each sample
/// (only 16-bit grey becomes the 32-bit `I` mode). `None` if `image` needs no change.
pub(super) fn high_bytes(image: &DynamicImage) -> Option<DynamicImage> {
    let narrow = |v: u16| (v >> 8) as u8;
    Some(match image {
        DynamicImage::ImageLumaA16(buf) => DynamicImage::ImageLumaA8(image::ImageBuffer::from_fn(
            buf.width(),
            buf.height(),
            |x, y| image::LumaA(buf.get_pixel(x, y).0.map(narrow)),
        )),
        DynamicImage::ImageRgb16(buf) => {
            DynamicImage::ImageRgb8(RgbImage::from_fn(buf.width(), buf.height(), |x, y| {
                Rgb(buf.get_pixel(x, y).0.map(narrow))
            }))
        }
        DynamicImage::ImageRgba16(buf) => DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
            buf.width(),
            buf.height(),
            |x, y| Rgba(buf.get_pixel(x, y).0.map(narrow)),
        )),
        _ => return None,
    })
}
