//! File allowlist (BPF LSM backend): `file_open` checks read/write prefixes on the full path
//! from `bpf_d_path`; `path_*` hooks apply the write rules to creating, deleting, renaming,
//! linking, truncating and changing attributes.
//!
//! The kernel renders paths with `bpf_d_path` where it allows that helper. Linux 6.1 allows it
//! in `file_open` but not in the `path_*` hooks, so each path hook also exists as a `walk`
//! variant (`ag_walk_*`) that builds the same path by following `d_parent` and mount parents up
//! to the task's root; the loader takes it where the verifier refuses the `bpf_d_path` one.
//!
//! Paths are looked up in an LPM trie keyed by (agent, generation, access, path bytes). Rules are
//! stored with a trailing `/` and paths are looked up with one appended, so `/srv/buyer` covers
//! `/srv/buyer` and `/srv/buyer/x` but never `/srv/buyerX`. A path too long to judge is denied.
//! `/proc/<own pid>/...` is looked up as `/proc/self/...`, so the agent's own /proc entries are a
//! rule like any other.

use core::ffi::c_void;

use agentguard_common::{
    agent::{AGENT_FILE_RULES, ThrottleKind},
    event::{
        EVENT_PARENT_DENIED, EVENT_PATH_TOO_LONG, EVENT_PROC_SELF, EVENT_PROTECTED_FS,
        EVENT_SCRATCH_BUSY, EventKind, FILE_PATH_LEN, FileEvent, FileOp,
    },
    maps::MAX_AGENT_DEPTH,
    rules::{NO_RULE, PATH_KEY_FIXED_BITS, PATH_KEY_LEN, PathKey},
    verdict::{ACCESS_READ, ACCESS_WRITE, Backend, Verdict},
};
use aya_ebpf::{
    bindings::path,
    helpers::{
        bpf_d_path, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_loop, bpf_probe_read_kernel},
    },
    macros::lsm,
    maps::lpm_trie::Key,
    programs::LsmContext,
};

use crate::{
    emit,
    identity::{self, Subject},
    kernel,
    maps::{AG_FILE_F_PATH, PATH_RULES, SCRATCH},
    scratch::Claim,
    verdict::{self, Judgement},
};

const EPERM: i32 = 1;
const FMODE_READ: u32 = 1 << 0;
const FMODE_WRITE: u32 = 1 << 1;
const FMODE_EXEC: u32 = 1 << 5;
const FMODE_CREATED: u32 = 1 << 20;
/// A file the kernel opened for itself, outside the count of open files (`alloc_empty_file_noaccount`;
/// bit 29 from Linux 6.1 to 6.12 at least, which the tests check in both guests).
const FMODE_NOACCOUNT: u32 = 1 << 29;
/// `__FMODE_EXEC` as an open flag (`f_flags`), set by execve's open of the binary.
const O_FMODE_EXEC: u32 = 0x20;

/// Room to assemble a path: a directory of up to [`PATH_KEY_LEN`] bytes plus a name of up to
/// as many again, so every write the verifier sees stays in bounds.
const STAGE_LEN: usize = 2 * PATH_KEY_LEN + 16;

/// Where a dentry walk ends its path in [`Scratch::walk`]: it writes components backwards from
/// here, each at most 255 bytes (NAME_MAX), so every write stays below `2 * WALK_END`.
const WALK_END: usize = 256;
/// Most steps (path components plus mount crossings) a walk takes before it gives up: a path
/// that fits a key has at most `PATH_KEY_LEN / 2` components.
const WALK_STEPS: u32 = 160;
/// NAME_MAX: no component is longer.
const NAME_MAX: usize = 255;

/// Per-CPU working memory for one lookup: a slot of [`SCRATCH`] that the run claimed
/// ([`Claim`]), so no other run on the CPU writes it while this one is preempted.
#[repr(C)]
pub struct Scratch {
    /// The LPM key being built.
    pub key: Key<PathKey>,
    /// The path as the kernel rendered it.
    pub stage: [u8; STAGE_LEN],
    /// A path being built backwards by a dentry walk, ending at [`WALK_END`].
    pub walk: [u8; 2 * WALK_END],
    /// Where that walk is.
    pub walk_state: WalkState,
}

/// A path ready for lookup in [`Scratch::key`]: its length (without the trailing `/`) and how it
/// was rendered.
struct Resolved {
    len: usize,
    flags: u32,
}

