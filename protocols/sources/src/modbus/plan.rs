//! Read planning: which Modbus requests poll a set of tags. Tags of one unit and table are
//! sorted and coalesced into as few requests as the protocol allows (125 registers, 2000
//! bits), bridging gaps up to a configured size. A device that rejects a bridged gap with
//! exception 02/03 gets that request split into one request per tag (see [`split_request`]),
//! so one unmapped address never blanks its neighbours (the failure mode of Telegraf #9253).

use serde::Deserialize;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Read/write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    Discrete,
    /// Read/write 16-bit registers (function 3).
    Holding,
    /// Read-only 16-bit registers (function 4).
    Input,
}

impl Table {
    /// Whether the table holds single bits (coils, discrete inputs).
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
    /// Protocol maximum per read request.
    pub fn protocol_max(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
    /// The table's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }
}

/// Where one tag sits: `count` registers (or bits) from `address` in `table` of `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagSpan {
    /// Index of the tag in the source's tag list.
    pub tag: usize,
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// The table the tag is in.
    pub table: Table,
    /// First register (or bit), 0-based.
    pub address: u16,
    /// Registers (or bits) the tag occupies.
    pub count: u16,
}

impl TagSpan {
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// Size limits of coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Most registers in one read (protocol maximum 125).
    pub max_registers: u16,
    /// Unmapped registers a read may bridge between two tags.
    pub max_register_gap: u16,
    /// Most bits in one read (protocol maximum 2000).
    pub max_bits: u16,
    /// Unmapped bits a read may bridge.
    pub max_bit_gap: u16,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_registers: 125,
            max_register_gap: 10,
            max_bits: 2000,
            max_bit_gap: 32,
        }
    }
}

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// The table read.
    pub table: Table,
    /// First register (or bit) read, 0-based.
    pub start: u16,
    /// Registers (or bits) read.
    pub count: u16,
    /// Spans of the tags decoded from this request's response.
    pub tags: Vec<TagSpan>,
}

/// Coalesces tag spans into read requests. Each span lands in exactly one request.
pub fn plan(spans: &[TagSpan], limits: PlanLimits) -> Vec<ReadRequest> {
    let mut sorted: Vec<TagSpan> = spans.to_vec();
    sorted.sort_by_key(|s| (s.unit, s.table, s.address, std::cmp::Reverse(s.count)));
    let mut out: Vec<ReadRequest> = Vec::new();
    for s in sorted {
        let (max, gap) = if s.table.is_bits() {
            (limits.max_bits.min(2000), limits.max_bit_gap)
        } else {
            (limits.max_registers.min(125), limits.max_register_gap)
        };
        if let Some(cur) = out.last_mut() {
            let cur_end = u32::from(cur.start) + u32::from(cur.count);
            let new_end = cur_end.max(s.end());
            let fits = cur.unit == s.unit
                && cur.table == s.table
                && u32::from(s.address) <= cur_end + u32::from(gap)
                && new_end - u32::from(cur.start) <= u32::from(max);
            if fits {
                cur.count = (new_end - u32::from(cur.start)) as u16;
                cur.tags.push(s);
                continue;
            }
        }
        out.push(ReadRequest {
            unit: s.unit,
            table: s.table,
            start: s.address,
            count: s.count,
            tags: vec![s],
        });
    }
    out
}

/// Splits a rejected coalesced request into one request per distinct tag span. Returns
/// `None` if the request already covers a single span (nothing left to split).
pub fn split_request(req: &ReadRequest) -> Option<Vec<ReadRequest>> {
    let mut parts: Vec<ReadRequest> = Vec::new();
    for s in &req.tags {
        match parts
            .iter_mut()
            .find(|p| p.start == s.address && p.count == s.count)
        {
            Some(p) => p.tags.push(*s),
            None => parts.push(ReadRequest {
                unit: s.unit,
                table: s.table,
                start: s.address,
                count: s.count,
                tags: vec![*s],
            }),
        }
    }
    (parts.len() > 1).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(tag: usize, table: Table, address: u16, count: u16) -> TagSpan {
        TagSpan {
            tag,
            unit: 1,
            table,
            address,
            count,
        }
    }

    fn covered(req: &ReadRequest, s: &TagSpan) -> bool {
        s.address >= req.start && s.end() <= u32::from(req.start) + u32::from(req.count)
    }

    #[test]
    fn contiguous_and_small_gaps_coalesce() {
        let spans = [
            span(0, Table::Holding, 0, 1),
            span(1, Table::Holding, 1, 1),
            span(2, Table::Holding, 2, 2),
            span(3, Table::Holding, 8, 2),  // gap of 4 <= 10
            span(4, Table::Holding, 40, 2), // gap of 30 > 10
        ];
        let reqs = plan(&spans, PlanLimits::default());
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            (reqs[0].start, reqs[0].count, reqs[0].tags.len()),
            (0, 10, 4)
        );
        assert_eq!((reqs[1].start, reqs[1].count), (40, 2));
    }

    #[test]
    fn never_exceeds_125_registers_and_never_splits_a_value() {
        let spans: Vec<TagSpan> = (0..100)
            .map(|i| span(i, Table::Input, (i * 4) as u16, 4))
            .collect();
        let reqs = plan(&spans, PlanLimits::default());
        assert!(reqs.iter().all(|r| r.count <= 125));
        // 400 registers in 4-register values: 31 values (124 regs) per request.
        assert_eq!(reqs.len(), 4);
        for s in &spans {
            let n = reqs.iter().filter(|r| r.tags.contains(s)).count();
            assert_eq!(n, 1, "tag {} in {n} requests", s.tag);
            assert!(reqs.iter().any(|r| r.tags.contains(s) && covered(r, s)));
        }
    }

    #[test]
    fn tables_units_and_bits_stay_apart() {
        let mut spans = vec![
            span(0, Table::Coil, 0, 1),
            span(1, Table::Coil, 20, 1), // within bit gap 32
            span(2, Table::Discrete, 0, 1),
            span(3, Table::Holding, 0, 1),
        ];
        spans.push(TagSpan {
            unit: 2,
            ..span(4, Table::Holding, 1, 1)
        });
        let reqs = plan(&spans, PlanLimits::default());
        assert_eq!(reqs.len(), 4);
        assert_eq!((reqs[0].table, reqs[0].count), (Table::Coil, 21));
    }

    #[test]
    fn overlapping_tags_share_a_request_and_zero_gap_limit_is_respected() {
        let spans = [
            span(0, Table::Holding, 2, 2),
            span(1, Table::Holding, 2, 1), // bit field inside the same register
            span(2, Table::Holding, 5, 1), // gap of 1
        ];
        let limits = PlanLimits {
            max_register_gap: 0,
            ..PlanLimits::default()
        };
        let reqs = plan(&spans, limits);
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            (reqs[0].start, reqs[0].count, reqs[0].tags.len()),
            (2, 2, 2)
        );
    }

    #[test]
    fn split_gives_one_request_per_distinct_span() {
        let spans = [
            span(0, Table::Holding, 0, 2),
            span(1, Table::Holding, 0, 2),
            span(2, Table::Holding, 4, 1),
        ];
        let reqs = plan(&spans, PlanLimits::default());
        assert_eq!(reqs.len(), 1);
        let parts = split_request(&reqs[0]).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].tags.len(), 2);
        assert!(split_request(&parts[0]).is_none());
    }
}
