//! Stop sequences over streamed text.
//!
//! OpenAI cuts the output before the first stop sequence and never shows any of it. When
//! text arrives a token at a time, a stop sequence may span tokens, so text that could be the
//! start of one is held back until the next piece decides it.

/// Finds stop sequences in text fed piece by piece.
#[derive(Debug)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Text not yet released: always a possible beginning of some stop sequence.
    held: String,
    /// What the latest [`StopMatcher::push`] released.
    out: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored: they would stop at once).
    pub(crate) fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            out: String::new(),
        }
    }

    /// Adds `piece`; returns the text now safe to show and whether a stop sequence was hit
    /// (then the text is everything before it, and generation should end).
    pub(crate) fn push(&mut self, piece: &str) -> (&str, bool) {
        self.out.clear();
        if self.stops.is_empty() {
            self.out.push_str(piece);
            return (&self.out, false);
        }
        self.held.push_str(piece);
        let first_hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_hit {
            self.out.push_str(&self.held[..at]);
            self.held.clear();
            return (&self.out, true);
        }
        // Keep the shortest tail that some stop sequence starts with; earlier starts are
        // neither a match nor a prefix, so the text before the tail is final.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        self.out.push_str(&self.held[..keep_from]);
        self.held.drain(..keep_from);
        (&self.out, false)
    }

    /// Ends the text without a stop: whatever was held back is final.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut text = String::new();
        for p in pieces {
            let (out, hit) = m.push(p);
            text.push_str(out);
            if hit {
                return (text, true);
            }
        }
        text.push_str(&m.finish());
        (text, false)
    }

    #[test]
    fn cuts_before_a_stop_spanning_pieces() {
        assert_eq!(
            run(&["\n\n"], &["Hello", " world", "\n", "\nMore"]),
            ("Hello world".into(), true)
        );
        assert_eq!(
            run(&["END", "wor"], &["Hello", " wo", "rld"]),
            ("Hello ".into(), true)
        );
    }

    #[test]
    fn releases_a_false_start() {
        assert_eq!(run(&["abc"], &["xa", "b", "d"]), ("xabd".into(), false));
        assert_eq!(run(&["abc"], &["xa", "b"]), ("xab".into(), false));
        assert_eq!(run(&[], &["é", "!"]), ("é!".into(), false));
        assert_eq!(run(&["", "é!"], &["aé", "?"]), ("aé?".into(), false));
    }
}
