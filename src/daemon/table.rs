//! The open connections, by slot and by the pid of the child that serves each.
//!
//! Slots are reserved once and reused (freed slots first): a vector grown by
//! doubling would leave its freed smaller copies resident, which was most of
//! what 1,000 connections cost. The pid index is a vector of (pid, slot)
//! sorted by pid, reserved the same way: 8 bytes a connection, found by a
//! binary search, and inserted at its end almost always, since the kernel
//! hands out pids in increasing order until they wrap (a hash map would
//! grow by doubling, and touch its pages at random).

use crate::sys::process::Pid;

/// Slots reserved at start-up at most (untouched pages cost nothing).
const MAX_RESERVED: usize = 1 << 16;

pub(super) struct Table<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    index: Vec<(Pid, u32)>,
}

impl<T> Table<T> {
    /// A table for about `expected` entries at once.
    pub(super) fn new(expected: usize) -> Self {
        let reserved = expected.min(MAX_RESERVED);
        Table {
            slots: Vec::with_capacity(reserved),
            free: Vec::new(),
            index: Vec::with_capacity(reserved),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Adds the entry of `pid`, which has none (a live child's pid is unique).
    pub(super) fn insert(&mut self, pid: Pid, value: T) {
        let Err(at) = self.find(pid) else {
            unreachable!("pid {pid} is in the table already");
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(at, (pid, slot));
    }

    pub(super) fn get(&self, pid: Pid) -> Option<&T> {
        let at = self.find(pid).ok()?;
        self.slots[self.index[at].1 as usize].as_ref()
    }

    pub(super) fn get_mut(&mut self, pid: Pid) -> Option<&mut T> {
        let at = self.find(pid).ok()?;
        self.slots[self.index[at].1 as usize].as_mut()
    }

    /// Takes the entry of `pid` out; its slot is free again.
    pub(super) fn remove(&mut self, pid: Pid) -> Option<T> {
        let at = self.find(pid).ok()?;
        let (_, slot) = self.index.remove(at);
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    /// Every pid in the table, in increasing order.
    pub(super) fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.index.iter().map(|&(pid, _)| pid)
    }

    fn find(&self, pid: Pid) -> Result<usize, usize> {
        self.index.binary_search_by_key(&pid, |&(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    #[test]
    fn finds_by_pid_and_reuses_slots() {
        let mut table = Table::new(4);
        for n in [10, 11, 12] {
            table.insert(pid(n), n * 100);
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.get_mut(pid(11)), Some(&mut 1100));
        assert_eq!(table.remove(pid(11)), Some(1100));
        assert_eq!(table.remove(pid(11)), None);
        assert_eq!(table.get_mut(pid(11)), None);
        table.insert(pid(13), 1300);
        assert_eq!(table.slots.len(), 3, "the freed slot is reused");
        assert_eq!(table.get_mut(pid(13)), Some(&mut 1300));
        assert_eq!(table.get_mut(pid(10)), Some(&mut 1000));
        assert_eq!(
            table.pids().collect::<Vec<_>>(),
            [pid(10), pid(12), pid(13)]
        );
    }

    #[test]
    fn pids_that_wrap_stay_in_order() {
        let mut table = Table::new(0);
        for n in [4_194_300, 4_194_303, 300, 301, 2] {
            table.insert(pid(n), n);
        }
        assert_eq!(
            table.pids().collect::<Vec<_>>(),
            [2, 300, 301, 4_194_300, 4_194_303].map(pid)
        );
        for n in [301, 4_194_300, 2] {
            assert_eq!(table.remove(pid(n)), Some(n));
        }
        assert_eq!(table.pids().collect::<Vec<_>>(), [pid(300), pid(4_194_303)]);
        assert_eq!(table.len(), 2);
    }
}
