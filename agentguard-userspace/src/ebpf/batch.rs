//! Batched map updates and deletes: `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux
//! 5.6+, LPM tries from 5.8+), which aya 0.14 does not expose. One syscall writes or removes a
//! whole policy generation instead of one per key.
//!
//! A batch is only an optimisation: where the kernel or the map type lacks it (`EINVAL`,
//! `ENOTSUPP`, `EOPNOTSUPP`) every element goes through the caller's per-key operation instead,
//! and when the kernel stops part-way (it reports how many elements it processed in `count`),
//! the element it stopped at goes through the per-key operation too, which reports the error
//! in aya's terms (or accepts it, e.g. a key already absent on delete), and the batch resumes
//! after it.

use std::os::fd::{AsFd, AsRawFd};

use aya::{Pod, maps::MapData};

/// `enum bpf_cmd` values (uapi/linux/bpf.h).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel-internal "operation not supported" a map without batch ops returns.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Which batch command.
#[derive(Clone, Copy, Debug)]
enum Op {
    Update,
    Delete,
}

/// Writes `keys[i] -> values[i]` for every `i` (any existing value replaced). `single(i)`
/// writes element `i` alone, for the fallback.
pub fn update<K: Pod, V: Pod, E>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    single: impl FnMut(usize) -> Result<(), E>,
) -> Result<(), E> {
    debug_assert_eq!(keys.len(), values.len());
    let n = keys.len().min(values.len());
    run::<K, V, E>(map, Op::Update, &keys[..n], Some(&values[..n]), single)
}

/// Removes every key of `keys`. `single(i)` removes element `i` alone, for the fallback (it
/// decides whether an absent key is an error).
pub fn delete<K: Pod, E>(
    map: &MapData,
    keys: &[K],
    single: impl FnMut(usize) -> Result<(), E>,
) -> Result<(), E> {
    run::<K, u8, E>(map, Op::Delete, keys, None, single)
}

fn run<K: Pod, V: Pod, E>(
    map: &MapData,
    op: Op,
    keys: &[K],
    values: Option<&[V]>,
    mut single: impl FnMut(usize) -> Result<(), E>,
) -> Result<(), E> {
    let batchable = sizes_match::<K, V>(map, values.is_some());
    let mut start = 0;
    while start < keys.len() {
        if !batchable {
            return (start..keys.len()).try_for_each(&mut single);
        }
        match batch(map, op, &keys[start..], values.map(|v| &v[start..])) {
            Ok(()) => return Ok(()),
            Err(Stopped::Unsupported) => {
                return (start..keys.len()).try_for_each(&mut single);
            }
            Err(Stopped::At(done)) => {
                // The element the kernel stopped at, on its own: its error (or its success).
                start += done;
                if start < keys.len() {
                    single(start)?;
                    start += 1;
                }
            }
        }
    }
    Ok(())
}

/// A key or value type that does not match the map's sizes must never be handed to the kernel
/// as a packed array (the per-key path reports the mismatch in aya's terms).
fn sizes_match<K, V>(map: &MapData, with_values: bool) -> bool {
    map.info().is_ok_and(|i| {
        usize::try_from(i.key_size()).ok() == Some(size_of::<K>())
            && (!with_values || usize::try_from(i.value_size()).ok() == Some(size_of::<V>()))
    })
}

/// Why a batch stopped before the end.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    /// The kernel or this map has no batch operation.
    Unsupported,
    /// Elements before this index were processed; this one failed.
    At(usize),
}

fn batch<K: Pod, V: Pod>(
    map: &MapData,
    op: Op,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<(), Stopped> {
    let Ok(count) = u32::try_from(keys.len()) else {
        return Err(Stopped::Unsupported);
    };
    let fd = map.fd().as_fd();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count,
        map_fd: u32::try_from(fd.as_raw_fd()).map_err(|_| Stopped::Unsupported)?,
        ..BatchAttr::default()
    };
    let cmd = match op {
        Op::Update => BPF_MAP_UPDATE_BATCH,
        Op::Delete => BPF_MAP_DELETE_BATCH,
    };
    // SAFETY: `attr` is the batch layout of `bpf_attr`; `keys` and `values` point at `count`
    // packed elements of the map's key and value sizes (checked by the caller), which the
    // kernel only reads; `fd` is open for the duration of the call.
    let Err(e) = (unsafe { super::sys::bpf(cmd, &mut attr) }) else {
        return Ok(());
    };
    match e.raw_os_error().unwrap_or(0) {
        libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP => Err(Stopped::Unsupported),
        // The kernel wrote back how many elements it processed (never more than asked).
        _ => Err(Stopped::At(
            usize::try_from(attr.count.min(count)).unwrap_or(0),
        )),
    }
}
