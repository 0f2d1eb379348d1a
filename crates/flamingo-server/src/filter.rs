//! Output content filter, as the OpenFlamingo web demo filtered its outputs.
//!
//! Detection is [`rustrict`]'s: it matches a trie of profanity across spacing, punctuation,
//! look-alike characters and repetition ("f u c k", "sh1t", "fuuuck"), and knows ~20k false
//! positives ("Scunthorpe", "cockatoo"). On top of it this module adds
//!
//! * masking that keeps the original text: rustrict normalises its input (strips accents and
//!   invisible characters), so its output is mapped back onto the original characters and only
//!   masked letters change ("crème brûlée" stays as is);
//! * a streaming filter that releases exactly what [`ContentFilter::check`] would produce for the
//!   whole text, never a prefix of a word that is masked later;
//! * an optional allowlist of benign phrases the model says about photos ("a great tit",
//!   "chicken breast", "cocker spaniel") that rustrict would otherwise mask.
//!
//! "Inappropriate at the threshold" means rustrict masked something at the threshold: it masks
//! every match it accepts at the threshold, so this is its analysis without the text-level
//! spam and self-censoring ("f***") ratios, which a stream cannot evaluate as it goes.

use std::cell::Cell;
use std::sync::OnceLock;

use rustrict::{Censor, Trie, Type};

/// What to do with output that is inappropriate at the threshold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    /// Mask offending words with `*`. Like rustrict by default, the first letter is kept
    /// ("f***ing") so the text still reads, except for severe slurs, which are masked whole.
    Censor,
    /// Withhold the whole output (the server reports `finish_reason: content_filter`).
    Block,
    /// Leave the output alone.
    Off,
}

/// The lowest rustrict severity that is acted on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Mild,
    Moderate,
    Severe,
}

impl Severity {
    /// rustrict's "inappropriate" (profane, offensive, sexual, or severely mean) at this severity
    /// or above.
    fn threshold(self) -> Type {
        Type::INAPPROPRIATE
            & match self {
                Severity::Mild => Type::MILD_OR_HIGHER,
                Severity::Moderate => Type::MODERATE_OR_HIGHER,
                Severity::Severe => Type::SEVERE,
            }
    }
}

/// Benign phrases that rustrict flags at moderate severity or above and that a captioning model
/// plausibly says about a photo (birds, dog breeds, food, tools, titles). They are registered
/// as rustrict false positives, which only apply when spelled exactly: "a great tit" passes, an
/// evasive spelling or the bare word still does not. Phrases whose offensive sense is common
/// are left out ("great tits", "a hoe"). Found with `filter_eval` on
/// `data/filter_labelled.jsonl`.
pub const BENIGN_ALLOWLIST: &[&str] = &[
    "great tit",
    "blue tit",
    "blue tits",
    "coal tit",
    "coal tits",
    "tit bird",
    "tit birds",
    "blue-footed booby",
    "blue footed booby",
    "booby bird",
    "pussy cat",
    "pussy cats",
    "pussy willow",
    "cocker",
    "cock crowing",
    "cock and hen",
    "cock and a hen",
    "shiitake",
    "chicken breast",
    "chicken breasts",
    "turkey breast",
    "duck breast",
    "breast cancer",
    "breast pocket",
    "garden hoe",
    "with a hoe",
    "using a hoe",
    "holding a hoe",
    "moby dick",
    "dick tracy",
    "spotted dick",
    "middlesex",
];

/// Private-use character rustrict masks with. Its input filter strips private-use characters,
/// so any of these in its output is a masked letter, never something the model wrote.
const MASK: char = '\u{E000}';

/// rustrict's trie plus [`BENIGN_ALLOWLIST`], built once (cloning the default trie costs a few
/// milliseconds).
fn allowlist_trie() -> &'static Trie {
    static TRIE: OnceLock<Trie> = OnceLock::new();
    TRIE.get_or_init(|| {
        let mut trie = Trie::default();
        for phrase in BENIGN_ALLOWLIST {
            trie.set(phrase, Type::NONE);
        }
        trie
    })
}

/// Builds rustrict's tables and the allowlist trie (~50 ms), which otherwise happens on the
/// first request.
pub fn warm_up() {
    ContentFilter::new(FilterConfig::default()).check("warm up");
}

/// Content filter settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    pub mode: FilterMode,
    pub threshold: Severity,
    /// Let the phrases of [`BENIGN_ALLOWLIST`] through.
    pub allowlist: bool,
}

