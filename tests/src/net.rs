//! Loopback listeners for network tests: real sockets the agents try to reach.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// A TCP listener on an ephemeral loopback port that accepts and drops connections.
pub struct Tcp {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Tcp {
    /// Listens on `host:0` (`127.0.0.1` or `::1`).
    pub fn listen(host: &str) -> Self {
        Self::listen_at(&format!("{host}:0").replace("::1:0", "[::1]:0"))
    }

    /// Listens on exactly `addr` (e.g. `127.0.0.78:4242`).
    pub fn listen_at(addr: &str) -> Self {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        l.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Tcp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP socket on an ephemeral loopback port that counts what it receives.
pub struct Udp {
    sock: UdpSocket,
}

impl Udp {
    /// Binds `host:0`.
    pub fn bind(host: &str) -> Self {
        let sock = UdpSocket::bind(format!("{host}:0").replace("::1:0", "[::1]:0"))
            .unwrap_or_else(|e| panic!("bind {host}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap_or_else(|e| panic!("{e}"));
        Self { sock }
    }

    /// Binds exactly `addr` (e.g. `127.0.0.153:53`).
    pub fn bind_at(addr: &str) -> Self {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap_or_else(|e| panic!("{e}"));
        Self { sock }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Whether a datagram arrived (within the read timeout).
    pub fn received(&self) -> bool {
        let mut buf = [0u8; 64];
        self.sock.recv_from(&mut buf).is_ok()
    }
}
