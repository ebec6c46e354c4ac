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
#[path = "probe_parts/race.rs"]
mod race;

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

mod attack {
    //! What a hostile agent tries against agentguard; each returns the system call's verdict.

    use std::{io, net::Ipv4Addr, os::fd::AsRawFd};

    fn check(rc: libc::c_long) -> io::Result<()> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn num<T: std::str::FromStr>(s: &str) -> io::Result<T> {
        s.parse()
            .map_err(|_| io::Error::other(format!("not a number: {s}")))
    }

    /// `clone3(CLONE_INTO_CGROUP)` into `dir` through an O_PATH descriptor (no cgroup.procs
    /// write): the child exits at once; success means the agent could leave its cgroup.
    pub fn clone3_into_cgroup(dir: &str) -> io::Result<()> {
        let cgroup = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?;
        #[repr(C)]
        #[derive(Default)]
        struct CloneArgs {
            flags: u64,
            pidfd: u64,
            child_tid: u64,
            parent_tid: u64,
            exit_signal: u64,
            stack: u64,
            stack_size: u64,
            tls: u64,
            set_tid: u64,
            set_tid_size: u64,
            cgroup: u64,
        }
        const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: u64::try_from(cgroup.as_raw_fd()).unwrap_or(0),
            ..CloneArgs::default()
        };
        // SAFETY: a clone3 without CLONE_VM: the child is a copy of this process and only
        // calls _exit.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            // SAFETY: leaving the child without running any Rust code.
            unsafe { libc::_exit(0) };
        }
        check(pid)?;
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(i32::try_from(pid).unwrap_or(-1), &mut status, 0) };
        Ok(())
    }

    use std::os::unix::fs::OpenOptionsExt as _;

    /// `bpf(BPF_OBJ_GET)` on a pinned agentguard object: success means the agent holds a
    /// descriptor it could detach or rewrite with.
    pub fn bpf_obj_get(pin: &str) -> io::Result<()> {
        let path = std::ffi::CString::new(pin).map_err(io::Error::other)?;
        // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags (and padding).
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64;
        const BPF_OBJ_GET: libc::c_long = 7;
        // SAFETY: attr is larger than the kernel's bpf_attr prefix for this command.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                attr.as_mut_ptr(),
                size_of_val(&attr),
            )
        };
        check(fd)?;
        // SAFETY: the descriptor the kernel just returned.
        unsafe { libc::close(i32::try_from(fd).unwrap_or(-1)) };
        Ok(())
    }

    /// `kill(pid, 0)`: the permission check of every signal, without sending one.
    pub fn signal0(pid: &str) -> io::Result<()> {
        // SAFETY: signal 0 sends nothing.
        check(unsafe { libc::kill(num(pid)?, 0) }.into())
    }

    pub fn socket(family: &str, ty: &str, proto: &str) -> io::Result<()> {
        // SAFETY: socket(2) with integer arguments; the descriptor is closed right away.
        let fd = unsafe { libc::socket(num(family)?, num(ty)?, num(proto)?) };
        check(fd.into())?;
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        Ok(())
    }

    /// An ICMP echo request from an unprivileged ping socket.
    pub fn ping(host: &str) -> io::Result<()> {
        let ip: Ipv4Addr = host.parse().map_err(io::Error::other)?;
        // SAFETY: socket(2) with integer arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
        check(fd.into())?;
        let echo: [u8; 16] = [
            8, 0, 0, 0, 0, 1, 0, 1, b'a', b'g', b'e', b'n', b't', b'g', b'r', b'd',
        ];
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address of the stated sizes.
        let sent = unsafe {
            libc::sendto(
                fd,
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let result = check(sent as libc::c_long);
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        result
    }

    /// TIOCSTI on stdin: pushing input into the terminal the agent was started from.
    pub fn tiocsti() -> io::Result<()> {
        let c = b'x';
        // SAFETY: TIOCSTI reads one byte from the pointer.
        check(unsafe { libc::ioctl(0, libc::TIOCSTI, &c) }.into())
    }

    /// Prints `sid=S pid=P tty=yes|no`.
    pub fn session() -> io::Result<()> {
        // SAFETY: getsid(0) and getpid() take no pointers.
        let (sid, pid) = unsafe { (libc::getsid(0), libc::getpid()) };
        let tty = std::fs::File::open("/dev/tty").is_ok();
        println!("sid={sid} pid={pid} tty={}", if tty { "yes" } else { "no" });
        Ok(())
    }
}

/// An AF_UNIX address: a path, or `@name` for an abstract socket.
fn unix_addr(a: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match a.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(a),
    }
}