impl Default for FilterConfig {
    /// Censor at moderate severity, with the benign allowlist.
    ///
    /// Chosen with `filter_eval` on `data/filter_labelled.jsonl` (149 benign and 67 offensive
    /// model-like outputs). False positives / false negatives, the same in both modes:
    ///
    /// | threshold | allowlist off | allowlist on |
    /// |-----------|---------------|--------------|
    /// | mild      | 39 / 4        | 18 / 4       |
    /// | moderate  | 33 / 10       | 12 / 10      |
    /// | severe    | 3 / 49        | 2 / 49       |
    ///
    /// * `severe` lets most profanity and sexual words through ("fuck", "shit", "tits").
    /// * `mild` also catches six mild profanities ("damn", "hell", "crap") but masks six more
    ///   benign captions, among them "gay" in "a gay couple", "tennis balls" and "a bloody
    ///   knife": masking identity words and everyday objects is worse than letting "damn" by.
    /// * The allowlist removes 21 of moderate's false positives (birds, breeds, food, tools,
    ///   titles) and adds no miss. Those left are bare words whose main sense is offensive ("a
    ///   cock" for a rooster, "an ass" for a donkey) and nudity ("a nude painting"); the misses
    ///   left are mild profanity and plain insults ("idiot", "loser") rustrict does not know.
    /// * Censor rather than block: a masked word spoils one word of a caption, a block the
    ///   whole answer.
    fn default() -> Self {
        Self {
            mode: FilterMode::Censor,
            threshold: Severity::Moderate,
            allowlist: true,
        }
    }
}

/// The result of filtering a whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterOutcome {
    /// The text to return: masked in censor mode, empty when blocked, unchanged otherwise.
    pub text: String,
    /// The filter changed or withheld the text.
    pub acted: bool,
    /// The text is withheld (block mode).
    pub blocked: bool,
}

/// What a stream may send now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamChunk {
    /// Text that can no longer change; may be empty while text is held back.
    pub text: String,
    /// The filter has acted on this stream so far (sticky).
    pub acted: bool,
    /// The stream is withheld from here on (sticky); stop generating.
    pub blocked: bool,
    /// This chunk masked something (not sticky): whatever produced its text must not leave
    /// unmasked by another path (token ids, log-probabilities).
    pub masked: bool,
    /// Bytes of input text released so far, in total (this chunk's included): input beyond it is
    /// still held back.
    pub released_input: usize,
}

/// A configured filter; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct ContentFilter {
    cfg: FilterConfig,
}

impl ContentFilter {
    pub fn new(cfg: FilterConfig) -> Self {
        Self { cfg }
    }

    pub fn config(&self) -> &FilterConfig {
        &self.cfg
    }

    /// Filters a whole text.
    pub fn check(&self, text: &str) -> FilterOutcome {
        let unchanged = FilterOutcome {
            text: text.to_owned(),
            acted: false,
            blocked: false,
        };
        if self.cfg.mode == FilterMode::Off {
            return unchanged;
        }
        let out = self.run(text, false).out;
        if !out.contains(&MASK) {
            return unchanged;
        }
        if self.cfg.mode == FilterMode::Block {
            return FilterOutcome {
                text: String::new(),
                acted: true,
                blocked: true,
            };
        }
        let mut restorer = Restorer::default();
        let mut masked = String::with_capacity(text.len());
        let mut rest = &out[..];
        let mut norm = Vec::new();
        for c in text.chars() {
            normalized(c, &mut norm);
            let (piece, tail) = rest.split_at(norm.len().min(rest.len()));
            restorer.emit(c, &norm, piece, &mut masked);
            rest = tail;
        }
        masked.extend(rest.iter().map(|&c| unmask(c)));
        FilterOutcome {
            text: masked,
            acted: true,
            blocked: false,
        }
    }

    /// Starts filtering one generation token by token.
    pub fn stream(&self) -> StreamFilter {
        StreamFilter {
            filter: self.clone(),
            window: String::new(),
            released: Position::default(),
            cuts: Vec::new(),
            restorer: Restorer::default(),
            acted: false,
            blocked: false,
            released_input: 0,
            masked: false,
        }
    }

