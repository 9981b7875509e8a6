//! Text from apps and tools on its way into Postgres and events. Postgres
//! rejects NUL in TEXT and JSONB, so one NUL in a build's output used to fail
//! the step write (and the deploy was retried until it gave up); it is
//! replaced here instead, with every other byte kept.

use std::borrow::Cow;

/// `text` with every NUL replaced by U+FFFD.
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Cuts `text` to at most `max` bytes on a char boundary, keeping the end
/// (where errors usually are).
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The marker written where output was dropped.
pub fn omitted(bytes: u64) -> String {
    format!("\n[… {bytes} bytes omitted …]\n")
}

/// The last `max` bytes of a stream, in bounded memory, counting what fell
/// off the front.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    buf: String,
    max: usize,
    dropped: u64,
}

impl Tail {
    pub fn new(max: usize) -> Self {
        Self {
            buf: String::new(),
            max,
            dropped: 0,
        }
    }

    pub fn push(&mut self, text: &str) {
        self.buf.push_str(&storable(text));
        // Trim in batches so a stream of small writes stays linear.
        if self.buf.len() > self.max.saturating_mul(2).max(4096) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        let keep = tail(&self.buf, self.max).len();
        let cut = self.buf.len() - keep;
        if cut > 0 {
            self.dropped += cut as u64;
            self.buf.drain(..cut);
        }
    }

    /// Bytes that fell off the front.
    pub fn dropped(&mut self) -> u64 {
        self.trim();
        self.dropped
    }

    /// The kept text, with a marker in front when some was dropped.
    pub fn finish(mut self) -> String {
        self.trim();
        if self.dropped == 0 {
            self.buf
        } else {
            format!("{}{}", omitted(self.dropped).trim_start(), self.buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_and_other_text_kept() {
        assert_eq!(storable("a\0b\x1b[0m"), "a\u{FFFD}b\x1b[0m");
        assert!(matches!(storable("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("aé", 1), "");
    }

    #[test]
    fn a_tail_is_bounded_and_says_what_it_dropped() {
        let mut t = Tail::new(10);
        for _ in 0..10_000 {
            t.push("0123456789");
        }
        assert!(t.buf.len() <= 4096 + 10);
        let out = t.finish();
        assert!(out.starts_with("[… 99990 bytes omitted …]\n"), "{out}");
        assert!(out.ends_with("0123456789"));
    }
}

/// What a secret value is shown as in any output Norn keeps or streams.
pub const MASK: &str = "***";
/// Values shorter than this are not masked (they would mask ordinary words).
pub const MASK_MIN: usize = 4;

/// Replaces secret values with [`MASK`] in a stream of text, also when a
/// value arrives split across two writes: the end of a write that could be
/// the start of a value is held back until the next write (or `finish`).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a value containing another is masked whole.
    values: Vec<String>,
    /// Bytes some value starts with: elsewhere the scan only copies.
    starts: Vec<bool>,
    held: String,
}

impl Masker {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= MASK_MIN).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        let mut starts = vec![false; 256];
        for v in &values {
            starts[usize::from(v.as_bytes()[0])] = true;
        }
        Self {
            values,
            starts,
            held: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every whole value masked (no state kept).
    pub fn mask(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let rest = self.scan(text, &mut out, true);
        debug_assert!(rest.is_empty());
        out
    }

    /// The part of the stream so far that can be shown, masked.
    pub fn push(&mut self, text: &str) -> String {
        if self.values.is_empty() {
            return text.to_owned();
        }
        let mut input = std::mem::take(&mut self.held);
        input.push_str(text);
        let mut out = String::with_capacity(input.len());
        self.held = self.scan(&input, &mut out, false).to_owned();
        out
    }

    /// The rest of the stream, masked.
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        self.mask(&held)
    }

    /// Masks `text` into `out`; unless `at_end`, stops at the first position
    /// where what is left is a proper beginning of a value, and returns it.
    fn scan<'t>(&self, text: &'t str, out: &mut String, at_end: bool) -> &'t str {
        let mut i = 0;
        'outer: while i < text.len() {
            let rest = &text[i..];
            let first = rest.as_bytes()[0];
            if !self
                .starts
                .get(usize::from(first))
                .copied()
                .unwrap_or(false)
            {
                let c = rest.chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..c]);
                i += c;
                continue;
            }
            for v in &self.values {
                if rest.starts_with(v.as_str()) {
                    out.push_str(MASK);
                    i += v.len();
                    continue 'outer;
                }
            }
            if !at_end
                && self
                    .values
                    .iter()
                    .any(|v| v.len() > rest.len() && v.starts_with(rest))
            {
                return rest;
            }
            let c = rest.chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..c]);
            i += c;
        }
        ""
    }
}

#[cfg(test)]
mod masker_tests {
    use super::Masker;

    #[test]
    fn values_are_masked_even_when_split_across_writes() {
        let mut m = Masker::new(["hunter22".to_string(), "abc".into(), "hunter2233".into()]);
        let mut out = m.push("pass=hun");
        out.push_str(&m.push("ter2233 and hunter22!"));
        out.push_str(&m.push(" abc hunt"));
        out.push_str(&m.finish());
        // Short values (abc) are left; the longest match wins; a held
        // beginning that never completes comes back as it was.
        assert_eq!(out, "pass=*** and ***! abc hunt");
        assert_eq!(m.mask("x hunter22 y"), "x *** y");
        let none = Masker::new(Vec::<String>::new());
        assert!(none.is_empty());
        assert_eq!(none.mask("é hunter22"), "é hunter22");
    }
}
