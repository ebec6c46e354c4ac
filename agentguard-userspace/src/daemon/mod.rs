//! The daemon: wiring of the policy pipeline, the kernel, the log and the control socket.
//!
//! Start-up order matters for fail-closed behaviour: the policy is validated before anything
//! touches the kernel; maps are filled (state, instances, policy) before programs are attached;
//! pinned programs of a previous daemon are adopted rather than replaced.

mod apply;
mod binwatch;
pub mod denials;
mod dns_task;
mod handlers;
pub mod identity;
mod ingest;
pub mod landlock_audit;
pub mod metrics;
mod names;
mod notify;
mod operator;
mod priority;
pub mod private_tmp;
mod server;

pub use server::ClientLimits;
mod state;
mod watch;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

pub use apply::{Applied, ApplyError};
pub use state::State;

use crate::{
    audit::{
        self, AuditLog, LogOptions,
        record::{Actor, Body},
    },
    cgroup::{self, Hierarchy},
    dns,
    ebpf::{
        backends::Backends,
        loader::{self, LoadOptions},
        maps::KernelMaps,
        pins,
    },
    events::ring::EventRing,
    policy,
    secrets::{SecretError, SecretStore},
    sys::kernel,
};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agentguard";

/// Default address of the tool gateway.
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:4180";

