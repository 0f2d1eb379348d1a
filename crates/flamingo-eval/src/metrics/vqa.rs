//! The official VQA accuracy (`vqaEval.py` of the VQA API, as vendored by OpenFlamingo's
//! `eval/vqa_metric.py`), quirks included:
//! - answers are only normalised when the humans' answers are not all identical;
//! - the period-stripping regex is called with `re.UNICODE` as its *count* argument, so at most
//!   32 periods are removed;
//! - accuracy = mean over the 10 leave-one-out subsets of min(#matches / 3, 1).

use crate::pytext::{py_split, py_strip};

#[rustfmt::skip]
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"), ("arent", "aren't"), ("cant", "can't"), ("couldve", "could've"),
    ("couldnt", "couldn't"), ("couldn'tve", "couldn't've"), ("couldnt've", "couldn't've"),
    ("didnt", "didn't"), ("doesnt", "doesn't"), ("dont", "don't"), ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"), ("hadn'tve", "hadn't've"), ("hasnt", "hasn't"),
    ("havent", "haven't"), ("hed", "he'd"), ("hed've", "he'd've"), ("he'dve", "he'd've"),
    ("hes", "he's"), ("howd", "how'd"), ("howll", "how'll"), ("hows", "how's"),
    ("Id've", "I'd've"), ("I'dve", "I'd've"), ("Im", "I'm"), ("Ive", "I've"), ("isnt", "isn't"),
    ("itd", "it'd"), ("itd've", "it'd've"), ("it'dve", "it'd've"), ("itll", "it'll"),
    ("let's", "let's"), ("maam", "ma'am"), ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"), ("mightn'tve", "mightn't've"), ("mightve", "might've"),
    ("mustnt", "mustn't"), ("mustve", "must've"), ("neednt", "needn't"), ("notve", "not've"),
    ("oclock", "o'clock"), ("oughtnt", "oughtn't"), ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"), ("'ow'sat", "'ow's'at"), ("shant", "shan't"),
    ("shed've", "she'd've"), ("she'dve", "she'd've"), ("she's", "she's"),
    ("shouldve", "should've"), ("shouldnt", "shouldn't"), ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"), ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"), ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"), ("somebodys", "somebody's"), ("someoned", "someone'd"),
    ("someoned've", "someone'd've"), ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"), ("someones", "someone's"), ("somethingd", "something'd"),
    ("somethingd've", "something'd've"), ("something'dve", "something'd've"),
    ("somethingll", "something'll"), ("thats", "that's"), ("thered", "there'd"),
    ("thered've", "there'd've"), ("there'dve", "there'd've"), ("therere", "there're"),
    ("theres", "there's"), ("theyd", "they'd"), ("theyd've", "they'd've"),
    ("they'dve", "they'd've"), ("theyll", "they'll"), ("theyre", "they're"),
    ("theyve", "they've"), ("twas", "'twas"), ("wasnt", "wasn't"), ("wed've", "we'd've"),
    ("we'dve", "we'd've"), ("weve", "we've"), ("werent", "weren't"), ("whatll", "what'll"),
    ("whatre", "what're"), ("whats", "what's"), ("whatve", "what've"), ("whens", "when's"),
    ("whered", "where'd"), ("wheres", "where's"), ("whereve", "where've"), ("whod", "who'd"),
    ("whod've", "who'd've"), ("who'dve", "who'd've"), ("wholl", "who'll"), ("whos", "who's"),
    ("whove", "who've"), ("whyll", "why'll"), ("whyre", "why're"), ("whys", "why's"),
    ("wont", "won't"), ("wouldve", "would've"), ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"), ("wouldn'tve", "wouldn't've"), ("yall", "y'all"),
    ("yall'll", "y'all'll"), ("y'allll", "y'all'll"), ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"), ("y'all'dve", "y'all'd've"), ("youd", "you'd"),
    ("youd've", "you'd've"), ("you'dve", "you'd've"), ("youll", "you'll"),
    ("youre", "you're"), ("youve", "you've"),
];

