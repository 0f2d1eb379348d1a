//! Panel packing of a `[n, k]` weight and the threaded, cache-blocked driver around the tiles.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{Isa, SharedOut};

pub const PANEL: usize = 16;
/// Panels interleaved per k step: a tile reading four panels reads one 256-byte run per step
/// (one prefetch stream, no cache-set aliasing between panels `k · 64` bytes apart).
pub const GROUP: usize = 4;

/// Where panel `p` starts and how many elements separate its successive k rows.
#[inline]
pub fn panel_layout(p: usize, k: usize, panels: usize) -> (usize, usize) {
    let group = p / GROUP;
    let width = GROUP.min(panels - group * GROUP) * PANEL;
    (group * GROUP * PANEL * k + (p % GROUP) * PANEL, width)
}
/// Rows of `x` processed against one panel group before moving on: `ROW_BLOCK × k` floats stay
/// in L2 while the thread's panels stream past them.
const ROW_BLOCK: usize = 96;
/// Below this many multiply-adds a call runs on the calling thread (spawn cost dominates).
const PARALLEL_MIN_FMAS: usize = 1 << 16;

/// Element types a packed weight can be stored in; every product is computed in f32.
pub trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::BF16 => 2,
        }
    }
}

/// 64-byte aligned storage so every panel row is one cache line (f32) or half of one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

#[derive(Clone)]
enum Panels {
    F32(Vec<Line>),
    F16(Vec<Line>),
    BF16(Vec<Line>),
}

/// A `[n, k]` (out × in) weight in panel layout `[ceil(n/16)][k][16]`, zero-padded past `n`.
#[derive(Clone)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    panels: Panels,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({}x{}, {:?})", self.n, self.k, self.dtype())
    }
}

/// Where the weight comes from: `[n, k]` rows (nn.Linear) or its transpose `[k, n]`, each row
/// `stride` values after the previous one (a head's columns inside wider projection rows).
#[derive(Clone, Copy)]
enum Source<'a> {
    Rows { w: &'a [f32], stride: usize },
    Transposed { w: &'a [f32], stride: usize },
}

/// Packs in parallel for large weights; small ones (attention operands built per call) inline.
const PARALLEL_PACK_MIN: usize = 1 << 20;

fn pack<E: Elem>(src: Source, n: usize, k: usize) -> Vec<Line> {
    let panels = n.div_ceil(PANEL);
    let elems = panels * k * PANEL;
    let bytes = elems * std::mem::size_of::<E>();
    let mut lines = vec![Line([0; 64]); bytes.div_ceil(64)];
    // SAFETY: `lines` holds at least `elems` values of E (plain old data, alignment ≤ 64).
    let dst = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut E, elems) };
    let fill = |(g, group): (usize, &mut [E])| {
        for p in g * GROUP..(g * GROUP + GROUP).min(panels) {
            let (offset, stride) = panel_layout(p, k, panels);
            let offset = offset - g * GROUP * PANEL * k;
            let lanes = PANEL.min(n - p * PANEL);
            // Contiguous writes of each k row; the zero padding past `n` is already there.
            for kk in 0..k {
                let out = &mut group[offset + kk * stride..][..lanes];
                match src {
                    Source::Rows { w, stride } => {
                        for (lane, o) in out.iter_mut().enumerate() {
                            *o = E::from_f32(w[(p * PANEL + lane) * stride + kk]);
                        }
                    }
                    Source::Transposed { w, stride } => {
                        let row = &w[kk * stride + p * PANEL..][..lanes];
                        for (o, v) in out.iter_mut().zip(row) {
                            *o = E::from_f32(*v);
                        }
                    }
                }
            }
        }
    };
    if elems >= PARALLEL_PACK_MIN && !super::in_serial() {
        dst.par_chunks_mut(GROUP * PANEL * k)
            .enumerate()
            .for_each(fill);
    } else {
        dst.chunks_mut(GROUP * PANEL * k).enumerate().for_each(fill);
    }
    lines
}

