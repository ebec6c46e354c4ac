//! Checks that the built eBPF object is what the loader needs: a BPF ELF carrying BTF.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use object::{Architecture, BinaryFormat, Object as _, ObjectSection as _};

/// Fails unless `path` is a BPF ELF object with a `.BTF` section.
pub fn verify_btf(path: &Path) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an object file", path.display()))?;
    if file.format() != BinaryFormat::Elf || file.architecture() != Architecture::Bpf {
        bail!(
            "{} is a {:?} {:?} object, expected a BPF ELF",
            path.display(),
            file.architecture(),
            file.format()
        );
    }
    if file.section_by_name(".BTF").is_none() {
        bail!(
            "{} has no .BTF section: was it linked without `-C link-arg=--btf` or debuginfo?",
            path.display()
        );
    }
    let programs = file
        .sections()
        .filter(|s| s.kind() == object::SectionKind::Text && s.size() > 0)
        .count();
    eprintln!(
        "    {}: BPF ELF, {} bytes, .BTF present, {programs} code sections",
        path.display(),
        data.len()
    );
    Ok(())
}