#[lsm(hook = "file_open")]
pub fn ag_file_open(ctx: LsmContext) -> i32 {
    // Arguments: (struct file *file, int ret).
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return ret;
    }
    let file: *const u8 = ctx.arg(0);
    if try_file_open(file) { 0 } else { -EPERM }
}

fn try_file_open(file: *const u8) -> bool {
    let Some(subject) = identity::current() else {
        return true;
    };
    let Some(o) = kernel::offsets() else {
        return true;
    };
    let mode: u32 = kernel::read(file, o.file_mode).unwrap_or(0);
    let flags: u32 = kernel::read(file, o.file_flags).unwrap_or(0);
    // The exec of a binary or its interpreter: bprm_check_security judges those. Depending on
    // the kernel, FMODE_EXEC reaches f_mode only after this hook; the open flag is always set.
    if mode & FMODE_EXEC != 0 || flags & O_FMODE_EXEC != 0 {
        return true;
    }
    // A file on one of the kernel's own mounts: a pipe or memfd the agent holds, reopened
    // through /proc/self/fd, or a layer's file overlayfs opens for itself under a file the
    // agent opened (which was judged).
    if kernel::on_internal_mount(&o, file.wrapping_add(o.file_path as usize)) {
        return true;
    }
    // A file this open created was written into its directory: that needs write access.
    let created = mode & FMODE_CREATED != 0;
    let mut access = 0;
    if mode & FMODE_READ != 0 {
        access |= ACCESS_READ;
    }
    if mode & FMODE_WRITE != 0 || created {
        access |= ACCESS_WRITE;
    }
    if access & ACCESS_WRITE != 0
        && kernel::read::<*const u8>(file, o.file_inode)
            .is_some_and(|i| kernel::inode_protected(&o, i))
    {
        let f_path = file.wrapping_add(AG_FILE_F_PATH.load() as usize) as *mut path;
        let Some(claim) = Claim::take(&SCRATCH) else {
            return refuse_protected(&subject, NO_SCRATCH, Some(BUSY), access, FileOp::Open);
        };
        let s = claim.get();
        return refuse_protected(
            &subject,
            s,
            resolve::<false>(s, claim.index(), f_path),
            access,
            FileOp::Open,
        );
    }
    // The real file under an overlayfs file the agent opened, whose open was judged a moment
    // before under the path it asked for (the check above still holds for the real file's
    // inode): overlayfs opens it with the mounter's credentials and, on Linux 6.1, under the
    // overlay's own path (later kernels give it the layer's path on an internal mount, which
    // the mount check above skips). Judged again, every open on an overlay, a container's root
    // among them, would be logged and charged to the open budget twice.
    if mode & FMODE_NOACCOUNT != 0 {
        return true;
    }
    if !subject.files_restricted() {
        // No file rules: only the open budget applies; only its breaches are logged (the daemon
        // escalates them), without the path, which nothing here needed to render.
        let (j, _) = verdict::finish(
            &subject,
            Some(ThrottleKind::Open),
            Judgement::allow(NO_RULE),
        );
        if j.verdict != Verdict::Allowed {
            let info = FileInfo {
                kind: EventKind::FileOpen,
                op: FileOp::Open,
                access,
                len: usize::MAX,
                target_pid: 0,
            };
            emit_file(&subject, &j, &info, NO_SCRATCH);
        }
        return j.permits();
    }
    let f_path = file.wrapping_add(AG_FILE_F_PATH.load() as usize) as *mut path;
    let Some(claim) = Claim::take(&SCRATCH) else {
        return refuse_busy(&subject, access, FileOp::Open);
    };
    let s = claim.get();
    let resolved = resolve::<false>(s, claim.index(), f_path);
    judge(&subject, s, resolved, access, FileOp::Open)
}

/// A path that cannot be judged: refused.
const TOO_LONG: Resolved = Resolved {
    len: usize::MAX,
    flags: EVENT_PATH_TOO_LONG,
};

/// No scratch memory to take a path from (a null pointer rather than `None`: an
/// `Option<*mut _>` is two registers, and BPF functions take at most five).
const NO_SCRATCH: *mut Scratch = core::ptr::null_mut();

/// No scratch slot was free on this CPU to render the path in: refused (see [`crate::scratch`]).
const BUSY: Resolved = Resolved {
    len: usize::MAX,
    flags: EVENT_SCRATCH_BUSY,
};