impl PackedMatrix {
    /// `w` is row-major `[n, k]` (PyTorch's `nn.Linear.weight` layout).
    pub fn new(w: &[f32], n: usize, k: usize, dtype: WeightDtype) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight has {} values, expected {n}x{k}",
            w.len()
        );
        Self::packed(Source::Rows { w, stride: k }, n, k, dtype)
    }

    /// Like [`PackedMatrix::new`] with row `i` at `w[i * stride..][..k]`.
    pub fn new_strided(w: &[f32], n: usize, k: usize, stride: usize, dtype: WeightDtype) -> Self {
        assert!(
            stride >= k && (n == 0 || w.len() >= (n - 1) * stride + k),
            "{} values do not hold {n} rows of {k} every {stride}",
            w.len()
        );
        Self::packed(Source::Rows { w, stride }, n, k, dtype)
    }

    /// From `w_t`, the row-major `[k, n]` transpose (e.g. attention values `[tokens, dim]` as
    /// the weight of `probabilities · values`).
    pub fn from_transposed(w_t: &[f32], n: usize, k: usize, dtype: WeightDtype) -> Self {
        assert_eq!(
            w_t.len(),
            n * k,
            "weight has {} values, expected {k}x{n}",
            w_t.len()
        );
        Self::packed(Source::Transposed { w: w_t, stride: n }, n, k, dtype)
    }

    /// Like [`PackedMatrix::from_transposed`] with row `i` of the transpose at
    /// `w_t[i * stride..][..n]`.
    pub fn from_transposed_strided(
        w_t: &[f32],
        n: usize,
        k: usize,
        stride: usize,
        dtype: WeightDtype,
    ) -> Self {
        assert!(
            stride >= n && (k == 0 || w_t.len() >= (k - 1) * stride + n),
            "{} values do not hold {k} rows of {n} every {stride}",
            w_t.len()
        );
        Self::packed(Source::Transposed { w: w_t, stride }, n, k, dtype)
    }

    fn packed(src: Source, n: usize, k: usize, dtype: WeightDtype) -> Self {
        let panels = match dtype {
            WeightDtype::F32 => Panels::F32(pack::<f32>(src, n, k)),
            WeightDtype::F16 => Panels::F16(pack::<f16>(src, n, k)),
            WeightDtype::BF16 => Panels::BF16(pack::<bf16>(src, n, k)),
        };
        Self { n, k, panels }
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    pub fn in_dim(&self) -> usize {
        self.k
    }

    pub fn dtype(&self) -> WeightDtype {
        match self.panels {
            Panels::F32(_) => WeightDtype::F32,
            Panels::F16(_) => WeightDtype::F16,
            Panels::BF16(_) => WeightDtype::BF16,
        }
    }

    /// `out[m, n] = x[m, k] · Wᵀ (+ bias)` with the best instruction set of this CPU.
    pub fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        self.matmul_with(super::best_isa(), x, m, bias, out)
    }

    /// [`PackedMatrix::matmul`] into a new vector (written once, never zero-filled first).
    pub fn matmul_to_vec(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), m * self.k, "input is not [{m}, {}]", self.k);
        let mut out = Vec::with_capacity(m * self.n);
        // SAFETY: x holds m rows of k; `out` has room for m rows of n, and the tiles store every
        // one of those elements before the length covers them.
        unsafe {
            self.matmul_strided(x.as_ptr(), self.k, m, out.as_mut_ptr(), self.n);
            out.set_len(m * self.n);
        }
        if let Some(b) = bias {
            add_bias(&mut out, b);
        }
        out
    }

    pub fn matmul_with(
        &self,
        isa: Isa,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        assert!(isa.runs_here(), "{isa:?} is not supported by this CPU");
        assert_eq!(x.len(), m * self.k, "input is not [{m}, {}]", self.k);
        assert_eq!(out.len(), m * self.n, "output is not [{m}, {}]", self.n);
        // SAFETY: the asserts above: x holds m rows of k, out m rows of n.
        unsafe { self.dispatch(isa, x.as_ptr(), self.k, m, out.as_mut_ptr(), self.n) };
        if let Some(b) = bias {
            add_bias(out, b);
        }
    }

    /// `out[i * ldo..][..n] = x[i * ldx..][..k] · Wᵀ` for rows `i < m`: rows read from inside
    /// wider rows and written into wider rows (one head of a multi-head projection).
    ///
    /// # Safety
    /// `x` is valid for reads of `m` rows of `k` every `ldx`, `out` for writes of `m` rows of `n`
    /// every `ldo`, and nothing else touches those output elements during the call.
    pub unsafe fn matmul_strided(
        &self,
        x: *const f32,
        ldx: usize,
        m: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        assert!(
            ldx >= self.k && ldo >= self.n,
            "row strides shorter than rows"
        );
        self.dispatch(super::best_isa(), x, ldx, m, out, ldo)
    }

    unsafe fn dispatch(
        &self,
        isa: Isa,
        x: *const f32,
        ldx: usize,
        m: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        match &self.panels {
            Panels::F32(l) => self.run::<f32>(isa, l, x, ldx, m, out, ldo),
            Panels::F16(l) => self.run::<f16>(isa, l, x, ldx, m, out, ldo),
            Panels::BF16(l) => self.run::<bf16>(isa, l, x, ldx, m, out, ldo),
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn run<E: Elem + KernelElem>(
        &self,
        isa: Isa,
        lines: &[Line],
        x: *const f32,
        ldx: usize,
        m: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        if m == 0 || self.n == 0 {
            return;
        }
        let (n, k) = (self.n, self.k);
        let panels = n.div_ceil(PANEL);
        let (x, out_ptr) = (SharedIn(x), SharedOut(out));
        // One task: rows r0..r1 (in L2-sized blocks) against panels p0..p1.
        let task = |(r0, r1): (usize, usize), (p0, p1): (usize, usize)| {
            for b0 in (r0..r1).step_by(ROW_BLOCK) {
                let rows = ROW_BLOCK.min(r1 - b0);
                // SAFETY: rows b0..b0+rows and panels p0..p1 are in bounds of x, w and out;
                // concurrent tasks own disjoint (row range, panel range) blocks of the output.
                unsafe {
                    E::block(
                        isa,
                        Block {
                            x: x.at(b0 * ldx),
                            ldx,
                            rows,
                            w: lines.as_ptr() as *const E,
                            k,
                            panels: p0..p1,
                            n,
                            out: out_ptr.at(b0 * ldo),
                            ldo,
                        },
                    )
                };
            }
        };
        let threads = rayon::current_num_threads();
        if threads <= 1 || super::in_serial() || m * n * k < PARALLEL_MIN_FMAS {
            task((0, m), (0, panels));
            return;
        }
        let (row_splits, col_splits) = split_work(m, panels, threads);
        let rows_per = m.div_ceil(row_splits);
        let groups_per = panels.div_ceil(4).div_ceil(col_splits);
        let tasks: Vec<((usize, usize), (usize, usize))> = (0..row_splits)
            .flat_map(|i| (0..col_splits).map(move |j| (i, j)))
            .map(|(i, j)| {
                let rows = (i * rows_per, ((i + 1) * rows_per).min(m));
                let cols = (j * groups_per * 4, ((j + 1) * groups_per * 4).min(panels));
                (rows, cols)
            })
            .filter(|((r0, r1), (p0, p1))| r0 < r1 && p0 < p1)
            .collect();
        tasks
            .into_par_iter()
            .for_each(|(rows, cols)| task(rows, cols));
    }
}

fn add_bias(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
    }
}