/// How the daemon was started.
#[derive(Clone, Debug)]
pub struct Options {
    /// The policy file.
    pub policy: PathBuf,
    /// State directory (the log lives in `<state-dir>/log`).
    pub state_dir: PathBuf,
    /// Administrator control socket.
    pub socket: PathBuf,
    /// Agent-facing socket (agents start their sub-agents through it).
    pub agent_socket: PathBuf,
    /// Remove programs and pins on a clean exit (agents lose enforcement).
    pub unload_on_exit: bool,
    /// When DNS names are looked up again and how long vanished addresses stay valid.
    pub dns: dns::Timing,
    /// Log durability and sealing (directory aside, which is `<state-dir>/log`).
    pub log: LogOptions,
    /// Size of the event ring buffer in bytes, when the programs are first loaded.
    pub ring_buffer_bytes: u32,
    /// The eBPF object to load (the embedded one unless an operator named another).
    pub object: crate::ebpf::object::EbpfObject,
    /// Where private temp directories are made (`<tmp-dir>/<agent>/<n>`).
    pub tmp_dir: PathBuf,
    /// What one client, and all of them, may hold of each control socket.
    pub clients: ClientLimits,
    /// Where the tool gateway listens (loopback); `None`: no gateway.
    pub gateway_listen: Option<std::net::SocketAddr>,
    /// Log retention, applied at start-up and then every `ingest::PRUNE_EVERY`.
    pub log_retention: Option<audit::prune::Retention>,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A Vault / OpenBao KV v2 engine to read secrets from (after the embedded store).
    pub vault: Option<crate::secrets::vault::VaultConfig>,
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Not root.
    #[error("agentguard daemon must run as root (it loads BPF programs and manages cgroups)")]
    NotRoot,
    /// The kernel is unsupported.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The policy is invalid; nothing was loaded.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// The cgroup tree is unusable.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// Programs could not be loaded.
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    /// Maps could not be used.
    #[error(transparent)]
    Maps(#[from] crate::ebpf::maps::MapsError),
    /// The policy could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The log could not be opened or written.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// The secret store could not be opened.
    #[error("secret store: {0}")]
    Secrets(#[from] SecretError),
    /// Another daemon holds the state directory.
    #[error("another agentguard daemon is running (state directory {0} is locked)")]
    AlreadyRunning(PathBuf),
    /// I/O on the state directory or socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What every task shares.
pub struct Shared {
    state: Mutex<State>,
    /// What the event pipeline needs of `state` to name events, republished on change.
    names: names::NameCell,
    log: Mutex<AuditLog>,
    /// Backends in force.
    pub backends: Backends,
    /// The loaded programs and their links; the open-budget tracepoints come and go with
    /// applies (see [`crate::ebpf::open_hooks`]).
    programs: Mutex<loader::Loaded>,
    /// Serialises policy applies.
    apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// Asks every task to stop; `Some(unload)` once shutdown was requested.
    shutdown: tokio::sync::watch::Sender<Option<bool>>,
    /// Paths of allowed binaries, for the watcher that re-resolves them on change.
    exec_paths: tokio::sync::watch::Sender<Vec<PathBuf>>,
    /// New instances for the exit watcher.
    new_instances: tokio::sync::mpsc::UnboundedSender<cgroup::Instance>,
    /// DNS names of the policy in force.
    dns: dns_task::DnsNames,
    /// Private temp directories of instances.
    pub private_tmp: private_tmp::PrivateTmp,
    /// The agent socket's path, reachable by every agent (see [`crate::policy::resolve::Resolved`]).
    pub agent_socket: PathBuf,
    /// Where the tool gateway listens, for the implicit `connect` rule of agents with tools.
    pub gateway_addr: Option<std::net::SocketAddr>,
    /// Credentials the gateway injects.
    secrets: std::sync::RwLock<SecretStore>,
    /// Where secrets not in the embedded store are read, if anywhere.
    vault: Option<crate::secrets::vault::Vault>,
    /// Leases and budgets of the gateway.
    pub gateway: crate::gateway::GatewayState,
    /// Recent refusals per instance, for `agentguard denials`.
    denials: Mutex<denials::Denials>,
    /// Counters and histograms for `--metrics-listen`.
    pub metrics: Arc<metrics::Metrics>,
}

impl Shared {
    /// Locks the state; a panic elsewhere must not take enforcement bookkeeping down with it.
    /// A change to what names events (instances, policy, rules) is published to the event
    /// pipeline before the lock is released.
    pub fn lock_state(&self) -> StateGuard<'_> {
        StateGuard {
            guard: self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            names: &self.names,
            changed: false,
        }
    }

    /// Locks the loaded programs (for the open-budget tracepoints).
    pub fn lock_programs(&self) -> MutexGuard<'_, loader::Loaded> {
        self.programs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks the log.
    pub fn lock_log(&self) -> MutexGuard<'_, AuditLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a daemon record now. A log write failure is reported, never fatal to enforcement.
    pub fn log(&self, body: Body) {
        self.metrics.observe(&body);
        let (wall, mono) = audit::now();
        if let Err(e) = self.lock_log().append(wall, mono, body) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }

    /// Reads the secret store.
    pub fn read_secrets(&self) -> std::sync::RwLockReadGuard<'_, SecretStore> {
        self.secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A secret's value: the embedded store's, else Vault's (when configured). `Err` when
    /// Vault could not answer: the caller refuses rather than go on without it.
    pub async fn secret_value(&self, name: &str) -> Result<Option<String>, String> {
        if self.is_dynamic(name) {
            // Never one value for all: issued per lease (see crate::gateway::dynamic).
            return Err(format!(
                "{name:?} is a Vault dynamic secret, issued per lease"
            ));
        }
        if let Some(v) = self.read_secrets().get(name) {
            return Ok(Some(v.to_owned()));
        }
        match &self.vault {
            None => Ok(None),
            Some(vault) => vault.get(name).await.map_err(|e| {
                tracing::warn!(secret = %name, error = %e, "cannot read a secret from Vault");
                e.to_string()
            }),
        }
    }

    /// Whether `name` is a Vault dynamic secret (`--vault-dynamic`): issued per lease, it takes
    /// precedence over a value of that name in the embedded store.
    pub fn is_dynamic(&self, name: &str) -> bool {
        self.vault.as_ref().is_some_and(|v| v.is_dynamic(name))
    }

    /// The Vault backend, if configured.
    pub fn vault(&self) -> Option<&crate::secrets::vault::Vault> {
        self.vault.as_ref()
    }

    /// Every secret value the daemon knows now (the embedded store's, those fetched from
    /// Vault and the dynamic credentials of live leases), for the gateway's search for secrets
    /// in requests and responses.
    pub fn known_secret_values(&self) -> Vec<String> {
        let mut all: Vec<String> = self.read_secrets().values().map(str::to_owned).collect();
        if let Some(v) = &self.vault {
            all.extend(v.cached_values());
        }
        all.extend(self.gateway.dynamic_values());
        all
    }

    /// Changes the secret store.
    pub fn write_secrets(&self) -> std::sync::RwLockWriteGuard<'_, SecretStore> {
        self.secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a refusal for `agentguard denials` (anything else is ignored).
    pub fn note_refusal(&self, wall_ns: u64, action: &audit::record::Action) {
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(wall_ns, action);
    }

    /// Recent refusals of `instance` and its sub-agents (`None`: of every instance).
    pub fn recent_denials(
        &self,
        instance: Option<&str>,
        since_ns: u64,
    ) -> Vec<crate::control::proto::Denial> {
        let d = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match instance {
            Some(i) => d.of(i, since_ns),
            None => d.all(since_ns),
        }
    }

    /// Requests shutdown.
    pub fn request_shutdown(&self, unload: bool) {
        let _ = self.shutdown.send(Some(unload));
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The locked state. Dereferences to [`State`]; after a mutable borrow, dropping it republishes
/// the names the event pipeline reads (a cheap comparison when nothing they depend on moved).
pub struct StateGuard<'a> {
    guard: MutexGuard<'a, State>,
    names: &'a names::NameCell,
    changed: bool,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if self.changed {
            // Still under the lock: snapshots are published in the order of the changes, and
            // before anyone can act on the change (e.g. start a process in a new instance).
            self.names.refresh(&self.guard);
        }
    }
}

/// Holds `<state-dir>/daemon.lock` for the daemon's lifetime.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    std::fs::create_dir_all(dir).map_err(io(format!(
        "cannot create state directory {}",
        dir.display()
    )))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("daemon.lock"))
        .map_err(io("cannot open the daemon lock file"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| DaemonError::AlreadyRunning(dir.to_owned()))
}

