//! Checks of the Kubernetes manifests under `deploy/` (part of the CI "package" stage, well
//! under a second): every document parses, names its kind, and the DaemonSet is consistent
//! (every volume mount names a declared volume, the daemon's flags exist in the binary).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_yaml_ng::Value;

use crate::{cmd, workspace};

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Checks every `*.yaml` under `deploy/`; `bin` is the agentguard binary whose flags the
/// manifests use.
pub fn check(bin: &Path) -> Result<()> {
    let dir = workspace::root().join("deploy");
    let mut files = Vec::new();
    collect(&dir, &mut files)?;
    if files.is_empty() {
        bail!("no manifests under {}", dir.display());
    }
    let daemon_help =
        String::from_utf8_lossy(&cmd::output(Command::new(bin).args(["daemon", "--help"]))?.stdout)
            .into_owned();
    let mut kinds = Vec::new();
    for file in &files {
        let text =
            fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = <Value as serde::Deserialize>::deserialize(doc)
                .with_context(|| format!("{}: not valid YAML", file.display()))?;
            let (Some(api), Some(kind), Some(name)) = (
                str_at(&v, &["apiVersion"]),
                str_at(&v, &["kind"]),
                str_at(&v, &["metadata", "name"]),
            ) else {
                bail!(
                    "{}: a document without apiVersion, kind or metadata.name",
                    file.display()
                );
            };
            kinds.push(format!("{api}/{kind}/{name}"));
            if kind == "DaemonSet" {
                daemonset(file, &v, &daemon_help)?;
            }
        }
    }
    println!("manifests ok: {}", kinds.join(", "));
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

fn daemonset(file: &Path, v: &Value, daemon_help: &str) -> Result<()> {
    let spec = v
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
        .context("DaemonSet without spec.template.spec")?;
    let volumes: Vec<&str> = spec
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|v| str_at(v, &["name"]))
        .collect();
    let containers = spec
        .get("containers")
        .and_then(Value::as_sequence)
        .context("DaemonSet without containers")?;
    for c in containers {
        let cname = str_at(c, &["name"]).unwrap_or("?");
        for m in c
            .get("volumeMounts")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = str_at(m, &["name"]).unwrap_or_default();
            if !volumes.contains(&name) {
                bail!(
                    "{}: container {cname} mounts undeclared volume {name:?}",
                    file.display()
                );
            }
        }
        let command: Vec<&str> = c
            .get("command")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if command.get(1) == Some(&"daemon") {
            for flag in command.iter().filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or_default();
                if !daemon_help.contains(flag) {
                    bail!("{}: `agentguard daemon` has no flag {flag}", file.display());
                }
            }
        }
    }
    Ok(())
}