/// How many row ranges × panel-group ranges to cut a call into: about four tasks per thread
/// (so uneven ones even out), splitting rows only in whole row blocks and preferring column
/// splits, which keep every weight read once.
fn split_work(m: usize, panels: usize, threads: usize) -> (usize, usize) {
    let target = threads * 4;
    let groups = panels.div_ceil(4);
    let col_splits = groups.min(target).max(1);
    let row_blocks = m.div_ceil(ROW_BLOCK);
    let row_splits = target.div_ceil(col_splits).min(row_blocks).max(1);
    (row_splits, col_splits)
}

/// Input rows shared by parallel tasks (read only).
#[derive(Clone, Copy)]
struct SharedIn(*const f32);

// SAFETY: only read, while the caller keeps the rows alive and unchanged for the call.
unsafe impl Send for SharedIn {}
unsafe impl Sync for SharedIn {}

impl SharedIn {
    /// A method so closures capture the Sync wrapper. # Safety: `offset` is in bounds.
    unsafe fn at(self, offset: usize) -> *const f32 {
        self.0.add(offset)
    }
}

/// One unit of work for a tile walker: `rows` rows of `x` (stride `ldx`) against panels
/// `panels` of the packed weight `w`, written into `out` (rows of stride `ldo`).
pub struct Block<E> {
    pub x: *const f32,
    pub ldx: usize,
    pub rows: usize,
    pub w: *const E,
    pub k: usize,
    pub panels: std::ops::Range<usize>,
    pub n: usize,
    pub out: *mut f32,
    pub ldo: usize,
}

