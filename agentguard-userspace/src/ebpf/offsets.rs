//! Kernel struct field offsets from the running kernel's BTF, for [`KernelOffsets`].
//!
//! Rust eBPF cannot emit CO-RE relocations, so the programs read no compiled-in offsets: each
//! one is looked up here by struct and field name, following anonymous structs and unions the
//! way the compiler lays them out, and handed to the programs as a read-only global.

use std::path::Path;

use agentguard_common::offsets::KernelOffsets;
use btf_rs::{Btf, Type};

/// Where the kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why an offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// The BTF could not be read or parsed.
    #[error("cannot read kernel BTF from {path}: {source}")]
    Btf {
        /// The BTF file.
        path: String,
        /// The parser's error.
        #[source]
        source: btf_rs::Error,
    },
    /// A struct is missing.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    /// A field is missing.
    #[error("kernel BTF has no field {field} in struct {strukt}")]
    NoField {
        /// The struct.
        strukt: String,
        /// The field path.
        field: String,
    },
}

/// Reads every offset the programs need from `btf_path`.
pub fn from_btf(btf_path: &Path) -> Result<KernelOffsets, OffsetError> {
    // Only a dozen lookups are needed: mapping the file beats parsing every type up front.
    // Kernels before 6.15 cannot mmap their BTF file; parse it there.
    let btf = Btf::from_file_with_backend(btf_path, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(btf_path))
        .map_err(|source| OffsetError::Btf {
            path: btf_path.display().to_string(),
            source,
        })?;
    let f = |s: &str, path: &[&str]| field_offset(&btf, s, path);
    Ok(KernelOffsets {
        binprm_file: f("linux_binprm", &["file"])?,
        binprm_filename: f("linux_binprm", &["filename"])?,
        binprm_buf: f("linux_binprm", &["buf"])?,
        file_inode: f("file", &["f_inode"])?,
        file_path: f("file", &["f_path"])?,
        file_mode: f("file", &["f_mode"])?,
        inode_ino: f("inode", &["i_ino"])?,
        inode_sb: f("inode", &["i_sb"])?,
        sb_dev: f("super_block", &["s_dev"])?,
        dentry_name: f("dentry", &["d_name", "name"])?,
        dentry_inode: f("dentry", &["d_inode"])?,
        file_flags: f("file", &["f_flags"])?,
        task_tgid: f("task_struct", &["tgid"])?,
        task_cgroups: f("task_struct", &["cgroups"])?,
        css_set_dfl_cgrp: f("css_set", &["dfl_cgrp"])?,
        cgroup_kn: f("cgroup", &["kn"])?,
        kernfs_node_id: f("kernfs_node", &["id"])?,
        path_mnt: f("path", &["mnt"])?,
        mount_mnt: f("mount", &["mnt"])?,
        mount_mnt_ns: f("mount", &["mnt_ns"])?,
        path_dentry: f("path", &["dentry"])?,
        sb_magic: f("super_block", &["s_magic"])?,
        dentry_parent: f("dentry", &["d_parent"])?,
        dentry_name_len: f("dentry", &["d_name", "len"])?,
        vfsmount_mnt_root: f("vfsmount", &["mnt_root"])?,
        mount_parent: f("mount", &["mnt_parent"])?,
        mount_mountpoint: f("mount", &["mnt_mountpoint"])?,
        task_fs: f("task_struct", &["fs"])?,
        fs_root: f("fs_struct", &["root"])?,
        unix_sock_addr: f("unix_sock", &["addr"])?,
        unix_address_len: f("unix_address", &["len"])?,
        unix_address_name: f("unix_address", &["name"])?,
        socket_sk: f("socket", &["sk"])?,
        sock_addr_kern_uaddr: f("bpf_sock_addr_kern", &["uaddr"])?,
        // Linux 6.7 added the field with the AF_UNIX cgroup hooks; older kernels need neither.
        sock_addr_kern_uaddrlen: f("bpf_sock_addr_kern", &["uaddrlen"]).unwrap_or(0),
        valid: 1,
    })
}

/// Byte offset of `path` (a field, then fields of nested structs) inside `struct strukt`.
pub fn field_offset(btf: &Btf, strukt: &str, path: &[&str]) -> Result<u32, OffsetError> {
    let missing = || OffsetError::NoField {
        strukt: strukt.to_owned(),
        field: path.join("."),
    };
    let mut current = btf
        .resolve_types_by_name(strukt)
        .ok()
        .and_then(|types| types.into_iter().find(|t| matches!(t, Type::Struct(_))))
        .ok_or_else(|| OffsetError::NoStruct(strukt.to_owned()))?;
    let mut offset_bits = 0;
    for name in path {
        let (bits, ty) = find_member(btf, &current, name).ok_or_else(missing)?;
        offset_bits += bits;
        current = ty;
    }
    if offset_bits % 8 != 0 {
        return Err(missing());
    }
    Ok(offset_bits / 8)
}

/// Finds member `name` in a struct or union, descending into anonymous members. Returns its
/// bit offset and its type with typedefs and qualifiers peeled off.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Option<(u32, Type)> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return None;
    };
    for m in &s.members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let member_ty = peel(btf, btf.resolve_chained_type(m).ok()?);
        if member_name == name {
            return Some((m.bit_offset(), member_ty));
        }
        if member_name.is_empty()
            && let Some((bits, t)) = find_member(btf, &member_ty, name)
        {
            return Some((m.bit_offset() + bits, t));
        }
    }
    None
}

fn peel(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return ty,
        };
        match next {
            Ok(n) => ty = n,
            Err(_) => return ty,
        }
    }
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's kernel BTF: every kernel agentguard supports has it.
    #[test]
    fn finds_every_offset_in_the_running_kernel() -> Result<(), OffsetError> {
        let o = from_btf(Path::new(VMLINUX_BTF))?;
        assert_eq!(o.valid, 1);
        // `struct file` starts with other fields; f_path is never first, and i_ino/i_sb differ.
        assert!(o.file_path > 0);
        assert_ne!(o.inode_ino, o.inode_sb);
        assert_ne!(o.binprm_buf, o.binprm_file);
        Ok(())
    }

    #[test]
    fn missing_fields_are_named() -> Result<(), OffsetError> {
        let btf = Btf::from_file(VMLINUX_BTF).map_err(|source| OffsetError::Btf {
            path: VMLINUX_BTF.into(),
            source,
        })?;
        let err = field_offset(&btf, "file", &["no_such_field"]).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("kernel BTF has no field no_such_field in struct file".to_owned())
        );
        assert!(matches!(
            field_offset(&btf, "no_such_struct_xyz", &["x"]),
            Err(OffsetError::NoStruct(_))
        ));
        Ok(())
    }
}