    /// Runs rustrict over `text`, masking with [`MASK`]. When `open_ended`, `text` may continue,
    /// so only the output rustrict produced before it looked past the end of `text` is kept:
    /// rustrict works left to right, so that output is final whatever follows. (It holds back
    /// characters while a match that covers them is in flight, and one more for normalisation.)
    fn run(&self, text: &str, open_ended: bool) -> Run {
        let taken = Cell::new(0);
        let looked_past_end = Cell::new(false);
        let input = text
            .chars()
            .inspect(|_| taken.set(taken.get() + 1))
            .chain(std::iter::from_fn(|| {
                looked_past_end.set(true);
                None
            }));
        let mut censor = Censor::new(input);
        censor
            .with_censor_threshold(self.cfg.threshold.threshold())
            .with_censor_replacement(MASK);
        if self.cfg.mode == FilterMode::Block {
            // Mask whole words, so that a stream stops before the first letter of one.
            censor.with_censor_first_character_threshold(Type::ANY);
        }
        if self.cfg.allowlist {
            censor.with_trie(allowlist_trie());
        }
        let mut run = Run::default();
        for c in censor {
            if open_ended && looked_past_end.get() {
                break;
            }
            run.out.push(c);
            run.taken.push(taken.get());
        }
        run
    }
}

/// rustrict's output for a text.
#[derive(Debug, Default)]
struct Run {
    out: Vec<char>,
    /// For each output character, how many characters of the text rustrict had taken in when
    /// it produced it.
    taken: Vec<usize>,
}

/// Per-request streaming state.
///
/// Released text is exactly a prefix of what [`ContentFilter::check`] gives for the whole text
/// (in block mode: until it blocks). `acted` and `blocked` in the chunks are sticky.
///
/// Each push re-runs rustrict over a window of the text, so the cost per token stays flat
/// (~10 µs). The window starts after a released separator (a non-letter: rustrict starts a word
/// after any of them the same way), and only once rustrict has produced the character after it
/// while having taken in nothing but released text. rustrict produces a character only when no
/// match covering it or anything before it is in flight, so from then on nothing that started
/// before the cut matters, and what such matches did (masks, false positives cancelling masks)
/// touched released text only. Cutting right after any separator instead goes wrong on "a great
/// tit" with the allowlist: "great tit" is in flight past the space.
#[derive(Debug)]
pub struct StreamFilter {
    filter: ContentFilter,
    /// Text from the last cut on: released text followed by held-back text.
    window: String,
    /// The released part of `window`.
    released: Position,
    /// Possible cuts in the released part, oldest first.
    cuts: Vec<Position>,
    restorer: Restorer,
    acted: bool,
    blocked: bool,
    /// Input bytes released since the stream began (the window forgets its released part).
    released_input: usize,
    /// The release being built masked something.
    masked: bool,
}

/// A position in the window: bytes and characters before it, and how many characters of
/// rustrict's output those make.
#[derive(Debug, Default, Clone, Copy)]
struct Position {
    bytes: usize,
    chars: usize,
    out: usize,
}

impl std::ops::SubAssign for Position {
    fn sub_assign(&mut self, rhs: Self) {
        self.bytes -= rhs.bytes;
        self.chars -= rhs.chars;
        self.out -= rhs.out;
    }
}

impl StreamFilter {
    /// Feed the next decoded token text; returns the text that is now safe to send (may be
    /// empty: held back).
    pub fn push(&mut self, piece: &str) -> StreamChunk {
        if self.filter.cfg.mode == FilterMode::Off {
            self.released_input += piece.len();
            return StreamChunk {
                text: piece.to_owned(),
                released_input: self.released_input,
                ..StreamChunk::default()
            };
        }
        if self.blocked {
            return self.chunk(String::new());
        }
        self.window.push_str(piece);
        let run = self.filter.run(&self.window, true);
        let chunk = self.release(&run.out, false);
        self.cut(&run.taken);
        chunk
    }

    /// End of generation: flush what was held back (filtered).
    pub fn finish(&mut self) -> StreamChunk {
        if self.filter.cfg.mode == FilterMode::Off || self.blocked {
            return self.chunk(String::new());
        }
        let run = self.filter.run(&self.window, false);
        let chunk = self.release(&run.out, true);
        // Nothing is left: a second finish (or push) starts from an empty window.
        self.window.clear();
        self.released = Position::default();
        self.cuts.clear();
        chunk
    }