/// Refuses an action whose path could not be rendered for want of a scratch slot, logging it
/// (without a path) like any refusal.
#[inline(always)]
fn refuse_busy(subject: &Subject, access: u8, op: FileOp) -> bool {
    settle(
        subject,
        NO_SCRATCH,
        Some(BUSY),
        access,
        op,
        Judgement::refuse(Verdict::Denied, EVENT_SCRATCH_BUSY),
    )
}

/// Renders `p` at the start of the scratch stage (with `bpf_d_path`, or by a dentry walk when
/// `WALK`); its length without the NUL, or `None` when it could not be rendered in
/// [`PATH_KEY_LEN`] bytes. `s` is the claimed slot number `slot` of [`SCRATCH`].
#[inline(always)]
fn render<const WALK: bool>(s: *mut Scratch, slot: u32, p: *mut path) -> Option<usize> {
    if WALK {
        return walk(s, slot, p.cast_const().cast());
    }
    // SAFETY: `s` is this run's scratch slot, valid for the program run; `p` is a kernel
    // `struct path` the hook received (or derived from one at a BTF offset).
    let n = unsafe { bpf_d_path(p, (*s).stage.as_mut_ptr().cast(), PATH_KEY_LEN as u32) };
    if n <= 0 { None } else { Some((n - 1) as usize) }
}

/// What `bpf_d_path` renders, built by hand for hooks where the kernel does not offer that
/// helper: from the path's dentry up through `d_parent`, crossing from a mount's root to where
/// it is mounted, until the task's root directory (so a chroot is honoured as `d_path` does)
/// or the root of the mount namespace.
///
/// Each step is one `bpf_loop` iteration, so the verifier checks the step once instead of
/// unrolling a loop of [`WALK_STEPS`] (which took seconds per program on an emulated 6.1).
/// Programs run under RCU, so the dentries and names read here stay valid; a concurrent rename
/// of an ancestor can give a path that existed just before or just after it, as `d_path` can.
fn walk(s: *mut Scratch, slot: u32, p: *const u8) -> Option<usize> {
    let o = kernel::offsets()?;
    // SAFETY: helper without memory arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let fs: *const u8 = kernel::read(task, o.task_fs)?;
    let start = WalkState {
        dentry: kernel::read(p, o.path_dentry)?,
        vfsmnt: kernel::read(p, o.path_mnt)?,
        root_dentry: kernel::read(fs, o.fs_root + o.path_dentry)?,
        root_mnt: kernel::read(fs, o.fs_root + o.path_mnt)?,
        end: WALK_END as u64,
        state: WALK_RUNNING,
    };
    // The state lives in the scratch map, not on this stack: the 6.1 verifier checks a bpf_loop
    // callback once, so it would take the values one step leaves on the caller's stack for the
    // only ones possible after the loop and hard-wire the branches that test them.
    // SAFETY: `s` is this run's scratch slot; WALK_END is inside `walk`.
    unsafe {
        (*s).walk_state = start;
        *core::ptr::addr_of_mut!((*s).walk)
            .cast::<u8>()
            .add(WALK_END) = 0;
    }
    // The callback finds the slot by its number: bpf_loop passes it only stack memory.
    let mut slot = slot;
    // SAFETY: `walk_step` has the callback signature bpf_loop expects; its context is `slot`,
    // which outlives the loop.
    unsafe {
        bpf_loop(
            WALK_STEPS,
            walk_step as *mut c_void,
            (&raw mut slot).cast(),
            0,
        )
    };
    // SAFETY: this run's scratch slot, as above.
    let (state, end) = unsafe { ((*s).walk_state.state, (*s).walk_state.end) };
    if state != WALK_DONE {
        return None;
    }
    finish_walk(s, end)
}

const WALK_RUNNING: u64 = 0;
const WALK_DONE: u64 = 1;
const WALK_FAILED: u64 = 2;
/// The walk writes no lower than this: the whole path, a `/` before each component, fits in
/// `PATH_KEY_LEN - 1` bytes.
const WALK_MIN_END: u64 = (WALK_END - (PATH_KEY_LEN - 1)) as u64;

/// A dentry walk between two [`walk_step`]s. Kernel pointers are plain numbers here (a map
/// value holds no pointers): they are only compared and read through `bpf_probe_read_kernel`.
#[repr(C)]
pub struct WalkState {
    dentry: u64,
    vfsmnt: u64,
    root_dentry: u64,
    root_mnt: u64,
    /// Where the path built so far starts in [`Scratch::walk`].
    end: u64,
    state: u64,
}

