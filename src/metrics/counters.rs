//! Counters cheap enough for the data path: a relaxed atomic add, no lock, no lookup.
//!
//! A labelled counter is an array indexed by a closed enum (`Label`), so the number of
//! series is fixed when the code is compiled and no name from the network (a user, a
//! room) can ever become a label.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::sync::Locked;

/// A closed set of label values.
pub trait Label: Copy + 'static {
    /// Every value, in index order.
    const ALL: &'static [Self];
    fn index(self) -> usize;
    fn as_str(self) -> &'static str;
}

/// Declares a fieldless enum that is a [`Label`]: `labels! { pub Dir { In => "in", Out => "out" } }`.
#[macro_export]
macro_rules! labels {
    ($(#[$meta:meta])* $vis:vis $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $crate::metrics::Label for $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];
            fn index(self) -> usize {
                self as usize
            }
            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

/// A counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Values that every core updates at once (counters bumped per relayed packet or batch): each
/// thread updates its own slot, on cache lines of its own, and a read folds the slots. A plain
/// `Counter` bumped from several cores moves its cache line between them on every add, which
/// serialises the cores on the data path.
#[derive(Debug)]
pub struct PerThread<T> {
    slots: Box<[Padded<T>]>,
}

/// Two cache lines: x86 prefetches lines in adjacent pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T: Default> Default for PerThread<T> {
    fn default() -> Self {
        // Twice the cores, so that the runtime's workers rarely share a slot (threads take
        // slots in turn as they first count); a power of two, for a mask.
        // Asked once: the call reads cgroup files.
        static CORES: OnceLock<usize> = OnceLock::new();
        let cores =
            *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
        let slots = (cores * 2).next_power_of_two();
        PerThread {
            slots: (0..slots).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> PerThread<T> {
    /// The calling thread's slot.
    #[inline]
    pub fn mine(&self) -> &T {
        &self.slots[thread_slot() & (self.slots.len() - 1)].0
    }

    /// The sum of `value` over every slot.
    pub fn sum(&self, value: impl Fn(&T) -> u64) -> u64 {
        self.slots.iter().map(|s| value(&s.0)).sum()
    }
}

impl PerThread<Counter> {
    #[inline]
    pub fn inc(&self) {
        self.mine().inc();
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.mine().add(n);
    }

    pub fn get(&self) -> u64 {
        self.sum(Counter::get)
    }
}

/// The calling thread's number, given in turn to threads as they first ask.
#[inline]
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

/// One counter per value of `L`.
#[derive(Debug)]
pub struct ByLabel<L> {
    counts: Box<[Counter]>,
    label: PhantomData<L>,
}

impl<L: Label> Default for ByLabel<L> {
    fn default() -> Self {
        ByLabel {
            counts: L::ALL.iter().map(|_| Counter::default()).collect(),
            label: PhantomData,
        }
    }
}

impl<L: Label> ByLabel<L> {
    pub fn inc(&self, label: L) {
        self.counts[label.index()].inc();
    }

    pub fn add(&self, label: L, n: u64) {
        self.counts[label.index()].add(n);
    }

    pub fn get(&self, label: L) -> u64 {
        self.counts[label.index()].get()
    }

    /// Every label with its count, zeros included (a series should exist before its first event).
    pub fn iter(&self) -> impl Iterator<Item = (L, u64)> + '_ {
        L::ALL.iter().map(|&l| (l, self.get(l)))
    }
}

/// Counters of rare events whose label is one of a fixed set of static names
/// (the address classes of the peer policy); a lock is fine off the data path.
#[derive(Debug, Default)]
pub struct ByName(Mutex<BTreeMap<&'static str, u64>>);

impl ByName {
    pub fn inc(&self, name: &'static str) {
        *self.0.locked().entry(name).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let map = self.0.locked();
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::labels! {
        Dir { In => "in", Out => "out" }
    }

    #[test]
    fn per_thread_counters_add_up_what_every_thread_counted() {
        let c = PerThread::<Counter>::default();
        std::thread::scope(|s| {
            for _ in 0..3 * c.slots.len() {
                s.spawn(|| {
                    c.inc();
                    c.add(9);
                });
            }
        });
        assert_eq!(c.get(), 30 * c.slots.len() as u64);
    }

    #[test]
    fn labelled_counters_count_per_label_and_list_zeros() {
        let c = ByLabel::<Dir>::default();
        c.inc(Dir::Out);
        c.add(Dir::Out, 4);
        assert_eq!(c.iter().collect::<Vec<_>>(), [(Dir::In, 0), (Dir::Out, 5)]);
        assert_eq!(Dir::Out.as_str(), "out");
    }
}
