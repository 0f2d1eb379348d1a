//! Acceptance tests for `flamingo_model::preprocess` against the tiny-openflamingo fixtures
//! (224 px with OpenAI CLIP's mean/std, and 112 px with ImageNet's), whose crops and pixel values
//! were produced by Pillow 9.5 + torchvision 0.15 + open_clip 2.16.

#[macro_use]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use flamingo_model::preprocess::{
    decode, decode_source, normalize, preprocess, probe, resize_and_crop, resize_and_crop_with,
    ImageError, ImageLimits, PixelSpec, Resample, CLIP_MEAN, CLIP_STD, IMAGE_SIZE,
};
use flamingo_model::resolve_config;
use flamingo_model::{LoadOptions, ModelPaths};
use image::{DynamicImage, RgbImage};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tiny-openflamingo"
);
const NAMES: [&str; 4] = ["gradient", "checker", "stripes", "rings"];
/// OpenFlamingo-9B's preprocessing (and the first fixture's).
const CLIP: PixelSpec = PixelSpec::CLIP_224;

per_fixture!(
    resize_and_crop_matches_pillow_reference_crops,
    normalize_matches_golden_pixel_values,
    preprocess_end_to_end_is_bit_exact,
    probe_reads_fixture_headers,
);

fn fixture_bytes(rel: &str) -> Vec<u8> {
    bytes_in(Path::new(FIXTURE), rel)
}

fn bytes_in(dir: &Path, rel: &str) -> Vec<u8> {
    let path = dir.join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn goldens(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&bytes_in(dir, "goldens.json")).expect("goldens.json")
}

/// What the fixture's files declare, read as the model loader reads them.
fn spec_of(dir: &Path) -> PixelSpec {
    resolve_config(&ModelPaths::from_dir(dir).unwrap(), &LoadOptions::default())
        .unwrap()
        .pixels
}

fn input_bytes(name: &str) -> Vec<u8> {
    fixture_bytes(&format!("images/{name}.png"))
}