/// One step of [`walk`] on the run's scratch slot, whose number `ctx` points to: 0 to go on, 1
/// to stop (with `state` saying how it ended).
extern "C" fn walk_step(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `walk` passes a pointer to the slot number on its stack.
    let slot = unsafe { *ctx.cast::<u32>() };
    let Some(s) = SCRATCH.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: the slot `walk`'s run claimed (and set up), valid for the program run.
    let s = unsafe { &raw mut (*s).data };
    // SAFETY: as above.
    let w = unsafe { &mut (*s).walk_state };
    match step(s, w) {
        Some(true) => 0,
        Some(false) => {
            w.state = WALK_DONE;
            1
        }
        None => {
            w.state = WALK_FAILED;
            1
        }
    }
}

/// Moves `w` one dentry or one mount up; `Some(false)` when the path is complete, `None` when
/// it cannot be rendered.
#[inline(always)]
fn step(s: *mut Scratch, w: &mut WalkState) -> Option<bool> {
    if w.dentry == w.root_dentry && w.vfsmnt == w.root_mnt {
        return Some(false);
    }
    let o = kernel::offsets()?;
    let (dentry, vfsmnt) = (w.dentry as *const u8, w.vfsmnt as *const u8);
    let mnt_root: u64 = kernel::read(vfsmnt, o.vfsmount_mnt_root)?;
    let parent: u64 = kernel::read(dentry, o.dentry_parent)?;
    if w.dentry == mnt_root || w.dentry == parent {
        let mount = w.vfsmnt.wrapping_sub(u64::from(o.mount_mnt));
        let up: u64 = kernel::read(mount as *const u8, o.mount_parent)?;
        // The namespace's root mount is its own parent; a dentry that is its own parent
        // without being a mount root is a disconnected one: d_path stops at both.
        if up == mount || w.dentry != mnt_root {
            return Some(false);
        }
        w.dentry = kernel::read(mount as *const u8, o.mount_mountpoint)?;
        w.vfsmnt = up.wrapping_add(u64::from(o.mount_mnt));
        return Some(true);
    }
    let len = u64::from(kernel::read::<u32>(dentry, o.dentry_name_len)?);
    let name: *const u8 = kernel::read(dentry, o.dentry_name)?;
    let end = w.end;
    if len == 0 || len > NAME_MAX as u64 || end > WALK_END as u64 || end < len + 1 + WALK_MIN_END {
        return None;
    }
    // Masked for the verifier, which does not see that `end - len` is in 10..=255.
    let at = ((end - len) & 0xff) as usize;
    // SAFETY: the run's scratch slot; `at` and `len` are each below 256 and `walk` holds 512.
    unsafe {
        let buf = core::ptr::addr_of_mut!((*s).walk).cast::<u8>();
        if bpf_probe_read_kernel(buf.add(at).cast(), (len & 0xff) as u32, name.cast()) != 0 {
            return None;
        }
        *buf.add((at - 1) & 0xff) = b'/';
    }
    w.end = (at - 1) as u64;
    w.dentry = parent;
    Some(true)
}

/// Moves a walked path (`walk[end..WALK_END]`) to the start of the stage; its length.
#[inline(always)]
fn finish_walk(s: *mut Scratch, end: u64) -> Option<usize> {
    if end > WALK_END as u64 || end < WALK_MIN_END {
        return None;
    }
    // SAFETY: `s` is this run's scratch slot; the copy lands in the stage, which is longer than
    // PATH_KEY_LEN, and reads scratch memory from `end`, which is inside `walk`.
    unsafe {
        let buf = core::ptr::addr_of_mut!((*s).walk).cast::<u8>();
        let mut end = end as usize;
        if end == WALK_END {
            // The root itself.
            end = WALK_END - 1;
            *buf.add(WALK_END - 1) = b'/';
        }
        // The copy ends at or after the NUL at WALK_END, since end >= WALK_MIN_END.
        bpf_probe_read_kernel(
            (*s).stage.as_mut_ptr().cast(),
            PATH_KEY_LEN as u32,
            buf.wrapping_add(end).cast(),
        );
        Some(WALK_END - end)
    }
}

