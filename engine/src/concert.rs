//! Concert definitions and how their inventory is cut into shards.
//!
//! A general-admission concert is a count; shard `i` owns `capacity / shards` tickets, the first `capacity % shards`
//! shards one more. A seated concert numbers its seats `0..capacity` section by section, row by row; shard `i` owns the
//! contiguous range `[i * capacity / shards, (i + 1) * capacity / shards)`, so a row mostly lives in one shard.
//! Seat labels are `SECTION-ROW-SEAT` with rows and seats counted from 1, e.g. `A-3-17`.

use crate::error::EngineError;
use crate::ids::ConcertId;
use serde::{Deserialize, Serialize};

/// Most tickets a general-admission concert may have.
pub const GENERAL_CAPACITY_MAX: u64 = 10_000_000;
/// Most seats a seated concert may have: the per-seat state and the seat map stay small.
pub const SEATED_CAPACITY_MAX: u64 = 100_000;
pub const SECTIONS_MAX: usize = 64;
pub const SECTION_NAME_LENGTH_MAX: usize = 16;
pub const ROWS_MAX: u32 = 1_000;
pub const SEATS_PER_ROW_MAX: u32 = 1_000;
pub const SHARDS_MAX: u32 = 256;
pub const NAME_LENGTH_MAX: usize = 200;
pub const PRICE_CENTS_MAX: u64 = 10_000_000;
/// A shard is sized to hold about this many tickets when the request does not say how many shards to use.
pub const SHARD_TICKETS_TARGET: u64 = 50_000;
/// Shards a concert gets by default at most, whatever its size.
pub const SHARDS_DEFAULT_MAX: u32 = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub rows: u32,
    pub seats_per_row: u32,
}

impl Section {
    fn seats(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.seats_per_row)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    General { capacity: u64 },
    Seated { sections: Vec<Section> },
}

/// A concert as created by an administrator. Immutable once created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcertSpec {
    pub id: ConcertId,
    pub name: String,
    /// RFC 3339 UTC, normalised by the HTTP front.
    pub starts_at: String,
    pub price_cents: u64,
    pub layout: Layout,
    pub shards: u32,
}

impl ConcertSpec {
    /// Checks every limit and fills in the default shard count. `shards` is the requested count, if any.
    pub fn new(
        id: ConcertId,
        name: String,
        starts_at: String,
        price_cents: u64,
        layout: Layout,
        shards: Option<u32>,
    ) -> Result<Self, EngineError> {
        let name_trimmed = name.trim();
        if name_trimmed.is_empty() || name_trimmed.chars().count() > NAME_LENGTH_MAX {
            return Err(EngineError::invalid(
                "name",
                format!("must be 1 to {NAME_LENGTH_MAX} characters"),
            ));
        }
        if price_cents > PRICE_CENTS_MAX {
            return Err(EngineError::invalid(
                "price_cents",
                format!("must be at most {PRICE_CENTS_MAX}"),
            ));
        }
        let capacity = validate_layout(&layout)?;
        let shards = match shards {
            Some(0) => return Err(EngineError::invalid("shards", "must be at least 1")),
            Some(requested) if requested > SHARDS_MAX => {
                return Err(EngineError::invalid(
                    "shards",
                    format!("must be at most {SHARDS_MAX}"),
                ));
            }
            Some(requested) if u64::from(requested) > capacity => {
                return Err(EngineError::invalid(
                    "shards",
                    "must not exceed the number of tickets",
                ));
            }
            Some(requested) => requested,
            None => capacity
                .div_ceil(SHARD_TICKETS_TARGET)
                .clamp(1, u64::from(SHARDS_DEFAULT_MAX)) as u32,
        };
        Ok(Self {
            id,
            name: name_trimmed.to_owned(),
            starts_at,
            price_cents,
            layout,
            shards,
        })
    }

    pub fn capacity(&self) -> u64 {
        match &self.layout {
            Layout::General { capacity } => *capacity,
            Layout::Seated { sections } => sections.iter().map(Section::seats).sum(),
        }
    }

    pub fn is_seated(&self) -> bool {
        matches!(self.layout, Layout::Seated { .. })
    }

