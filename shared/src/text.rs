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