/// Renders `p` into the scratch stage of `s` (slot number `slot`) and prepares the lookup key.
fn resolve<const WALK: bool>(s: *mut Scratch, slot: u32, p: *mut path) -> Option<Resolved> {
    match render::<WALK>(s, slot, p) {
        Some(len) => finish_key(s, len),
        None => Some(TOO_LONG),
    }
}

/// Renders `dir` + "/" + the name of `dentry` (a path that is about to exist or stop existing).
fn resolve_child<const WALK: bool>(
    s: *mut Scratch,
    slot: u32,
    dir: *mut path,
    dentry: *const u8,
) -> Option<Resolved> {
    let o = kernel::offsets()?;
    let Some(mut start) = render::<WALK>(s, slot, dir) else {
        return Some(TOO_LONG);
    };
    if start >= PATH_KEY_LEN {
        return Some(TOO_LONG);
    }
    // SAFETY: `start` < PATH_KEY_LEN and the stage has room for a slash and a whole name.
    unsafe {
        if start != 1 {
            (*s).stage[start] = b'/';
            start += 1;
        }
    }
    let name: *const u8 = kernel::read(dentry, o.dentry_name)?;
    let start = start & 0xff;
    // SAFETY: the destination slice lies inside the stage (start <= PATH_KEY_LEN).
    let copied = unsafe {
        let dst = core::slice::from_raw_parts_mut((*s).stage.as_mut_ptr().add(start), PATH_KEY_LEN);
        bpf_probe_read_kernel_str_bytes(name, dst)
            .map(|b| b.len())
            .unwrap_or(0)
    };
    finish_key(s, start + copied)
}

/// Moves the rendered path from the stage into the key: `/proc/<own pid>` becomes `/proc/self`,
/// a `/` is appended, the prefix length is set.
fn finish_key(s: *mut Scratch, len: usize) -> Option<Resolved> {
    const SELF: &[u8; 10] = b"/proc/self";
    if len >= PATH_KEY_LEN {
        return Some(TOO_LONG);
    }
    // SAFETY: `s` is this run's scratch slot; copies stay inside the key and the stage (the
    // stage is twice a key long, so reading PATH_KEY_LEN bytes past any offset below is fine).
    unsafe {
        let key_path = core::ptr::addr_of_mut!((*s).key.data.path).cast::<u8>();
        let stage = (*s).stage.as_ptr();
        let (out_len, flags) = match own_proc_prefix(&(*s).stage) {
            None => {
                bpf_probe_read_kernel(key_path.cast(), PATH_KEY_LEN as u32, stage.cast());
                (len, 0)
            }
            Some(skip) => {
                let mut i = 0;
                while i < SELF.len() {
                    *key_path.add(i) = SELF[i];
                    i += 1;
                }
                let skip = skip & 0x1f;
                bpf_probe_read_kernel(
                    key_path.add(SELF.len()).cast(),
                    (PATH_KEY_LEN - SELF.len()) as u32,
                    stage.add(skip).cast(),
                );
                ((len + SELF.len()).saturating_sub(skip), EVENT_PROC_SELF)
            }
        };
        let out_len = out_len & 0xff;
        if out_len >= PATH_KEY_LEN {
            return Some(TOO_LONG);
        }
        *key_path.add(out_len) = b'/';
        (*s).key.prefix_len = PATH_KEY_FIXED_BITS + 8 * (out_len as u32 + 1);
        Some(Resolved {
            len: out_len,
            flags,
        })
    }
}