/// Dispatch from a weight element type to the tile implementations of each instruction set.
pub trait KernelElem: Elem {
    /// # Safety
    /// The block's pointers cover its rows and panels; `isa` runs on this CPU.
    unsafe fn block(isa: Isa, job: Block<Self>) {
        match isa {
            Isa::Portable => portable_block(job),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Self::avx2(job),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Self::avx512(job),
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2(job: Block<Self>);

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx512(job: Block<Self>);
}

/// The reference semantics every SIMD path must reproduce bit for bit.
unsafe fn portable_block<E: Elem>(job: Block<E>) {
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
    for p in panels {
        let (offset, stride) = panel_layout(p, k, total);
        let panel = w.add(offset);
        for lane in 0..PANEL.min(n - p * PANEL) {
            for r in 0..rows {
                let xr = x.add(r * ldx);
                let mut acc = 0f32;
                for kk in 0..k {
                    acc = (*xr.add(kk)).mul_add((*panel.add(kk * stride + lane)).to_f32(), acc);
                }
                *out.add(r * ldo + p * PANEL + lane) = acc;
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl KernelElem for f32 {}
#[cfg(not(target_arch = "x86_64"))]
impl KernelElem for f16 {}
#[cfg(not(target_arch = "x86_64"))]
impl KernelElem for bf16 {}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, dtype: WeightDtype) -> Vec<f64> {
        let round = |v: f32| match dtype {
            WeightDtype::F32 => v,
            WeightDtype::F16 => f16::from_f32(v).to_f32(),
            WeightDtype::BF16 => bf16::from_f32(v).to_f32(),
        };
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| x[r * k + i] as f64 * round(w[c * k + i]) as f64)
                    .sum();
            }
        }
        out
    }

    /// Shapes that exercise partial panels, partial panel groups and partial row tiles.
    const SHAPES: [(usize, usize, usize); 6] = [
        (1, 16, 8),
        (3, 37, 19),
        (7, 64, 33),
        (13, 100, 70),
        (100, 81, 64),
        (1, 1000, 300),
    ];

    #[test]
    fn matches_a_float64_reference_for_every_isa_and_dtype() {
        for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::BF16] {
            for &(m, n, k) in &SHAPES {
                let (x, w) = (values(m * k, 1), values(n * k, 2));
                let packed = PackedMatrix::new(&w, n, k, dtype);
                let expect = naive(&x, &w, m, n, k, dtype);
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; m * n];
                    packed.matmul_with(isa, &x, m, None, &mut out);
                    for (i, (o, e)) in out.iter().zip(&expect).enumerate() {
                        let tol = 1e-5 * (k as f64).sqrt();
                        assert!(
                            (*o as f64 - e).abs() <= tol,
                            "{isa:?} {dtype:?} {m}x{n}x{k} [{i}]: {o} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_isa_gives_identical_bits() {
        for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::BF16] {
            for &(m, n, k) in &SHAPES {
                let (x, w) = (values(m * k, 3), values(n * k, 4));
                let packed = PackedMatrix::new(&w, n, k, dtype);
                let run = |isa| {
                    let mut out = vec![0f32; m * n];
                    packed.matmul_with(isa, &x, m, None, &mut out);
                    out
                };
                let portable = run(Isa::Portable);
                for isa in Isa::available() {
                    assert_eq!(run(isa), portable, "{isa:?} {dtype:?} {m}x{n}x{k}");
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_any_batch() {
        let (n, k) = (300, 200);
        let w = values(n * k, 5);
        let packed = PackedMatrix::new(&w, n, k, WeightDtype::F32);
        let x = values(150 * k, 6);
        let mut all = vec![0f32; 150 * n];
        packed.matmul(&x, 150, None, &mut all);
        for (row, m) in [(0, 1), (5, 7), (149, 150), (77, 100)] {
            let start = row + 1 - m.min(row + 1);
            let mut out = vec![0f32; m * n];
            packed.matmul(&x[start * k..(start + m) * k], m, None, &mut out);
            let local = row - start;
            assert_eq!(
                &out[local * n..(local + 1) * n],
                &all[row * n..(row + 1) * n],
                "row {row} in a batch of {m}"
            );
        }
    }

    #[test]
    fn packing_the_transpose_gives_the_same_matrix() {
        let (m, n, k) = (5, 37, 21);
        let (x, w) = (values(m * k, 11), values(n * k, 12));
        let mut w_t = vec![0f32; n * k];
        for r in 0..n {
            for c in 0..k {
                w_t[c * n + r] = w[r * k + c];
            }
        }
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        PackedMatrix::new(&w, n, k, WeightDtype::F32).matmul(&x, m, None, &mut a);
        PackedMatrix::from_transposed(&w_t, n, k, WeightDtype::F32).matmul(&x, m, None, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn strided_rows_in_and_out_give_the_same_bits_as_contiguous_ones() {
        let (m, n, k, pad) = (7, 37, 21, 5);
        let (x, w) = (values(m * k, 13), values(n * k, 14));
        let mut expect = vec![0f32; m * n];
        PackedMatrix::new(&w, n, k, WeightDtype::F32).matmul(&x, m, None, &mut expect);
        // The same matrices inside wider rows, at a column offset.
        let widen = |v: &[f32], rows: usize, cols: usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|r| [&[9.0; 2][..], &v[r * cols..(r + 1) * cols], &[9.0; 3][..]].concat())
                .collect()
        };
        let (xs, ws) = (widen(&x, m, k), widen(&w, n, k));
        let mut w_t = vec![0f32; k * n];
        for r in 0..n {
            for c in 0..k {
                w_t[c * n + r] = w[r * k + c];
            }
        }
        let w_ts = widen(&w_t, k, n);
        for packed in [
            PackedMatrix::new_strided(&ws[2..], n, k, k + pad, WeightDtype::F32),
            PackedMatrix::from_transposed_strided(&w_ts[2..], n, k, n + pad, WeightDtype::F32),
        ] {
            let ldo = n + 4;
            let mut out = vec![f32::NAN; m * ldo];
            // SAFETY: xs holds m rows of k every k + pad from offset 2; out m rows of ldo.
            unsafe { packed.matmul_strided(xs[2..].as_ptr(), k + pad, m, out.as_mut_ptr(), ldo) };
            for r in 0..m {
                assert_eq!(
                    &out[r * ldo..r * ldo + n],
                    &expect[r * n..(r + 1) * n],
                    "row {r}"
                );
                assert!(out[r * ldo + n..(r + 1) * ldo].iter().all(|v| v.is_nan()));
            }
        }
    }

    #[test]
    fn bias_is_added_per_column() {
        let (m, n, k) = (2, 20, 5);
        let (x, w, b) = (values(m * k, 7), values(n * k, 8), values(n, 9));
        let packed = PackedMatrix::new(&w, n, k, WeightDtype::F32);
        let (mut plain, mut biased) = (vec![0f32; m * n], vec![0f32; m * n]);
        packed.matmul(&x, m, None, &mut plain);
        packed.matmul(&x, m, Some(&b), &mut biased);
        for (i, (p, q)) in plain.iter().zip(&biased).enumerate() {
            assert_eq!(p + b[i % n], *q);
        }
    }
}
