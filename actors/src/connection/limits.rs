//! Connection limits: sessions in all and per client address.
//!
//! A [`Permit`] is taken before the banner and released when the session ends
//! (dropped), whatever way it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts of open sessions.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted session.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    /// Limits of `max_total` sessions, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, open: Mutex::new((0, HashMap::new())) })
    }

    /// Admits a session from `ip`, or `None` when a limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut open = self.open.lock().ok()?;
        let (total, per_ip) = &mut *open;
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *total >= self.max_total || *from_ip >= self.max_per_ip {
            return None;
        }
        *total += 1;
        *from_ip += 1;
        Some(Permit { limits: Arc::clone(self), ip })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.open.lock() {
            let (total, per_ip) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(count) = per_ip.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_in_all_and_per_address_and_released_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        let first = limits.try_acquire(a).expect("1st");
        let _second = limits.try_acquire(a).expect("2nd");
        assert!(limits.try_acquire(a).is_none(), "per-address limit");
        let _third = limits.try_acquire(b).expect("other address");
        assert!(limits.try_acquire(b).is_none(), "total limit");
        drop(first);
        assert!(limits.try_acquire(a).is_some(), "released on drop");
    }
}
