//! The ELF interpreter (`PT_INTERP`) a binary needs, so Landlock can allow executing it.

use std::path::{Path, PathBuf};

use object::{
    Endianness,
    elf::FileHeader64,
    read::elf::{FileHeader, ProgramHeader},
};

/// The dynamic loader named by a 64-bit ELF binary, or `None` for static binaries, scripts and
/// anything that is not 64-bit ELF.
pub fn interpreter(binary: &Path) -> Option<PathBuf> {
    let data = std::fs::read(binary).ok()?;
    let data = data.as_slice();
    let header = FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .find_map(|ph| ph.interpreter(endian, data).ok().flatten())
        .map(|raw| PathBuf::from(String::from_utf8_lossy(raw).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_loader_of_a_dynamic_binary() {
        // /bin/sh is dynamically linked on every supported distribution.
        let interp = interpreter(Path::new("/bin/sh"));
        assert!(
            interp
                .as_ref()
                .is_some_and(|p| p.to_string_lossy().contains("ld-linux")),
            "{interp:?}"
        );
        assert_eq!(interpreter(Path::new("/etc/hostname")), None);
    }
}
