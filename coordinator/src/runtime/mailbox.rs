//! The hand-off between whoever holds a transaction's lock (request
//! handlers, the sweeper, the driver itself) and the transaction's one
//! driver task, shared by 2PC (`driver`) and sagas (`saga`).
//!
//! Effects are posted under the transaction's lock, right after the state
//! machine produced them, so they keep protocol order. The driver takes them
//! under the same lock, and decides to stop under it too: whoever posts next
//! sees it gone and starts another. No effect is ever left without a driver.

use std::collections::VecDeque;

/// What the poster must do after [`Mailbox::post`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing was posted.
    Nothing,
    /// A driver runs: wake it.
    WakeDriver,
    /// No driver runs: start one (it is now counted as running).
    StartDriver,
}

/// Effects waiting for a transaction's driver, and whether one runs.
#[derive(Debug)]
pub struct Mailbox<E> {
    inbox: Vec<E>,
    driving: bool,
}

impl<E> Default for Mailbox<E> {
    fn default() -> Self {
        Self {
            inbox: Vec::new(),
            driving: false,
        }
    }
}

impl<E> Mailbox<E> {
    /// Queues `effects` for the driver.
    pub fn post(&mut self, effects: Vec<E>) -> Delivery {
        if effects.is_empty() {
            return Delivery::Nothing;
        }
        self.inbox.extend(effects);
        if self.driving {
            Delivery::WakeDriver
        } else {
            self.driving = true;
            Delivery::StartDriver
        }
    }

    /// For the driver: moves what was posted into `queue`. Returns false —
    /// and counts the driver as gone — when there is nothing left to do:
    /// nothing posted, `queue` empty, and the driver `idle` (no call in
    /// flight).
    pub fn take(&mut self, queue: &mut VecDeque<E>, idle: bool) -> bool {
        queue.extend(self.inbox.drain(..));
        if queue.is_empty() && idle {
            self.driving = false;
            return false;
        }
        true
    }

    /// For the driver, when shutdown stops it with work left: the log holds
    /// what recovery needs after the restart.
    pub fn stopped(&mut self) {
        self.driving = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_post_starts_a_driver_and_later_ones_wake_it() {
        let mut mailbox = Mailbox::default();
        assert_eq!(mailbox.post(Vec::<u8>::new()), Delivery::Nothing);
        assert_eq!(mailbox.post(vec![1]), Delivery::StartDriver);
        assert_eq!(mailbox.post(vec![2]), Delivery::WakeDriver);
        let mut queue = VecDeque::new();
        assert!(mailbox.take(&mut queue, true));
        assert_eq!(queue, [1, 2]);
    }

    #[test]
    fn the_driver_stops_only_when_idle_with_nothing_queued() {
        let mut mailbox = Mailbox::default();
        mailbox.post(vec![1]);
        let mut queue = VecDeque::new();
        assert!(mailbox.take(&mut queue, false));
        queue.clear();
        // Calls still in flight: keep running.
        assert!(mailbox.take(&mut queue, false));
        // Idle and empty: stop, and the next post starts a new driver.
        assert!(!mailbox.take(&mut queue, true));
        assert_eq!(mailbox.post(vec![3]), Delivery::StartDriver);
    }

    #[test]
    fn a_driver_stopped_by_shutdown_is_replaced_by_the_next_post() {
        let mut mailbox = Mailbox::default();
        mailbox.post(vec![1]);
        mailbox.stopped();
        assert_eq!(mailbox.post(vec![2]), Delivery::StartDriver);
    }
}
