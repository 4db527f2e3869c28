//! A compact, exact token counter for OpenAI's `cl100k_base` encoding.
//!
//! Hand-written because tiktoken-rs's `CoreBPE` keeps the 100k-token vocabulary in several
//! hash maps of `Vec<u8>` (plus decoder maps and per-thread regex clones), which costs
//! 25–45 MB of RSS against the gateway's 40 MiB budget, and the crate with prebuilt tables
//! (`bpe-openai`) is larger still (~48 MB once loaded). Counting needs
//! none of that: here the vocabulary is one contiguous byte buffer, a `u32` offset per
//! rank, and an open-addressing table of `u32`s from token bytes to rank: 1.5 MB in all,
//! built in tens of milliseconds from the vendored `assets/cl100k_base.tiktoken` (whose
//! 1.7 MB of pages are also read once). Counting allocates nothing for ordinary text.
//!
//! The result is exactly tiktoken's: the same pre-tokenization (tiktoken's cl100k regex,
//! implemented as a hand-written scanner over the same Unicode classes the regex engine
//! uses, so no regex engine or its per-thread caches are needed) and the same byte-pair
//! merge order (lowest rank first, leftmost on ties). The tests compare against
//! tiktoken-rs on a varied corpus.

use std::collections::BinaryHeap;

use regex_syntax::hir::{Class, HirKind};

/// The `cl100k_base` ranks, as OpenAI publishes them: base64 token bytes and rank per line.
const CL100K_BASE: &str = include_str!("../../assets/cl100k_base.tiktoken");

/// Why the vocabulary could not be loaded (a corrupt asset; never expected at run time).
#[derive(Debug, thiserror::Error)]
#[error("cl100k_base: {0}")]
pub struct LoadError(String);

/// Low bits of a table entry: rank + 1 (0 marks an empty slot).
const RANK_BITS: u32 = 17;
const RANK_MASK: u32 = (1 << RANK_BITS) - 1;
/// High bits of a table entry: a tag from the hash, so most probes that miss never touch
/// the byte buffer.
const TAG_BITS: u32 = 32 - RANK_BITS;
/// 2^17 slots (512 KiB) for ~100k tokens: a load factor of 0.76, and the tags keep the
/// longer probe runs cheap (measured no slower than 2^18 slots).
const TABLE_BITS: u32 = 17;

/// Pieces at least this long are merged with a heap (O(n log n)) rather than by rescanning
/// (O(n²)), as tiktoken does; both give the same result.
const LARGE_PIECE: usize = 100;

/// The character classes cl100k's pre-tokenizer distinguishes (`\p{L}`, `\p{N}`, `\s` are
/// disjoint in Unicode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CharClass {
    Letter,
    Number,
    Space,
    Other,
}

/// A part of a piece being merged, for `Cl100k::merge_large`: linked to its neighbours by
/// start offsets, with its candidate merge with the next part.
#[derive(Clone, Copy)]
struct Part {
    prev: usize,
    end: usize,
    next_end: usize,
    next_rank: u32,
}

/// The `cl100k_base` vocabulary and pre-tokenizer.
pub struct Cl100k {
    /// Every token's bytes, back to back in rank order.
    bytes: Vec<u8>,
    /// Token `r` is `bytes[offsets[r]..offsets[r + 1]]`.
    offsets: Vec<u32>,
    /// Open addressing with linear probing: `tag << RANK_BITS | (rank + 1)`, or 0.
    table: Vec<u32>,
    max_token_len: usize,
    /// Classes of ASCII characters, then sorted, disjoint ranges for the rest.
    ascii: [CharClass; 128],
    ranges: Vec<(u32, u32, CharClass)>,
}

impl std::fmt::Debug for Cl100k {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cl100k")
            .field("tokens", &self.token_count())
            .finish_non_exhaustive()
    }
}

