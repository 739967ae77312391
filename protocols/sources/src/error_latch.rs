//! [`ErrorLatch`]: log a recurring error once when it starts (and when it changes), and once
//! when it clears, instead of on every poll. A Modbus device polled at 10 Hz that is unplugged
//! for an hour must not write 36 000 identical warnings.

/// Remembers the last error text of one operation.
#[derive(Debug, Default)]
pub struct ErrorLatch {
    last: Option<String>,
    repeats: u64,
}

impl ErrorLatch {
    /// Records a failure; returns `true` if it is new (first failure or different text) and
    /// should be logged loudly.
    pub fn fail(&mut self, msg: &str) -> bool {
        if self.last.as_deref() == Some(msg) {
            self.repeats += 1;
            false
        } else {
            self.last = Some(msg.to_string());
            self.repeats = 0;
            true
        }
    }

    /// Records a success; returns the number of failures that preceded it, if any, so the
    /// caller can log the recovery.
    pub fn ok(&mut self) -> Option<u64> {
        self.last
            .take()
            .map(|_| std::mem::take(&mut self.repeats) + 1)
    }

    /// Whether the operation is failing now (an error was recorded and not cleared).
    pub fn is_failing(&self) -> bool {
        self.last.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_changes_and_recoveries_only() {
        let mut l = ErrorLatch::default();
        assert_eq!(l.ok(), None);
        assert!(l.fail("timeout"));
        assert!(!l.fail("timeout"));
        assert!(!l.fail("timeout"));
        assert!(l.fail("exception 02"));
        assert!(l.is_failing());
        assert_eq!(l.ok(), Some(1));
        assert!(!l.is_failing());
        assert!(l.fail("exception 02"));
    }
}
