//! The batched map writes the policy writer uses (`BPF_MAP_UPDATE_BATCH` /
//! `BPF_MAP_DELETE_BATCH` through agentguard's own bpf(2) wrapper), against real kernel maps:
//! everything lands, a batch the kernel stops part-way is finished (or reported) element by
//! element from where it stopped, and absent keys on delete go through the caller's per-key
//! decision.

use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

use agentguard::ebpf::batch;
use agentguard_tests::privileged;
use aya::maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_F_NO_PREALLOC: u32 = 1;

/// A fresh map of the kernel's (not part of any object).
fn create(map_type: u32, key_size: u32, value_size: u32, max: u32, flags: u32) -> MapData {
    // map_type, key_size, value_size, max_entries, map_flags; the rest of `bpf_attr` zero.
    let mut attr = [0u32; 30];
    attr[..5].copy_from_slice(&[map_type, key_size, value_size, max, flags]);
    // SAFETY: a zeroed `bpf_attr` prefix of the size passed, read by the kernel only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            size_of_val(&attr) as libc::c_uint,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd this process owns.
    let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) };
    MapData::from_fd(fd).unwrap_or_else(|e| panic!("{e}"))
}

/// A second handle on `map` (a dup of its fd).
fn second(map: &MapData) -> MapData {
    MapData::from_fd(
        map.fd()
            .as_fd()
            .try_clone_to_owned()
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The typed handle and a second one for the batch (what the policy writer keeps too).
fn hash(max: u32) -> (HashMap<MapData, u64, u64>, MapData) {
    let map = create(BPF_MAP_TYPE_HASH, 8, 8, max, 0);
    let second = second(&map);
    let typed = HashMap::try_from(aya::maps::Map::HashMap(map)).unwrap_or_else(|e| panic!("{e}"));
    (typed, second)
}

fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

#[test]
fn batches_write_and_delete_every_key_and_resume_where_the_kernel_stopped() {
    if !privileged("batches_write_and_delete_every_key_and_resume_where_the_kernel_stopped") {
        return;
    }
    let (mut map, raw) = hash(20_000);
    let keys: Vec<u64> = (1..=10_000).collect();
    let values: Vec<u64> = keys.iter().map(|k| k * 3).collect();
    let mut singles = 0;
    batch::update(&raw, &keys, &values, |i| {
        singles += 1;
        map.insert(keys[i], values[i], 0)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(singles, 0, "a hash map takes the whole batch in one call");
    assert_eq!(map.keys().count(), 10_000);
    assert_eq!(map.get(&7_777, 0).ok(), Some(23_331));

    // Delete with keys that are already gone in the middle: the kernel stops at each, the
    // caller's per-key operation accepts it, and the batch goes on after it.
    map.remove(&5_000).unwrap_or_else(|e| panic!("{e}"));
    map.remove(&9_000).unwrap_or_else(|e| panic!("{e}"));
    let mut absent = Vec::new();
    batch::delete(&raw, &keys, |i| {
        absent.push(keys[i]);
        absent_ok(map.remove(&keys[i]))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        absent,
        vec![5_000, 9_000],
        "only the absent keys went one by one"
    );
    assert_eq!(map.keys().count(), 0, "every key deleted");
}

#[test]
fn a_full_map_stops_the_batch_and_the_error_is_the_per_key_one() {
    if !privileged("a_full_map_stops_the_batch_and_the_error_is_the_per_key_one") {
        return;
    }
    let (mut map, raw) = hash(10);
    let keys: Vec<u64> = (0..25).collect();
    let values = keys.clone();
    let mut failed_at = None;
    let r = batch::update(&raw, &keys, &values, |i| {
        failed_at = Some(i);
        map.insert(keys[i], values[i], 0)
    });
    assert!(r.is_err(), "a full map must fail the write");
    // The kernel wrote the first ten and said so in `count`: the per-key retry starts there.
    assert_eq!(failed_at, Some(10));
    assert_eq!(map.keys().count(), 10);
}

#[test]
fn lpm_trie_batches_are_written_and_removed() {
    if !privileged("lpm_trie_batches_are_written_and_removed") {
        return;
    }
    let data = create(BPF_MAP_TYPE_LPM_TRIE, 8, 4, 4_096, BPF_F_NO_PREALLOC);
    let raw = second(&data);
    let mut trie: LpmTrie<MapData, u32, u32> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<Key<u32>> = (0..1_000u32).map(|i| Key::new(32, i.to_be())).collect();
    let values: Vec<u32> = (0..1_000).collect();
    batch::update(&raw, &keys, &values, |i| {
        trie.insert(&keys[i], values[i], 0)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(trie.keys().count(), 1_000);
    assert_eq!(trie.get(&Key::new(32, 500u32.to_be()), 0).ok(), Some(500));
    batch::delete(&raw, &keys, |i| absent_ok(trie.remove(&keys[i])))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(trie.keys().count(), 0);
}
