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

    /// Waits until events are available, then returns up to `max` of them (decoded, or the
    /// decode error for a record this daemon cannot read). Bounded batches keep memory flat
    /// when a burst has filled the ring buffer.
    pub async fn next_batch(
        &mut self,
        max: usize,
    ) -> std::io::Result<Vec<Result<KernelEvent, DecodeError>>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let batch = read_up_to(guard.get_inner_mut(), max);
            if batch.len() < max {
                // Drained: wait for the kernel's next wake-up.
                guard.clear_ready();
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// Up to `max` records already in the buffer, without waiting.
    pub fn batch_now(&mut self, max: usize) -> Vec<Result<KernelEvent, DecodeError>> {
        read_up_to(self.fd.get_mut(), max)
    }
}

fn read_up_to(ring: &mut RingBuf<MapData>, max: usize) -> Vec<Result<KernelEvent, DecodeError>> {
    let mut out = Vec::with_capacity(max.min(1024));
    while out.len() < max {
        match ring.next() {
            Some(item) => out.push(decode(&item)),
            None => break,
        }
    }
    out
}