/// If `stage` starts with `/proc/<pid>` where pid is the current process or thread, the number of
/// bytes to replace with `/proc/self`.
fn own_proc_prefix(stage: &[u8; STAGE_LEN]) -> Option<usize> {
    if &stage[..6] != b"/proc/" {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = (pid_tgid >> 32, pid_tgid & 0xffff_ffff);
    let mut n: u64 = 0;
    let mut i = 6;
    while i < 17 {
        let c = stage[i];
        if c.is_ascii_digit() {
            n = n * 10 + u64::from(c - b'0');
            i += 1;
        } else {
            break;
        }
    }
    let end = stage[i];
    if i > 6 && (end == b'/' || end == 0) && (n == tgid || n == tid) {
        Some(i)
    } else {
        None
    }
}

fn lookup(s: *mut Scratch, generation: u32, agent_id: u32, access: u8) -> Option<u32> {
    // SAFETY: this run's scratch slot; the key was prepared by `finish_key`.
    unsafe {
        (*s).key.data.agent_id = agent_id;
        (*s).key.data.generation = generation as u8;
        (*s).key.data.access = access;
        (*s).key.data._pad = [0; 2];
        PATH_RULES
            .get(&*s.cast_const().cast::<Key<PathKey>>())
            .map(|r| r.rule_id)
    }
}

/// The rule decision for the path in the key of `s`: every access asked for must be allowed by
/// the agent's rules (when it has any) and by each ancestor agent that has file rules, so a
/// sub-agent without file rules of its own is still held to its parent's.
fn decide(
    subject: &Subject,
    s: *mut Scratch,
    resolved: &Option<Resolved>,
    access: u8,
) -> Judgement {
    let Some(r) = resolved else {
        return Judgement::refuse(Verdict::Denied, 0);
    };
    if r.len == usize::MAX || subject.config.is_none() {
        return Judgement::refuse(Verdict::Denied, r.flags);
    }
    let own_rules = subject.flags() & AGENT_FILE_RULES != 0;
    let mut rule_id = NO_RULE;
    for bit in [ACCESS_READ, ACCESS_WRITE] {
        if access & bit == 0 {
            continue;
        }
        if own_rules {
            match lookup(s, subject.generation, subject.agent_id(), bit) {
                Some(id) => rule_id = id,
                None => return Judgement::refuse(Verdict::Denied, r.flags),
            }
        }
        let mut parent = subject.parent_agent_id();
        let mut depth = 0;
        while parent != 0 && depth < MAX_AGENT_DEPTH {
            let cfg = identity::agent_config(subject.generation, parent);
            if cfg.is_none_or(|c| c.flags & AGENT_FILE_RULES != 0) {
                match lookup(s, subject.generation, parent, bit) {
                    // Without rules of its own, an ancestor's rule is the one that allowed.
                    Some(id) if !own_rules => rule_id = id,
                    Some(_) => {}
                    None => {
                        return Judgement::refuse(Verdict::Denied, r.flags | EVENT_PARENT_DENIED);
                    }
                }
            }
            parent = cfg.map_or(0, |c| c.parent_agent_id);
            depth += 1;
        }
    }
    Judgement {
        verdict: Verdict::Allowed,
        rule_id,
        flags: r.flags,
    }
}

/// What a file event reports besides the header.
#[derive(Clone, Copy)]
pub struct FileInfo {
    /// Event kind.
    pub kind: EventKind,
    /// Operation.
    pub op: FileOp,
    /// Access asked for.
    pub access: u8,
    /// Length of the path in the scratch key given with it, or `usize::MAX` for none.
    pub len: usize,
    /// Target pid (ptrace).
    pub target_pid: u32,
}

#[inline(always)]
fn judge(
    subject: &Subject,
    s: *mut Scratch,
    resolved: Option<Resolved>,
    access: u8,
    op: FileOp,
) -> bool {
    let decision = decide(subject, s, &resolved, access);
    settle(subject, s, resolved, access, op, decision)
}

/// Finishes a decision about a file operation (budget, audit mode, counters) and logs it, with
/// the path in the key of `s` when there is one.
#[inline(always)]
fn settle(
    subject: &Subject,
    s: *mut Scratch,
    resolved: Option<Resolved>,
    access: u8,
    op: FileOp,
    decision: Judgement,
) -> bool {
    // Opens count against the open budget; other path operations do not.
    let (kind, budget) = match op {
        FileOp::Open => (EventKind::FileOpen, Some(ThrottleKind::Open)),
        _ => (EventKind::PathOp, None),
    };
    let (j, log) = verdict::finish(subject, budget, decision);
    if log {
        let len = resolved.as_ref().map_or(usize::MAX, |r| r.len);
        emit_file(
            subject,
            &j,
            &FileInfo {
                kind,
                op,
                access,
                len,
                target_pid: 0,
            },
            s,
        );
    }
    j.permits()
}

/// Sends a [`FileEvent`] with the path in the key of `s` (if it is not [`NO_SCRATCH`] and
/// `info.len` is valid).
pub fn emit_file(subject: &Subject, j: &Judgement, info: &FileInfo, s: *mut Scratch) {
    let FileInfo {
        kind,
        op,
        access,
        len,
        target_pid,
    } = *info;
    let Some(mut entry) = emit::reserve::<FileEvent>(subject, j) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is reserved ring buffer memory of the right size, written field by field;
    // the path comes from this run's scratch slot.
    unsafe {
        (*ev).header = entry.header(kind, Backend::BpfLsm, subject, j);
        (*ev).op = op as u16;
        (*ev).access = access;
        (*ev)._pad = 0;
        (*ev).target_pid = target_pid;
        (*ev).path[0] = 0;
        if len < PATH_KEY_LEN && !s.is_null() {
            let src = core::ptr::addr_of!((*s).key.data.path).cast::<u8>();
            bpf_probe_read_kernel(
                (*ev).path.as_mut_ptr().cast(),
                PATH_KEY_LEN as u32,
                src.cast(),
            );
            (*ev).path[len & (FILE_PATH_LEN - 1)] = 0;
        }
    }
    entry.send();
}

/// Agents may never change agentguard's own state (its cgroups, its pinned programs), whatever
/// their file rules say: that is how an agent would leave its identity or its enforcement.
#[inline(always)]
fn refuse_protected(
    subject: &Subject,
    s: *mut Scratch,
    resolved: Option<Resolved>,
    access: u8,
    op: FileOp,
) -> bool {
    let flags = resolved.as_ref().map_or(0, |r| r.flags) | EVENT_PROTECTED_FS;
    settle(
        subject,
        s,
        resolved,
        access,
        op,
        Judgement::refuse(Verdict::Denied, flags),
    )
}

/// The answer of a path operation that found no free scratch slot: refused, as protected when
/// it was.
#[inline(always)]
fn busy_verdict(subject: &Subject, protected: bool, op: FileOp) -> i32 {
    let permitted = if protected {
        refuse_protected(subject, NO_SCRATCH, Some(BUSY), ACCESS_WRITE, op)
    } else {
        refuse_busy(subject, ACCESS_WRITE, op)
    };
    if permitted { 0 } else { -EPERM }
}

/// A write-rule check for a path operation on `dir`/`dentry`.
fn path_child_op<const WALK: bool>(dir: *mut path, dentry: *const u8, op: FileOp) -> i32 {
    let Some(subject) = identity::current() else {
        return 0;
    };
    let protected =
        kernel::offsets().is_some_and(|o| kernel::path_protected(&o, dir.cast_const().cast()));
    if !protected && !subject.files_restricted() {
        return 0;
    }
    let Some(claim) = Claim::take(&SCRATCH) else {
        return busy_verdict(&subject, protected, op);
    };
    let s = claim.get();
    let resolved = resolve_child::<WALK>(s, claim.index(), dir, dentry);
    let permitted = if protected {
        refuse_protected(&subject, s, resolved, ACCESS_WRITE, op)
    } else {
        judge(&subject, s, resolved, ACCESS_WRITE, op)
    };
    if permitted { 0 } else { -EPERM }
}

/// A write-rule check for a path operation on an existing `path`.
fn path_op<const WALK: bool>(p: *mut path, op: FileOp) -> i32 {
    let Some(subject) = identity::current() else {
        return 0;
    };
    let protected =
        kernel::offsets().is_some_and(|o| kernel::path_protected(&o, p.cast_const().cast()));
    if !protected && !subject.files_restricted() {
        return 0;
    }
    let Some(claim) = Claim::take(&SCRATCH) else {
        return busy_verdict(&subject, protected, op);
    };
    let s = claim.get();
    let resolved = resolve::<WALK>(s, claim.index(), p);
    let permitted = if protected {
        refuse_protected(&subject, s, resolved, ACCESS_WRITE, op)
    } else {
        judge(&subject, s, resolved, ACCESS_WRITE, op)
    };
    if permitted { 0 } else { -EPERM }
}

/// A hook on a directory entry about to be created or removed, judged by the write rules; in
/// both renderings (see the module documentation).
macro_rules! child_hook {
    ($name:ident, $walk:ident, $hook:literal, $op:expr, $ret_arg:literal) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            child_hook_body::<false>(&ctx, $op, $ret_arg)
        }

        #[lsm(hook = $hook)]
        pub fn $walk(ctx: LsmContext) -> i32 {
            child_hook_body::<true>(&ctx, $op, $ret_arg)
        }
    };
}

