//! The rule table of Stanford CoreNLP 3.4.1 `PTBLexer.flex` (the jar pycocoevalcap ships),
//! transcribed in file order with the options pycocoevalcap runs it with
//! (`-preserveLines` = `tokenizeNLs`; defaults otherwise: latex quotes, `-LRB-` style brackets,
//! no americanize, no `/`/`*` escaping, traditional (not strict) treebank3 state).
//! Character classes follow Java: `[:letter:]` ~ `char::is_alphabetic`, `[:digit:]` ~ decimal
//! digits, `[:uppercase:]` ~ `char::is_uppercase` (identical for ASCII, approximate elsewhere).

use super::defs::*;
use super::pattern::{alt, cls, lit, lits, opt, plus, rep, seq, Pat};

/// What a rule does with its match (the Java action, minus the bookkeeping for invertibility).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// The matched text.
    Text,
    /// The matched text without soft hyphens (U+00AD).
    TextNoShy,
    /// Emit all but the last `n` chars; those are scanned again (`yypushback(n)`).
    Pushback(usize),
    /// A fixed replacement.
    Fixed(&'static str),
    /// `handleQuotes(text, probablyLeft)` with latex quotes.
    Quotes(bool),
    /// Spaces become U+00A0 (SGML tags, fractions).
    NbspSpaces,
    /// `&amp;` -> `&`.
    Amp,
    /// Currency symbols mapped to `$`, `#`, `cents`.
    Currency,
    /// Composed fractions spelled out.
    Fraction,
    /// Phone numbers: spaces -> U+00A0, parentheses -> -LRB-/-RRB-.
    Phone,
    /// Smileys: parentheses -> -LRB-/-RRB-.
    Parens,
    /// `--` when 3 or 4 hyphens, else as is.
    Hyphens,
    /// An abbreviation that ends a sentence: emit it with its period and scan the period again.
    AbbrevEnd,
    /// The acronym-before-sentence-start rule: one letter + period splits, longer duplicates the period.
    Acronym,
    /// A newline token (`-preserveLines`).
    Newline,
    /// Whitespace and untokenizable characters: nothing.
    Skip,
}

pub(crate) struct Rule {
    pub(crate) pat: Pat,
    /// JFlex trailing context (`pat/ctx`): must match after `pat`, counts for the longest match,
    /// is not part of the token.
    pub(crate) ctx: Option<Pat>,
    pub(crate) action: Action,
}

