//! Presets: named bundles of `exec` and `read` entries (`@python`, `@git`, ...) that a policy
//! pulls in with `presets = [...]`, so a real agent runs under a policy of a dozen lines.
//!
//! Presets are data, not code: one TOML file each under `agentguard-userspace/presets/`,
//! embedded here. Their entries are absolute paths with a few placeholders this module fills in
//! from the host (docs/policy.md lists them): `{bin:NAME}` (what the standard system PATH finds
//! for NAME), `{prefix:X}` and `{name:X}` (the installation prefix and file name of that program
//! with symlinks resolved), `{opt:KEY}` (an option given where the preset is referenced), and a
//! `*` in the last component. An entry whose placeholder cannot be filled, or whose path does
//! not exist on this host, is left out. A preset has no `write` entries: it never widens writes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// The PATH presets look programs up on: the standard system one, never the caller's, so a
/// policy means the same for `policy check`, the daemon and every operator.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The embedded presets, by the name a policy uses.
const FILES: &[(&str, &str)] = &[
    ("@tls", include_str!("../../presets/tls.toml")),
    ("@python", include_str!("../../presets/python.toml")),
    ("@node", include_str!("../../presets/node.toml")),
    ("@git", include_str!("../../presets/git.toml")),
    ("@shell", include_str!("../../presets/shell.toml")),
];

/// One preset file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// What it is for, one line.
    pub description: String,
    /// A program the system PATH must find, or the preset is an error.
    pub requires: Option<String>,
    /// Option names accepted where the preset is referenced (`{ name = "@python", venv = ... }`).
    #[serde(default)]
    pub options: Vec<String>,
    /// Binaries.
    #[serde(default)]
    pub exec: Vec<String>,
    /// Read prefixes (may include `@system-runtime`).
    #[serde(default)]
    pub read: Vec<String>,
}

/// Errors about a preset reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PresetError {
    /// No such preset.
    #[error("unknown preset {0:?} (known: {known})", known = names().join(", "))]
    Unknown(String),
    /// An option the preset does not take.
    #[error("preset {preset} takes no option {option:?}{}", if .accepted.is_empty() { String::new() } else { format!(" (it takes: {})", .accepted.join(", ")) })]
    UnknownOption {
        /// The preset.
        preset: String,
        /// The option.
        option: String,
        /// What it takes.
        accepted: Vec<String>,
    },
    /// An option value that is not an existing absolute path.
    #[error("preset {preset}: option {option} = {value:?} must be an absolute path that exists")]
    BadOption {
        /// The preset.
        preset: String,
        /// The option.
        option: String,
        /// Its value.
        value: String,
    },
    /// The program the preset is about is not installed.
    #[error("preset {preset} needs {program}, which is not on the system PATH ({SYSTEM_PATH})")]
    Missing {
        /// The preset.
        preset: String,
        /// The program.
        program: String,
    },
    /// An embedded file does not parse (a build defect; a unit test keeps them valid).
    #[error("preset {0} is malformed: {1}")]
    Malformed(String, String),
}

/// Every preset name.
pub fn names() -> Vec<&'static str> {
    FILES.iter().map(|(n, _)| *n).collect()
}

/// The preset called `name` (`@python`).
pub fn get(name: &str) -> Result<Preset, PresetError> {
    let (_, text) = FILES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| PresetError::Unknown(name.to_owned()))?;
    toml::from_str(text).map_err(|e| PresetError::Malformed(name.to_owned(), e.to_string()))
}

/// What the host looks like to a preset. The real one reads the filesystem; tests use a fake.
pub trait Host {
    /// The path the system PATH finds for `program` (an executable file), as found.
    fn which(&self, program: &str) -> Option<PathBuf>;
    /// `path` with every symlink resolved, if it exists.
    fn canonical(&self, path: &Path) -> Option<PathBuf>;
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// The names in directory `dir`.
    fn list(&self, dir: &Path) -> Vec<String>;
}

/// The running host.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn which(&self, program: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        SYSTEM_PATH
            .split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What one preset reference expands to on a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Binaries, each an existing absolute path.
    pub exec: Vec<String>,
    /// Read entries: existing absolute paths and `@system-runtime`.
    pub read: Vec<String>,
}

