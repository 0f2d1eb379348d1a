//! AVX-512 and AVX2 tiles. A tile keeps `R` rows × `P` panels of accumulators in registers and
//! walks `k` once: per step it loads `P` weight vectors and broadcasts one input value per row.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::packed::{panel_layout, Block, Elem, KernelElem, PANEL};

/// Loading 16 (AVX-512) or 8 (AVX2) consecutive weights as f32 lanes.
trait Load: Elem {
    unsafe fn load16(p: *const Self) -> __m512;
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Load for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Load for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl Load for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
    }
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    }
}

/// Cache lines of a panel group *ahead* that a tile asks for while it computes on the current one,
/// so that the weight stream from memory overlaps the arithmetic of small batches (without it a
/// 16-row call costs the memory time plus the compute time instead of the larger of the two).
#[derive(Clone, Copy)]
struct Prefetch {
    at: *const u8,
    lines_per_step: usize,
}

impl Prefetch {
    const NONE: Prefetch = Prefetch {
        at: std::ptr::null(),
        lines_per_step: 0,
    };

    #[inline(always)]
    unsafe fn step(self, kk: usize) {
        // A prefetch never faults, whatever the address, and wrapping arithmetic is defined.
        let line = self.at.wrapping_add(kk * self.lines_per_step * 64);
        for j in 0..self.lines_per_step.min(4) {
            _mm_prefetch::<_MM_HINT_T1>(line.wrapping_add(j * 64) as *const i8);
        }
    }
}

/// `R` rows × `P` panels; `valid` columns of the last panel are stored (the rest is padding).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn tile512<E: Load, const R: usize, const P: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    wstride: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
    valid: usize,
    prefetch: Prefetch,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for kk in 0..k {
        prefetch.step(kk);
        let mut wv = [_mm512_setzero_ps(); P];
        for (p, v) in wv.iter_mut().enumerate() {
            *v = E::load16(w.add(kk * wstride + p * PANEL));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xb = _mm512_set1_ps(*x.add(r * ldx + kk));
            for (a, v) in row.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xb, *v, *a);
            }
        }
    }
    let last_mask: __mmask16 = if valid >= PANEL {
        0xffff
    } else {
        (1u16 << valid) - 1
    };
    for (r, row) in acc.iter().enumerate() {
        for (p, a) in row.iter().enumerate() {
            let dst = out.add(r * ldo + p * PANEL);
            if p + 1 == P {
                _mm512_mask_storeu_ps(dst, last_mask, *a);
            } else {
                _mm512_storeu_ps(dst, *a);
            }
        }
    }
}

/// AVX2: a 16-column panel is two 8-lane halves; `R` rows × 1 panel.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile256<E: Load, const R: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    wstride: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
    valid: usize,
    prefetch: Prefetch,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for kk in 0..k {
        prefetch.step(kk);
        let lo = E::load8(w.add(kk * wstride));
        let hi = E::load8(w.add(kk * wstride + 8));
        for (r, row) in acc.iter_mut().enumerate() {
            let xb = _mm256_set1_ps(*x.add(r * ldx + kk));
            row[0] = _mm256_fmadd_ps(xb, lo, row[0]);
            row[1] = _mm256_fmadd_ps(xb, hi, row[1]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let dst = out.add(r * ldo);
        if valid >= PANEL {
            _mm256_storeu_ps(dst, row[0]);
            _mm256_storeu_ps(dst.add(8), row[1]);
        } else {
            let mut tmp = [0f32; PANEL];
            _mm256_storeu_ps(tmp.as_mut_ptr(), row[0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), row[1]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, valid);
        }
    }
}

type Tile<E> =
    unsafe fn(*const f32, usize, *const E, usize, usize, *mut f32, usize, usize, Prefetch);

const MAX_R512: usize = 6;
const MAX_P512: usize = 4;
const MAX_R256: usize = 4;

fn tile512_for<E: Load>(r: usize, p: usize) -> Tile<E> {
    macro_rules! pick {
        ($($r:literal),*) => {
            match (r, p) {
                $(
                    ($r, 1) => tile512::<E, $r, 1>,
                    ($r, 2) => tile512::<E, $r, 2>,
                    ($r, 3) => tile512::<E, $r, 3>,
                    ($r, 4) => tile512::<E, $r, 4>,
                )*
                _ => unreachable!("tile {r}x{p}"),
            }
        };
    }
    pick!(1, 2, 3, 4, 5, 6)
}

fn tile256_for<E: Load>(r: usize) -> Tile<E> {
    match r {
        1 => tile256::<E, 1>,
        2 => tile256::<E, 2>,
        3 => tile256::<E, 3>,
        4 => tile256::<E, 4>,
        _ => unreachable!("tile {r}"),
    }
}

/// Walks panel groups of `max_p`, and within each the rows in tiles of up to `max_r`.
unsafe fn walk<E: Load>(
    job: Block<E>,
    max_r: usize,
    max_p: usize,
    tile: fn(usize, usize) -> Tile<E>,
) {
    let Block {
        x,
        ldx,
        rows,
        w,
        k,
        panels,
        n,
        out,
        ldo,
    } = job;
    let total = n.div_ceil(PANEL);
    let tiles = rows.div_ceil(max_r);
    let mut p = panels.start;
    while p < panels.end {
        let np = max_p.min(panels.end - p);
        let (offset, wstride) = panel_layout(p, k, total);
        let valid = n - (p + np - 1) * PANEL;
        // The group after the next one this walk reads (one group ahead arrives too late for a
        // 16-row call: `linear 32003 512`, 16 rows, fastest of 10, medians of 8 alternating
        // runs 5.1 → 4.5 ms), shared out over this group's row tiles.
        let next = p + np + max_p;
        let (next_at, next_lines) = if next < panels.end {
            let (next_offset, next_stride) = panel_layout(next, k, total);
            let bytes = k * next_stride * std::mem::size_of::<E>();
            (w.wrapping_add(next_offset) as *const u8, bytes.div_ceil(64))
        } else {
            (std::ptr::null(), 0)
        };
        let lines_per_tile = next_lines.div_ceil(tiles);
        let lines_per_step = lines_per_tile.div_ceil(k.max(1));
        let mut r = 0;
        let mut t = 0;
        while r < rows {
            let nr = max_r.min(rows - r);
            let prefetch = if next_lines == 0 {
                Prefetch::NONE
            } else {
                Prefetch {
                    at: next_at.wrapping_add(t * lines_per_tile * 64),
                    lines_per_step,
                }
            };
            tile(nr, np)(
                x.add(r * ldx),
                ldx,
                w.add(offset),
                wstride,
                k,
                out.add(r * ldo + p * PANEL),
                ldo,
                valid,
                prefetch,
            );
            r += nr;
            t += 1;
        }
        p += np;
    }
}

macro_rules! kernel_elem {
    ($t:ty) => {
        impl KernelElem for $t {
            unsafe fn avx2(job: Block<Self>) {
                walk(job, MAX_R256, 1, |r, _| tile256_for::<$t>(r))
            }

            unsafe fn avx512(job: Block<Self>) {
                walk(job, MAX_R512, MAX_P512, tile512_for::<$t>)
            }
        }
    };
}

kernel_elem!(f32);
kernel_elem!(f16);
kernel_elem!(bf16);
