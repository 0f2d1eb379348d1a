//! PTB tokenization of captions exactly as pycocoevalcap does it: its `PTBTokenizer` joins all
//! captions with '\n', runs Stanford CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase` on
//! them, splits the output into lines again and drops punctuation tokens. The Java lexer is
//! re-implemented from its JFlex rules (`rules.rs`) so no JVM is needed.

mod defs;
mod pattern;
mod rules;

use std::sync::OnceLock;

use crate::pytext::is_py_space;
use rules::{Action, Rule};

/// pycocoevalcap `tokenizer/ptbtokenizer.py` PUNCTUATIONS, compared after lowercasing, exactly as
/// the Python does (so `-lrb-` etc. survive: the list holds the upper-case forms).
const PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// The rules plus, per rule, which ASCII chars can start a match (a cheap pre-filter).
struct Table {
    rules: Vec<Rule>,
    ascii_start: Vec<[bool; 128]>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let rules = rules::rules();
        let ascii_start = rules
            .iter()
            .map(|r| std::array::from_fn(|i| r.pat.can_start(char::from(i as u8))))
            .collect();
        Table { rules, ascii_start }
    })
}

/// Words the lexer splits (`cannot` -> `can not`, `gonna` -> `gon na`, ...).
const SPLIT_WORDS: [&str; 6] = ["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"];

/// Fast path for the common case, an ASCII-letter word followed by whitespace or the end:
/// no rule can make such a word anything but itself (rules that match longer need '.', '\'',
/// '-', digits... or, like ABBREV4/ACRO with a space as trailing context, emit the same text),
/// except the split words. Returns the word's end.
fn plain_word(chars: &[char], pos: usize) -> Option<usize> {
    let end = pos
        + chars[pos..]
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
    if end == pos {
        return None;
    }
    let delimited = chars
        .get(end)
        .is_none_or(|&c| matches!(c, ' ' | '\t' | '\n'));
    let word: String = chars[pos..end].iter().collect();
    (delimited && !SPLIT_WORDS.iter().any(|w| w.eq_ignore_ascii_case(&word))).then_some(end)
}