impl Cl100k {
    /// Builds the vocabulary from the vendored ranks file.
    pub fn new() -> Result<Self, LoadError> {
        let (ascii, ranges) = char_classes()?;
        let lines = CL100K_BASE.lines().filter(|line| !line.is_empty());
        // Sized exactly up front: no growth, no slack.
        let (mut size, mut count) = (0, 0);
        for line in lines.clone() {
            let token = line.split(' ').next().unwrap_or_default();
            let padding = token.bytes().rev().take_while(|&c| c == b'=').count();
            size += (token.len() / 4 * 3).saturating_sub(padding);
            count += 1;
        }
        // The table first: mimalloc's arenas use 2 MiB huge pages, and in this order the
        // three buffers share fewer of them (measured: +4.2 MB RSS in all, against +6.2 MB).
        let table = vec![0; 1 << TABLE_BITS];
        let mut bytes = Vec::with_capacity(size);
        let mut offsets = Vec::with_capacity(count + 1);
        offsets.push(0);
        for (expected, line) in lines.enumerate() {
            let (token, rank) = line
                .split_once(' ')
                .ok_or_else(|| LoadError(format!("malformed line {}", expected + 1)))?;
            if rank.parse::<usize>().ok() != Some(expected) {
                return Err(LoadError(format!(
                    "rank out of order on line {}",
                    expected + 1
                )));
            }
            decode_base64(token, &mut bytes)
                .ok_or_else(|| LoadError(format!("bad base64 on line {}", expected + 1)))?;
            let end =
                u32::try_from(bytes.len()).map_err(|_| LoadError("vocabulary too large".into()))?;
            offsets.push(end);
        }
        let tokens = offsets.len() - 1;
        if tokens == 0 || tokens >= RANK_MASK as usize {
            return Err(LoadError(format!("{tokens} tokens")));
        }
        let mut bpe = Self {
            bytes,
            offsets,
            table,
            max_token_len: 0,
            ascii,
            ranges,
        };
        for rank in 0..tokens as u32 {
            let token = bpe.token(rank);
            if token.is_empty() || bpe.rank(token).is_some() {
                return Err(LoadError(format!("empty or duplicate token {rank}")));
            }
            let len = token.len();
            let (mut slot, tag) = slot_and_tag(token);
            bpe.max_token_len = bpe.max_token_len.max(len);
            while bpe.table[slot] != 0 {
                slot = (slot + 1) & (bpe.table.len() - 1);
            }
            bpe.table[slot] = tag | (rank + 1);
        }
        // Every single byte must be a token, or some text could not be encoded at all.
        if (0..=255u8).any(|byte| bpe.rank(&[byte]).is_none()) {
            return Err(LoadError("a byte has no token".into()));
        }
        Ok(bpe)
    }

    /// How many tokens the vocabulary has (100,256 for `cl100k_base`).
    pub fn token_count(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Tokens in `text`, exactly as tiktoken's `encode_ordinary(text).len()`.
    pub fn count(&self, text: &str) -> usize {
        self.pieces(text)
            .map(|piece| self.count_piece(piece.as_bytes()))
            .sum()
    }

    /// The pre-tokenizer's pieces of `text`, as tiktoken's regex splits it.
    pub fn pieces<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let mut start = 0;
        std::iter::from_fn(move || {
            let end = self.piece_end(text, start)?;
            let piece = text.get(start..end)?;
            start = end;
            Some(piece)
        })
    }

    fn token(&self, rank: u32) -> &[u8] {
        let rank = rank as usize;
        match (self.offsets.get(rank), self.offsets.get(rank + 1)) {
            (Some(&start), Some(&end)) => &self.bytes[start as usize..end as usize],
            _ => &[],
        }
    }

    /// The rank of the token whose bytes are exactly `piece`.
    fn rank(&self, piece: &[u8]) -> Option<u32> {
        if piece.len() > self.max_token_len.max(1) {
            return None;
        }
        let (mut slot, tag) = slot_and_tag(piece);
        loop {
            let entry = self.table[slot];
            if entry == 0 {
                return None;
            }
            if entry & !RANK_MASK == tag {
                let rank = (entry & RANK_MASK) - 1;
                if self.token(rank) == piece {
                    return Some(rank);
                }
            }
            slot = (slot + 1) & (self.table.len() - 1);
        }
    }