    /// The global seat range `[start, end)` (seated) or the ticket count range (general) that shard `shard` owns.
    pub fn shard_range(&self, shard: u32) -> (u64, u64) {
        let capacity = self.capacity();
        let shards = u64::from(self.shards);
        let shard = u64::from(shard);
        match self.layout {
            Layout::General { .. } => {
                let base = capacity / shards;
                let extra = capacity % shards;
                let start = shard * base + shard.min(extra);
                let size = base + u64::from(shard < extra);
                (start, start + size)
            }
            Layout::Seated { .. } => (shard * capacity / shards, (shard + 1) * capacity / shards),
        }
    }

    pub fn shard_capacity(&self, shard: u32) -> u64 {
        let (start, end) = self.shard_range(shard);
        end - start
    }

    /// The shard that owns global seat index `seat` and the seat's index inside that shard.
    pub fn locate_seat(&self, seat: u64) -> (u32, u32) {
        let capacity = self.capacity();
        let shards = u64::from(self.shards);
        // Invert `start = shard * capacity / shards`; the estimate is at most one shard off.
        let mut shard = (seat * shards / capacity).min(shards - 1);
        while self.shard_range(shard as u32).0 > seat {
            shard -= 1;
        }
        while self.shard_range(shard as u32).1 <= seat {
            shard += 1;
        }
        let start = self.shard_range(shard as u32).0;
        (shard as u32, (seat - start) as u32)
    }

    /// Parses a label like `A-3-17` into a global seat index.
    pub fn seat_index(&self, label: &str) -> Option<u64> {
        let Layout::Seated { sections } = &self.layout else {
            return None;
        };
        let mut parts = label.split('-');
        let (section_name, row, seat) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let row: u32 = parse_ordinal(row)?;
        let seat: u32 = parse_ordinal(seat)?;
        let mut offset = 0u64;
        for section in sections {
            if section.name == section_name {
                if row > section.rows || seat > section.seats_per_row {
                    return None;
                }
                return Some(
                    offset
                        + u64::from(row - 1) * u64::from(section.seats_per_row)
                        + u64::from(seat - 1),
                );
            }
            offset += section.seats();
        }
        None
    }

    /// The label of global seat index `index`; `None` for a general-admission concert or an index out of range.
    pub fn seat_label(&self, index: u64) -> Option<String> {
        let Layout::Seated { sections } = &self.layout else {
            return None;
        };
        let mut offset = 0u64;
        for section in sections {
            if index < offset + section.seats() {
                let within = index - offset;
                let per_row = u64::from(section.seats_per_row);
                return Some(format!(
                    "{}-{}-{}",
                    section.name,
                    within / per_row + 1,
                    within % per_row + 1
                ));
            }
            offset += section.seats();
        }
        None
    }
}

