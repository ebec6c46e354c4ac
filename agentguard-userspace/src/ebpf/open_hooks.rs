//! The open-budget syscall tracepoints, attached only while the policy in force has an open
//! budget.
//!
//! Any program on a syscall tracepoint sets `SYSCALL_TRACEPOINT` on every task of the host,
//! which sends all of their syscalls (not only opens) through the slow syscall entry and exit
//! path. So these programs are not part of start-up's attach: the daemon attaches them when an
//! applied policy gains an open budget and detaches them when the last one goes. Their links are
//! pinned like every other link, so a daemon restart adopts them (no moment without counting)
//! and a restart with a policy that no longer has open budgets removes them.

use aya::{
    Ebpf,
    programs::{
        TracePoint,
        links::{FdLink, LinkError, PinnedLink},
    },
};

use super::{
    loader::LoadError,
    pins::PinDir,
    programs::{self, Group, Hook},
};

/// The open-budget tracepoints: their pinned links while attached.
pub struct OpenHooks {
    /// Links held open while attached (see [`super::loader::Loaded`] for why they are held).
    /// The programs themselves are loaded on first attach (a restart that adopted pinned links
    /// has not loaded them) and stay loaded for the daemon's lifetime.
    links: Vec<PinnedLink>,
}

impl OpenHooks {
    /// Adopts the pinned links of a previous daemon when there is a complete set; a partial set
    /// (a crash between two pins) is removed.
    pub fn adopt(pins: &PinDir) -> Self {
        let mut links = Vec::new();
        let mut complete = true;
        for spec in programs::of(Group::OpenBudget) {
            match PinnedLink::from_pin(pins.link(spec.name)) {
                Ok(link) => links.push(link),
                Err(_) => complete = false,
            }
        }
        if !complete {
            links.clear();
            remove_pins(pins);
        }
        Self { links }
    }

    /// Whether the tracepoints are attached.
    pub fn attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Attaches (`wanted`) or detaches the tracepoints; nothing happens when they already are
    /// in that state. An attach that fails half-way detaches what it attached.
    pub fn set(&mut self, ebpf: &mut Ebpf, pins: &PinDir, wanted: bool) -> Result<(), LoadError> {
        match (wanted, self.attached()) {
            (true, false) => {
                if let Err(e) = self.attach(ebpf, pins) {
                    self.detach(pins);
                    return Err(e);
                }
                tracing::info!("open budget in force: syscall tracepoints attached");
            }
            (false, true) => {
                self.detach(pins);
                tracing::info!("no open budget in force: syscall tracepoints detached");
            }
            _ => {}
        }
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, pins: &PinDir) -> Result<(), LoadError> {
        for spec in programs::of(Group::OpenBudget) {
            let Hook::TracePoint(category, name) = spec.hook else {
                return Err(LoadError::MissingProgram(spec.name));
            };
            let err = |source| LoadError::Program {
                name: spec.name,
                source,
            };
            let program: &mut TracePoint = ebpf
                .program_mut(spec.name)
                .ok_or(LoadError::MissingProgram(spec.name))?
                .try_into()
                .map_err(err)?;
            if program.fd().is_err() {
                program.load().map_err(err)?;
            }
            let id = program.attach(category, name).map_err(err)?;
            let link =
                FdLink::try_from(program.take_link(id).map_err(err)?).map_err(|e: LinkError| {
                    LoadError::Pin {
                        name: spec.name,
                        message: e.to_string(),
                    }
                })?;
            let path = pins.link(spec.name);
            let _ = std::fs::remove_file(&path);
            let pinned = link.pin(&path).map_err(|e| LoadError::Pin {
                name: spec.name,
                message: e.to_string(),
            })?;
            self.links.push(pinned);
        }
        Ok(())
    }

    /// Unpins and closes every link: with no pin and no fd left, the kernel detaches them.
    fn detach(&mut self, pins: &PinDir) {
        remove_pins(pins);
        self.links.clear();
    }
}

/// Removes the group's link pins (absent ones are fine).
pub fn remove_pins(pins: &PinDir) {
    for spec in programs::of(Group::OpenBudget) {
        let path = pins.link(spec.name);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "cannot remove a link pin: {e}");
        }
    }
}
