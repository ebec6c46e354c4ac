//! Start-up after a crash: find where the log really ends, cut a torn tail, and say so.
//!
//! Only the last segment can have a torn tail: a segment is fsynced before the next one is
//! created. Bytes are cut only when no intact frame follows them (a crash tears the end of a
//! file, never its middle); damage with intact frames after it is left in place for `verify`
//! to report, and the chain continues from the last intact frame. Nothing that verifies is
//! ever rewritten.

use std::{fs::OpenOptions, path::Path};

use super::{
    chain::Head,
    error::{AuditError, io_at},
    header::{LogHeader, SEGMENT_HEADER_LEN},
    reader::{self, Scanned, Scanner},
    record::Body,
    segment::SegmentFile,
};

/// What recovery found, for the writer to continue from.
#[derive(Debug)]
pub struct Recovery {
    /// The last intact record (the genesis value for an empty log).
    pub head: Head,
    /// Bytes the last segment holds after any cut.
    pub segment_len: u64,
    /// `total` of the newest `Lost` record (or the last segment header's carried value).
    pub lost_total: Option<u64>,
    /// Epoch of the newest seal in the log (searched only when `want_seal` was set).
    pub last_seal_epoch: Option<u64>,
    /// Intact records after the newest seal in the last segment (all of them if it has none):
    /// a restarted writer seals them on its next interval even if nothing new arrives.
    pub unsealed: u64,
    /// `Recovered` records to append, describing what was cut or left damaged.
    pub notes: Vec<Body>,
}

struct Damage {
    offset: u64,
    len: u64,
    reason: String,
}

/// Examines the last of `segments` (non-empty), cutting a torn tail.
pub fn recover(
    header: &LogHeader,
    segments: &[SegmentFile],
    want_seal: bool,
) -> Result<Recovery, AuditError> {
    let Some(last_index) = segments.len().checked_sub(1) else {
        return Ok(Recovery {
            head: Head {
                seq: None,
                hash: header.genesis,
            },
            segment_len: SEGMENT_HEADER_LEN as u64,
            lost_total: None,
            last_seal_epoch: None,
            unsealed: 0,
            notes: Vec::new(),
        });
    };
    let last = &segments[last_index];
    let name = last.name();
    let mut scanner = Scanner::new(vec![last.clone()], 0);
    let mut head = None;
    let mut good_end = SEGMENT_HEADER_LEN as u64;
    let mut file_len = 0;
    let mut lost_total = None;
    let mut seal_epoch = None;
    let mut unsealed = 0;
    let mut pending: Option<Damage> = None;
    let mut notes = Vec::new();
    while let Some(item) = scanner.next_item()? {
        match item {
            Scanned::Segment { header, len, .. } => {
                let seg = header.map_err(|error| AuditError::BadHeader {
                    path: last.path.clone(),
                    error,
                })?;
                lost_total = seg.lost_total;
                file_len = len;
            }
            Scanned::Frame(frame) if frame.self_consistent && frame.record.is_ok() => {
                if let Some(damage) = pending.take() {
                    notes.push(left_in_place(
                        &name,
                        &damage,
                        head.and_then(|h: Head| h.seq),
                    ));
                }
                if let Ok(record) = &frame.record {
                    match &record.body {
                        Body::Lost { total, .. } => {
                            lost_total = Some(*total);
                            unsealed += 1;
                        }
                        Body::Seal { epoch, .. } => {
                            seal_epoch = Some(*epoch);
                            unsealed = 0;
                        }
                        _ => unsealed += 1,
                    }
                    head = Some(Head {
                        seq: Some(record.seq),
                        hash: frame.hash,
                    });
                }
                good_end = frame.end;
            }
            Scanned::Frame(frame) => {
                let reason = match &frame.record {
                    Err(e) => format!("intact hash over an unreadable record ({e})"),
                    Ok(_) => "record does not match its hash".to_owned(),
                };
                widen(&mut pending, frame.offset, frame.end - frame.offset, reason);
            }
            Scanned::Damaged {
                offset,
                len,
                reason,
                ..
            } => widen(&mut pending, offset, len, reason.to_string()),
        }
    }
    let head = match head {
        Some(head) => head,
        None => earlier_head(header, segments, last_index)?,
    };
    if let Some(damage) = pending {
        cut(last, good_end)?;
        notes.push(Body::Recovered {
            segment: name,
            cut_bytes: file_len.saturating_sub(good_end),
            last_seq: head.seq,
            reason: format!("torn tail at offset {}: {}", damage.offset, damage.reason),
        });
        file_len = good_end;
    }
    if want_seal && seal_epoch.is_none() {
        seal_epoch = earlier_seal(segments, last_index)?;
    }
    Ok(Recovery {
        head,
        segment_len: file_len,
        lost_total,
        last_seal_epoch: seal_epoch,
        unsealed,
        notes,
    })
}

fn widen(pending: &mut Option<Damage>, offset: u64, len: u64, reason: String) {
    match pending {
        Some(d) => d.len = offset + len - d.offset,
        None => {
            *pending = Some(Damage {
                offset,
                len,
                reason,
            })
        }
    }
}

fn left_in_place(segment: &str, damage: &Damage, last_seq: Option<u64>) -> Body {
    Body::Recovered {
        segment: segment.to_owned(),
        cut_bytes: 0,
        last_seq,
        reason: format!(
            "{} damaged bytes at offset {} left in place (intact records follow, so this is \
             not a torn tail): {}",
            damage.len, damage.offset, damage.reason
        ),
    }
}

fn cut(segment: &SegmentFile, len: u64) -> Result<(), AuditError> {
    let file = OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .map_err(io_at(&segment.path))?;
    file.set_len(len).map_err(io_at(&segment.path))?;
    file.sync_all().map_err(io_at(&segment.path))
}

/// The head when the last segment holds no intact record: the end of an earlier segment.
fn earlier_head(
    header: &LogHeader,
    segments: &[SegmentFile],
    last_index: usize,
) -> Result<Head, AuditError> {
    reader::head_at(segments, last_index.checked_sub(1), header.genesis)
}

/// The newest seal's epoch in segments before `last_index`. Seals come at least every
/// `seal_every` records, so this reads back one segment in practice.
fn earlier_seal(segments: &[SegmentFile], last_index: usize) -> Result<Option<u64>, AuditError> {
    for index in (0..last_index).rev() {
        let mut scanner = Scanner::new(segments[index..=index].to_vec(), 0);
        let mut epoch = None;
        while let Some(item) = scanner.next_item()? {
            if let Scanned::Frame(frame) = item
                && frame.self_consistent
                && let Ok(record) = &frame.record
                && let Body::Seal { epoch: e, .. } = record.body
            {
                epoch = Some(e);
            }
        }
        if epoch.is_some() {
            return Ok(epoch);
        }
    }
    Ok(None)
}

/// Whether `dir` holds anything of a log.
pub fn has_log(dir: &Path, segments: &[SegmentFile]) -> bool {
    !segments.is_empty()
        || dir.join(super::files::LOG_HEADER).exists()
        || dir.join(super::files::SEAL_KEY).exists()
}