/// Expands preset `name` with `options` on `host`.
pub fn expand(
    name: &str,
    options: &BTreeMap<String, String>,
    host: &dyn Host,
) -> Result<Expansion, PresetError> {
    let preset = get(name)?;
    for (option, value) in options {
        if !preset.options.contains(option) {
            return Err(PresetError::UnknownOption {
                preset: name.to_owned(),
                option: option.clone(),
                accepted: preset.options.clone(),
            });
        }
        if !value.starts_with('/') || !host.exists(Path::new(value)) {
            return Err(PresetError::BadOption {
                preset: name.to_owned(),
                option: option.clone(),
                value: value.clone(),
            });
        }
    }
    if let Some(program) = &preset.requires
        && host.which(program).is_none()
    {
        return Err(PresetError::Missing {
            preset: name.to_owned(),
            program: program.clone(),
        });
    }
    let fill = |entries: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for entry in entries {
            for path in expand_entry(entry, options, host) {
                if !out.contains(&path) {
                    out.push(path);
                }
            }
        }
        out
    };
    Ok(Expansion {
        exec: fill(&preset.exec),
        read: fill(&preset.read),
    })
}

/// One entry: placeholders filled, a trailing `*` pattern listed, paths that do not exist
/// dropped.
fn expand_entry(entry: &str, options: &BTreeMap<String, String>, host: &dyn Host) -> Vec<String> {
    if entry.starts_with('@') {
        return vec![entry.to_owned()];
    }
    // Options first: they may stand inside another placeholder (`{prefix:{opt:venv}/bin/x}`).
    let Some(text) = substitute(entry, "opt", |key| options.get(key).cloned()) else {
        return Vec::new();
    };
    let Some(text) = substitute(&text, "bin", |p| {
        host.which(p).map(|b| b.to_string_lossy().into_owned())
    }) else {
        return Vec::new();
    };
    let real = |p: &str| {
        let found = if p.starts_with('/') {
            Some(PathBuf::from(p))
        } else {
            host.which(p)
        };
        found.and_then(|f| host.canonical(&f))
    };
    let Some(text) = substitute(&text, "prefix", |p| {
        real(p)
            .and_then(|r| r.parent()?.parent().map(Path::to_path_buf))
            .map(|r| r.to_string_lossy().into_owned())
    }) else {
        return Vec::new();
    };
    let Some(text) = substitute(&text, "name", |p| {
        real(p).and_then(|r| r.file_name().map(|n| n.to_string_lossy().into_owned()))
    }) else {
        return Vec::new();
    };
    // `{prefix}` of a program in /bin is "/": keep paths free of doubled slashes.
    let text = text.replace("//", "/");
    let path = Path::new(&text);
    match path.file_name().map(|n| n.to_string_lossy().into_owned()) {
        Some(last) if last.contains('*') => {
            let Some(dir) = path.parent() else {
                return Vec::new();
            };
            let mut names: Vec<String> = host
                .list(dir)
                .into_iter()
                .filter(|n| matches(&last, n))
                .collect();
            names.sort();
            names
                .into_iter()
                .map(|n| dir.join(n))
                .filter(|p| host.exists(p))
                .map(|p| p.to_string_lossy().into_owned())
                .collect()
        }
        _ if host.exists(path) => vec![text],
        _ => Vec::new(),
    }
}

