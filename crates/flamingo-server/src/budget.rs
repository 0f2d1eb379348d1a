//! A byte budget shared by blocking threads (image decoding): a caller reserves what it is
//! about to allocate and waits while others hold the budget, so concurrent decodes of large
//! images cannot together exhaust the host. A reservation larger than the whole budget still
//! runs, alone, once nothing else holds any (the per-image limits bound it already).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct MemoryBudget {
    total: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// Why a reservation was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `give_up` said stop (the client left).
    Cancelled,
    /// The deadline passed while waiting.
    TimedOut,
}

/// Held bytes; released on drop.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: usize,
}

impl MemoryBudget {
    pub fn new(total: usize) -> Self {
        Self {
            total: total.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `bytes` fit (or nothing else is held), polling `give_up` while it waits.
    pub fn reserve(
        &self,
        bytes: usize,
        deadline: Instant,
        give_up: impl Fn() -> bool,
    ) -> Result<Reservation<'_>, Refused> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *used == 0 || *used + bytes <= self.total {
                *used += bytes;
                return Ok(Reservation {
                    budget: self,
                    bytes,
                });
            }
            if give_up() {
                return Err(Refused::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Refused::TimedOut);
            }
            // Woken by every release; the timeout only bounds how late a cancellation is seen.
            let wait = (deadline - now).min(Duration::from_millis(50));
            used = self
                .freed
                .wait_timeout(used, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn later(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn reservations_add_up_and_release_on_drop() {
        let b = MemoryBudget::new(100);
        let r1 = b.reserve(60, later(0), || false).unwrap();
        assert_eq!(b.used(), 60);
        assert_eq!(
            b.reserve(50, later(30), || false).unwrap_err(),
            Refused::TimedOut
        );
        let r2 = b.reserve(40, later(0), || false).unwrap();
        assert_eq!(b.used(), 100);
        drop((r1, r2));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn an_oversized_reservation_runs_alone() {
        let b = MemoryBudget::new(10);
        let big = b.reserve(500, later(0), || false).unwrap();
        assert_eq!(
            b.reserve(1, later(20), || false).unwrap_err(),
            Refused::TimedOut
        );
        drop(big);
        assert!(b.reserve(1, later(0), || false).is_ok());
    }

    #[test]
    fn a_waiter_is_woken_by_a_release_and_sees_cancellation() {
        let b = Arc::new(MemoryBudget::new(10));
        let held = b.reserve(10, later(0), || false).unwrap();
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || b2.reserve(5, later(5_000), || false).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert!(waiter.join().unwrap());

        let _held = b.reserve(10, later(0), || false).unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let (b3, c3) = (b.clone(), cancel.clone());
        let waiter = std::thread::spawn(move || {
            b3.reserve(5, later(60_000), || c3.load(Ordering::SeqCst))
                .unwrap_err()
        });
        cancel.store(true, Ordering::SeqCst);
        assert_eq!(waiter.join().unwrap(), Refused::Cancelled);
    }
}
