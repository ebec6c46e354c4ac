//! agentguard's eBPF programs.
//!
//! One module per hook family; shared helpers answer "which agent is this" ([`identity`]),
//! "does a rule allow it" (per family), "is it within budget" ([`throttle`]) and "tell the
//! daemon" ([`emit`]). Every program is `hook(ctx) -> try_hook(ctx)` with the verdict decided in
//! one place ([`verdict::finish`]).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `atomic_xadd` for counters (see `emit::add_shared`), `atomic_xchg` to claim scratch slots.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "core::intrinsics::atomic_xadd and atomic_xchg: AtomicU64 is not available on the BPF target"
    )
)]

#[cfg(target_arch = "bpf")]
mod budget;
#[cfg(target_arch = "bpf")]
mod confine;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod file;
#[cfg(target_arch = "bpf")]
mod identity;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod privileged;
#[cfg(target_arch = "bpf")]
mod scratch;
#[cfg(target_arch = "bpf")]
mod throttle;
#[cfg(target_arch = "bpf")]
mod unix;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program from which a panic is reachable, so this never runs.
    loop {}
}

/// Host builds (`cargo clippy --workspace`) see an empty binary: the programs only exist for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
