//! A tiny agent for the integration tests: performs one action and reports the outcome on
//! stdout as `ok` or `errno=N`, exiting 0 or 1. Run under `agentguard run`.

use std::{
    fs::OpenOptions,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

#[path = "probe_parts/confine.rs"]
mod confine;

fn report(r: std::io::Result<()>) -> ExitCode {
    match r {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("errno={} ({e})", e.raw_os_error().unwrap_or(-1));
            ExitCode::FAILURE
        }
    }
}

fn addr(host: &str, port: &str) -> std::io::Result<SocketAddr> {
    let ip: IpAddr = host
        .parse()
        .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
    let port: u16 = port
        .parse()
        .map_err(|e| std::io::Error::other(format!("{port}: {e}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// The IPv4-mapped IPv6 form of an IPv4 address (`::ffff:a.b.c.d`).
fn mapped(host: &str, port: &str) -> std::io::Result<SocketAddr> {
    match addr(host, port)? {
        SocketAddr::V4(a) => Ok(SocketAddr::new(
            IpAddr::V6(a.ip().to_ipv6_mapped()),
            a.port(),
        )),
        v6 => Ok(v6),
    }
}

fn tcp(a: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&a, Duration::from_secs(3)).map(drop)
}

/// A TCP connect by host name, resolved by the C library as an agent would (hosts file, then
/// DNS); tries each address until one connects.
fn tcp_name(host: &str, port: &str) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    let port: u16 = port
        .parse()
        .map_err(|e| std::io::Error::other(format!("{port}: {e}")))?;
    let mut last = std::io::Error::other(format!("{host} has no addresses"));
    for a in (host, port).to_socket_addrs()? {
        match tcp(a) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn udp_send(a: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind(if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    s.send_to(b"agentguard", a).map(drop)
}

fn status_lines() -> std::io::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    for line in status.lines() {
        if [
            "Uid:",
            "Gid:",
            "CapInh:",
            "CapPrm:",
            "CapEff:",
            "CapBnd:",
            "CapAmb:",
            "NoNewPrivs:",
        ]
        .iter()
        .any(|p| line.starts_with(p))
        {
            println!("{line}");
        }
    }
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    println!("fds: {}", fds.join(" "));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["tcp", host, port] => report(addr(host, port).and_then(tcp)),
        ["tcp-name", host, port] => report(tcp_name(host, port)),
        ["tcp-mapped", host, port] => report(mapped(host, port).and_then(tcp)),
        ["udp", host, port] => report(addr(host, port).and_then(udp_send)),
        ["udp-mapped", host, port] => report(mapped(host, port).and_then(udp_send)),
        ["udp-connect", host, port] => report(addr(host, port).and_then(|a| {
            let s = UdpSocket::bind(if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            s.connect(a)?;
            s.send(b"agentguard").map(drop)
        })),
        ["tcp-loop", host, port, n] => {
            let n: usize = n.parse().unwrap_or(0);
            let mut ok = 0;
            let mut eperm = 0;
            for _ in 0..n {
                match addr(host, port).and_then(tcp) {
                    Ok(()) => ok += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
                    Err(e) => println!("other error: {e}"),
                }
            }
            println!("ok={ok} eperm={eperm}");
            ExitCode::SUCCESS
        }
        ["udp-loop", host, port, n] => report(addr(host, port).and_then(|a| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..n.parse::<usize>().unwrap_or(0) {
                s.send_to(b"agentguard", a)?;
            }
            Ok(())
        })),
        ["tcp-pair", host, a, b, n] => {
            // Alternates connects to an allowed and a refused port, counting each outcome.
            let n: usize = n.parse().unwrap_or(0);
            let mut counts = [[0usize; 2]; 2];
            for i in 0..n {
                let port = if i % 2 == 0 { a } else { b };
                let ok = addr(host, port).and_then(tcp).is_ok();
                counts[i % 2][usize::from(ok)] += 1;
            }
            println!(
                "a_ok={} a_refused={} b_ok={} b_refused={}",
                counts[0][1], counts[0][0], counts[1][1], counts[1][0]
            );
            ExitCode::SUCCESS
        }
        ["move-self", procs] => report(std::fs::write(procs, std::process::id().to_string())),
        ["status"] => report(status_lines()),
        ["read", path] => report(std::fs::File::open(path).and_then(|mut f| {
            let mut s = Vec::new();
            f.read_to_end(&mut s).map(drop)
        })),
        ["write", path] => report(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .and_then(|mut f| f.write_all(b"agentguard")),
        ),
        ["exec", path, rest @ ..] => {
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(path).args(rest).exec();
            report(Err(err))
        }
        ["read-at", dir, rel] => {
            report(std::env::set_current_dir(dir).and_then(|()| std::fs::read(rel).map(drop)))
        }
        ["reopen-rw", path] => report(std::fs::File::open(path).and_then(|f| {
            use std::os::fd::AsRawFd;
            let again = format!("/proc/self/fd/{}", f.as_raw_fd());
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(again)
                .map(drop)
        })),
        ["unlink", path] => report(std::fs::remove_file(path)),
        ["mkdir", path] => report(std::fs::create_dir(path)),
        ["rename", from, to] => report(std::fs::rename(from, to)),
        ["truncate", path] => report(
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(0)),
        ),
        ["userns"] => report(
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                .map_err(std::io::Error::from),
        ),
        ["mount-in-userns"] => report(
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS,
            )
            .and_then(|()| {
                nix::mount::mount(
                    Some("none"),
                    "/tmp",
                    Some("tmpfs"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
            })
            .map_err(std::io::Error::from),
        ),
        ["ptrace", pid] => report(pid.parse::<i32>().map_err(std::io::Error::other).and_then(
            |p| {
                nix::sys::ptrace::attach(nix::unistd::Pid::from_raw(p))
                    .map_err(std::io::Error::from)
            },
        )),
        ["open-loop", path, n] => {
            let n: usize = n.parse().unwrap_or(0);
            let (mut ok, mut failed) = (0, 0);
            for _ in 0..n {
                match std::fs::File::open(path) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            println!("ok={ok} failed={failed}");
            ExitCode::SUCCESS
        }
        ["spin"] => loop {
            std::hint::spin_loop();
        },
        ["exit", code] => ExitCode::from(code.parse::<u8>().unwrap_or(1)),
        ["sleep", secs] => {
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(1)));
            ExitCode::SUCCESS
        }
        [cmd, rest @ ..] if confine::COMMANDS.contains(cmd) => confine::run(cmd, rest, report),
        _ => {
            eprintln!(
                "usage: agentguard-probe tcp|tcp-name|tcp-mapped|udp|udp-mapped|udp-connect HOST PORT | tcp-loop HOST PORT N | status | read PATH | write PATH | exit CODE | sleep SECS"
            );
            ExitCode::from(2)
        }
    }
}