/// The reference uint8 crop (right before ToTensor) as written by the fixture generator.
fn reference_crop(dir: &Path, name: &str) -> RgbImage {
    let bytes = bytes_in(dir, &format!("images/preprocessed/{name}.png"));
    match decode(&bytes, &ImageLimits::default()).expect("reference crop decodes") {
        DynamicImage::ImageRgb8(img) => img,
        other => panic!(
            "reference crop {name} is {:?}, expected RGB8",
            other.color()
        ),
    }
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

fn resize_and_crop_matches_pillow_reference_crops(dir: &Path) {
    let goldens = goldens(dir);
    let spec = spec_of(dir);
    for name in NAMES {
        let bytes = bytes_in(dir, &format!("images/{name}.png"));
        let source = decode_source(&bytes, &ImageLimits::default()).unwrap();
        let crop = source.resize_and_crop(&spec);
        assert_eq!(crop.dimensions(), (spec.size as u32, spec.size as u32));
        // Fixture inputs are RGB PNGs, so the plain bicubic entry point agrees.
        assert_eq!(source.resample, Resample::Bicubic);
        assert_eq!(resize_and_crop(&source.image, &spec), crop);

        let reference = reference_crop(dir, name);
        let diff = max_abs_diff(crop.as_raw(), reference.as_raw());
        let sha = sha256_hex(crop.as_raw());
        let expected_sha = goldens["images"][name]["resized_cropped_rgb_u8_sha256"]
            .as_str()
            .unwrap();
        println!(
            "{name}: max abs diff {diff}, sha256 match {}",
            sha == expected_sha
        );
        assert!(diff <= 2, "{name}: max abs diff {diff} > 2");
        assert_eq!(sha, expected_sha, "{name}: crop is not bit-exact");
    }
}

fn normalize_matches_golden_pixel_values(dir: &Path) {
    let goldens = goldens(dir);
    let spec = spec_of(dir);
    for name in NAMES {
        let golden = &goldens["images"][name]["pixel_values"];
        let values = normalize(&reference_crop(dir, name), &spec);
        assert_eq!(values.len(), spec.values_per_image());
        let shape: Vec<u64> = golden["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(shape, [3, spec.size as u64, spec.size as u64]);

        let first = golden["first"].as_array().unwrap();
        for (i, want) in first.iter().enumerate() {
            let want = want.as_f64().unwrap();
            assert!(
                (f64::from(values[i]) - want).abs() < 1e-6,
                "{name} first[{i}]"
            );
        }
        let last = golden["last"].as_array().unwrap();
        let tail = &values[values.len() - last.len()..];
        for (got, want) in tail.iter().zip(last) {
            assert!(
                (f64::from(*got) - want.as_f64().unwrap()).abs() < 1e-6,
                "{name} last"
            );
        }

        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let abs_sum: f64 = values.iter().map(|&v| f64::from(v).abs()).sum();
        let l2 = values
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        let close = |got: f64, key: &str| {
            let want = golden[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{name} {key}: {got} vs {want}"
            );
        };
        close(sum, "sum");
        close(abs_sum, "abs_sum");
        close(l2, "l2");

        let sha = sha256_hex(&f32_le_bytes(&values));
        assert_eq!(
            sha,
            golden["sha256_f32le"].as_str().unwrap(),
            "{name}: f32 bytes"
        );
    }
}

fn preprocess_end_to_end_is_bit_exact(dir: &Path) {
    let goldens = goldens(dir);
    let spec = spec_of(dir);
    for name in NAMES {
        let bytes = bytes_in(dir, &format!("images/{name}.png"));
        let values = preprocess(&bytes, &ImageLimits::default(), &spec).unwrap();
        let want = goldens["images"][name]["pixel_values"]["sha256_f32le"]
            .as_str()
            .unwrap();
        assert_eq!(sha256_hex(&f32_le_bytes(&values)), want, "{name}");
    }
}

/// Bit patterns of `numpy.float32` of open_clip's OPENAI_DATASET_MEAN / STD.
#[test]
fn clip_constants_are_torch_float32_values() {
    let bits = |v: [f32; 3]| v.map(f32::to_bits);
    assert_eq!(bits(CLIP_MEAN), [0x3ef6813a, 0x3eea685e, 0x3ed100ff]);
    assert_eq!(bits(CLIP_STD), [0x3e8989d0, 0x3e85c974, 0x3e8d32a8]);
    assert_eq!(
        (CLIP.mean, CLIP.std, CLIP.size),
        (CLIP_MEAN, CLIP_STD, IMAGE_SIZE)
    );
    assert_eq!(PixelSpec::default(), CLIP);
}

/// The fixtures declare different preprocessing, so each one's pixels differ from what the
/// other's spec would make of the same crop (a spec that is ignored cannot pass both).
#[test]
fn fixtures_declare_different_pixel_specs() {
    let [a, b] = common::FIXTURES.map(|n| spec_of(&common::fixture_path(n)));
    assert_eq!(a, CLIP);
    assert_eq!(b.size, 112);
    assert_ne!(a.mean, b.mean);
    assert_ne!(a.std, b.std);
    let crop = reference_crop(&common::fixture_path(common::FIXTURES[1]), "checker");
    assert_ne!(normalize(&crop, &a), normalize(&crop, &b));
}

fn probe_reads_fixture_headers(dir: &Path) {
    let sizes = [
        ("gradient", 224, 224),
        ("checker", 300, 200),
        ("stripes", 180, 240),
        ("rings", 256, 256),
    ];
    for (name, width, height) in sizes {
        let bytes = bytes_in(dir, &format!("images/{name}.png"));
        let info = probe(&bytes, &ImageLimits::default()).unwrap();
        assert_eq!(
            (info.format, info.width, info.height),
            ("png", width, height)
        );
    }
}

/// PNG signature + IHDR (8-bit RGB) with a correct CRC, and nothing else.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(width.to_be_bytes());
    chunk.extend(height.to_be_bytes());
    chunk.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&chunk);
    png.extend(crc32(&chunk).to_be_bytes());
    png
}

#[test]
fn huge_png_header_is_refused_without_decoding() {
    let header = png_header(50_000, 50_000);
    let limits = ImageLimits::default();
    let started = Instant::now();
    let err = probe(&header, &limits).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "probe took {:?}",
        started.elapsed()
    );
    assert!(err.is_too_large(), "{err}");
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 50_000,
                height: 50_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(decode(&header, &limits).unwrap_err().is_too_large());
    assert!(preprocess(&header, &limits, &CLIP)
        .unwrap_err()
        .is_too_large());

    // Within width/height limits but over the pixel budget.
    let err = probe(&png_header(8000, 8000), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 8000,
                height: 8000,
                ..
            }
        ),
        "{err:?}"
    );

    // A sane header without image data is malformed, not too large.
    let err = probe(&png_header(64, 48), &limits).unwrap_err();
    assert!(matches!(err, ImageError::Decode(_)), "{err:?}");
    assert!(!err.is_too_large());
}