/// Replaces every `{kind:ARG}` in `text` whose ARG holds no further placeholder; `None` when one
/// cannot be filled.
fn substitute(text: &str, kind: &str, value: impl Fn(&str) -> Option<String>) -> Option<String> {
    let open = format!("{{{kind}:");
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let end = after.find('}')?;
        out.push_str(&rest[..start]);
        out.push_str(&value(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A glob with `*` only (any run of characters).
fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return pattern == name;
    }
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut pos = first.len();
    let end = name.len() - last.len();
    for mid in &parts[1..parts.len() - 1] {
        match name[pos..end].find(mid) {
            Some(i) => pos += i + mid.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use super::*;

    /// A host with a few programs and files, symlinks as a map.
    #[derive(Default)]
    struct Fake {
        bins: HashMap<&'static str, &'static str>,
        links: HashMap<&'static str, &'static str>,
        files: BTreeSet<&'static str>,
    }

    impl Host for Fake {
        fn which(&self, program: &str) -> Option<PathBuf> {
            self.bins.get(program).map(PathBuf::from)
        }
        fn canonical(&self, path: &Path) -> Option<PathBuf> {
            let p = path.to_str()?;
            let target = self.links.get(p).copied().unwrap_or(p);
            self.files.contains(target).then(|| PathBuf::from(target))
        }
        fn exists(&self, path: &Path) -> bool {
            self.canonical(path).is_some()
        }
        fn list(&self, dir: &Path) -> Vec<String> {
            self.files
                .iter()
                .filter_map(|f| Path::new(f).strip_prefix(dir).ok())
                .filter(|r| r.components().count() == 1)
                .map(|r| r.to_string_lossy().into_owned())
                .collect()
        }
    }

    fn host() -> Fake {
        let mut h = Fake::default();
        h.bins.insert("python3", "/usr/bin/python3");
        h.bins.insert("env", "/usr/bin/env");
        h.bins.insert("git", "/usr/local/bin/git");
        h.links.insert("/usr/bin/python3", "/usr/bin/python3.11");
        h.links
            .insert("/srv/venv/bin/python3", "/opt/py/bin/python3.12");
        h.files.extend([
            "/usr/bin/python3.11",
            "/usr/bin/env",
            "/usr/lib/python3.11",
            "/usr/lib/python3/dist-packages",
            "/usr/local/bin/git",
            "/usr/local/libexec/git-core",
            "/usr/local/libexec/git-core/git-add",
            "/usr/local/libexec/git-core/git-commit",
            "/usr/local/libexec/git-core/mergetools",
            "/usr/local/share/git-core",
            "/srv/venv",
            "/opt/py/bin/python3.12",
            "/opt/py/lib/python3.12",
        ]);
        h
    }

    #[test]
    fn every_embedded_preset_parses_and_grants_no_writes() {
        for name in names() {
            let p = get(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.description.is_empty(), "{name}");
            // deny_unknown_fields on a struct without `write`: a preset with writes does not load.
            assert!(
                !FILES
                    .iter()
                    .any(|(n, t)| *n == name
                        && t.lines().any(|l| l.trim_start().starts_with("write"))),
                "{name} has write entries"
            );
        }
    }

    #[test]
    fn python_follows_the_interpreter_and_a_venv() {
        let h = host();
        let e = expand("@python", &BTreeMap::new(), &h).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.exec, vec!["/usr/bin/python3", "/usr/bin/env"]);
        assert_eq!(
            e.read,
            vec![
                "@system-runtime",
                "/usr/lib/python3.11",
                "/usr/lib/python3/dist-packages"
            ]
        );
        let venv = BTreeMap::from([("venv".to_owned(), "/srv/venv".to_owned())]);
        let e = expand("@python", &venv, &h).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            e.exec.contains(&"/srv/venv/bin/python3".to_owned()),
            "{e:?}"
        );
        assert!(e.read.contains(&"/srv/venv".to_owned()), "{e:?}");
        assert!(
            e.read.contains(&"/opt/py/lib/python3.12".to_owned()),
            "{e:?}"
        );
    }

    #[test]
    fn git_lists_its_helpers() {
        let e = expand("@git", &BTreeMap::new(), &host()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e.exec,
            vec![
                "/usr/local/bin/git",
                "/usr/local/libexec/git-core/git-add",
                "/usr/local/libexec/git-core/git-commit"
            ]
        );
        assert!(e.read.contains(&"/usr/local/share/git-core".to_owned()));
    }

    #[test]
    fn errors_name_the_preset() {
        let h = host();
        assert!(matches!(
            expand("@ruby", &BTreeMap::new(), &h),
            Err(PresetError::Unknown(_))
        ));
        assert!(matches!(
            expand("@node", &BTreeMap::new(), &h),
            Err(PresetError::Missing { .. })
        ));
        let bad = BTreeMap::from([("venv".to_owned(), "relative".to_owned())]);
        assert!(matches!(
            expand("@python", &bad, &h),
            Err(PresetError::BadOption { .. })
        ));
        let unknown = BTreeMap::from([("venv".to_owned(), "/srv/venv".to_owned())]);
        assert!(matches!(
            expand("@git", &unknown, &h),
            Err(PresetError::UnknownOption { .. })
        ));
    }

    #[test]
    fn globs() {
        assert!(matches("git-*", "git-add"));
        assert!(!matches("git-*", "mergetools"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("exact", "exact"));
    }
}
