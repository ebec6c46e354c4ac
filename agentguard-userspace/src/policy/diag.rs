//! Diagnostics that name file, line, column and field.

use std::{fmt, ops::Range, path::PathBuf};

use serde::Serialize;

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The policy file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Dotted path of the field, e.g. `agents.buyer.connect[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file has one or more errors; nothing of it was applied.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diags: &[Diagnostic]) -> String {
    let mut out = format!(
        "policy has {} error{}:",
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    );
    for d in diags {
        out.push_str("\n  ");
        out.push_str(&d.to_string());
    }
    out
}

/// The text of a policy file, for turning byte spans into lines and columns.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// Name shown in diagnostics (the path as given).
    pub name: &'a str,
    /// The whole file.
    pub text: &'a str,
    /// Byte offset of each line's start: every entry of a large policy is located, so a
    /// lookup must not rescan the file from the top.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    /// Indexes `text`'s lines.
    pub fn new(name: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            name,
            text,
            line_starts,
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        // The last line start at or before `offset`.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line.saturating_sub(1)];
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    /// A diagnostic at `span` about `field`.
    pub fn diag(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = self.locate(span.start);
        Diagnostic {
            file: self.name.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The dotted field path at a byte offset, for errors the TOML parser reports with a span
    /// but no field: the enclosing `[table]` header plus the key on that line.
    pub fn field_at(&self, offset: usize) -> String {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let table = self.text[..line_end]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('[') && l.ends_with(']'))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        match (table, key) {
            (Some(t), Some(k)) => format!("{t}.{k}"),
            (Some(t), None) => t,
            (None, Some(k)) => k,
            (None, None) => "(policy)".to_owned(),
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns() {
        let src = Source::new("p.toml", "a = 1\n[agents.x]\nconnect = [\"é\", 3]\n");
        assert_eq!(src.locate(0), (1, 1));
        assert_eq!(src.locate(6), (2, 1));
        let idx = src.text.find('3').unwrap_or_default();
        assert_eq!(src.locate(idx), (3, 17));
        assert_eq!(src.field_at(idx), "agents.x.connect");
        assert_eq!(src.field_at(7), "agents.x");
        // The end of the file and an offset past it land on the last line.
        assert_eq!(src.locate(src.text.len()), (4, 1));
        assert_eq!(src.locate(usize::MAX), (4, 1));
    }

    #[test]
    fn renders_every_diagnostic() {
        let src = Source::new("p.toml", "x\ny");
        let e = PolicyError::Invalid(vec![
            src.diag(0..1, "agents.a", "bad"),
            src.diag(2..3, "agents.b", "worse"),
        ]);
        let s = e.to_string();
        assert!(s.starts_with("policy has 2 errors:"), "{s}");
        assert!(s.contains("p.toml:1:1: agents.a: bad"), "{s}");
        assert!(s.contains("p.toml:2:1: agents.b: worse"), "{s}");
    }
}