#[rustfmt::skip]
const MANUAL_MAP: &[(&str, &str)] = &[
    ("none", "0"), ("zero", "0"), ("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"),
    ("five", "5"), ("six", "6"), ("seven", "7"), ("eight", "8"), ("nine", "9"), ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// `re.sub(pattern, repl, string, re.UNICODE)`: the flag lands in `count` (re.UNICODE == 32).
const PERIOD_STRIP_MAX: usize = 32;

/// Python's `\d` (Unicode decimal digits); ASCII plus the common scripts.
fn is_py_digit(c: char) -> bool {
    c.is_ascii_digit() || is_nd(c)
}

fn is_nd(c: char) -> bool {
    const ZEROS: [u32; 17] = [
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0xFF10,
    ];
    let u = c as u32;
    ZEROS.iter().any(|&z| (z..z + 10).contains(&u))
}

/// `re.search(r"(\d)(\,)(\d)", s)`.
fn has_digit_comma_digit(s: &str) -> bool {
    let cs: Vec<char> = s.chars().collect();
    cs.windows(3)
        .any(|w| is_py_digit(w[0]) && w[1] == ',' && is_py_digit(w[2]))
}

/// `processPunctuation`. The keep-or-space decision looks at the *original* text for every
/// punctuation mark, as the Python does.
pub fn process_punctuation(in_text: &str) -> String {
    let comma_num = has_digit_comma_digit(in_text);
    let mut out = in_text.to_string();
    for p in PUNCT {
        let spaced_after = in_text.contains(&format!("{p} "));
        let spaced_before = in_text.contains(&format!(" {p}"));
        if spaced_after || spaced_before || comma_num {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    strip_periods(&out)
}

/// `(?!<=\d)(\.)(?!\d)`: the first group is a (vacuous) lookahead, so this removes every '.'
/// not followed by a digit, at most `PERIOD_STRIP_MAX` times.
fn strip_periods(s: &str) -> String {
    let cs: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut removed = 0;
    for (i, &c) in cs.iter().enumerate() {
        let next_is_digit = cs.get(i + 1).is_some_and(|&n| is_py_digit(n));
        if c == '.' && !next_is_digit && removed < PERIOD_STRIP_MAX {
            removed += 1;
            continue;
        }
        out.push(c);
    }
    out
}

/// `processDigitArticle`: lower-case, number words -> digits, drop articles, fix contractions.
pub fn process_digit_article(in_text: &str) -> String {
    let lower = in_text.to_lowercase();
    // vqaEval.py: `outText.lower().split()` (Python's whitespace).
    let words: Vec<&str> = py_split(&lower)
        .map(|w| {
            MANUAL_MAP
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .collect();
    words.join(" ")
}

/// The full normalisation applied to answers (`processPunctuation` then `processDigitArticle`).
pub fn normalize_answer(s: &str) -> String {
    process_digit_article(&process_punctuation(s))
}

/// `.replace('\n', ' ').replace('\t', ' ').strip()` with Python's `strip`.
fn clean(s: &str) -> String {
    py_strip(&s.replace(['\n', '\t'], " ")).to_string()
}

/// Accuracy of one prediction against the human answers (normally 10), in [0, 1].
pub fn vqa_accuracy<S: AsRef<str>>(prediction: &str, gt_answers: &[S]) -> f64 {
    if gt_answers.is_empty() {
        return 0.0;
    }
    let mut gts: Vec<String> = gt_answers.iter().map(|a| clean(a.as_ref())).collect();
    let mut res = clean(prediction);
    let first = &gts[0];
    if gts.iter().any(|g| g != first) {
        gts = gts.iter().map(|g| normalize_answer(g)).collect();
        res = normalize_answer(&res);
    }
    let total: f64 = (0..gts.len())
        .map(|i| {
            let matches = gts
                .iter()
                .enumerate()
                .filter(|(j, g)| *j != i && **g == res)
                .count();
            (matches as f64 / 3.0).min(1.0)
        })
        .sum();
    total / gts.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_examples() {
        assert_eq!(normalize_answer("Two dogs."), "2 dogs");
        assert_eq!(normalize_answer("the cat"), "cat");
        assert_eq!(normalize_answer("dont"), "don't");
        assert_eq!(normalize_answer("1,000"), "1000");
        assert_eq!(normalize_answer("red,blue"), "red blue");
        assert_eq!(normalize_answer("3.5"), "3.5");
        assert_eq!(normalize_answer("yes!"), "yes");
    }

    #[test]
    fn leave_one_out_accuracy() {
        let gts = ["2", "2", "2", "two", "3", "3", "2", "4", "2", "2"];
        // After normalisation seven answers are "2": each subset has >= 3 matches.
        assert!((vqa_accuracy("2", &gts) - 1.0).abs() < 1e-12);
        // "3" matches 2 of 9 (or 1 of 9 when one "3" is left out).
        let expect = (8.0 * (2.0 / 3.0) + 2.0 * (1.0 / 3.0)) / 10.0;
        assert!((vqa_accuracy("3", &gts) - expect).abs() < 1e-12);
    }

    #[test]
    fn identical_answers_skip_normalisation() {
        let gts = ["yes"; 10];
        assert_eq!(vqa_accuracy("yes", &gts), 1.0);
        // The official code does not lower-case here: "Yes" scores 0.
        assert_eq!(vqa_accuracy("Yes", &gts), 0.0);
        assert_eq!(vqa_accuracy(" yes\n", &gts), 1.0);
        // Python's strip() removes the information separators too.
        assert_eq!(vqa_accuracy("\u{1f}yes\u{1c}", &gts), 1.0);
        // ... and split() separates words at them.
        assert_eq!(normalize_answer("a\u{1d}dog"), "dog");
    }

    #[test]
    fn at_most_32_periods_removed() {
        let s = ".".repeat(40);
        assert_eq!(strip_periods(&s), ".".repeat(8));
    }
}
