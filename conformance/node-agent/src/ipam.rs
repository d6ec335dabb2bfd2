//! Pod addresses: a range of the bridge's subnet, handed out in turn so that
//! a freed address is not reused at once (an EndpointSlice or a proxy may
//! still name it for a moment).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

#[derive(Debug)]
pub struct Ipam {
    first: u32,
    last: u32,
    /// Where the search for a free address starts.
    next: u32,
    used: BTreeSet<u32>,
}

impl Ipam {
    /// Addresses `first..=last`; loopback addresses are refused because
    /// EndpointSlices reject them.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Ipam, String> {
        if first > last {
            return Err(format!("empty pod address range {first}-{last}"));
        }
        if first.is_loopback() || last.is_loopback() || (first.octets()[0] < 127 && last.octets()[0] > 127) {
            return Err(format!("pod address range {first}-{last} overlaps 127.0.0.0/8 (EndpointSlices reject it)"));
        }
        let (first, last) = (u32::from(first), u32::from(last));
        Ok(Ipam { first, last, next: first, used: BTreeSet::new() })
    }

    /// `preferred` if it is in the range and free (a pod keeps its address
    /// across agent restarts), else the next free address.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(ip) = preferred {
            let n = u32::from(ip);
            if (self.first..=self.last).contains(&n) && self.used.insert(n) {
                if n >= self.next {
                    self.next = if n == self.last { self.first } else { n + 1 };
                }
                return Some(ip);
            }
        }
        let size = u64::from(self.last - self.first) + 1;
        for i in 0..size {
            let n = (u64::from(self.next - self.first) + i) % size;
            let n = self.first + n as u32;
            if self.used.insert(n) {
                self.next = if n == self.last { self.first } else { n + 1 };
                return Some(Ipv4Addr::from(n));
            }
        }
        None
    }

    /// Frees `ip`; false if it was not allocated.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        self.used.remove(&u32::from(ip))
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// Parses `FIRST-LAST`.
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (first, last) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
    let parse = |a: &str| a.trim().parse::<Ipv4Addr>().map_err(|e| format!("{a:?}: {e}"));
    Ok((parse(first)?, parse(last)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_in_turn_and_does_not_reuse_a_freed_address_at_once() {
        let mut ipam = Ipam::new(ip("10.244.1.0"), ip("10.244.1.3")).unwrap();
        assert_eq!(ipam.allocate(None), Some(ip("10.244.1.0")));
        assert_eq!(ipam.allocate(None), Some(ip("10.244.1.1")));
        assert!(ipam.release(ip("10.244.1.0")));
        assert_eq!(ipam.allocate(None), Some(ip("10.244.1.2")));
        assert_eq!(ipam.allocate(None), Some(ip("10.244.1.3")));
        // Wraps around to the freed one.
        assert_eq!(ipam.allocate(None), Some(ip("10.244.1.0")));
        assert_eq!(ipam.allocate(None), None, "exhausted");
        assert_eq!(ipam.in_use(), 4);
        assert!(!ipam.release(ip("10.244.9.9")));
    }

    #[test]
    fn keeps_a_preferred_address_when_free_and_in_range() {
        let mut ipam = Ipam::new(ip("10.244.1.0"), ip("10.244.255.254")).unwrap();
        assert_eq!(ipam.allocate(Some(ip("10.244.7.7"))), Some(ip("10.244.7.7")));
        // Taken: the next free one instead.
        assert_eq!(ipam.allocate(Some(ip("10.244.7.7"))), Some(ip("10.244.7.8")));
        // Out of range (the bridge's own address): ignored.
        assert_eq!(ipam.allocate(Some(ip("10.244.0.1"))), Some(ip("10.244.7.9")));
    }

    #[test]
    fn a_preferred_address_moves_the_search_past_it() {
        // After an agent restart pods keep 10.244.1.0 and .1; once they are
        // deleted, new pods must not get those addresses right away.
        let mut ipam = Ipam::new(ip("10.244.1.0"), ip("10.244.1.9")).unwrap();
        assert_eq!(ipam.allocate(Some(ip("10.244.1.1"))), Some(ip("10.244.1.1")));
        assert_eq!(ipam.allocate(Some(ip("10.244.1.0"))), Some(ip("10.244.1.0")));
        ipam.release(ip("10.244.1.0"));
        ipam.release(ip("10.244.1.1"));
        assert_eq!(ipam.allocate(None), Some(ip("10.244.1.2")));
    }

    #[test]
    fn refuses_loopback_and_empty_ranges() {
        assert!(Ipam::new(ip("127.0.0.2"), ip("127.0.0.200")).is_err());
        assert!(Ipam::new(ip("126.0.0.1"), ip("128.0.0.1")).is_err());
        assert!(Ipam::new(ip("10.0.0.2"), ip("10.0.0.1")).is_err());
        assert_eq!(Ipam::new(ip("10.0.0.1"), ip("10.0.0.1")).unwrap().allocate(None), Some(ip("10.0.0.1")));
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range("10.244.1.0-10.244.255.254"), Ok((ip("10.244.1.0"), ip("10.244.255.254"))));
        assert!(parse_range("10.244.1.0").is_err());
        assert!(parse_range("10.244.1.0-x").is_err());
    }
}