/// Tokenizes a batch of captions the way `PTBTokenizer.tokenize` does: one output string per
/// input caption, tokens separated by single spaces. The whole batch is lexed as one stream
/// because a few rules look across the line break at the next caption's first character.
pub fn tokenize_captions<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    let joined: String = captions
        .iter()
        .map(|c| c.as_ref().replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n");
    let lines = lex_lines(&joined);
    (0..captions.len())
        .map(|i| {
            lines
                .get(i)
                .map(|toks| {
                    // The Java prints the lower-cased tokens space-separated; Python then does
                    // `line.rstrip().split(' ')`, which also strips a trailing U+00A0 inside the
                    // last token (URLs may end with one).
                    let line = toks
                        .iter()
                        .map(|t| t.to_lowercase())
                        .collect::<Vec<_>>()
                        .join(" ");
                    line.trim_end_matches(is_py_space)
                        .split(' ')
                        .filter(|t| !PUNCTUATIONS.contains(t))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Lexes `text`, returning the tokens of each line (newline tokens split lines, as with
/// `-preserveLines`). Tokens are not lower-cased yet.
fn lex_lines(text: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = text.chars().collect();
    let table = table();
    let mut lines = vec![Vec::new()];
    let mut pos = 0;
    while pos < chars.len() {
        if let Some(end) = plain_word(&chars, pos) {
            lines
                .last_mut()
                .expect("lines is never empty")
                .push(chars[pos..end].iter().collect());
            pos = end;
            continue;
        }
        let (rule, tok_end) = best_rule(table, &chars, pos);
        let matched: String = chars[pos..tok_end].iter().collect();
        let (token, next) = apply(rule.action, &matched, pos, tok_end);
        match rule.action {
            Action::Newline => lines.push(Vec::new()),
            Action::Skip => {}
            _ => {
                // A lone soft hyphen lexes as a WORD that becomes empty; the Java prints nothing.
                if let Some(t) = token.filter(|t| !t.is_empty()) {
                    lines.last_mut().expect("lines is never empty").push(t);
                }
            }
        }
        pos = next;
    }
    lines
}

/// JFlex's choice: the longest match (trailing context included) wins, ties go to the earlier
/// rule. Returns the rule and where its token ends (trailing context excluded).
fn best_rule<'a>(table: &'a Table, chars: &[char], pos: usize) -> (&'a Rule, usize) {
    let mut best: Option<(&Rule, usize, usize)> = None;
    let c = chars[pos];
    for (rule, starts) in table.rules.iter().zip(&table.ascii_start) {
        let possible = if c.is_ascii() {
            starts[c as usize]
        } else {
            rule.pat.can_start(c)
        };
        if !possible {
            continue;
        }
        let ends = rule.pat.ends(chars, &[pos]);
        let cand = match &rule.ctx {
            None => ends.last().map(|&e| (e, e)),
            Some(ctx) => ends
                .iter()
                .filter_map(|&e1| ctx.longest(chars, e1).map(|e2| (e2, e1)))
                .max(),
        };
        if let Some((total, tok_end)) = cand {
            if best.is_none_or(|(_, t, _)| total > t) {
                best = Some((rule, total, tok_end));
            }
        }
    }
    // The last rule matches any char but '\n' and NEWLINE matches '\n', so something always matches.
    let (rule, _, tok_end) = best.expect("the catch-all rule always matches");
    (rule, tok_end)
}

/// Runs a rule's action: the token to emit (if any) and where scanning resumes.
fn apply(action: Action, matched: &str, pos: usize, end: usize) -> (Option<String>, usize) {
    let len = end - pos;
    match action {
        Action::Text => (Some(matched.to_string()), end),
        Action::TextNoShy => (Some(matched.replace('\u{00AD}', "")), end),
        Action::Pushback(n) => {
            let keep: String = matched.chars().take(len - n).collect();
            (Some(keep), end - n)
        }
        Action::Fixed(s) => (Some(s.to_string()), end),
        Action::Quotes(left) => (Some(latex_quotes(matched, left)), end),
        Action::NbspSpaces => (Some(matched.replace(' ', "\u{00A0}")), end),
        Action::Amp => (Some(replace_amp(matched)), end),
        Action::Currency => (Some(normalize_currency(matched)), end),
        Action::Fraction => (Some(normalize_fraction(matched)), end),
        Action::Phone => (
            Some(
                matched
                    .replace(' ', "\u{00A0}")
                    .replace('(', "-LRB-")
                    .replace(')', "-RRB-"),
            ),
            end,
        ),
        Action::Parens => (
            Some(matched.replace('(', "-LRB-").replace(')', "-RRB-")),
            end,
        ),
        Action::Hyphens => {
            if (3..=4).contains(&len) {
                (Some("--".to_string()), end)
            } else {
                (Some(matched.to_string()), end)
            }
        }
        // Token keeps its period; the period is scanned again as its own token.
        Action::AbbrevEnd => (Some(matched.to_string()), end - 1),
        Action::Acronym => {
            if len == 2 {
                (Some(matched.chars().take(1).collect()), end - 1)
            } else {
                (Some(matched.to_string()), end - 1)
            }
        }
        Action::Newline | Action::Skip => (None, end),
    }
}

fn latex_quotes(tok: &str, probably_left: bool) -> String {
    let (single, double) = if probably_left {
        ("`", "``")
    } else {
        ("'", "''")
    };
    let mut s = tok.replace("&apos;", single).replace('\'', single);
    s = s.replace('"', double).replace("&quot;", double);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{0091}' | '\u{2018}' | '\u{201B}' | '\u{2039}' => out.push('`'),
            '\u{0092}' | '\u{2019}' | '\u{203A}' => out.push('\''),
            '\u{0093}' | '\u{201C}' | '\u{00AB}' => out.push_str("``"),
            '\u{0094}' | '\u{201D}' | '\u{00BB}' => out.push_str("''"),
            _ => out.push(c),
        }
    }
    out
}

/// `(?i:&amp;)` -> `&`.
fn replace_amp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.to_ascii_lowercase().find("&amp;") {
        out.push_str(&rest[..i]);
        out.push('&');
        rest = &rest[i + 5..];
    }
    out.push_str(rest);
    out
}

fn normalize_currency(s: &str) -> String {
    s.replace('\u{00A2}', "cents")
        .replace('\u{00A3}', "#")
        .replace(['\u{0080}', '\u{00A4}', '\u{20A0}', '\u{20AC}'], "$")
}

fn normalize_fraction(s: &str) -> String {
    // The Java maps U+2154 to "2/3" and leaves the other composed fractions as they are.
    s.replace('\u{00BC}', "1/4")
        .replace('\u{00BD}', "1/2")
        .replace('\u{00BE}', "3/4")
        .replace('\u{2153}', "1/3")
        .replace('\u{2154}', "2/3")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> String {
        tokenize_captions(&[s]).remove(0)
    }

    // Expected strings below were produced by stanford-corenlp-3.4.1.jar through pycocoevalcap.
    #[test]
    fn plain_caption() {
        assert_eq!(
            tok("A man riding a wave on top of a surfboard."),
            "a man riding a wave on top of a surfboard"
        );
    }

    #[test]
    fn quotes_brackets_and_possessives() {
        assert_eq!(
            tok("A \"black-and-white\" photo of a dog's toy (red) [blue] {green}."),
            "a black-and-white photo of a dog 's toy -lrb- red -rrb- -lsb- blue -rsb- -lcb- green -rcb-"
        );
    }

    #[test]
    fn contractions_numbers_and_abbreviations() {
        assert_eq!(
            tok("Is it 3.5 or 1,000 dogs? I don't know & can't say -- maybe"),
            "is it 3.5 or 1,000 dogs i do n't know & ca n't say maybe"
        );
        assert_eq!(
            tok("The U.S. flag and Mr. Smith's cat at 5 p.m."),
            "the u.s. flag and mr. smith 's cat at 5 p.m."
        );
    }

    #[test]
    fn symbols() {
        assert_eq!(
            tok("and/or 50% $3 #1 @home *star* a+b=c <tag> ~tilde ^caret"),
            "and/or 50 % $ 3 # 1 @home * star * a + b = c <tag> ~ tilde ^ caret"
        );
    }

    #[test]
    fn lines_stay_aligned() {
        let out = tokenize_captions(&["Two dogs.", "", "A cat\non a mat!"]);
        assert_eq!(out, vec!["two dogs", "", "a cat on a mat"]);
    }
}