#[inline(always)]
fn child_hook_body<const WALK: bool>(ctx: &LsmContext, op: FileOp, ret_arg: usize) -> i32 {
    let ret: i32 = ctx.arg(ret_arg);
    if ret != 0 {
        return ret;
    }
    path_child_op::<WALK>(ctx.arg(0), ctx.arg(1), op)
}

child_hook!(
    ag_path_unlink,
    ag_walk_unlink,
    "path_unlink",
    FileOp::Unlink,
    2
);
child_hook!(ag_path_mkdir, ag_walk_mkdir, "path_mkdir", FileOp::Mkdir, 3);
child_hook!(ag_path_rmdir, ag_walk_rmdir, "path_rmdir", FileOp::Rmdir, 2);
child_hook!(
    ag_path_symlink,
    ag_walk_symlink,
    "path_symlink",
    FileOp::Symlink,
    3
);

#[lsm(hook = "path_rename")]
pub fn ag_path_rename(ctx: LsmContext) -> i32 {
    path_rename::<false>(&ctx)
}

#[lsm(hook = "path_rename")]
pub fn ag_walk_rename(ctx: LsmContext) -> i32 {
    path_rename::<true>(&ctx)
}

#[inline(always)]
fn path_rename<const WALK: bool>(ctx: &LsmContext) -> i32 {
    // Arguments: (old_dir, old_dentry, new_dir, new_dentry, flags, ret). Both ends need write.
    let ret: i32 = ctx.arg(5);
    if ret != 0 {
        return ret;
    }
    let r = path_child_op::<WALK>(ctx.arg(0), ctx.arg(1), FileOp::Rename);
    if r != 0 {
        return r;
    }
    path_child_op::<WALK>(ctx.arg(2), ctx.arg(3), FileOp::Rename)
}

