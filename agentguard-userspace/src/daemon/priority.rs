//! Scheduling the daemon against the agents it watches.
//!
//! Under a fair-share scheduler a task gets what its scheduling entity weighs against the
//! others, and agents choose how many entities they are: `agentguard run` starts every agent
//! in a session of its own, an agent may start more (`setsid`), and on a kernel with
//! autogroups (`kernel.sched_autogroup_enabled`, on by default in Debian and Fedora) every
//! session whose tasks sit in the root CPU cgroup is a group of equal weight, whatever its
//! tasks' nice values. The daemon's ingest thread therefore runs real-time, and the rest of the
//! daemon (control socket, freezes and kills) gets its session's autogroup the highest weight.

/// The ingest thread's real-time priority (`SCHED_FIFO`, the lowest level).
///
/// Measured on a 2-core host with 64 sending agents, each in its session's autogroup: at nice
/// -20 the thread got 14 % of its runnable time on a CPU and the kernel dropped 77 % of the
/// events; at `SCHED_FIFO` it waits for no agent and the bench's load loses none.
/// A real-time thread runs before every fair-class task, so its work must be bounded: it only
/// runs while events are queued, every instance's event budget bounds how many there are, it
/// is one thread (at most one CPU), and the kernel's real-time throttling
/// (`kernel.sched_rt_runtime_us`) and fair server keep fair tasks running beside it.
const INGEST_RT_PRIORITY: libc::c_int = 1;

/// The ingest thread's nice value where `SCHED_FIFO` is refused (a CPU cgroup without
/// real-time runtime, no `CAP_SYS_NICE`). Agents cannot go below nice 0 (no `CAP_SYS_NICE`);
/// at -20 (CFS weight 88761, 87 times nice 0's) the thread keeps most of a CPU against the
/// agent processes in its own scheduling group, though not against agents in groups of their
/// own (see [`INGEST_RT_PRIORITY`]).
const INGEST_NICE: i32 = -20;

/// Gives the calling thread (only: both calls act on the caller's thread id)
/// [`INGEST_RT_PRIORITY`], or [`INGEST_NICE`] where the kernel refuses real time.
pub fn raise_ingest_thread() {
    let param = libc::sched_param {
        sched_priority: INGEST_RT_PRIORITY,
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread. SCHED_RESET_ON_FORK: nothing this thread might start inherits it.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        return;
    }
    let fifo = std::io::Error::last_os_error();
    let tid = rustix::thread::gettid();
    let nice = rustix::process::setpriority_process(Some(tid), INGEST_NICE);
    tracing::warn!(
        "the ingest thread is not real-time (SCHED_FIFO: {fifo}); it runs at {}: agents \
         that keep every CPU busy can make the kernel drop events (counted in the log as gaps)",
        match nice {
            Ok(()) => format!("nice {INGEST_NICE}"),
            Err(e) => format!("its default priority (setpriority {INGEST_NICE}: {e})"),
        }
    );
}

/// The nice value of the daemon's threads and of its autogroup (`/proc/self/autogroup`):
/// weight 88761, as much as 87 entities at nice 0, below which agents cannot go
/// (`CAP_SYS_NICE`).
const DAEMON_NICE: i32 = -20;

/// Gives the daemon [`DAEMON_NICE`] wherever its weight is decided.
///
/// A daemon in a session of its own (a service manager's `setsid`) is weighed as its session's
/// autogroup, whose nice value counts. A daemon started from the initial session (a container's
/// or an init script's, without `setsid`) is in the root autogroup: there every daemon thread is
/// an entity of its own beside each agent session's group, so the threads' nice values count.
/// Both are set, so neither start-up leaves the control socket, freezes and kills at the weight
/// of one agent session. A kernel without autogroups (or a daemon in a CPU cgroup of its own)
/// weighs the daemon by its cgroup instead, and both settings are harmless there.
pub fn raise_daemon() {
    raise_daemon_threads();
    raise_daemon_session();
}

/// Every current thread gets [`DAEMON_NICE`]; threads started later inherit it from the thread
/// that starts them (`setpriority` acts on one thread id).
fn raise_daemon_threads() {
    let tasks = match std::fs::read_dir("/proc/self/task") {
        Ok(tasks) => tasks,
        Err(e) => {
            tracing::warn!("the daemon's threads keep their priority (/proc/self/task: {e})");
            return;
        }
    };
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        if let Err(e) = rustix::process::setpriority_process(Some(tid), DAEMON_NICE) {
            tracing::warn!(
                "daemon thread {tid} keeps its priority (nice {DAEMON_NICE}: {e}): agents in \
                 many sessions can slow its answers, freezes and kills"
            );
        }
    }
}

/// The daemon's session's autogroup gets [`DAEMON_NICE`]; the root autogroup (an empty
/// `/proc/self/autogroup`) has no weight of its own to set.
fn raise_daemon_session() {
    let path = std::path::Path::new("/proc/self/autogroup");
    match std::fs::read_to_string(path) {
        Ok(group) if group.trim().is_empty() => return,
        Ok(_) => {}
        // No autogroups in this kernel.
        Err(_) => return,
    }
    if let Err(e) = std::fs::write(path, DAEMON_NICE.to_string()) {
        tracing::warn!(
            "the daemon's autogroup keeps its weight (nice {DAEMON_NICE} into {}: {e}): agents \
             in many sessions can slow its answers, freezes and kills",
            path.display()
        );
    }
}