    /// Releases the window's characters whose share of rustrict's output `out` is complete
    /// (all of them at the `end` of the text).
    fn release(&mut self, out: &[char], end: bool) -> StreamChunk {
        let mut text = String::new();
        let mut norm = Vec::new();
        let pos = &mut self.released;
        let released_before = pos.bytes;
        self.masked = false;
        for c in self.window[pos.bytes..].chars() {
            normalized(c, &mut norm);
            let available = out.len().saturating_sub(pos.out);
            if norm.len() > available && !end {
                break;
            }
            let piece = &out[pos.out..][..norm.len().min(available)];
            let masked = self.restorer.emit(c, &norm, piece, &mut text);
            self.masked |= masked;
            pos.bytes += c.len_utf8();
            pos.chars += 1;
            pos.out += piece.len();
            // A cut must leave rustrict's output aligned with the text (see `Restorer::drifted`).
            if !masked && !self.restorer.drifted && !c.is_alphabetic() && norm == [c] {
                self.cuts.push(*pos);
            }
        }
        if end {
            text.extend(out[pos.out.min(out.len())..].iter().map(|&c| unmask(c)));
        }
        self.released_input += pos.bytes - released_before;
        if self.restorer.masked_any {
            self.acted = true;
            if self.filter.cfg.mode == FilterMode::Block {
                self.blocked = true;
                return self.chunk(String::new());
            }
        }
        self.chunk(text)
    }

    /// Drops the window up to the last possible cut that has become safe (see [`StreamFilter`]).
    fn cut(&mut self, taken: &[usize]) {
        let released = self.released.chars;
        let safe = |cut: &Position| taken.get(cut.out).is_some_and(|&t| t <= released);
        let Some(i) = self.cuts.iter().rposition(safe) else {
            return;
        };
        let cut = self.cuts[i];
        self.cuts.drain(..=i);
        for later in &mut self.cuts {
            *later -= cut;
        }
        self.released -= cut;
        self.window.drain(..cut.bytes);
    }

    fn chunk(&self, text: String) -> StreamChunk {
        StreamChunk {
            text,
            acted: self.acted,
            blocked: self.blocked,
            masked: self.masked,
            released_input: self.released_input,
        }
    }
}

/// Maps rustrict's output back onto the original characters, one at a time.
#[derive(Debug, Default)]
struct Restorer {
    /// The last visible character was masked: marks and invisible characters after it go too.
    prev_masked: bool,
    /// Anything was masked so far.
    masked_any: bool,
    /// rustrict's output stopped lining up with the per-character normalisation, which only
    /// happens when normalising composes characters across boundaries (non-NFC input such as
    /// decomposed Bengali vowels). Masks may then land a character off, and stream cuts stop.
    drifted: bool,
}

impl Restorer {
    /// Appends what `c` becomes, given its normalisation `norm` and the part of rustrict's
    /// output that corresponds to it: `c` itself, or one `*` if rustrict masked it. Returns
    /// whether it was masked.
    fn emit(&mut self, c: char, norm: &[char], piece: &[char], dst: &mut String) -> bool {
        if piece.contains(&MASK) {
            dst.push('*');
            self.prev_masked = true;
            self.masked_any = true;
            return true;
        }
        let aligned = piece.len() == norm.len() && piece.iter().zip(norm).all(|(p, n)| p == n);
        self.drifted |= !aligned;
        if norm.is_empty() {
            if !self.prev_masked {
                dst.push(c);
            }
        } else {
            dst.push(c);
            self.prev_masked = false;
        }
        false
    }
}

fn unmask(c: char) -> char {
    if c == MASK {
        '*'
    } else {
        c
    }
}

