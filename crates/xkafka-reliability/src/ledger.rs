//! Reading the workers' ledgers back and counting: lost, duplicated.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// Every id recorded in the ledger files, in file order.
pub fn read(paths: &[PathBuf]) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines() {
            let id = line.parse().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: torn or foreign ledger line {line:?}: {e}",
                        path.display()
                    ),
                )
            })?;
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Bytes in the ledger files: grows when a worker handles something.
pub fn size(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The ledger files of a run directory (`*.ledger`).
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ledger"))
        .collect();
    files.sort();
    Ok(files)
}

/// The ledger compared with what the broker acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Acknowledged input messages.
    pub expected: u64,
    /// Lines in the ledgers (handlings, duplicates included).
    pub handled: u64,
    /// Distinct acknowledged ids handled.
    pub unique: u64,
    /// Acknowledged ids never handled.
    pub lost: u64,
    /// Handlings beyond the first, summed over ids.
    pub duplicated: u64,
    /// The most times one id was handled.
    pub max_handled: u64,
    /// Ids handled that the broker never acknowledged (possible when the
    /// producer's acknowledgement was lost; not an error).
    pub unacknowledged: u64,
    /// Up to 10 lost ids, for the report.
    pub lost_sample: Vec<u64>,
}

impl Tally {
    /// Counts `recorded` against `expected`.
    pub fn new(expected: &HashSet<u64>, recorded: &[u64]) -> Self {
        let mut counts: HashMap<u64, u64> = HashMap::with_capacity(recorded.len());
        for id in recorded {
            *counts.entry(*id).or_default() += 1;
        }
        let mut lost: Vec<u64> = expected
            .iter()
            .filter(|id| !counts.contains_key(id))
            .copied()
            .collect();
        lost.sort_unstable();
        Tally {
            expected: expected.len() as u64,
            handled: recorded.len() as u64,
            unique: counts.keys().filter(|id| expected.contains(id)).count() as u64,
            lost: lost.len() as u64,
            duplicated: counts.values().map(|n| n - 1).sum(),
            max_handled: counts.values().copied().max().unwrap_or(0),
            unacknowledged: counts.keys().filter(|id| !expected.contains(id)).count() as u64,
            lost_sample: lost.into_iter().take(10).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_and_duplicated() {
        let expected: HashSet<u64> = (0..5).collect();
        let tally = Tally::new(&expected, &[0, 1, 1, 1, 3, 4, 9]);
        assert_eq!(tally.lost, 1);
        assert_eq!(tally.lost_sample, [2]);
        assert_eq!(tally.duplicated, 2);
        assert_eq!(tally.max_handled, 3);
        assert_eq!(tally.unique, 4);
        assert_eq!(tally.unacknowledged, 1);
    }

    #[test]
    fn a_torn_line_is_an_error() {
        let dir = std::env::temp_dir().join(crate::cluster::unique("ledger-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.ledger");
        std::fs::write(&file, "1\n2\n3x\n").unwrap();
        assert!(read(&[file]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