#[lsm(hook = "path_link")]
pub fn ag_path_link(ctx: LsmContext) -> i32 {
    path_link::<false>(&ctx)
}

#[lsm(hook = "path_link")]
pub fn ag_walk_link(ctx: LsmContext) -> i32 {
    path_link::<true>(&ctx)
}

#[inline(always)]
fn path_link<const WALK: bool>(ctx: &LsmContext) -> i32 {
    // Arguments: (old_dentry, new_dir, new_dentry, ret). The source's path cannot be rendered
    // here, and a second name would let a file escape the rules of its first: agents with file
    // rules may not make hard links at all.
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return ret;
    }
    let Some(subject) = identity::current() else {
        return 0;
    };
    if !subject.files_restricted() {
        return 0;
    }
    let claim = Claim::take(&SCRATCH);
    let s = claim.as_ref().map_or(NO_SCRATCH, Claim::get);
    let resolved = match &claim {
        Some(c) => resolve_child::<WALK>(c.get(), c.index(), ctx.arg(1), ctx.arg(2)),
        None => Some(BUSY),
    };
    let len = resolved.as_ref().map_or(usize::MAX, |r| r.len);
    let flags = resolved
        .as_ref()
        .map_or(0, |r| r.flags & EVENT_SCRATCH_BUSY);
    let (j, log) = verdict::finish(&subject, None, Judgement::refuse(Verdict::Denied, flags));
    if log {
        emit_file(
            &subject,
            &j,
            &FileInfo {
                kind: EventKind::PathOp,
                op: FileOp::Link,
                access: ACCESS_WRITE,
                len,
                target_pid: 0,
            },
            s,
        );
    }
    if j.permits() { 0 } else { -EPERM }
}

/// A hook on an existing path, judged by the write rules; in both renderings.
macro_rules! path_hook {
    ($name:ident, $walk:ident, $hook:literal, $op:expr, $ret_arg:literal) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            path_hook_body::<false>(&ctx, $op, $ret_arg)
        }

        #[lsm(hook = $hook)]
        pub fn $walk(ctx: LsmContext) -> i32 {
            path_hook_body::<true>(&ctx, $op, $ret_arg)
        }
    };
}

#[inline(always)]
fn path_hook_body<const WALK: bool>(ctx: &LsmContext, op: FileOp, ret_arg: usize) -> i32 {
    let ret: i32 = ctx.arg(ret_arg);
    if ret != 0 {
        return ret;
    }
    path_op::<WALK>(ctx.arg(0), op)
}

path_hook!(
    ag_path_truncate,
    ag_walk_truncate,
    "path_truncate",
    FileOp::Truncate,
    1
);
path_hook!(ag_path_chmod, ag_walk_chmod, "path_chmod", FileOp::Chmod, 2);
path_hook!(ag_path_chown, ag_walk_chown, "path_chown", FileOp::Chown, 3);