    fn pair_rank(&self, piece: &[u8], start: usize, end: usize) -> u32 {
        piece
            .get(start..end)
            .and_then(|bytes| self.rank(bytes))
            .unwrap_or(u32::MAX)
    }

    /// Tokens in one pre-tokenized piece: 1 if the piece is a token, else the byte-pair
    /// merge's count.
    fn count_piece(&self, piece: &[u8]) -> usize {
        match piece.len() {
            0 => 0,
            1 => 1,
            _ if self.rank(piece).is_some() => 1,
            len if len < LARGE_PIECE => self.merge_small(piece),
            _ => self.merge_large(piece),
        }
    }

    /// tiktoken's `_byte_pair_merge`: parts as (start, rank of the pair starting there);
    /// repeatedly merge the lowest-ranked pair, leftmost on ties. For pieces shorter than
    /// `LARGE_PIECE`, on the stack.
    fn merge_small(&self, piece: &[u8]) -> usize {
        let mut parts = [(0u32, u32::MAX); LARGE_PIECE + 1];
        let len = piece.len().min(LARGE_PIECE);
        for (i, part) in parts.iter_mut().enumerate().take(len + 1) {
            let rank = if i + 2 <= len {
                self.pair_rank(piece, i, i + 2)
            } else {
                u32::MAX
            };
            *part = (i as u32, rank);
        }
        let mut parts_len = len + 1;
        loop {
            let mut min = (u32::MAX, 0);
            for (i, &(_, rank)) in parts[..parts_len - 1].iter().enumerate() {
                if rank < min.0 {
                    min = (rank, i);
                }
            }
            if min.0 == u32::MAX {
                break;
            }
            let i = min.1;
            // The new pair ranks, computed before parts[i + 1] goes (so + 3, not + 2).
            let rank_at = |parts: &[(u32, u32)], j: usize| {
                if j + 3 < parts_len {
                    self.pair_rank(piece, parts[j].0 as usize, parts[j + 3].0 as usize)
                } else {
                    u32::MAX
                }
            };
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
            parts[i].1 = rank_at(&parts, i);
            parts.copy_within(i + 2..parts_len, i + 1);
            parts_len -= 1;
        }
        parts_len - 1
    }

    /// tiktoken's `_byte_pair_merge_large`: the same merges, found with a heap of candidate
    /// pairs and a linked list of parts; stale heap entries are skipped.
    fn merge_large(&self, piece: &[u8]) -> usize {
        let len = piece.len();
        let mut heap = BinaryHeap::with_capacity(len);
        let mut parts: Vec<Part> = (0..len)
            .map(|i| Part {
                prev: i.wrapping_sub(1),
                end: i + 1,
                next_end: i + 2,
                // Past the end, `pair_rank` finds no pair: u32::MAX.
                next_rank: self.pair_rank(piece, i, i + 2),
            })
            .collect();
        heap.extend(
            parts
                .iter()
                .enumerate()
                .filter(|(_, part)| part.next_rank != u32::MAX)
                .map(|(i, part)| std::cmp::Reverse((part.next_rank, i))),
        );
        let mut count = len;
        while let Some(std::cmp::Reverse((rank, left))) = heap.pop() {
            if rank != parts[left].next_rank {
                continue; // superseded
            }
            let right = parts[left].end;
            let right_end = parts[left].next_end;
            let right_next_end = parts[right].next_end;
            count -= 1;
            parts[left].end = right_end;
            parts[right].next_rank = u32::MAX;
            self.propose(piece, &mut parts, &mut heap, left, right_next_end);
            if right_end < len {
                parts[right_end].prev = left;
            }
            if left > 0 {
                let prev = parts[left].prev;
                self.propose(piece, &mut parts, &mut heap, prev, right_end);
            }
        }

        count
    }

