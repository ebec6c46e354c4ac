//! Finding secret values in what an agent sends (and what an upstream returns).
//!
//! Values are searched verbatim and percent-decoded (URLs and form bodies). An agent that
//! re-encodes a value it somehow holds (base64, split across requests) is not caught: this is a
//! tripwire against smuggling a credential verbatim to another tool, not a data-loss-prevention
//! system. The primary control is that agents never receive credentials at all.

use memchr::memmem;

/// Whether `hay` contains any of `needles` verbatim.
pub fn contains_any(hay: &[u8], needles: &[String]) -> bool {
    needles
        .iter()
        .any(|n| !n.is_empty() && memmem::find(hay, n.as_bytes()).is_some())
}

/// Whether `hay` contains any of `needles` verbatim or once percent-decoded (`+` as space too).
pub fn contains_any_decoded(hay: &[u8], needles: &[String]) -> bool {
    if contains_any(hay, needles) {
        return true;
    }
    if !hay.contains(&b'%') && !hay.contains(&b'+') {
        return false;
    }
    let plus: Vec<u8> = hay
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
    contains_any(&decoded, needles)
}

/// Streaming search: keeps the last `longest - 1` bytes of the previous chunk so a value split
/// across two chunks is found in the second.
#[derive(Debug, Default)]
pub struct StreamScan {
    tail: Vec<u8>,
}

impl StreamScan {
    /// Whether `chunk` (with the end of the previous one) completes any needle.
    pub fn push(&mut self, chunk: &[u8], needles: &[String]) -> bool {
        let longest = needles.iter().map(String::len).max().unwrap_or(0);
        if longest == 0 {
            return false;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        let found = contains_any(&window, needles);
        let keep = longest.saturating_sub(1).min(window.len());
        self.tail = window[window.len() - keep..].to_vec();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_verbatim_encoded_and_split() {
        let s = vec!["sk-live-0123456789".to_owned()];
        assert!(contains_any(b"x=sk-live-0123456789&y", &s));
        assert!(contains_any_decoded(b"x=sk%2Dlive%2D0123456789", &s));
        assert!(!contains_any_decoded(b"x=sk-live-012345678", &s));
        let mut st = StreamScan::default();
        assert!(!st.push(b"aaaa sk-live-01", &s));
        assert!(st.push(b"23456789 bbb", &s));
    }
}