fn r(pat: Pat, action: Action) -> Rule {
    Rule {
        pat,
        ctx: None,
        action,
    }
}
fn rc(pat: Pat, ctx: Pat, action: Action) -> Rule {
    Rule {
        pat,
        ctx: Some(ctx),
        action,
    }
}
/// All rules, in file order (the order breaks ties between equally long matches).
pub(crate) fn rules() -> Vec<Rule> {
    use Action::*;
    let any = || cls(|_| true);
    vec![
        r(seq(vec![lit("c"), lit("++")]), Text),
        r(seq(vec![lits(&["c", "f"]), cls(|c| c == '#')]), Text),
        r(lit("cannot"), Pushback(3)),
        r(lit("'twas"), Pushback(3)),
        r(lit("'tis"), Pushback(2)),
        r(
            lits(&["gonna", "gotta", "lemme", "gimme", "wanna"]),
            Pushback(2),
        ),
        r(sgml(), NbspSpaces),
        r(
            alt(vec![
                seq(vec![
                    ch('&'),
                    lits(&["MD", "mdash", "ndash"]),
                    cls(|c| c == ';'),
                ]),
                cls(|c| "\u{0096}\u{0097}\u{2013}\u{2014}\u{2015}".contains(c)),
            ]),
            Fixed("--"),
        ),
        r(lit("&amp;"), Amp),
        r(
            seq(vec![
                ch('&'),
                alt(vec![
                    lits(&["HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq"]),
                    seq(vec![cls(|c| c == '#'), plus(cls(is_ascii_digit))]),
                ]),
                cls(|c| c == ';'),
            ]),
            Text,
        ),
        rc(word(), redaux(), TextNoShy),
        rc(sword(), sredaux(), TextNoShy),
        r(word(), TextNoShy),
        r(apoword(), Text),
        rc(seq(vec![lit("y"), apos()]), cls(is_letter), Text),
        r(fullurl(), Text),
        r(likelyurl(), Text),
        r(email(), Text),
        r(twitter(), Text),
        rc(redaux(), cls(|c| !c.is_ascii_alphabetic()), Quotes(false)),
        rc(sredaux(), cls(|c| !c.is_ascii_alphabetic()), Quotes(false)),
        r(date(), Text),
        r(number(), TextNoShy),
        r(subsupnum(), Text),
        r(frac(), NbspSpaces),
        r(
            cls(|c| {
                matches!(
                    c,
                    '\u{00BC}' | '\u{00BD}' | '\u{00BE}' | '\u{2153}'..='\u{215E}'
                )
            }),
            Fraction,
        ),
        r(tbspec(), Amp),
        r(thing3(), Text),
        r(dolsign(), Text),
        r(cls(dolsign2), Currency),
        rc(
            seq(vec![acro(0), ch('.')]),
            seq(vec![plus(spacenl()), acronym_followers(), spacenl()]),
            Acronym,
        ),
        rc(abbrev3(), seq(vec![opt(spacenl()), digit()]), Text),
        rc(
            seq(vec![
                alt(vec![
                    seq(vec![lit("pt"), cls(|c| "eyEY".contains(c))]),
                    lit("co"),
                ]),
                ch('.'),
            ]),
            seq(vec![cls(is_space), lits(&["ltd", "lim"])]),
            Text,
        ),
        rc(
            abbrev1(),
            seq(vec![
                spacenl(),
                alt(vec![spacenl(), cls(char::is_uppercase), sgml()]),
            ]),
            AbbrevEnd,
        ),
        rc(abbrev1(), seq(vec![any(), any()]), Text),
        r(abbrev1(), AbbrevEnd),
        r(seq(vec![abbrev4(), ch('.')]), Text),
        rc(abbrev4(), cls(is_space), Text),
        rc(acro(0), spacenl(), Text),
        rc(
            seq(vec![apos(), cls(is_ascii_digit), cls(is_ascii_digit)]),
            spacenl(),
            Text,
        ),
        rc(
            filename(),
            alt(vec![spacenl(), cls(|c| ".?!,".contains(c))]),
            Text,
        ),
        rc(seq(vec![word(), ch('.')]), cls(is_insentp), TextNoShy),
        r(phone(), Phone),
        rc(
            dblquot(),
            cls(|c| c.is_ascii_alphanumeric() || c == '$'),
            Quotes(true),
        ),
        r(dblquot(), Quotes(false)),
        r(cls(|c| c == '\u{7f}'), Skip),
        r(alt(vec![cls(|c| c == '<'), lit("&lt;")]), Fixed("<")),
        r(alt(vec![cls(|c| c == '>'), lit("&gt;")]), Fixed(">")),
        rc(smiley(), cls(|c| !c.is_ascii_alphanumeric()), Parens),
        r(asian_smiley(), Parens),
        r(cls(|c| c == '{'), Fixed("-LCB-")),
        r(cls(|c| c == '}'), Fixed("-RCB-")),
        r(cls(|c| c == '['), Fixed("-LSB-")),
        r(cls(|c| c == ']'), Fixed("-RSB-")),
        r(cls(|c| c == '('), Fixed("-LRB-")),
        r(cls(|c| c == ')'), Fixed("-RRB-")),
        r(plus(ch('-')), Hyphens),
        r(
            alt(vec![
                rep(ch('.'), 3, 5),
                seq(vec![
                    rep(
                        seq(vec![ch('.'), cls(|c| c == ' ' || c == '\u{00A0}')]),
                        2,
                        4,
                    ),
                    ch('.'),
                ]),
                cls(|c| c == '\u{0085}' || c == '\u{2026}'),
            ]),
            Fixed("..."),
        ),
        r(
            alt(vec![
                plus(cls(|c| c == '@')),
                plus(cls(|c| c == '#')),
                plus(cls(|c| c == '_')),
            ]),
            Text,
        ),
        r(
            alt(vec![plus(cls(|c| c == '*')), rep(lit("\\*"), 1, 3)]),
            Text,
        ),
        r(cls(is_insentp), Text),
        r(plus(cls(|c| c == '?' || c == '!')), Text),
        r(
            cls(|c| {
                matches!(
                    c,
                    '.' | '\u{00A1}'
                        | '\u{00BF}'
                        | '\u{037E}'
                        | '\u{0589}'
                        | '\u{061F}'
                        | '\u{06D4}'
                        | '\u{0700}'..='\u{0702}' | '\u{07FA}' | '\u{3002}'
                )
            }),
            Text,
        ),
        r(cls(|c| c == '='), Text),
        r(cls(|c| c == '/'), Text),
        rc(seq(vec![hthing(), ch('.')]), cls(is_insentp), TextNoShy),
        r(hthing(), TextNoShy),
        rc(seq(vec![thing(), ch('.')]), cls(is_insentp), Text),
        r(thing(), Text),
        rc(seq(vec![thinga(), ch('.')]), cls(is_insentp), Amp),
        r(thinga(), Amp),
        rc(
            ch('\''),
            seq(vec![
                cls(is_alpha_ascii),
                cls(|c| !" \t\n\r\u{00A0}".contains(c)),
            ]),
            Quotes(true),
        ),
        r(redaux(), Quotes(false)),
        r(sredaux(), Quotes(false)),
        r(quotes(), Quotes(false)),
        r(lits(&["<<", ">>"]), Text),
        r(cls(miscsymbol), Text),
        r(
            alt(vec![
                cls(|c| c == '\0'),
                plus(cls(is_space)),
                cls(|c| "\u{200B}\u{200E}\u{200F}\u{FEFF}".contains(c)),
            ]),
            Skip,
        ),
        r(newline(), Newline),
        r(lit("&nbsp;"), Skip),
        // JFlex `.`: any char but '\n' (which NEWLINE already took); untokenizable -> deleted.
        r(cls(|c| c != '\n'), Skip),
    ]
}
