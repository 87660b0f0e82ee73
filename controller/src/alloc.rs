//! Allocation pools: segment keys (VNIs, GRE keys), VLAN tags, and the generic machinery that
//! tenant addresses and MACs (see [`crate::ipam`]) are built on.
//!
//! A pool is a range of `u64` values plus a redb table mapping every value in use to the name of
//! the object holding it. Because the table is the only record of what is taken, an allocation is
//! exactly as durable as the write transaction it happens in: if the transaction aborts, the
//! value was never handed out; if it commits, no later transaction can hand it out again until it
//! is released. Several pools can share one table as long as their ranges do not overlap.
//!
//! This module does not decide *which* pool an object draws from or what the values mean; the
//! operations ([`crate::ops`]) and [`crate::ipam`] do that.
//!
//! Layer: pure. A pool works over a table handle that the store's transaction lends it
//! (see [`crate::store::Txn`]); it never opens, commits or aborts a transaction itself.

use std::ops::RangeInclusive;

use ovl_common::SegmentType;
use redb::{ReadableTable, StorageError, Table};

/// A table of taken values, each mapped to the name of its holder.
pub type PoolTable<'txn> = Table<'txn, u64, &'static str>;

/// The lowest VLAN tag a tenant can use (0 means "untagged" in 802.1Q).
pub const VLAN_MIN: u16 = 1;
/// The highest VLAN tag a tenant can use (4095 is reserved by 802.1Q).
pub const VLAN_MAX: u16 = 4094;

/// One pool: what it hands out (for messages) and the range it hands out from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    what: &'static str,
    range: RangeInclusive<u64>,
}

/// The outcome of asking for one particular value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The value is now held by the requested owner.
    Claimed,
    /// Someone already holds the value (possibly the same owner: a claim is not idempotent, so
    /// a double claim shows up as a bug instead of passing silently).
    Taken { holder: String },
    /// The value is outside the pool's range.
    OutOfRange,
}

impl Pool {
    pub fn new(what: &'static str, range: RangeInclusive<u64>) -> Self {
        Self { what, range }
    }

    /// What the pool hands out, such as `VNI` or `VLAN tag`.
    pub fn what(&self) -> &'static str {
        self.what
    }

    pub fn range(&self) -> &RangeInclusive<u64> {
        &self.range
    }

    /// How many values the pool holds in all (0 for an empty range).
    pub fn size(&self) -> u64 {
        if self.range.is_empty() {
            0
        } else {
            (self.range.end() - self.range.start()).saturating_add(1)
        }
    }

    pub fn contains(&self, value: u64) -> bool {
        self.range.contains(&value)
    }

    /// Who holds `value`, if anyone.
    pub fn holder(
        &self,
        table: &impl ReadableTable<u64, &'static str>,
        value: u64,
    ) -> Result<Option<String>, StorageError> {
        Ok(table.get(value)?.map(|g| g.value().to_string()))
    }

    /// Takes one particular value for `owner` (a value the user asked for by name).
    pub fn claim(
        &self,
        table: &mut PoolTable<'_>,
        value: u64,
        owner: &str,
    ) -> Result<Claim, StorageError> {
        if !self.contains(value) {
            return Ok(Claim::OutOfRange);
        }
        if let Some(holder) = self.holder(table, value)? {
            return Ok(Claim::Taken { holder });
        }
        table.insert(value, owner)?;
        Ok(Claim::Claimed)
    }

    /// Takes the lowest free value for `owner`; `None` when the pool is exhausted.
    pub fn allocate(
        &self,
        table: &mut PoolTable<'_>,
        owner: &str,
    ) -> Result<Option<u64>, StorageError> {
        let found = self.lowest_free_in(table, self.range.clone())?;
        if let Some(value) = found {
            table.insert(value, owner)?;
        }
        Ok(found)
    }

    /// Takes the first free value at or after `start`, wrapping around to the start of the
    /// range ("next fit"); `None` when the pool is exhausted. Used where handing a just-freed
    /// value straight back out would confuse caches elsewhere (MACs in peers' forwarding tables).
    pub fn allocate_from(
        &self,
        table: &mut PoolTable<'_>,
        start: u64,
        owner: &str,
    ) -> Result<Option<u64>, StorageError> {
        if self.range.is_empty() {
            return Ok(None);
        }
        let (lo, hi) = (*self.range.start(), *self.range.end());
        let start = start.clamp(lo, hi);
        let mut found = self.lowest_free_in(table, start..=hi)?;
        if found.is_none() && start > lo {
            found = self.lowest_free_in(table, lo..=start - 1)?;
        }
        if let Some(value) = found {
            table.insert(value, owner)?;
        }
        Ok(found)
    }

    /// Gives `value` back, but only if `owner` holds it. Returns whether it was released; a
    /// `false` means the caller's idea of who holds what is wrong, which the store treats as an
    /// inconsistency rather than freeing someone else's value.
    pub fn release(
        &self,
        table: &mut PoolTable<'_>,
        value: u64,
        owner: &str,
    ) -> Result<bool, StorageError> {
        match self.holder(table, value)? {
            Some(holder) if holder == owner => {
                table.remove(value)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Every taken value in this pool's range with its holder, ascending.
    pub fn taken(
        &self,
        table: &impl ReadableTable<u64, &'static str>,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        if self.range.is_empty() {
            return Ok(Vec::new());
        }
        table
            .range(self.range.clone())?
            .map(|entry| entry.map(|(k, v)| (k.value(), v.value().to_string())))
            .collect()
    }

    fn lowest_free_in(
        &self,
        table: &impl ReadableTable<u64, &'static str>,
        range: RangeInclusive<u64>,
    ) -> Result<Option<u64>, StorageError> {
        if range.is_empty() {
            return Ok(None);
        }
        let used = table
            .range(range.clone())?
            .map(|entry| entry.map(|(k, _)| k.value()));
        first_free(range, used)
    }
}

/// The lowest value of `range` that `used` does not contain. `used` must yield values in
/// ascending order (as a redb range scan does); values outside `range` are ignored. Stops at
/// the first gap, so the cost is proportional to the number of taken values below it.
pub fn first_free<E>(
    range: RangeInclusive<u64>,
    used: impl IntoIterator<Item = Result<u64, E>>,
) -> Result<Option<u64>, E> {
    if range.is_empty() {
        return Ok(None);
    }
    let end = *range.end();
    let mut candidate = *range.start();
    for value in used {
        let value = value?;
        if value < candidate {
            continue;
        }
        if value > candidate {
            break;
        }
        match candidate.checked_add(1) {
            Some(next) if next <= end => candidate = next,
            _ => return Ok(None),
        }
    }
    Ok(Some(candidate))
}

/// The pool a tunnel segment's key is allocated from: the controller's configured range cut
/// down to what the segment's header can carry. Keys of every tunnel segment share one table,
/// so a VNI and a GRE key never have the same value.
pub fn key_pool(segment: SegmentType, configured: &RangeInclusive<u32>) -> Pool {
    let lo = (*configured.start()).max(1);
    let hi = (*configured.end()).min(segment.max_key());
    // An empty range (lo > hi) is kept as such: allocation then reports exhaustion.
    Pool::new(key_word(segment), u64::from(lo)..=u64::from(hi))
}

/// The pool of every key a segment's header can carry, for keys the user gives explicitly.
/// It shares its table with [`key_pool`].
pub fn key_space_pool(segment: SegmentType) -> Pool {
    let space = key_space(segment);
    Pool::new(
        key_word(segment),
        u64::from(*space.start())..=u64::from(*space.end()),
    )
}

/// What a segment's key is called in messages.
pub fn key_word(segment: SegmentType) -> &'static str {
    match segment {
        SegmentType::Gre => "GRE key",
        SegmentType::Vxlan => "VNI",
        SegmentType::Vlan => "VLAN tag",
        SegmentType::Flat => "key",
    }
}

