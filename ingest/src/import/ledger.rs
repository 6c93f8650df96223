//! Which rows of which files were already published, so a re-run of the same
//! file reports them as already imported and publishes nothing new. One sled
//! tree, key `<file sha256>/<sheet>`, value a bitmap of row numbers. The ledger
//! is an optimisation and a report, not the guarantee: event ids are derived
//! from file hash + sheet + row, so a row published twice (e.g. after a crash
//! between publish and checkpoint) is the same event and the domain drops it.

use super::ImportError;

/// Tree name inside a shared sled database.
pub const TREE: &str = "import_ledger";

/// Row numbers as a bitmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowSet {
    bits: Vec<u64>,
    len: u64,
}

impl RowSet {
    pub fn contains(&self, row: u32) -> bool {
        let (w, b) = (row as usize / 64, row % 64);
        self.bits.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    pub fn insert(&mut self, row: u32) {
        let (w, b) = (row as usize / 64, row % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.len += 1;
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn from_bytes(bytes: &[u8]) -> RowSet {
        let bits: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(a)
            })
            .collect();
        let len = bits.iter().map(|w| u64::from(w.count_ones())).sum();
        RowSet { bits, len }
    }
}

/// The record of published rows.
#[derive(Clone, Debug)]
pub struct ImportLedger {
    tree: sled::Tree,
}

fn ledger_err(e: impl std::fmt::Display) -> ImportError {
    ImportError::Ledger(e.to_string())
}

impl ImportLedger {
    /// The ledger tree of an open database (the platform's data-dir database).
    pub fn in_db(db: &sled::Db) -> Result<ImportLedger, ImportError> {
        Ok(ImportLedger {
            tree: db.open_tree(TREE).map_err(ledger_err)?,
        })
    }

    /// Opens (creating) a database of its own at `path`.
    pub fn open(path: &std::path::Path) -> Result<ImportLedger, ImportError> {
        let db = sled::open(path).map_err(|e| ImportError::Ledger(format!("cannot open {}: {e}", path.display())))?;
        Self::in_db(&db)
    }

    fn key(sha256: &str, sheet: &str) -> Vec<u8> {
        format!("{sha256}/{sheet}").into_bytes()
    }

    /// Rows of `sheet` of the file with hash `sha256` already published.
    pub fn published(&self, sha256: &str, sheet: &str) -> Result<RowSet, ImportError> {
        Ok(self
            .tree
            .get(Self::key(sha256, sheet))
            .map_err(ledger_err)?
            .map(|v| RowSet::from_bytes(&v))
            .unwrap_or_default())
    }

    /// Records the published rows of a sheet (the whole set, replacing the old one).
    pub fn record(&self, sha256: &str, sheet: &str, rows: &RowSet) -> Result<(), ImportError> {
        self.tree
            .insert(Self::key(sha256, sheet), rows.to_bytes())
            .map_err(ledger_err)?;
        Ok(())
    }

    /// Makes what was recorded durable.
    pub fn flush(&self) -> Result<(), ImportError> {
        self.tree.flush().map_err(ledger_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sets_round_trip_through_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ImportLedger::open(&dir.path().join("ledger")).unwrap();
        let mut rows = RowSet::default();
        for r in [2, 3, 64, 65, 1_000_001] {
            rows.insert(r);
        }
        rows.insert(3);
        assert_eq!(rows.len(), 5);
        ledger.record("sha", "csv", &rows).unwrap();
        let back = ledger.published("sha", "csv").unwrap();
        assert_eq!(back, rows);
        assert!(back.contains(1_000_001) && !back.contains(4));
        assert!(ledger.published("sha", "other").unwrap().is_empty());
    }
}
