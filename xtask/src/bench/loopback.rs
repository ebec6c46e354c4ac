//! The destinations the generator reaches: a TCP listener that accepts and drops connections,
//! and a UDP socket nobody reads (datagrams past its buffer are dropped by the kernel, after
//! the send was judged, which is all that is measured). Both live here, outside the agent, so
//! their cost is the same in every configuration.

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use anyhow::{Context as _, Result};
use nix::sys::socket::{Backlog, listen};

pub struct Loopback {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    _udp: UdpSocket,
    stop: Arc<AtomicBool>,
}

impl Loopback {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
        // std listens with a backlog of 128: when the accept loop falls behind (two cores shared
        // with the generator and the daemon), the queue overflows, SYNs are dropped and a
        // connect stalls for the 1 s SYN retransmission timeout. A second listen() raises it
        // (the kernel caps it at net.core.somaxconn).
        listen(&listener, Backlog::new(65_535).unwrap_or(Backlog::MAXCONN))
            .context("cannot raise the listen backlog")?;
        let tcp = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        // A blocking accept loop: no polling to steal CPU from the measured process.
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        });
        let udp_sock = UdpSocket::bind("127.0.0.1:0").context("cannot bind 127.0.0.1 (UDP)")?;
        let udp = udp_sock.local_addr()?;
        Ok(Self {
            tcp,
            udp,
            _udp: udp_sock,
            stop,
        })
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.tcp);
    }
}