/// Every key a segment's header can carry, which is what a user may ask for explicitly (the
/// configured range only limits automatic allocation).
pub fn key_space(segment: SegmentType) -> RangeInclusive<u32> {
    1..=segment.max_key()
}

/// The pool of local VLAN tags on `br-int`, 1–4094.
pub fn vlan_pool() -> Pool {
    Pool::new("VLAN tag", u64::from(VLAN_MIN)..=u64::from(VLAN_MAX))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableTableMetadata, TableDefinition};

    use super::*;

    const TEST_POOL: TableDefinition<u64, &str> = TableDefinition::new("test_pool");

    fn memory_db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("in-memory database")
    }

    thread_local! {
        static SCRATCH: RefCell<Option<Database>> = const { RefCell::new(None) };
    }

    /// Runs `f` on an empty pool table in a transaction that is aborted afterwards. Creating a
    /// redb database is slow in debug builds, so one is kept per test thread; a case that
    /// panics leaves its transaction open, so its database is not reused.
    pub(crate) fn with_scratch_table<R>(f: impl FnOnce(&mut PoolTable<'_>) -> R) -> R {
        let db = SCRATCH
            .with(|s| s.borrow_mut().take())
            .unwrap_or_else(memory_db);
        let result = {
            let txn = db.begin_write().expect("write transaction");
            let mut table = txn.open_table(TEST_POOL).expect("scratch table");
            assert!(
                table.is_empty().expect("table length"),
                "scratch table not empty"
            );
            let result = f(&mut table);
            drop(table);
            txn.abort().expect("abort the scratch transaction");
            result
        };
        SCRATCH.with(|s| *s.borrow_mut() = Some(db));
        result
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate,
        AllocateFrom(u64),
        /// Free the n-th (modulo) taken value.
        Free(usize),
        Claim(u64),
    }

    fn op(range_hi: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Allocate),
            2 => (0..=range_hi + 2).prop_map(Op::AllocateFrom),
            3 => any::<usize>().prop_map(Op::Free),
            2 => (0..=range_hi + 2).prop_map(Op::Claim),
        ]
    }

    fn lowest_free_model(range: &RangeInclusive<u64>, taken: &BTreeSet<u64>) -> Option<u64> {
        range.clone().find(|v| !taken.contains(v))
    }

    proptest! {
        #[test]
        fn first_free_matches_a_linear_scan(
            lo in 0u64..20,
            len in 0u64..20,
            used in proptest::collection::btree_set(0u64..45, 0..30),
        ) {
            let range = lo..=lo + len;
            let expected = lowest_free_model(&range, &used);
            let got = first_free::<()>(range, used.iter().copied().map(Ok)).unwrap();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn pools_never_hand_out_a_value_twice(
            lo in 1u64..5,
            len in 0u64..12,
            ops in proptest::collection::vec(op(20), 1..80),
        ) {
            let pool = Pool::new("thing", lo..=lo + len);
            with_scratch_table(|table| -> Result<(), TestCaseError> {
            let mut model: BTreeSet<u64> = BTreeSet::new();
            for (i, op) in ops.into_iter().enumerate() {
                let owner = format!("o{i}");
                match op {
                    Op::Allocate | Op::AllocateFrom(_) => {
                        let got = match op {
                            Op::AllocateFrom(start) => pool.allocate_from(table, start, &owner).unwrap(),
                            _ => pool.allocate(table, &owner).unwrap(),
                        };
                        match got {
                            None => prop_assert_eq!(model.len() as u64, pool.size(), "exhaustion reported with free values left"),
                            Some(v) => {
                                prop_assert!(pool.contains(v), "{} outside the pool", v);
                                prop_assert!(model.insert(v), "{} handed out twice", v);
                                prop_assert_eq!(pool.holder(&*table, v).unwrap(), Some(owner.clone()));
                                if let Op::AllocateFrom(start) = op {
                                    let start = start.clamp(*pool.range().start(), *pool.range().end());
                                    let expected = (start..=*pool.range().end())
                                        .chain(*pool.range().start()..start)
                                        .find(|x| *x == v || !model.contains(x));
                                    prop_assert_eq!(expected, Some(v), "next fit skipped a free value");
                                } else {
                                    let mut before = model.clone();
                                    before.remove(&v);
                                    prop_assert_eq!(lowest_free_model(pool.range(), &before), Some(v), "not the lowest free value");
                                }
                            }
                        }
                    }
                    Op::Free(n) => {
                        if model.is_empty() {
                            continue;
                        }
                        let v = *model.iter().nth(n % model.len()).unwrap();
                        let holder = pool.holder(&*table, v).unwrap().unwrap();
                        prop_assert!(!pool.release(table, v, "somebody-else").unwrap());
                        prop_assert!(pool.release(table, v, &holder).unwrap());
                        model.remove(&v);
                        prop_assert_eq!(pool.holder(&*table, v).unwrap(), None);
                        // A freed value is usable again: the lowest-free allocator returns it
                        // when nothing lower is free.
                        if lowest_free_model(pool.range(), &model) == Some(v) {
                            let again = pool.allocate(table, "again").unwrap();
                            prop_assert_eq!(again, Some(v));
                            model.insert(v);
                        }
                    }
                    Op::Claim(v) => {
                        let got = pool.claim(table, v, &owner).unwrap();
                        if !pool.contains(v) {
                            prop_assert_eq!(got, Claim::OutOfRange);
                        } else if model.contains(&v) {
                            let taken = matches!(got, Claim::Taken { .. });
                            prop_assert!(taken, "{:?}", got);
                        } else {
                            prop_assert_eq!(got, Claim::Claimed);
                            model.insert(v);
                        }
                    }
                }
                let taken: BTreeSet<u64> = pool.taken(&*table).unwrap().into_iter().map(|(v, _)| v).collect();
                prop_assert_eq!(&taken, &model);
            }
            Ok(())
            })?;
        }
    }

    #[test]
    fn empty_pools_are_exhausted() {
        with_scratch_table(|table| {
            #[allow(clippy::reversed_empty_ranges)]
            let pool = Pool::new("thing", 5..=4);
            assert_eq!(pool.size(), 0);
            assert_eq!(pool.allocate(table, "a").unwrap(), None);
            assert_eq!(pool.allocate_from(table, 5, "a").unwrap(), None);
        });
    }

    #[test]
    fn the_top_of_u64_is_handled() {
        with_scratch_table(|table| {
            let pool = Pool::new("thing", u64::MAX - 1..=u64::MAX);
            assert_eq!(pool.size(), 2);
            assert_eq!(pool.allocate(table, "a").unwrap(), Some(u64::MAX - 1));
            assert_eq!(pool.allocate(table, "b").unwrap(), Some(u64::MAX));
            assert_eq!(pool.allocate(table, "c").unwrap(), None);
        });
    }

    #[test]
    fn key_pools_respect_the_segment_header() {
        let vxlan = key_pool(SegmentType::Vxlan, &(1000..=u32::MAX));
        assert_eq!(vxlan.range(), &(1000..=16_777_215));
        let gre = key_pool(SegmentType::Gre, &(0..=u32::MAX));
        assert_eq!(gre.range(), &(1..=u64::from(u32::MAX)));
        assert_eq!(gre.what(), "GRE key");
        assert_eq!(vlan_pool().size(), 4094);
    }
}
