//! Whether the kernel has a cgroup sock_addr hook at all, asked with a program that cannot fail
//! verification (`r0 = 1; exit`).
//!
//! It tells the two reasons an optional program does not load apart: a kernel without the hook
//! (Linux < 6.7 has no AF_UNIX sock_addr hooks: enforcement is reported as missing) and a kernel
//! with the hook that refused agentguard's own program (a bug of this build: the daemon must
//! not start without it, since an agent would reach every Unix socket its uid may open).

use std::io;

use aya_obj::generated::{bpf_attach_type, bpf_prog_type};

use super::sys::bpf_fd;

const BPF_PROG_LOAD: libc::c_long = 5;

/// `r0 = 1` (`BPF_ALU64 | BPF_MOV | BPF_K`), then `exit` (`BPF_JMP | BPF_EXIT`): `struct
/// bpf_insn` as the little- or big-endian 8 bytes the kernel reads (register fields zero).
const ALLOW_ALL: [u64; 2] = [insn(0xb7, 1), insn(0x95, 0)];

const fn insn(code: u8, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    let imm = imm.to_ne_bytes();
    b[4] = imm[0];
    b[5] = imm[1];
    b[6] = imm[2];
    b[7] = imm[3];
    u64::from_ne_bytes(b)
}

/// The `BPF_PROG_LOAD` prefix of `bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const _: () = assert!(size_of::<ProgLoadAttr>() == 72);

/// Whether a cgroup sock_addr program for `attach` loads here: `Ok(false)` when the kernel does
/// not know the attach type (`EINVAL`), an error when it cannot say (e.g. no right to load
/// programs).
pub fn sock_addr_hook_exists(attach: bpf_attach_type) -> io::Result<bool> {
    let mut attr = ProgLoadAttr {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32,
        insn_cnt: ALLOW_ALL.len() as u32,
        insns: ALLOW_ALL.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: [0; 16],
        prog_ifindex: 0,
        expected_attach_type: attach as u32,
    };
    // SAFETY: the `BPF_PROG_LOAD` layout up to `expected_attach_type` (later fields read as
    // zero); `insns` and `license` point at statics; the command returns a new fd, closed when
    // the program is dropped here.
    match unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) } {
        Ok(_program) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use aya_obj::generated::bpf_attach_type::{
        BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_UNIX_CONNECT,
        BPF_CGROUP_UNIX_SENDMSG,
    };

    use super::{insn, sock_addr_hook_exists};
    use crate::{
        ebpf::{backends::MissingProgram, loader, sys::privileged},
        sys::kernel,
    };

    /// Whether the running kernel has the AF_UNIX sock_addr hooks (Linux 6.7).
    fn has_unix_hooks() -> bool {
        kernel::parse(&kernel::release()).is_ok_and(|v| v >= (6, 7))
    }

    /// The kernel's answers: yes for the IPv4 connect hook (every kernel: a wrong attribute
    /// layout would be EINVAL, a no), no for an attach type that is not a sock_addr hook, and
    /// for the AF_UNIX hooks what the kernel's version says. Needs root; under CI it must run.
    #[test]
    fn the_kernel_says_which_sock_addr_hooks_it_has() {
        if !privileged() {
            return;
        }
        let exists = |a| sock_addr_hook_exists(a).expect("the kernel answers");
        assert!(exists(BPF_CGROUP_INET4_CONNECT));
        assert!(!exists(BPF_CGROUP_INET_INGRESS));
        assert_eq!(exists(BPF_CGROUP_UNIX_CONNECT), has_unix_hooks());
        assert_eq!(exists(BPF_CGROUP_UNIX_SENDMSG), has_unix_hooks());
    }

    /// An AF_UNIX program refused by a kernel that has its hook stops the start; one refused by
    /// a kernel without it does not, nor does any other optional program.
    #[test]
    fn a_refused_unix_program_fails_the_start_where_the_hook_exists() {
        if !privileged() {
            return;
        }
        let missing = |program| MissingProgram {
            program,
            hook: "cgroup sock_addr".into(),
            reason: "the kernel refused program (Permission denied): R2 invalid mem access".into(),
            loses: "AF_UNIX is not judged",
        };
        let r =
            loader::refused_with_hook(&[missing("ag_userns_create"), missing("ag_sendmsg_unix")]);
        if has_unix_hooks() {
            let e = r.expect_err("the kernel has the hook");
            let text = e.to_string();
            assert!(
                text.contains("ag_sendmsg_unix") && text.contains("R2 invalid mem access"),
                "{text}"
            );
        } else {
            r.expect("a kernel without the hook");
        }
        loader::refused_with_hook(&[missing("ag_userns_create")]).expect("not an AF_UNIX program");
    }

    #[test]
    fn an_instruction_is_its_opcode_then_its_immediate() {
        let b = insn(0xb7, 1).to_ne_bytes();
        assert_eq!(b, [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        let b = insn(0x95, -2).to_ne_bytes();
        assert_eq!(b, [0x95, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]);
    }
}