#[test]
fn payload_errors_are_classified() {
    let limits = ImageLimits::default();
    assert!(matches!(probe(&[], &limits), Err(ImageError::Empty)));

    let bytes = input_bytes("checker");
    let tight = ImageLimits {
        max_bytes: bytes.len() - 1,
        ..ImageLimits::default()
    };
    let err = preprocess(&bytes, &tight, &CLIP).unwrap_err();
    assert!(
        matches!(err, ImageError::TooManyBytes { .. }) && err.is_too_large(),
        "{err:?}"
    );

    let small_canvas = ImageLimits {
        max_width: 299,
        ..ImageLimits::default()
    };
    let err = decode(&bytes, &small_canvas).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 300,
                height: 200,
                ..
            }
        ),
        "{err:?}"
    );
    let few_pixels = ImageLimits {
        max_pixels: 300 * 200 - 1,
        ..ImageLimits::default()
    };
    assert!(decode(&bytes, &few_pixels).unwrap_err().is_too_large());

    for unsupported in [
        &b"II*\0\x08\0\0\0 tiff"[..],
        b"not an image at all",
        b"\0\0\0\0",
    ] {
        let err = preprocess(unsupported, &limits, &CLIP).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat(_)), "{err:?}");
        assert!(!err.is_too_large());
    }

    let truncated = &bytes[..bytes.len() / 2];
    let err = preprocess(truncated, &limits, &CLIP).unwrap_err();
    assert!(matches!(err, ImageError::Decode(_)), "{err:?}");
}

#[test]
fn crops_of_unusual_geometries() {
    // Already 224x224: unchanged.
    let source = decode(&input_bytes("gradient"), &ImageLimits::default()).unwrap();
    assert_eq!(
        resize_and_crop(&source, &CLIP).as_raw(),
        source.to_rgb8().as_raw()
    );
    // No pixels: a black crop rather than a panic.
    let empty = DynamicImage::new_rgb8(0, 0);
    for spec in [CLIP, PixelSpec::square(112, CLIP_MEAN, CLIP_STD)] {
        let crop = resize_and_crop(&empty, &spec);
        assert_eq!(crop.dimensions(), (spec.size as u32, spec.size as u32));
        assert!(crop.pixels().all(|p| p.0 == [0, 0, 0]));
    }
    // Extreme aspect ratios only compute the crop window, at every declared size.
    let other = PixelSpec {
        resize: 128,
        ..PixelSpec::square(112, CLIP_MEAN, CLIP_STD)
    };
    for spec in [CLIP, PixelSpec::square(112, CLIP_MEAN, CLIP_STD), other] {
        for (w, h) in [(1, 1), (1, 8192), (8192, 1), (3, 2)] {
            let img = DynamicImage::new_rgba8(w, h);
            for resample in [Resample::Bicubic, Resample::Nearest] {
                let crop = resize_and_crop_with(&img, resample, &spec);
                assert_eq!(crop.dimensions(), (spec.size as u32, spec.size as u32));
            }
        }
    }
    assert_eq!(normalize(&RgbImage::new(2, 3), &CLIP).len(), 18);
}

/// A resize target larger than the crop (HF `size.shortest_edge` > `crop_size`) crops the
/// center of the resized image: the same as resizing to that size and cropping its center.
#[test]
fn resize_larger_than_crop_takes_the_center() {
    let source = decode(&input_bytes("rings"), &ImageLimits::default()).unwrap();
    let spec = PixelSpec {
        resize: 128,
        ..PixelSpec::square(112, CLIP_MEAN, CLIP_STD)
    };
    let crop = resize_and_crop(&source, &spec);
    assert_eq!(crop.dimensions(), (112, 112));
    // rings is square: resized to 128x128 by the 128 spec, whose centre 112x112 starts at 8.
    let full = resize_and_crop(&source, &PixelSpec::square(128, CLIP_MEAN, CLIP_STD));
    let centre = image::imageops::crop_imm(&full, 8, 8, 112, 112).to_image();
    assert_eq!(crop, centre);
}

/// `PixelSpec::check` refuses what cannot be served.
#[test]
fn pixel_spec_checks() {
    assert!(CLIP.check().is_ok());
    let bad = [
        PixelSpec::square(0, CLIP_MEAN, CLIP_STD),
        PixelSpec {
            resize: 100,
            ..PixelSpec::square(112, CLIP_MEAN, CLIP_STD)
        },
        PixelSpec::square(112, [f32::NAN, 0.0, 0.0], CLIP_STD),
        PixelSpec::square(112, CLIP_MEAN, [0.2, -0.1, 0.2]),
        PixelSpec::square(112, CLIP_MEAN, [0.2, f32::INFINITY, 0.2]),
    ];
    for spec in bad {
        assert!(spec.check().is_err(), "{spec:?}");
    }
}