    /// Sets the candidate merge of the part at `start` with the part ending at
    /// `next_end`, replacing any older candidate.
    fn propose(
        &self,
        piece: &[u8],
        parts: &mut [Part],
        heap: &mut BinaryHeap<std::cmp::Reverse<(u32, usize)>>,
        start: usize,
        next_end: usize,
    ) {
        let rank = if next_end <= piece.len() {
            self.pair_rank(piece, start, next_end)
        } else {
            u32::MAX
        };
        parts[start].next_end = next_end;
        parts[start].next_rank = rank;
        if rank != u32::MAX {
            heap.push(std::cmp::Reverse((rank, start)));
        }
    }

    fn class(&self, c: char) -> CharClass {
        let code = c as u32;
        if let Some(&class) = self.ascii.get(code as usize) {
            return class;
        }
        let i = self.ranges.partition_point(|&(start, _, _)| start <= code);
        match i.checked_sub(1).and_then(|i| self.ranges.get(i)) {
            Some(&(_, end, class)) if code <= end => class,
            _ => CharClass::Other,
        }
    }

    /// The end of the piece starting at `start`, following tiktoken's cl100k pattern
    /// (alternatives tried in order, the first that matches wins):
    ///
    /// ```text
    /// '(?i:[sdmt]|ll|ve|re) | [^\r\n\p{L}\p{N}]?+\p{L}++ | \p{N}{1,3}+
    /// | ' '?[^\s\p{L}\p{N}]++[\r\n]*+ | \s++$ | \s*[\r\n] | \s+(?!\S) | \s
    /// ```
    fn piece_end(&self, text: &str, start: usize) -> Option<usize> {
        let rest = text.get(start..)?;
        let mut chars = rest.chars();
        let first = chars.next()?;
        let class = self.class(first);
        let after_first = start + first.len_utf8();

        // '(?i:[sdmt]|ll|ve|re) — `s` also folds to `ſ` (U+017F) under Unicode case folding.
        if first == '\'' {
            let mut next = chars.clone();
            let len = match (next.next(), next.next()) {
                (Some(c @ ('s' | 'S' | 'ſ' | 'd' | 'D' | 'm' | 'M' | 't' | 'T')), _) => {
                    Some(c.len_utf8())
                }
                (Some('l' | 'L'), Some('l' | 'L'))
                | (Some('v' | 'V'), Some('e' | 'E'))
                | (Some('r' | 'R'), Some('e' | 'E')) => Some(2),
                _ => None,
            };
            if let Some(len) = len {
                return Some(after_first + len);
            }
        }

        // [^\r\n\p{L}\p{N}]?+\p{L}++
        if class == CharClass::Letter {
            return Some(self.run_end(text, after_first, CharClass::Letter, usize::MAX));
        }
        if class != CharClass::Number && first != '\r' && first != '\n' {
            if let Some(next) = chars.clone().next() {
                if self.class(next) == CharClass::Letter {
                    let end = after_first + next.len_utf8();
                    return Some(self.run_end(text, end, CharClass::Letter, usize::MAX));
                }
            }
        }

        // \p{N}{1,3}+
        if class == CharClass::Number {
            return Some(self.run_end(text, after_first, CharClass::Number, 2));
        }

        // ' '?[^\s\p{L}\p{N}]++[\r\n]*+
        let symbols = if first == ' ' { after_first } else { start };
        if let Some(symbol) = text.get(symbols..).and_then(|s| s.chars().next()) {
            if self.class(symbol) == CharClass::Other {
                let end = self.run_end(
                    text,
                    symbols + symbol.len_utf8(),
                    CharClass::Other,
                    usize::MAX,
                );
                let newlines = text.get(end..).map_or(0, |s| {
                    s.bytes().take_while(|&b| b == b'\r' || b == b'\n').count()
                });
                return Some(end + newlines);
            }
        }

        // Only whitespace is left: `first` is not a letter, number or other symbol.
        // Scan the whitespace run, noting its last line break and its last character.
        let mut end = start;
        let mut last_break = None;
        let mut last_char = start;
        for c in rest.chars() {
            if self.class(c) != CharClass::Space {
                break;
            }
            if c == '\r' || c == '\n' {
                last_break = Some(end);
            }
            last_char = end;
            end += c.len_utf8();
        }
        if end == start {
            return Some(after_first); // unreachable: every character has a class
        }
        Some(if end == text.len() {
            end // \s++$
        } else if let Some(brk) = last_break {
            brk + 1 // \s*[\r\n]: up to and including the run's last line break
        } else if last_char > start {
            last_char // \s+(?!\S): the run but its last character
        } else {
            end // \s
        })
    }

