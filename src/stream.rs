//! Generated text, streamed as tokens arrive, at a cost per token that does not grow with
//! the reply: each token decodes only a short window of ids (the text of ids[prefix..]
//! minus the text of ids[prefix..read], as Hugging Face's DecodeStream does, so a
//! SentencePiece decoder's dropped first space or a byte-fallback character split over
//! tokens come out as in one whole decode), and stop strings are searched only where a
//! new one can end. A tail that is an unfinished UTF-8 character, or that could be the
//! start of a stop string, is held back until it resolves.

use crate::error::Result;
use crate::sampling::find_stop;
use crate::tokenizer::Tokenizer;

const REPLACEMENT: char = '\u{FFFD}';
/// Ids waited on at most for a character to complete: UTF-8 needs at most 4 byte tokens,
/// so a longer run of replacement characters is invalid bytes that will stay invalid.
const MAX_PENDING: usize = 8;

pub struct TextStream<'a> {
    stops: &'a [String],
    longest_stop: usize,
    ids: Vec<u32>,
    /// ids[prefix..read] were decoded last time as `prefix_text`; ids[read..] are not
    /// in `text` yet.
    prefix: usize,
    read: usize,
    prefix_text: String,
    /// The stable text so far (cut before a stop string once one is found).
    text: String,
    /// Bytes of `text` handed out.
    shown: usize,
    /// Bytes of `text` that may be handed out (the rest is held back).
    visible: usize,
}

fn floor_boundary(s: &str, i: usize) -> usize {
    (0..=i.min(s.len())).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0)
}

impl<'a> TextStream<'a> {
    pub fn new(stops: &'a [String]) -> Self {
        TextStream {
            stops,
            longest_stop: stops.iter().map(|s| s.len()).max().unwrap_or(0),
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            prefix_text: String::new(),
            text: String::new(),
            shown: 0,
            visible: 0,
        }
    }

    /// Adds one generated token. True when the text now contains a stop string (the text
    /// is cut before it and nothing after it is shown).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<bool> {
        self.ids.push(id);
        self.advance(tok, false)
    }

    /// The reply is over (a stop token, the length limit): whatever was held back for a
    /// character or a stop string that never completed is shown too. True when that
    /// completes a stop string after all.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<bool> {
        self.advance(tok, true)
    }

    /// The text that became showable since the last call.
    pub fn take(&mut self) -> &str {
        let piece = &self.text[self.shown..self.visible];
        self.shown = self.visible;
        piece
    }

    /// Everything handed out so far.
    pub fn shown(&self) -> &str {
        &self.text[..self.shown]
    }

    /// The whole text (after `finish`, or before a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Ids the next token's decode will cover (with it): a few, never the whole reply.
    pub fn window(&self) -> usize {
        self.ids.len() + 1 - self.prefix
    }

    fn advance(&mut self, tok: &Tokenizer, last: bool) -> Result<bool> {
        let old = self.text.len();
        if self.read < self.ids.len() {
            let new = tok.decode(&self.ids[self.prefix..], true)?;
            let pending = self.ids.len() - self.read;
            let clean = new.len() > self.prefix_text.len() && !new.ends_with(REPLACEMENT);
            if clean || last || pending >= MAX_PENDING {
                let from = if new.starts_with(&self.prefix_text) {
                    self.prefix_text.len()
                } else {
                    // Only after a forced flush of invalid bytes: keep what both agree on.
                    let same = new.bytes().zip(self.prefix_text.bytes()).take_while(|(a, b)| a == b).count();
                    floor_boundary(&new, same)
                };
                self.text.push_str(&new[from..]);
                self.prefix = self.read;
                self.read = self.ids.len();
                self.prefix_text = tok.decode(&self.ids[self.prefix..self.read], true)?;
            }
        }
        // A stop string found now ends in the new text.
        let start = floor_boundary(&self.text, old.saturating_sub(self.longest_stop));
        let (at, hold) = find_stop(&self.text[start..], self.stops);
        if let Some(i) = at {
            // (Never before what was shown: a stop string's start is always held back.)
            self.text.truncate((start + i).max(self.shown));
            self.visible = self.text.len();
            return Ok(true);
        }
        let hold = if last { 0 } else { hold };
        self.visible = floor_boundary(&self.text, self.text.len() - hold).max(self.shown);
        Ok(false)
    }
}