/// Runs the daemon until SIGTERM/SIGINT or a shutdown request.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let release = kernel::release();
    kernel::check_minimum(&release)?;
    let policy = policy::load(&opts.policy)?;
    let _lock = lock_state_dir(&opts.state_dir)?;
    priority::raise_daemon();
    let secrets = SecretStore::open(&opts.state_dir)?;
    // Bound before the policy is compiled: with port 0 the kernel picks the port the implicit
    // `connect` rule of agents with tools must name.
    let gateway_listener = match opts.gateway_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(io(format!("cannot listen on {addr} for the tool gateway")))?,
        ),
        None => None,
    };
    let gateway_addr = match &gateway_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(io("cannot read the gateway's address"))?,
        ),
        None => None,
    };
    let dns = dns_task::DnsNames::new(opts.dns);
    let dns_warnings = dns.refresh_policy(&policy).await;
    let (resolved, warnings) = apply::resolve(
        &policy,
        dns.addresses_for(&policy),
        &opts.tmp_dir,
        &opts.agent_socket,
        gateway_addr,
    )?;
    let private_tmp = private_tmp::PrivateTmp::new(&opts.tmp_dir);
    for w in warnings.iter().chain(&dns_warnings) {
        tracing::warn!("{w}");
    }

    let hierarchy = Hierarchy::discover()?;
    let (root_id, root_level) = hierarchy.ensure_root()?;
    let started = std::time::Instant::now();
    let mut loaded = loader::load(&LoadOptions {
        ring_buffer_bytes: opts.ring_buffer_bytes,
        object: opts.object.clone(),
        ..LoadOptions::default()
    })?;
    let backends = loaded.backends.clone();
    tracing::info!(%backends, restart = loaded.is_restart(), took_ms = started.elapsed().as_millis(), "programs loaded");
    if let Some(reason) = &backends.lsm_unavailable {
        tracing::info!("BPF LSM not used: {reason}");
    }
    let (mut maps, rings) = KernelMaps::take(&mut loaded.ebpf)?;
    maps.set_root(root_id, root_level)?;

    let log = AuditLog::open(LogOptions {
        dir: opts.state_dir.join("log"),
        ..opts.log.clone()
    })?;
    if !log.is_sealed() {
        tracing::warn!(
            "the log is not sealed: records can be re-chained by someone on this host; run `agentguard log init` once and keep its key offline"
        );
    }
    let mut state = State {
        policy: policy.clone(),
        policy_path: opts.policy.clone(),
        compiled: [None, None],
        maps,
        hierarchy: hierarchy.clone(),
        instances: Default::default(),
        breaches: Default::default(),
        exited: Default::default(),
        dynamic_uids: Default::default(),
        exited_uids: Default::default(),
        first_pids: Default::default(),
        first_pid_order: Default::default(),
        binaries: resolved.binaries.clone(),
        gaps: Default::default(),
    };
    let readopted = watch::readopt(&mut state)?;
    // Directories of instances that ended while no daemon watched them.
    private_tmp.sweep(&readopted);

    // Fill the inactive generation, flip, then attach: programs never see empty maps.
    let generation = state.maps.inactive_generation()?;
    let compiled = policy::compile::compile(&policy, generation, &resolved);
    state.maps.apply(&compiled)?;
    let rules = compiled.rules.len();
    let open_budget = compiled.has_open_budget();
    state.compiled[usize::from(generation)] = Some(Arc::new(compiled));
    loaded.attach(hierarchy.root())?;
    // Adopted tracepoints of a policy that had an open budget go when this one has none.
    loaded.set_open_hooks(open_budget)?;
    dns.set_in_force(&resolved.names);
    tracing::info!(
        took_ms = started.elapsed().as_millis(),
        "policy written and programs attached"
    );

    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(None);
    let (new_instances, new_rx) = tokio::sync::mpsc::unbounded_channel();
    let (exec_paths, exec_paths_rx) =
        tokio::sync::watch::channel(binwatch::paths_of(policy.exec_paths()));
    let restart = loaded.is_restart();
    let pin_base = loaded.pins.base().to_owned();
    let handovers = handover_records(&loaded, &opts.object.build());
    let names = names::NameCell::default();
    names.refresh(&state);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        names,
        log: Mutex::new(log),
        backends: backends.clone(),
        programs: Mutex::new(loaded),
        apply_lock: Arc::new(tokio::sync::Mutex::new(())),
        shutdown,
        exec_paths,
        new_instances,
        dns,
        private_tmp,
        agent_socket: opts.agent_socket.clone(),
        gateway_addr,
        secrets: std::sync::RwLock::new(secrets),
        vault: opts.vault.clone().map(crate::secrets::vault::Vault::new),
        gateway: crate::gateway::GatewayState::default(),
        denials: Mutex::default(),
        metrics: Arc::new(metrics::Metrics::new(opts.state_dir.join("log"))),
    });
    shared.log(Body::DaemonStart {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        kernel: release,
        backends: backends.to_string(),
        adopted: restart,
    });
    for record in handovers {
        shared.log(record);
    }
    shared.log(Body::PolicyApplied {
        digest: policy.digest_hex(),
        origin: policy.origin.clone(),
        by: Actor::Daemon {
            reason: "start-up".into(),
        },
        generation,
        agents: u32::try_from(policy.agents.len()).unwrap_or(u32::MAX),
        rules: u32::try_from(rules).unwrap_or(u32::MAX),
    });
    for inst in readopted {
        let _ = shared.new_instances.send(inst);
    }

    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(io(format!("cannot listen for metrics on {addr}")))?,
        ),
        None => None,
    };
    let listener = server::bind(&opts.socket, server::Role::Admin)?;
    let agent_listener = server::bind(&opts.agent_socket, server::Role::Agent)?;
    let ingest = ingest::spawn(
        shared.clone(),
        EventRing::new(rings.events),
        // Refusals and escalations always wake the daemon.
        EventRing::new(rings.alerts),
        shutdown_rx.clone(),
    )
    .map_err(io("cannot start the event pipeline"))?;
    // Landlock refusals reach the log through audit records (fallback file backend).
    let landlock = landlock_audit::start(&opts.state_dir, backends.file);
    let mut tasks = vec![
        ingest,
        tokio::spawn(server::run(
            shared.clone(),
            listener,
            server::Role::Admin,
            opts.clients,
            shutdown_rx.clone(),
        )),
        tokio::spawn(server::run(
            shared.clone(),
            agent_listener,
            server::Role::Agent,
            opts.clients,
            shutdown_rx.clone(),
        )),
        tokio::spawn(watch::run(shared.clone(), new_rx, shutdown_rx.clone())),
        tokio::spawn(ingest::tick(
            shared.clone(),
            opts.log_retention,
            shutdown_rx.clone(),
        )),
        tokio::spawn(dns_task::run(shared.clone(), shutdown_rx.clone())),
        tokio::spawn(binwatch::run(
            shared.clone(),
            exec_paths_rx,
            shutdown_rx.clone(),
        )),
        tokio::spawn(server::signals(
            shared.clone(),
            opts.policy.clone(),
            shutdown_rx.clone(),
        )),
    ];
    if let Some(l) = gateway_listener {
        l.set_nonblocking(true)
            .map_err(io("cannot configure the gateway socket"))?;
        let l = tokio::net::TcpListener::from_std(l)
            .map_err(io("cannot register the gateway socket"))?;
        tracing::info!(addr = ?gateway_addr, "tool gateway listening");
        tasks.push(tokio::spawn(crate::gateway::serve(
            shared.clone(),
            l,
            shutdown_rx.clone(),
        )));
    }
    if shared.vault.is_some() {
        // Revokes Vault dynamic credentials at the end of their leases.
        tasks.push(tokio::spawn(crate::gateway::dynamic::run(
            shared.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let Some(listener) = landlock {
        tasks.push(tokio::spawn(landlock_audit::run(
            shared.clone(),
            listener,
            shutdown_rx.clone(),
        )));
    }
    tracing::info!(socket = %opts.socket.display(), "agentguard daemon ready");
    // Only now: the maps hold the policy, the programs are attached, the sockets listen.
    notify::ready(&format!(
        "enforcing policy {} (generation {generation}; {backends})",
        policy.digest_hex()
    ));
    if let Some(l) = metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving metrics at /metrics");
        }
        tasks.push(tokio::spawn(metrics::serve(
            shared.metrics.clone(),
            l,
            shutdown_rx.clone(),
        )));
    }
    if let Some(interval) = notify::watchdog_interval() {
        tracing::info!(
            interval_ms = interval.as_millis(),
            "systemd watchdog enabled"
        );
        tasks.push(tokio::spawn(notify::watchdog(
            shared.clone(),
            interval,
            shutdown_rx.clone(),
        )));
    }

    let mut rx = shutdown_rx;
    let unload = loop {
        if let Some(unload) = *rx.borrow_and_update() {
            break unload || opts.unload_on_exit;
        }
        if rx.changed().await.is_err() {
            break opts.unload_on_exit;
        }
    };
    notify::stopping(if unload {
        "stopping; unloading the programs"
    } else {
        "stopping; enforcement stays in place"
    });
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&opts.socket);
    let _ = std::fs::remove_file(&opts.agent_socket);
    shared.log(Body::DaemonStop {
        reason: "shutdown requested".into(),
        enforcement_kept: !unload,
    });
    if let Err(e) = shared.lock_log().seal_now() {
        tracing::error!(error = %e, "cannot seal and flush the audit log");
    }
    if unload {
        tracing::warn!("unloading: agents are no longer enforced");
        pins::remove_tree(&pin_base).map_err(io("cannot remove pins"))?;
    } else {
        tracing::info!("exiting; enforcement stays in place (pinned programs)");
    }
    drop(shared);
    Ok(())
}

/// The records saying which previous build's pins this daemon took over, and (loudly) pinned
/// state it could not take over (the agents' budgets and counters start afresh then).
fn handover_records(loaded: &loader::Loaded, build: &str) -> Vec<Body> {
    let mut records = Vec::new();
    for previous in &loaded.previous_builds {
        tracing::info!(%previous, %build, "took over the pinned maps and replaced the programs of a previous build");
        records.push(Body::Handover {
            previous: previous.clone(),
            build: build.to_owned(),
            kept_state: true,
            reason: String::new(),
        });
    }
    for r in &loaded.replaced {
        let previous = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::error!(%previous, %build, reason = %r.reason, "pinned state of a previous build NOT taken over: instances, budgets and counters start afresh");
        records.push(Body::Handover {
            previous,
            build: build.to_owned(),
            kept_state: false,
            reason: r.reason.clone(),
        });
    }
    records
}