    /// The end of the run of `class` characters from `from`, taking at most `limit` more.
    fn run_end(&self, text: &str, from: usize, class: CharClass, limit: usize) -> usize {
        let Some(rest) = text.get(from..) else {
            return from;
        };
        from + rest
            .chars()
            .take(limit)
            .take_while(|&c| self.class(c) == class)
            .map(char::len_utf8)
            .sum::<usize>()
    }
}

/// The table slot to start probing at, and the entry's tag bits.
fn slot_and_tag(bytes: &[u8]) -> (usize, u32) {
    let hash = hash(bytes);
    let slot = (hash >> (64 - TABLE_BITS)) as usize;
    let tag = ((hash >> (64 - TABLE_BITS - TAG_BITS)) as u32 & ((1 << TAG_BITS) - 1)) << RANK_BITS;
    (slot, tag)
}

/// A fast multiplicative hash (FxHash-style, 8 bytes a step) with a final mix so the high
/// bits — used for the slot and tag — depend on every input byte.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(K);
    let mut hash = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = chunk
            .iter()
            .rev()
            .fold(0u64, |word, &b| word << 8 | u64::from(b));
        hash = step(hash, word);
    }
    let tail = chunks
        .remainder()
        .iter()
        .rev()
        .fold(0u64, |word, &b| word << 8 | u64::from(b));
    hash = step(hash, tail);
    hash ^= hash >> 32;
    hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Appends the standard-alphabet, padded base64 `text` to `out`; `None` if it is malformed.
fn decode_base64(text: &str, out: &mut Vec<u8>) -> Option<()> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode_vec(text, out)
        .ok()
}