/// Pillow resizes palette images with nearest neighbour; a 2x2 palette PNG upscaled to
/// 224x224 must therefore stay four flat quadrants.
#[test]
fn palette_png_uses_nearest_neighbour() {
    // 2x2, 8-bit palette: red, green / blue, white.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut push_chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    push_chunk(b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 2, 8, 3, 0, 0, 0]);
    push_chunk(b"PLTE", &[255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]);
    // zlib stored block holding the filtered scanlines [0, 0, 1] and [0, 2, 3].
    let raw = [0u8, 0, 1, 0, 2, 3];
    let mut zlib = vec![0x78, 0x01, 0x01, 6, 0, !6, 0xFF];
    zlib.extend(raw);
    zlib.extend(adler32(&raw).to_be_bytes());
    push_chunk(b"IDAT", &zlib);
    push_chunk(b"IEND", &[]);

    let source = decode_source(&png, &ImageLimits::default()).unwrap();
    assert_eq!(source.resample, Resample::Nearest);
    let crop = source.resize_and_crop(&CLIP);
    assert_eq!(crop.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(crop.get_pixel(111, 111).0, [255, 0, 0]);
    assert_eq!(crop.get_pixel(112, 0).0, [0, 255, 0]);
    assert_eq!(crop.get_pixel(0, 112).0, [0, 0, 255]);
    assert_eq!(crop.get_pixel(223, 223).0, [255, 255, 255]);
}

/// Tiny inputs in other Pillow modes (RGBA, LA, I, 1, P from GIF/BMP, lossy WebP) with the
/// SHA-256 of Pillow 9.5's crop, generated alongside this file (see `pillow_crops.json`).
#[test]
fn small_inputs_in_other_modes_match_pillow_crops() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/pillow_crops.json")).unwrap())
            .unwrap();
    let cases = manifest.as_object().unwrap();
    assert!(cases.len() >= 7);
    for (file, case) in cases {
        let bytes = std::fs::read(format!("{dir}/{file}")).unwrap();
        let source = decode_source(&bytes, &ImageLimits::default()).unwrap();
        let crop = source.resize_and_crop(&CLIP);
        let sum: u64 = crop.as_raw().iter().map(|&v| u64::from(v)).sum();
        assert_eq!(
            (sha256_hex(crop.as_raw()).as_str(), sum),
            (
                case["crop_sha256"].as_str().unwrap(),
                case["crop_byte_sum"].as_u64().unwrap()
            ),
            "{file} (Pillow mode {})",
            case["pil_mode"]
        );
    }
}

/// Random, truncated and bit-flipped payloads must produce `Err`, never a panic.
#[test]
fn fuzzed_payloads_never_panic() {
    let limits = ImageLimits {
        max_pixels: 4_000_000,
        ..ImageLimits::default()
    };
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seeds: Vec<Vec<u8>> = NAMES.iter().map(|name| input_bytes(name)).collect();
    let magics: [&[u8]; 6] = [
        b"\x89PNG\r\n\x1a\n",
        b"\xFF\xD8\xFF\xE0",
        b"GIF89a",
        b"BM",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"RIFF\0\0\0\0WEBPVP8L",
    ];
    for round in 0..300 {
        let bytes = match round % 3 {
            0 => {
                let seed = &seeds[rng.below(seeds.len())];
                seed[..rng.below(seed.len())].to_vec()
            }
            1 => {
                let mut bytes = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                bytes
            }
            _ => {
                let mut bytes = magics[rng.below(magics.len())].to_vec();
                bytes.extend((0..rng.below(512)).map(|_| rng.next() as u8));
                bytes
            }
        };
        let _ = probe(&bytes, &limits);
        let _ = preprocess(&bytes, &limits, &CLIP);
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &byte| {
        (0..8).fold(crc ^ u32::from(byte), |c, _| {
            (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg())
        })
    })
}

fn adler32(data: &[u8]) -> u32 {
    let (a, b) = data.iter().fold((1u32, 0u32), |(a, b), &x| {
        let a = (a + u32::from(x)) % 65_521;
        (a, (b + a) % 65_521)
    });
    (b << 16) | a
}

/// Minimal SHA-256 (FIPS 180-4) so the goldens' hashes can be checked without a dev-dependency.
fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend((data.len() as u64 * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (state, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *state = state.wrapping_add(v);
        }
    }
    h.iter().map(|v| format!("{v:08x}")).collect()
}

#[test]
fn sha256_helper_matches_known_vectors() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let long = vec![b'a'; 1000];
    assert_eq!(
        sha256_hex(&long),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
}