/// Connects a stream socket to the pathname `path` with an address length other than the one
/// Rust passes (the name and its NUL): `exact`, the name without a NUL (C's `SUN_LEN`);
/// `padded`, all of `sockaddr_un`, with other bytes after the NUL.
fn unix_stream_len(path: &str, mode: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: all-zero is a valid `sockaddr_un`.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let name = path.as_bytes();
    if name.len() >= addr.sun_path.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    for (d, s) in addr.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let sun_path_offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = match mode {
        "exact" => sun_path_offset + name.len(),
        "padded" => {
            for d in addr.sun_path.iter_mut().skip(name.len() + 1) {
                *d = b'x' as libc::c_char;
            }
            size_of::<libc::sockaddr_un>()
        }
        _ => return Err(std::io::Error::other(format!("unknown length mode {mode}"))),
    };
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let len = libc::socklen_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: `addr` is a valid `sockaddr_un` of at least `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["tcp", host, port] => report(addr(host, port).and_then(tcp)),
        ["unix-stream", a] => report(
            unix_addr(a)
                .and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a))
                .map(drop),
        ),
        ["unix-stream-len", path, mode] => report(unix_stream_len(path, mode)),
        ["unix-dgram", a] => report(unix_addr(a).and_then(|a| {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            s.send_to_addr(b"agentguard", &a).map(drop)
        })),
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
        ["tcp-pair-until-eof", host, a, b] => {
            // Alternates connects to an allowed and a refused port until stdin closes, counting
            // each outcome; says `connecting` once the first pair is done so the test knows the
            // load is on.
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut counts = [[0usize; 2]; 2];
            let mut i = 0usize;
            while i < 2 || !done.load(std::sync::atomic::Ordering::SeqCst) {
                let port = if i.is_multiple_of(2) { a } else { b };
                let ok = addr(host, port).and_then(tcp).is_ok();
                counts[i % 2][usize::from(ok)] += 1;
                i += 1;
                if i == 2 {
                    println!("connecting");
                    let _ = std::io::stdout().flush();
                }
            }
            println!(
                "a_ok={} a_refused={} b_ok={} b_refused={}",
                counts[0][1], counts[0][0], counts[1][1], counts[1][0]
            );
            ExitCode::SUCCESS
        }
        // Attacks on agentguard itself (issue: confinement the agent cannot lift).
        ["clone3-into-cgroup", dir] => report(attack::clone3_into_cgroup(dir)),
        ["bpf-obj-get", pin] => report(attack::bpf_obj_get(pin)),
        ["signal0", pid] => report(attack::signal0(pid)),
        ["open-write", path] => report(OpenOptions::new().write(true).open(path).map(drop)),
        ["create-new", path] => report(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map(drop),
        ),
        ["socket", family, ty, proto] => report(attack::socket(family, ty, proto)),
        ["ping", host] => report(attack::ping(host)),
        ["tiocsti"] => report(attack::tiocsti()),
        ["session"] => report(attack::session()),
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
        [cmd, rest @ ..] if race::COMMANDS.contains(cmd) => race::run(cmd, rest, report),
        _ => {
            eprintln!(
                "usage: agentguard-probe tcp|tcp-name|tcp-mapped|udp|udp-mapped|udp-connect HOST PORT | tcp-loop HOST PORT N | status | read PATH | write PATH | exit CODE | sleep SECS"
            );
            ExitCode::from(2)
        }
    }
}
