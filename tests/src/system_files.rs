//! Temporary lines in system files (`/etc/hosts`, `/etc/resolv.conf`), removed on drop.
//!
//! Other processes on the host read these files while a test runs, so a test only ever adds
//! its own line and removes exactly that line again, leaving the rest (and anyone else's
//! concurrent edits) alone. Files are rewritten in place, not renamed over, because container
//! runtimes often bind-mount them. Where the file is read-only (the VM guest shares the host's
//! root read-only), a writable copy with the line is bind-mounted over it instead and unmounted
//! on drop.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use tempfile::NamedTempFile;

/// A line appended to a file for the lifetime of the guard.
pub struct AppendedLine {
    path: PathBuf,
    line: String,
    /// The writable copy mounted over a read-only file.
    overlay: Option<NamedTempFile>,
}

impl AppendedLine {
    /// Appends `line` to `path`.
    pub fn add(path: impl AsRef<Path>, line: &str) -> Self {
        let mut guard = Self {
            path: path.as_ref().to_owned(),
            line: line.to_owned(),
            overlay: None,
        };
        match guard.try_edit(|lines| lines.push(line.to_owned())) {
            Ok(()) => {}
            Err(e) if is_read_only(&e) => guard.overlay = Some(guard.mount_copy()),
            Err(e) => panic!("edit {}: {e}", guard.path.display()),
        }
        guard
    }

    /// Replaces the line with `line` (e.g. another address for the same name).
    pub fn replace(&mut self, line: &str) {
        let old = std::mem::replace(&mut self.line, line.to_owned());
        self.try_edit(|lines| {
            for l in lines.iter_mut().filter(|l| **l == old) {
                *l = line.to_owned();
            }
        })
        .unwrap_or_else(|e| panic!("edit {}: {e}", self.path.display()));
    }

    /// Bind-mounts a writable copy of the file, with the line, over it.
    fn mount_copy(&self) -> NamedTempFile {
        let mut text = fs::read_to_string(&self.path).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&self.line);
        text.push('\n');
        let mut copy = NamedTempFile::new().unwrap_or_else(|e| panic!("temp file: {e}"));
        copy.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", copy.path().display()));
        fs::set_permissions(copy.path(), fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", copy.path().display()));
        nix::mount::mount(
            Some(copy.path()),
            &self.path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind-mount over read-only {}: {e}", self.path.display()));
        copy
    }

    fn try_edit(&self, change: impl FnOnce(&mut Vec<String>)) -> std::io::Result<()> {
        let text = fs::read_to_string(&self.path)?;
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        change(&mut lines);
        let mut out = lines.join("\n");
        out.push('\n');
        fs::write(&self.path, out)
    }
}

fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS | libc::EACCES | libc::EPERM)
    )
}

impl Drop for AppendedLine {
    fn drop(&mut self) {
        // No panic here: a test that already failed must not abort while unwinding.
        let result = if self.overlay.is_some() {
            nix::mount::umount(&self.path).map_err(std::io::Error::from)
        } else {
            let line = self.line.clone();
            self.try_edit(|lines| lines.retain(|l| *l != line))
        };
        if let Err(e) = result {
            eprintln!(
                "cannot remove {:?} from {}: {e}; remove it by hand",
                self.line,
                self.path.display()
            );
        }
    }
}
