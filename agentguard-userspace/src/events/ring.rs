//! Draining the pinned ring buffers from the dedicated ingest thread.
//!
//! Wake-ups come from epoll in edge-triggered mode: a ring buffer's fd polls readable whenever
//! data waits, but an edge is reported only when the kernel wakes its readers (a refusal, an
//! escalation, or a ring past its fill watermark; see the eBPF crate's `emit::Pending::send`).
//! Allowed events sent without a wake-up are drained on the pipeline's timer instead.

use std::{os::fd::AsFd, time::Duration};

use agentguard_common::user::{DecodeError, KernelEvent, decode};
use aya::maps::{MapData, RingBuf};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// One pinned ring buffer.
pub struct EventRing {
    ring: RingBuf<MapData>,
}

impl EventRing {
    /// Wraps a ring buffer.
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Appends up to `max` records already in the buffer to `out` (decoded, or the decode
    /// error for a record this daemon cannot read), without waiting; returns how many.
    /// Bounded batches keep memory flat when a burst has filled the ring buffer.
    pub fn fill(&mut self, max: usize, out: &mut Vec<Result<KernelEvent, DecodeError>>) -> usize {
        let mut n = 0;
        while n < max {
            match self.ring.next() {
                Some(item) => out.push(decode(&item)),
                None => break,
            }
            n += 1;
        }
        n
    }
}

/// Which ring woke the pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Woken {
    /// The ring of allowed events (woken past its watermark).
    pub events: bool,
    /// The ring of refusals and escalations.
    pub alerts: bool,
}

/// Edge-triggered wake-ups of the two rings.
pub struct Wakeups {
    epoll: Epoll,
}

const EVENTS: u64 = 0;
const ALERTS: u64 = 1;

impl Wakeups {
    /// Registers both rings.
    pub fn new(events: &EventRing, alerts: &EventRing) -> nix::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        epoll.add(events.ring.as_fd(), EpollEvent::new(flags, EVENTS))?;
        epoll.add(alerts.ring.as_fd(), EpollEvent::new(flags, ALERTS))?;
        Ok(Self { epoll })
    }

    /// Waits up to `timeout` for a kernel wake-up (an interrupted wait returns none).
    pub fn wait(&self, timeout: Duration) -> nix::Result<Woken> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut ready = [EpollEvent::empty(); 2];
        let n = match self.epoll.wait(&mut ready, EpollTimeout::from(ms)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e),
        };
        let mut woken = Woken::default();
        for ev in ready.iter().take(n) {
            match ev.data() {
                EVENTS => woken.events = true,
                _ => woken.alerts = true,
            }
        }
        Ok(woken)
    }
}