/// The classes of `\p{L}`, `\p{N}` and `\s` as the regex engine tiktoken uses defines them
/// (regex-syntax's Unicode tables): an ASCII lookup table and sorted ranges for the rest.
#[allow(clippy::type_complexity)]
fn char_classes() -> Result<([CharClass; 128], Vec<(u32, u32, CharClass)>), LoadError> {
    let mut ranges = Vec::new();
    for (pattern, class) in [
        (r"\p{L}", CharClass::Letter),
        (r"\p{N}", CharClass::Number),
        (r"\s", CharClass::Space),
    ] {
        let hir = regex_syntax::parse(pattern).map_err(|err| LoadError(err.to_string()))?;
        let HirKind::Class(Class::Unicode(set)) = hir.kind() else {
            return Err(LoadError(format!("{pattern} is not a Unicode class")));
        };
        ranges.extend(
            set.ranges()
                .iter()
                .map(|range| (u32::from(range.start()), u32::from(range.end()), class)),
        );
    }
    ranges.sort_unstable_by_key(|&(start, _, _)| start);
    if ranges.windows(2).any(|pair| pair[0].1 >= pair[1].0) {
        return Err(LoadError("character classes overlap".into()));
    }
    let mut ascii = [CharClass::Other; 128];
    for &(start, end, class) in &ranges {
        for code in start..=end.min(127) {
            ascii[code as usize] = class;
        }
    }
    ranges.retain(|&(_, end, _)| end >= 128);
    ranges.shrink_to_fit();
    Ok((ascii, ranges))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    /// tiktoken-rs's cl100k pattern, to compare the pre-tokenizer's pieces with the regex's.
    const PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

    fn ours() -> &'static Cl100k {
        static BPE: OnceLock<Cl100k> = OnceLock::new();
        BPE.get_or_init(|| Cl100k::new().expect("the vendored vocabulary loads"))
    }

    fn regex() -> &'static fancy_regex::Regex {
        static REGEX: OnceLock<fancy_regex::Regex> = OnceLock::new();
        REGEX.get_or_init(|| fancy_regex::Regex::new(PATTERN).expect("valid pattern"))
    }

    /// Same pieces as tiktoken's regex, and the same token count as tiktoken-rs.
    fn assert_exact(text: &str) {
        let expected: Vec<&str> = regex()
            .find_iter(text)
            .map(|m| m.expect("regex runs").as_str())
            .collect();
        let pieces: Vec<&str> = ours().pieces(text).collect();
        assert_eq!(pieces, expected, "pieces of {text:?}");
        let tiktoken = tiktoken_rs::cl100k_base_singleton()
            .encode_ordinary(text)
            .len();
        assert_eq!(ours().count(text), tiktoken, "count of {text:?}");
    }

    /// xorshift64*: a deterministic corpus without a rand dependency in the hot path.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn loads_the_whole_vocabulary() {
        let bpe = ours();
        assert_eq!(bpe.token_count(), 100_256);
        assert_eq!(bpe.rank(b"!"), Some(0));
        assert_eq!(bpe.rank(b" Conveyor"), Some(100_255));
        assert_eq!(bpe.rank(b"hello"), Some(15339));
        assert_eq!(bpe.rank(b"\xff\xfe\xfd\xfc not a token"), None);
        // Every token finds its own rank.
        for rank in 0..bpe.token_count() as u32 {
            assert_eq!(bpe.rank(bpe.token(rank)), Some(rank));
        }
    }

    #[test]
    fn fixed_corpus_matches_tiktoken() {
        let long_letters: String = {
            let mut rng = Rng(7);
            (0..3000)
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect()
        };
        let corpus = [
            "",
            "hello world",
            "The quick brown fox jumps over the lazy dog. It's 9:41 — isn't it? We'll see; they'd've known.",
            "I'M SHOUTING, YOU'RE WHISPERING, WE'VE 'LL 'RE 'VE 'D 'M 'T 'S 'ſ 'x ' '",
            "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
            "def f(a, b):\r\n\treturn a ** b  # power\r\n\r\n\r\n",
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}"#,
            "a  \n  \n\n  b   ",
            "trailing   ",
            "trailing\n\n",
            "trailing \n \t ",
            "   leading",
            "\n\n\nx\r\n\r\ny \t\n z",
            " \u{a0}\u{3000}\u{2028}\u{85}x\u{a0}y",
            "1234567890 3.14159 1,000,000 -42 +7e10 0x1F 12a34b",
            "١٢٣٤٥ ٦٧ Ⅻ ⅻ ² ½ ¾ 𝟙𝟚𝟛",
            "中文分词测试，日本語のテキスト。한국어 텍스트입니다.",
            "кириллица Ελληνικά עברית العربية हिन्दी भाषा ภาษาไทย",
            "e\u{301}te\u{301} ǅungla ʰa ßtraße ﬁne",
            "😀👍🏽👨‍👩‍👧 emoji🙂in🙃text 🇺🇸🇩🇪",
            "zero\u{200b}width\u{feff}bom \u{10ffff}\u{e000}",
            "https://example.com/path?query=1&b=two#frag user@example.org",
            "SGVsbG8gd29ybGQhIFRoaXMgaXMgYmFzZTY0IGVuY29kZWQgdGV4dC4=",
            "deadbeefcafebabe0123456789abcdef",
            "----------====++++******!!!!!!?????......",
            "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
            &long_letters,
            &"a".repeat(5000),
            &"ab".repeat(777),
            &"🙂".repeat(300),
            &"中".repeat(400),
            &" ".repeat(1000),
            &format!("{}x", " ".repeat(1000)),
            &"\n".repeat(500),
            &"1".repeat(1000),
            &"lorem ipsum dolor sit amet, ".repeat(200),
        ];
        for text in corpus {
            assert_exact(text);
        }
    }

    #[test]
    fn random_fragments_match_tiktoken() {
        const FRAGMENTS: &[&str] = &[
            "a",
            "b",
            "Hello",
            " world",
            "the",
            " The",
            "'s",
            "'S",
            "'ſ",
            "'ll",
            "'LL",
            "'Re",
            "'ve",
            "'d",
            "'M",
            "'t",
            "'x",
            "'",
            "\"",
            " ",
            "  ",
            "   ",
            "\t",
            "\n",
            "\r\n",
            "\r",
            "\n\n",
            "\u{a0}",
            "\u{3000}",
            "\u{2028}",
            "\u{85}",
            "\u{b}",
            "\u{c}",
            "1",
            "23",
            "4567",
            "١٢٣",
            "Ⅻ",
            "²",
            "½",
            "!",
            "?!",
            "...",
            "(",
            ")",
            "{",
            "}",
            "=>",
            "::",
            "#",
            "@",
            "$",
            "€",
            "😀",
            "👍🏽",
            "👨‍👩‍👧",
            "中文",
            "日本語",
            "한국어",
            "кириллица",
            "Ελληνικά",
            "हिन्दी",
            "العربية",
            "é",
            "e\u{301}",
            "ß",
            "ǅ",
            "ʰ",
            "\u{200b}",
            "_",
            "-",
            "--",
            "—",
            "fn main() {",
            "    let x = 42;",
            "\u{10ffff}",
            "ﷺ",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0000000",
            ".\n",
            "!\r\n\r\n",
        ];
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        for _ in 0..3000 {
            let text: String = (0..1 + rng.below(30))
                .map(|_| FRAGMENTS[rng.below(FRAGMENTS.len())])
                .collect();
            assert_exact(&text);
        }
    }

    #[test]
    fn random_code_points_match_tiktoken() {
        let mut rng = Rng(42);
        for _ in 0..1000 {
            let text: String = (0..1 + rng.below(40))
                .filter_map(|_| {
                    let max = [0x80, 0x800, 0x3400, 0x1_0000, 0x3_0000, 0x11_0000][rng.below(6)];
                    char::from_u32(rng.below(max) as u32)
                })
                .collect();
            assert_exact(&text);
        }
    }

    #[test]
    fn small_and_large_merges_agree() {
        let bpe = ours();
        let mut rng = Rng(99);
        let alphabet: Vec<u8> = b"aeiou tnrshlcdm".to_vec();
        for _ in 0..2000 {
            let len = 2 + rng.below(LARGE_PIECE - 2);
            let piece: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            assert_eq!(
                bpe.merge_small(&piece),
                bpe.merge_large(&piece),
                "{piece:?}"
            );
        }
        let bytes: Vec<u8> = "héllo wörld 🙂 中文".bytes().collect();
        assert_eq!(bpe.merge_small(&bytes), bpe.merge_large(&bytes));
    }

    #[test]
    fn decodes_base64() {
        let mut out = Vec::new();
        assert_eq!(decode_base64("SGVsbG8=", &mut out), Some(()));
        assert_eq!(decode_base64("IQ==", &mut out), Some(()));
        assert_eq!(decode_base64("YWJj", &mut out), Some(()));
        assert_eq!(out, b"Hello!abc");
        assert_eq!(decode_base64("abc", &mut out), None);
        assert_eq!(decode_base64("a===", &mut out), None);
        assert_eq!(decode_base64("ab*d", &mut out), None);
    }
}
