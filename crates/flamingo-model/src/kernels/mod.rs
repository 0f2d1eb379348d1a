//! CPU matrix multiply for the model's linear layers: `y = x · Wᵀ (+ b)` with the weight packed
//! once at load time into 16-column panels (`[panel][k][16]`), so a decode step streams every
//! weight exactly once, front to back, at memory bandwidth, and a prefill reuses each panel from
//! cache across many rows.
//!
//! Every output element is one fused multiply-add chain over `k` in order, started from zero, so
//! a row's result does not depend on how many other rows share the call, on the tile it lands
//! in, on the thread count or on the instruction set (AVX-512, AVX2 and the portable path agree
//! bit for bit). That keeps a sequence's tokens the same alone or in any batch.

pub mod attention;
pub mod elementwise;
pub mod heads;
mod packed;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use packed::{PackedMatrix, WeightDtype};

/// Which implementation runs the tiles; chosen once per process from the CPU's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run `self` (the SIMD paths are undefined behaviour elsewhere).
    pub fn runs_here(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => matches!(best_isa(), Isa::Avx2 | Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => best_isa() == Isa::Avx512,
        }
    }

    /// Every implementation this CPU can run (for tests that compare them).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if matches!(best, Isa::Avx2 | Isa::Avx512) {
                all.push(Isa::Avx2);
            }
            if best == Isa::Avx512 {
                all.push(Isa::Avx512);
            }
        }
        all
    }
}

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every kernel it calls on this thread single-threaded: for callers that already
/// split their work over the pool (attention heads, whole images side by side), where splitting
/// each kernel again would only add hand-offs.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Whether kernels called here should stay on this thread (see [`serial`]).
pub fn in_serial() -> bool {
    SERIAL.with(|s| s.get())
}

/// Runs `f` on a thread of the kernels' pool, so that the many short parallel calls it makes
/// (one per layer and projection in a decode step) are shared out from inside the pool instead of
/// each one waking the calling thread back up through the OS when it ends.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

pub fn best_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// Output buffer shared by parallel tasks that each write a disjoint part of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: users write disjoint ranges and wait for every task before touching the buffer.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr())
    }

    /// A method (not field access) so closures capture the Sync wrapper, not the raw pointer.
    ///
    /// # Safety
    /// `offset..offset + len` lies in the buffer and no other task writes it concurrently.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }

    /// # Safety
    /// As [`SharedOut::at`].
    pub(crate) unsafe fn write(self, offset: usize, values: &[f32]) {
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.at(offset), values.len());
    }
}

/// Deterministic test inputs in [-1, 1) (xorshift), shared by the kernel tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_region_ends_with_its_closure_even_when_it_panics() {
        assert!(!in_serial());
        serial(|| {
            assert!(in_serial());
            serial(|| assert!(in_serial()));
            assert!(in_serial(), "an inner region must not end the outer one");
        });
        assert!(!in_serial());
        let caught = std::panic::catch_unwind(|| serial(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(
            !in_serial(),
            "a panic must not leave kernels single-threaded"
        );
    }

    #[test]
    fn on_pool_runs_the_closure_on_a_pool_thread() {
        assert_eq!(rayon::current_thread_index(), None);
        let (index, value) = on_pool(|| (rayon::current_thread_index(), 41 + 1));
        assert!(index.is_some());
        assert_eq!(value, 42);
    }
}