/// What rustrict's input normalisation (decompose, drop accents and invisible characters,
/// recompose) makes of `c` on its own: usually `c`, nothing for a combining accent or a
/// zero-width character, the bare letter for an accented one.
fn normalized(c: char, norm: &mut Vec<char>) {
    norm.clear();
    if c.is_ascii() {
        // Fast path, pinned by a test.
        norm.push(c);
    } else {
        let mut censor = Censor::new(std::iter::once(c));
        // Nothing is at or above an empty threshold, so this only normalises.
        censor.with_censor_threshold(Type::NONE);
        norm.extend(censor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn censor(threshold: Severity, allowlist: bool) -> ContentFilter {
        ContentFilter::new(FilterConfig {
            mode: FilterMode::Censor,
            threshold,
            allowlist,
        })
    }

    fn all_configs() -> impl Iterator<Item = FilterConfig> {
        [FilterMode::Censor, FilterMode::Block, FilterMode::Off]
            .into_iter()
            .flat_map(|mode| {
                [Severity::Mild, Severity::Moderate, Severity::Severe]
                    .into_iter()
                    .flat_map(move |threshold| {
                        [false, true].map(|allowlist| FilterConfig {
                            mode,
                            threshold,
                            allowlist,
                        })
                    })
            })
    }

    /// Tricky inputs for the stream: masks across spaces and punctuation, evasive spellings,
    /// allowlisted phrases, accents, invisible characters, non-NFC text, emoji, CJK.
    const SAMPLES: &[&str] = &[
        "this is fucking great shit",
        "f u c k this, and f.u.c.k that",
        "sh1t happens, what a b1tch",
        "fuuuuuck   you\n\nasshole!!",
        "A great tit and a blue tit on a feeder, not great tits.",
        "a pussy cat, a cocker spaniel and a cock crowing",
        "Scunthorpe, a cockatoo and a garden hoe",
        "crème brûlée in a café, fuck",
        "f\u{301}u\u{301}c\u{301}k\u{301} you and e\u{301}cole",
        "f\u{200b}uck and a\u{200b}ss and wo\u{200d}rd",
        "f̸̪͇͘ų̷̖̽c̸͙̎̚k̶͚̗͛ you",
        "ｆｕｃｋ you, ＳＨＩＴ",
        "🖕 you 👨‍👩‍👧 family photo 🐔",
        "猫がマットの上に座っている。fuck 你好",
        "\u{9c7}\u{9be} bengali, shit \u{9c7}\u{9be} again fuck",
        "**** f*** sh*t",
        "a naked woman having sex with a dildo",
        "nigga please, you stupid faggot",
        "Dick's Sporting Goods: Moby Dick",
        "",
        " ",
        "ok",
    ];

    /// Deterministic xorshift, to keep the crate free of test-only dependencies.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Splits `text` into random "tokens" of 0 to 5 characters.
    fn split<'a>(text: &'a str, rng: &mut Rng) -> Vec<&'a str> {
        let bounds: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let mut pieces = Vec::new();
        let mut at = 0;
        while at + 1 < bounds.len() {
            let next = (at + rng.below(6)).min(bounds.len() - 1);
            pieces.push(&text[bounds[at]..bounds[next]]);
            at = next;
        }
        pieces
    }

    /// Streams `pieces`, checking as it goes that each release extends a prefix of `expected`.
    fn stream_all(filter: &ContentFilter, pieces: &[&str], expected: &FilterOutcome) {
        let mut stream = filter.stream();
        let mut sent = String::new();
        let mut blocked = false;
        for piece in pieces {
            let chunk = stream.push(piece);
            sent.push_str(&chunk.text);
            blocked |= chunk.blocked;
            if !expected.blocked {
                assert!(expected.text.starts_with(&sent), "{sent:?} {expected:?}");
            }
        }
        let last = stream.finish();
        sent.push_str(&last.text);
        assert_eq!(last.blocked || blocked, expected.blocked, "{pieces:?}");
        if expected.blocked {
            assert!(last.blocked && last.text.is_empty());
        } else {
            assert_eq!(sent, expected.text, "{:?} {pieces:?}", filter.config());
            assert_eq!(last.acted, expected.acted);
        }
    }

    #[test]
    fn stream_releases_exactly_what_check_produces() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for cfg in all_configs() {
            let filter = ContentFilter::new(cfg);
            for text in SAMPLES {
                let expected = filter.check(text);
                stream_all(&filter, &[text], &expected);
                let chars: Vec<String> = text.chars().map(String::from).collect();
                stream_all(
                    &filter,
                    &chars.iter().map(String::as_str).collect::<Vec<_>>(),
                    &expected,
                );
                for _ in 0..40 {
                    stream_all(&filter, &split(text, &mut rng), &expected);
                }
            }
        }
    }

    #[test]
    fn stream_matches_check_on_the_labelled_set() {
        let mut rng = Rng(42);
        let filter = ContentFilter::new(FilterConfig::default());
        let all = include_str!("../data/filter_labelled.jsonl");
        let texts: Vec<String> = all
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        // Joined too, so that matches span caption boundaries and windows get cut.
        let joined = texts.join(" ");
        for text in texts.iter().chain([&joined]) {
            let expected = filter.check(text);
            for _ in 0..5 {
                stream_all(&filter, &split(text, &mut rng), &expected);
            }
        }
    }

    /// Random mixes of trigger words, allowlisted phrases and separators: matches and false
    /// positives that span token and window boundaries (this is what catches an unsafe cut).
    #[test]
    fn stream_matches_check_on_word_salad() {
        const WORDS: &[&str] = &[
            "a",
            "great",
            "tit",
            "tits",
            "blue",
            "cock",
            "crowing",
            "hen",
            "hoe",
            "with",
            "garden",
            "f",
            "u",
            "c",
            "k",
            "fuck",
            "sh1t",
            "ass",
            "a$$",
            "pussy",
            "cat",
            "dick",
            "moby",
            "cocker",
            "breast",
            "chicken",
            "sex",
            "middlesex",
            "café",
            "e\u{301}",
            "\u{200b}",
            "ｆｕｃｋ",
            "f*ck",
            "**",
            "kill",
            "yourself",
            "hell",
            "grea",
            "tt",
            "t.i.t",
            "🖕",
        ];
        const SEPARATORS: &[&str] = &[" ", " ", " ", "", ", ", ". ", "-", "\n"];
        let mut rng = Rng(0xDEAD_BEEF);
        let configs: Vec<FilterConfig> = all_configs().collect();
        for _ in 0..1500 {
            let mut text = String::new();
            for _ in 0..=rng.below(20) {
                text.push_str(WORDS[rng.below(WORDS.len())]);
                text.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
            }
            let filter = ContentFilter::new(configs[rng.below(configs.len())].clone());
            let expected = filter.check(&text);
            for _ in 0..3 {
                stream_all(&filter, &split(&text, &mut rng), &expected);
            }
        }
    }

    #[test]
    fn stream_window_stays_a_few_words_long() {
        let filter = ContentFilter::new(FilterConfig::default());
        let mut stream = filter.stream();
        let text = "a man riding a bike, this is fucking great shit. ".repeat(200);
        let mut sent = String::new();
        for piece in split(&text, &mut Rng(7)) {
            sent.push_str(&stream.push(piece).text);
            assert!(stream.window.len() < 64, "{:?}", stream.window);
        }
        sent.push_str(&stream.finish().text);
        assert_eq!(sent, filter.check(&text).text);
    }

    #[test]
    fn stream_never_sends_part_of_a_masked_word() {
        let mut stream = ContentFilter::new(FilterConfig::default()).stream();
        let mut sent = String::new();
        for piece in [
            "this", " is", " f", "u", "ck", "ing", " great", " sh", "it", "!",
        ] {
            sent.push_str(&stream.push(piece).text);
            assert!(!sent.contains("fu") && !sent.contains("sh"), "{sent:?}");
        }
        let last = stream.finish();
        sent.push_str(&last.text);
        assert_eq!(sent, "this is f****** great s***!");
        assert!(last.acted && !last.blocked);
    }

    #[test]
    fn stream_block_stops_releasing() {
        let cfg = FilterConfig {
            mode: FilterMode::Block,
            ..FilterConfig::default()
        };
        let mut stream = ContentFilter::new(cfg).stream();
        let mut sent = String::new();
        let mut blocked = false;
        for piece in ["a", " man", " saying", " fuck", " you", " to", " a", " dog"] {
            let chunk = stream.push(piece);
            sent.push_str(&chunk.text);
            if blocked {
                assert!(chunk.blocked && chunk.text.is_empty());
            }
            blocked |= chunk.blocked;
        }
        assert!(blocked, "blocked before the end of generation");
        assert!(!sent.contains('f'), "{sent:?}");
        let end = stream.finish();
        assert!(end.text.is_empty() && end.acted && end.blocked, "{end:?}");
    }

    #[test]
    fn default_passes_benign_captions() {
        let filter = ContentFilter::new(FilterConfig::default());
        for text in [
            "A great tit perched on a twig.",
            "a blue tit on a bird feeder",
            "A pussy cat sleeping on a sofa.",
            "A cocker spaniel puppy on the grass.",
            "A cock and a hen pecking at grain.",
            "A bowl of shiitake mushrooms.",
            "chicken breast on a grill",
            "A man with a hoe in the garden.",
            "A copy of Moby Dick on a table.",
            "A sign for Scunthorpe.",
            "a cockatoo on a perch",
            "A gay couple holding hands.",
            "A pair of tennis balls on a court.",
            "a bloody knife on a cutting board",
            "Crème brûlée on a white plate in a café.",
        ] {
            let outcome = filter.check(text);
            assert_eq!((outcome.text.as_str(), outcome.acted), (text, false));
        }
    }

    #[test]
    fn default_masks_offensive_outputs() {
        let filter = ContentFilter::new(FilterConfig::default());
        for (text, masked) in [
            ("this is fucking great shit", "this is f****** great s***"),
            ("f*ck you", "f*******"),
            ("sh1t happens", "s*** happens"),
            ("her tits are out", "her t*** are out"),
            ("she has great tits", "she has great*****"),
            ("his cock is huge", "his c*** is huge"),
            ("you dirty hoe", "you dirty h**"),
            ("a whore on the street", "a ***** on the street"),
            ("a café, fuck", "a café, f***"),
            ("f\u{301}uck", "f\u{301}***"),
        ] {
            let outcome = filter.check(text);
            assert_eq!(
                (outcome.text.as_str(), outcome.acted),
                (masked, true),
                "{text}"
            );
            assert!(!outcome.blocked);
        }
    }

    #[test]
    fn thresholds() {
        let acts = |threshold, text| censor(threshold, true).check(text).acted;
        assert!(acts(Severity::Mild, "what the hell"));
        assert!(!acts(Severity::Moderate, "what the hell"));
        assert!(acts(Severity::Moderate, "fuck"));
        assert!(!acts(Severity::Severe, "fuck"));
        assert!(acts(Severity::Severe, "you stupid faggot"));
    }

    #[test]
    fn allowlist_only_applies_when_enabled() {
        let text = "A great tit perched on a twig.";
        assert!(censor(Severity::Moderate, false).check(text).acted);
        assert!(!censor(Severity::Moderate, true).check(text).acted);
    }

    #[test]
    fn block_and_off_modes() {
        let filter = |mode| {
            ContentFilter::new(FilterConfig {
                mode,
                ..FilterConfig::default()
            })
        };
        let blocked = filter(FilterMode::Block).check("what the fuck is that");
        assert_eq!(
            (blocked.text.as_str(), blocked.acted, blocked.blocked),
            ("", true, true)
        );
        let benign = filter(FilterMode::Block).check("a cat on a mat");
        assert_eq!(
            (benign.text.as_str(), benign.acted, benign.blocked),
            ("a cat on a mat", false, false)
        );
        let off = filter(FilterMode::Off).check("what the fuck is that");
        assert_eq!(
            (off.text.as_str(), off.acted),
            ("what the fuck is that", false)
        );
    }

    /// The module treats "masked something" as "inappropriate at the threshold"; pin that this
    /// is rustrict's own analysis, minus the self-censoring heuristic.
    #[test]
    fn acting_agrees_with_rustrict_analysis() {
        let all = include_str!("../data/filter_labelled.jsonl");
        for threshold in [Severity::Mild, Severity::Moderate, Severity::Severe] {
            for line in all.lines().chain(SAMPLES.iter().copied()) {
                let text = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["text"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| line.to_owned());
                let analysis = Censor::from_str(&text)
                    .with_ignore_self_censoring(true)
                    .analyze();
                assert_eq!(
                    censor(threshold, false).check(&text).acted,
                    analysis.is(threshold.threshold()),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn ascii_normalises_to_itself() {
        let mut norm = Vec::new();
        for c in '\0'..='\x7f' {
            let slow: Vec<char> = {
                let mut censor = Censor::new(std::iter::once(c));
                censor.with_censor_threshold(Type::NONE);
                censor.collect()
            };
            normalized(c, &mut norm);
            assert_eq!(norm, slow, "{c:?}");
        }
    }

    #[test]
    fn config_names_and_thread_safety() {
        assert_eq!(
            serde_json::to_string(&FilterMode::Censor).unwrap(),
            "\"censor\""
        );
        assert_eq!(
            serde_json::to_string(&Severity::Moderate).unwrap(),
            "\"moderate\""
        );
        let cfg: FilterConfig = serde_json::from_str(r#"{"mode": "block"}"#).unwrap();
        assert_eq!(cfg.mode, FilterMode::Block);
        assert_eq!(cfg.threshold, FilterConfig::default().threshold);
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ContentFilter>();
        send_sync::<StreamFilter>();
    }
}