/// A 1-based row or seat number without sign, leading zeros or padding.
fn parse_ordinal(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 4 || text.starts_with('0') {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn validate_layout(layout: &Layout) -> Result<u64, EngineError> {
    match layout {
        Layout::General { capacity } => {
            if *capacity == 0 || *capacity > GENERAL_CAPACITY_MAX {
                return Err(EngineError::invalid(
                    "capacity",
                    format!("must be 1 to {GENERAL_CAPACITY_MAX}"),
                ));
            }
            Ok(*capacity)
        }
        Layout::Seated { sections } => {
            if sections.is_empty() || sections.len() > SECTIONS_MAX {
                return Err(EngineError::invalid(
                    "sections",
                    format!("must list 1 to {SECTIONS_MAX} sections"),
                ));
            }
            let mut total = 0u64;
            for (i, section) in sections.iter().enumerate() {
                let name_ok = !section.name.is_empty()
                    && section.name.len() <= SECTION_NAME_LENGTH_MAX
                    && section.name.bytes().all(|b| b.is_ascii_alphanumeric());
                if !name_ok {
                    return Err(EngineError::invalid(
                        "sections",
                        format!(
                            "section names are 1 to {SECTION_NAME_LENGTH_MAX} letters or digits"
                        ),
                    ));
                }
                if sections[..i].iter().any(|other| other.name == section.name) {
                    return Err(EngineError::invalid(
                        "sections",
                        "two sections have the same name",
                    ));
                }
                if section.rows == 0 || section.rows > ROWS_MAX {
                    return Err(EngineError::invalid(
                        "sections",
                        format!("rows must be 1 to {ROWS_MAX}"),
                    ));
                }
                if section.seats_per_row == 0 || section.seats_per_row > SEATS_PER_ROW_MAX {
                    return Err(EngineError::invalid(
                        "sections",
                        format!("seats_per_row must be 1 to {SEATS_PER_ROW_MAX}"),
                    ));
                }
                total += section.seats();
            }
            if total > SEATED_CAPACITY_MAX {
                return Err(EngineError::invalid(
                    "sections",
                    format!("a seated concert has at most {SEATED_CAPACITY_MAX} seats"),
                ));
            }
            Ok(total)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seated(sections: &[(&str, u32, u32)], shards: Option<u32>) -> ConcertSpec {
        let sections = sections
            .iter()
            .map(|(name, rows, seats_per_row)| Section {
                name: (*name).to_owned(),
                rows: *rows,
                seats_per_row: *seats_per_row,
            })
            .collect();
        ConcertSpec::new(
            ConcertId::random(),
            "test".into(),
            "2027-01-01T20:00:00Z".into(),
            100,
            Layout::Seated { sections },
            shards,
        )
        .expect("valid concert")
    }

    fn general(capacity: u64, shards: Option<u32>) -> ConcertSpec {
        ConcertSpec::new(
            ConcertId::random(),
            "test".into(),
            "2027-01-01T20:00:00Z".into(),
            100,
            Layout::General { capacity },
            shards,
        )
        .expect("valid concert")
    }

    #[test]
    fn general_shards_partition_the_capacity() {
        for (capacity, shards) in [(10, 3), (7, 7), (1_000_001, 16), (5, 1)] {
            let spec = general(capacity, Some(shards));
            let mut next = 0;
            for shard in 0..shards {
                let (start, end) = spec.shard_range(shard);
                assert_eq!(start, next);
                assert!(end > start);
                next = end;
            }
            assert_eq!(next, capacity);
        }
    }

    #[test]
    fn every_seat_label_round_trips_through_its_shard() {
        let spec = seated(&[("A", 3, 7), ("B", 2, 5), ("Z9", 1, 1)], Some(4));
        assert_eq!(spec.capacity(), 21 + 10 + 1);
        for index in 0..spec.capacity() {
            let label = spec.seat_label(index).expect("label");
            assert_eq!(spec.seat_index(&label), Some(index), "{label}");
            let (shard, local) = spec.locate_seat(index);
            let (start, end) = spec.shard_range(shard);
            assert!(start <= index && index < end);
            assert_eq!(start + u64::from(local), index);
        }
        assert_eq!(spec.seat_label(0).as_deref(), Some("A-1-1"));
        assert_eq!(spec.seat_label(8).as_deref(), Some("A-2-2"));
        assert_eq!(spec.seat_label(31).as_deref(), Some("Z9-1-1"));
    }

    #[test]
    fn malformed_seat_labels_are_rejected() {
        let spec = seated(&[("A", 3, 7)], None);
        for label in [
            "A-0-1",
            "A-1-0",
            "A-4-1",
            "A-1-8",
            "B-1-1",
            "A-1",
            "A-1-1-1",
            "A-01-1",
            "A--1-1",
            "A-+1-1",
            "",
            "A-99999-1",
        ] {
            assert_eq!(spec.seat_index(label), None, "{label}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let too_big = ConcertSpec::new(
            ConcertId::random(),
            "x".into(),
            "2027-01-01T20:00:00Z".into(),
            1,
            Layout::General {
                capacity: GENERAL_CAPACITY_MAX + 1,
            },
            None,
        );
        assert!(matches!(
            too_big,
            Err(EngineError::Invalid {
                field: "capacity",
                ..
            })
        ));
        let shards_over_capacity = ConcertSpec::new(
            ConcertId::random(),
            "x".into(),
            "2027-01-01T20:00:00Z".into(),
            1,
            Layout::General { capacity: 2 },
            Some(3),
        );
        assert!(matches!(
            shards_over_capacity,
            Err(EngineError::Invalid {
                field: "shards",
                ..
            })
        ));
        assert_eq!(general(1_000_000, None).shards, 20);
        assert_eq!(general(10, None).shards, 1);
    }
}
