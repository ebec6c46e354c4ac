//! Draining the pinned ring buffer with tokio: woken by epoll through `AsyncFd`, never polled on
//! a timer.

use agentguard_common::user::{DecodeError, KernelEvent, decode};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// The ring buffer, registered with tokio.
pub struct EventRing {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventRing {
    /// Registers the ring buffer with the tokio reactor.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd for its whole life and always reports the
        // same one; the AsyncFd owns the ring buffer.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Waits until events are available, then hands every available record to `sink` (decoded,
    /// or the decode error for a record this daemon cannot read). Returns how many were read.
    pub async fn drain(
        &mut self,
        mut sink: impl FnMut(Result<KernelEvent, DecodeError>),
    ) -> std::io::Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            sink(decode(&item));
            n += 1;
        }
        guard.clear_ready();
        Ok(n)
    }

    /// Hands every record already in the buffer to `sink` without waiting.
    pub fn drain_now(&mut self, mut sink: impl FnMut(Result<KernelEvent, DecodeError>)) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            sink(decode(&item));
            n += 1;
        }
        n
    }
}
