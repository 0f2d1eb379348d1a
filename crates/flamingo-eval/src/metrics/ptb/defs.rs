//! The definitions section of CoreNLP 3.4.1 `PTBLexer.flex` (its named macros: WORD, THING,
//! APOS, ...), as patterns. `rules.rs` combines them into the rule table.

use super::pattern::{alt, cap, cls, lit, lits, opt, plus, rep, seq, star, Pat};

pub(super) fn ch(c: char) -> Pat {
    // Non-letter single chars are unaffected by caselessness, so a literal is fine; letters that
    // the flex writes as a class (`[A]bout`) use `upper_a` style helpers below instead.
    match c {
        '\'' => cls(|c| c == '\''),
        '.' => cls(|c| c == '.'),
        '-' => cls(|c| c == '-'),
        '&' => cls(|c| c == '&'),
        _ => unreachable!("ch() is only used for a few punctuation chars"),
    }
}

pub(super) fn is_letter(c: char) -> bool {
    c.is_alphabetic()
}
pub(super) fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    // Java Character.isDigit (Nd) for the common scripts.
    const ZEROS: [u32; 17] = [
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0xFF10,
    ];
    let u = c as u32;
    ZEROS.iter().any(|&z| (z..z + 10).contains(&u))
}
pub(super) fn is_letter_or_digit(c: char) -> bool {
    is_letter(c) || is_digit(c)
}
pub(super) fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    let u = c as u32;
    ranges.iter().any(|&(a, b)| (a..=b).contains(&u))
}
/// The extra code points the flex adds to `[:letter:]` in LETTER.
pub(super) fn is_letter_extra(c: char) -> bool {
    #[rustfmt::skip]
    const R: &[(u32, u32)] = &[
        (0x00AD, 0x00AD), (0x0237, 0x024F), (0x02C2, 0x02C5), (0x02D2, 0x02DF), (0x02E5, 0x02FF),
        (0x0300, 0x036F), (0x0370, 0x037D), (0x0384, 0x0385), (0x03CF, 0x03CF), (0x03F6, 0x03F6),
        (0x03FC, 0x03FF), (0x0483, 0x0487), (0x04CF, 0x04CF), (0x04F6, 0x04FF), (0x0510, 0x0525),
        (0x055A, 0x055F), (0x0591, 0x05BD), (0x05BF, 0x05BF), (0x05C1, 0x05C2), (0x05C4, 0x05C5),
        (0x05C7, 0x05C7), (0x0615, 0x061A), (0x063B, 0x063F), (0x064B, 0x065E), (0x0670, 0x0670),
        (0x06D6, 0x06EF), (0x06FA, 0x06FF), (0x070F, 0x070F), (0x0711, 0x0711), (0x0730, 0x074F),
        (0x0750, 0x077F), (0x07A6, 0x07B1), (0x07CA, 0x07F5), (0x07FA, 0x07FA), (0x0900, 0x0903),
        (0x093C, 0x093C), (0x093E, 0x094E), (0x0951, 0x0955), (0x0962, 0x0963), (0x0981, 0x0983),
        (0x09BC, 0x09C4), (0x09C7, 0x09C8), (0x09CB, 0x09CD), (0x09D7, 0x09D7), (0x09E2, 0x09E3),
        (0x0A01, 0x0A03), (0x0A3C, 0x0A3C), (0x0A3E, 0x0A4F), (0x0A81, 0x0A83), (0x0ABC, 0x0ACF),
        (0x0B82, 0x0B82), (0x0BBE, 0x0BC2), (0x0BC6, 0x0BC8), (0x0BCA, 0x0BCD), (0x0C01, 0x0C03),
        (0x0C3E, 0x0C56), (0x0D3E, 0x0D44), (0x0D46, 0x0D48), (0x0E30, 0x0E3A), (0x0E47, 0x0E4E),
        (0x0EB1, 0x0EBC), (0x0EC8, 0x0ECD),
    ];
    in_ranges(c, R)
}
pub(super) fn is_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{00A0}' | '\u{2000}'..='\u{200A}' | '\u{3000}'
    )
}
pub(super) fn is_newline_char(c: char) -> bool {
    "\r\n\u{2028}\u{2029}\u{000B}\u{000C}\u{0085}".contains(c)
}
pub(super) fn is_apos_char(c: char) -> bool {
    "'\u{0092}\u{2019}".contains(c)
}
pub(super) fn is_apos_etc_char(c: char) -> bool {
    is_apos_char(c) || "`\u{0091}\u{2018}\u{201B}".contains(c)
}
pub(super) fn is_alnum_ascii(c: char) -> bool {
    c.is_ascii_alphanumeric()
}
pub(super) fn is_alpha_ascii(c: char) -> bool {
    c.is_ascii_alphabetic()
}
pub(super) fn is_ascii_digit(c: char) -> bool {
    c.is_ascii_digit()
}
pub(super) fn is_upper_ascii(c: char) -> bool {
    c.is_ascii_uppercase()
}

/// NEWLINE = \r|\r?\n|\u2028|\u2029|\u000B|\u000C|\u0085
pub(super) fn newline() -> Pat {
    alt(vec![
        seq(vec![cls(|c| c == '\r'), cls(|c| c == '\n')]),
        cls(is_newline_char),
    ])
}
pub(super) fn spacenl() -> Pat {
    alt(vec![cls(is_space), newline()])
}
/// APOS = ['\u0092\u2019]|&apos;
pub(super) fn apos() -> Pat {
    alt(vec![cls(is_apos_char), lit("&apos;")])
}
pub(super) fn apos_etc() -> Pat {
    alt(vec![cls(is_apos_etc_char), lit("&apos;")])
}
pub(super) fn letter_big() -> Pat {
    // LETTER = [:letter:] | SPLET | extras
    alt(vec![cls(|c| is_letter(c) || is_letter_extra(c)), splet()])
}
pub(super) fn splet() -> Pat {
    seq(vec![
        ch('&'),
        cls(|c| "aeiouAEIOU".contains(c)),
        lits(&["acute", "grave", "uml"]),
        cls(|c| c == ';'),
    ])
}
pub(super) fn digit() -> Pat {
    cls(is_digit)
}
/// WORD = {LETTER}({LETTER}|{DIGIT})*([.!?]{LETTER}({LETTER}|{DIGIT})*)*
pub(super) fn word() -> Pat {
    let body = || star(alt(vec![letter_big(), digit()]));
    seq(vec![
        letter_big(),
        body(),
        star(seq(vec![cls(|c| ".!?".contains(c)), letter_big(), body()])),
    ])
}
/// REDAUX = {APOS}([msdMSD]|re|ve|ll)
pub(super) fn redaux() -> Pat {
    seq(vec![
        apos(),
        alt(vec![
            cls(|c| "msdMSD".contains(c)),
            lits(&["re", "ve", "ll"]),
        ]),
    ])
}
/// SREDAUX = n{APOSETCETERA}t
pub(super) fn sredaux() -> Pat {
    seq(vec![lit("n"), apos_etc(), lit("t")])
}
/// SWORD = [A-Za-z\u00AD]*[A-MO-Za-mo-z](\u00AD)*
pub(super) fn sword() -> Pat {
    seq(vec![
        star(cls(|c| c.is_ascii_alphabetic() || c == '\u{00AD}')),
        cls(|c| c.is_ascii_alphabetic() && c != 'n' && c != 'N'),
        star(cls(|c| c == '\u{00AD}')),
    ])
}
pub(super) fn apoword() -> Pat {
    let l = || cls(is_letter);
    alt(vec![
        seq(vec![apos(), lit("n"), opt(apos())]),
        seq(vec![cls(|c| "lLdDjJ".contains(c)), apos()]),
        seq(vec![lit("Dunkin"), apos()]),
        seq(vec![lit("somethin"), apos()]),
        seq(vec![lit("ol"), apos()]),
        seq(vec![apos(), lit("em")]),
        // [A-HJ-XZn]{APOSETCETERA}[:letter:]{2}[:letter:]*  ('n' caseless)
        seq(vec![
            alt(vec![
                cls(|c| matches!(c, 'A'..='H' | 'J'..='X' | 'Z')),
                lit("n"),
            ]),
            apos_etc(),
            l(),
            l(),
            star(l()),
        ]),
        seq(vec![apos(), cls(|c| ('2'..='9').contains(&c)), lit("0s")]),
        seq(vec![apos(), lit("til"), opt(lit("l"))]),
        seq(vec![
            l(),
            star(l()),
            cls(|c| "aeiouyAEIOUY".contains(c)),
            apos_etc(),
            cls(|c| "aeiou".contains(c) || c.is_ascii_uppercase()),
            star(l()),
        ]),
        seq(vec![apos(), lit("cause")]),
        seq(vec![lit("cont'd"), opt(ch('.'))]),
        lits(&[
            "'twas",
            "nor'easter",
            "c'mon",
            "e'er",
            "s'mores",
            "ev'ry",
            "li'l",
            "nat'l",
        ]),
        seq(vec![lit("O"), apos_etc(), lit("o")]),
    ])
}
/// Characters excluded by `[^ \t\n\f\r\"<>|(){}]` style classes.
pub(super) fn url_body(c: char) -> bool {
    !" \t\n\u{000C}\r\"<>|(){}".contains(c)
}
pub(super) fn url_last(c: char) -> bool {
    !" \t\n\u{000C}\r\"<>|.!?(){},-".contains(c)
}
pub(super) fn fullurl() -> Pat {
    seq(vec![
        lit("http"),
        opt(lit("s")),
        lit("://"),
        plus(cls(url_body)),
        cls(url_last),
    ])
}
pub(super) fn likelyurl() -> Pat {
    let www_part = |c: char| !" \t\n\u{000C}\r\"<>|.!?(){},".contains(c);
    // `,-_` in the flex class is a range: it excludes U+002C..U+005F (digits, capitals, ...).
    let dom_part = |c: char| {
        !(" \t\n\u{000C}\r\"`'<>|.!?(){}$".contains(c) || ('\u{2C}'..='\u{5F}').contains(&c))
    };
    let path_body = |c: char| !" \t\n\u{000C}\r\"<>|()".contains(c);
    let path_last = |c: char| !" \t\n\u{000C}\r\"<>|.!?(){},-".contains(c);
    seq(vec![
        alt(vec![
            seq(vec![
                lit("www."),
                plus(seq(vec![plus(cls(www_part)), ch('.')])),
                rep(cls(is_alpha_ascii), 2, 4),
            ]),
            seq(vec![
                plus(seq(vec![plus(cls(dom_part)), ch('.')])),
                lits(&["com", "net", "org", "edu"]),
            ]),
        ]),
        opt(seq(vec![
            cls(|c| c == '/'),
            plus(cls(path_body)),
            cls(path_last),
        ])),
    ])
}
pub(super) fn email() -> Pat {
    let first = |c: char| !" \t\n\u{000C}\r\"<>|()\u{00A0}{}".contains(c);
    let dom = |c: char| !" \t\n\u{000C}\r\"<>|(){}.\u{00A0}".contains(c);
    seq(vec![
        opt(alt(vec![lit("&lt;"), cls(|c| c == '<')])),
        cls(is_alnum_ascii),
        star(cls(first)),
        cls(|c| c == '@'),
        star(seq(vec![plus(cls(dom)), ch('.')])),
        plus(cls(dom)),
        opt(alt(vec![lit("&gt;"), cls(|c| c == '>')])),
    ])
}
pub(super) fn twitter() -> Pat {
    alt(vec![
        seq(vec![
            cls(|c| c == '@'),
            cls(|c| c.is_ascii_alphabetic() || c == '_'),
            star(cls(|c| c.is_ascii_alphanumeric() || c == '_')),
        ]),
        seq(vec![cls(|c| c == '#'), plus(letter_big())]),
    ])
}
pub(super) fn date() -> Pat {
    let sep = || cls(|c| c == '-' || c == '/');
    seq(vec![
        rep(digit(), 1, 2),
        sep(),
        rep(digit(), 1, 2),
        sep(),
        rep(digit(), 2, 4),
    ])
}
/// NUMBER = [\-+]?({DIGIT}+|{DIGIT}*([.:,\u00AD\u066B\u066C]{DIGIT}+)+)
pub(super) fn number() -> Pat {
    let sep = cls(|c| ".:,\u{00AD}\u{066B}\u{066C}".contains(c));
    seq(vec![
        opt(cls(|c| c == '-' || c == '+')),
        alt(vec![
            plus(digit()),
            seq(vec![star(digit()), plus(seq(vec![sep, plus(digit())]))]),
        ]),
    ])
}
pub(super) fn subsupnum() -> Pat {
    seq(vec![
        opt(cls(|c| "\u{207A}\u{207B}\u{208A}\u{208B}".contains(c))),
        alt(vec![
            plus(cls(|c| {
                matches!(
                    c,
                    '\u{2070}' | '\u{00B9}' | '\u{00B2}' | '\u{00B3}' | '\u{2074}'..='\u{2079}'
                )
            })),
            plus(cls(|c| ('\u{2080}'..='\u{2089}').contains(&c))),
        ]),
    ])
}
/// FRAC = ({DIGIT}{1,4}[- \u00A0])?{DIGIT}{1,4}(\\?\/|\u2044){DIGIT}{1,4}
pub(super) fn frac() -> Pat {
    seq(vec![
        opt(seq(vec![
            rep(digit(), 1, 4),
            cls(|c| "- \u{00A0}".contains(c)),
        ])),
        rep(digit(), 1, 4),
        alt(vec![
            seq(vec![opt(cls(|c| c == '\\')), cls(|c| c == '/')]),
            cls(|c| c == '\u{2044}'),
        ]),
        rep(digit(), 1, 4),
    ])
}
pub(super) fn tbspec() -> Pat {
    let amp = || alt(vec![ch('&'), lit("&amp;")]);
    alt(vec![
        seq(vec![
            ch('-'),
            lits(&["RRB", "LRB", "RCB", "LCB", "RSB", "LSB"]),
            ch('-'),
        ]),
        lits(&["C.D.s", "pro-", "anti-"]),
        seq(vec![lit("S"), amp(), lit("P-500")]),
        seq(vec![lit("S"), amp(), lit("Ls")]),
        seq(vec![lit("Cap"), apos(), lit("n")]),
        seq(vec![lit("c"), apos(), lit("est")]),
    ])
}
/// THING3 = [A-Za-z0-9]+(-[A-Za-z]+){0,2}(\\?\/[A-Za-z0-9]+(-[A-Za-z]+){0,2}){1,2}
pub(super) fn thing3() -> Pat {
    let hy = || rep(seq(vec![ch('-'), plus(cls(is_alpha_ascii))]), 0, 2);
    seq(vec![
        plus(cls(is_alnum_ascii)),
        hy(),
        rep(
            seq(vec![
                opt(cls(|c| c == '\\')),
                cls(|c| c == '/'),
                plus(cls(is_alnum_ascii)),
                hy(),
            ]),
            1,
            2,
        ),
    ])
}
pub(super) fn dolsign() -> Pat {
    alt(vec![
        seq(vec![star(cls(is_upper_ascii)), cls(|c| c == '$')]),
        cls(|c| c == '#'),
    ])
}
pub(super) fn dolsign2(c: char) -> bool {
    "\u{00A2}\u{00A3}\u{00A4}\u{00A5}\u{0080}\u{20A0}\u{20AC}\u{060B}\u{0E3F}\u{20A4}\u{FFE0}\u{FFE1}\u{FFE5}\u{FFE6}".contains(c)
}
/// ACRO = [A-Za-z](\.[A-Za-z])* | ...;  ACRO2 is the same with `+`.
pub(super) fn acro(min_dots: usize) -> Pat {
    let dots = seq(vec![ch('.'), cls(is_alpha_ascii)]);
    alt(vec![
        seq(vec![
            cls(is_alpha_ascii),
            Pat::Rep(Box::new(dots), min_dots, None),
        ]),
        seq(vec![
            lits(&["Canada", "Sino", "Korean", "EU", "Japan", "non"]),
            lit("-U.S"),
        ]),
        seq(vec![lit("U.S.-"), lits(&["U.K", "U.S.S.R"])]),
    ])
}
pub(super) fn abbrev1() -> Pat {
    let abstate = alt(vec![
        lits(&["Ala", "Ariz"]),
        cap("Az"),
        cap("Ark"),
        lits(&["Calif", "Colo", "Conn", "Ct", "Dak"]),
        cap("Del"),
        lits(&["Fla", "Ga"]),
        cap("Ill"),
        lits(&["Ind", "Kans", "Kan", "Ky"]),
        cap("La"),
        cap("Mass"),
        lits(&["Md", "Mich", "Minn"]),
        cap("Miss"),
        lits(&["Mo", "Mont", "Neb", "Nev", "Okla"]),
        cap("Ore"),
        cap("Pa"),
        lits(&["Penn", "Tenn"]),
        cap("Tex"),
        lits(&["Va", "Vt"]),
        cap("Wash"),
        lits(&["Wisc", "Wis", "Wyo"]),
    ]);
    let names = alt(vec![
        lits(&[
            "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec",
        ]),
        lits(&["Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri"]),
        abstate,
        // ABCOMP = Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys
        lits(&[
            "Inc", "Cos", "Co", "Corp", "Ltd", "Plc", "Rt", "Bancorp", "Bhd", "Assn", "Univ",
        ]),
        lits(&["Intl", "Sys"]),
        seq(vec![
            lit("P"),
            opt(lit("p")),
            lit("t"),
            cls(|c| c == 'y' || c == 'e'),
            opt(lit("s")),
        ]),
        lits(&["tel", "est", "ext", "sq"]),
        lits(&["Jr", "Sr", "Bros", "Ed.D", "Ph.D", "Blvd", "Rd", "Esq"]),
        lits(&["etc", "al", "seq", "Bldg"]),
    ]);
    seq(vec![names, ch('.')])
}
pub(super) fn abbrev4() -> Pat {
    alt(vec![
        // ABTITLE
        lits(&["Mr", "Mrs", "Ms"]),
        cap("Miss"),
        lits(&[
            "Drs", "Dr", "Profs", "Prof", "Sens", "Sen", "Reps", "Rep", "Attys", "Atty", "Lt",
        ]),
        lits(&[
            "Col", "Gen", "Messrs", "Govs", "Gov", "Adm", "Rev", "Maj", "Sgt", "Cpl", "Pvt",
        ]),
        lits(&[
            "Capt", "Ste", "St", "Ave", "Pres", "Lieut", "Hon", "Brig", "Comdr", "Cmdr", "Pfc",
        ]),
        lits(&[
            "Spc", "Supts", "Supt", "Det", "Mt", "Ft", "Adj", "Adv", "Asst", "Assoc", "Ens",
        ]),
        lits(&["Insp", "Mlle", "Mme", "Msgr", "Sfc"]),
        lits(&[
            "vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS", "Ph",
        ]),
        acro(0),
        // ABCOMP2
        lits(&["Invt", "Elec", "Natl", "Mfg", "Mtg", "Dept"]),
    ])
}
pub(super) fn abbrev3() -> Pat {
    seq(vec![
        lits(&[
            "ca", "figs", "fig", "prop", "nos", "no", "art", "bldg", "pp", "op",
        ]),
        ch('.'),
    ])
}
pub(super) fn acronym_followers() -> Pat {
    const WORDS: [&str; 46] = [
        "About",
        "According",
        "Additionally",
        "After",
        "An",
        "A",
        "As",
        "At",
        "But",
        "Earlier",
        "He",
        "Her",
        "Here",
        "However",
        "If",
        "In",
        "It",
        "Last",
        "Many",
        "More",
        "Mr.",
        "Ms.",
        "Now",
        "Once",
        "One",
        "Other",
        "Our",
        "She",
        "Since",
        "So",
        "Some",
        "Such",
        "That",
        "The",
        "Their",
        "Then",
        "There",
        "These",
        "They",
        "This",
        "We",
        "When",
        "While",
        "What",
        "Yet",
        "You",
    ];
    alt(WORDS
        .iter()
        .map(|w| cap(w))
        .chain(std::iter::once(sgml()))
        .collect())
}

pub(super) fn filename() -> Pat {
    let ld = || alt(vec![letter_big(), digit()]);
    seq(vec![
        plus(ld()),
        star(seq(vec![ch('.'), plus(ld())])),
        ch('.'),
        lits(&[
            "bat", "bmp", "c", "class", "cgi", "cpp", "dll", "doc", "docx", "exe", "gif", "gz",
            "h", "htm", "html", "jar", "java", "jpeg", "jpg", "mov", "mp3", "pdf", "php", "pl",
            "png", "ppt", "ps", "py", "sql", "tar", "txt", "wav", "x", "xml", "zip",
        ]),
    ])
}
pub(super) fn phone() -> Pat {
    let d = || cls(is_ascii_digit);
    let sep = || cls(|c| "- \u{00A0}".contains(c));
    let plusses = || opt(seq(vec![cls(|c| c == '+'), opt(cls(|c| c == '+'))]));
    alt(vec![
        seq(vec![
            alt(vec![
                seq(vec![
                    cls(|c| c == '('),
                    rep(d(), 2, 3),
                    cls(|c| c == ')'),
                    opt(cls(|c| c == ' ' || c == '\u{00A0}')),
                ]),
                seq(vec![
                    plusses(),
                    opt(seq(vec![rep(d(), 2, 4), sep()])),
                    rep(d(), 2, 4),
                    sep(),
                ]),
            ]),
            rep(d(), 3, 4),
            opt(sep()),
            rep(d(), 3, 5),
        ]),
        seq(vec![
            opt(seq(vec![plusses(), rep(d(), 2, 4), ch('.')])),
            rep(d(), 2, 4),
            ch('.'),
            rep(d(), 3, 4),
            ch('.'),
            rep(d(), 3, 5),
        ]),
    ])
}
pub(super) fn dblquot() -> Pat {
    alt(vec![cls(|c| c == '"'), lit("&quot;")])
}
pub(super) fn smiley() -> Pat {
    seq(vec![
        opt(cls(|c| c == '<' || c == '>')),
        cls(|c| ":;=".contains(c)),
        opt(cls(|c| "-o*'".contains(c))),
        cls(|c| "()DPdpO\\{@|[]".contains(c)),
    ])
}
pub(super) fn asian_smiley() -> Pat {
    let a = |c: char| "^x=~<>".contains(c);
    let b = |c: char| "-^x=~<>'".contains(c);
    let d = |c: char| "^x=~<>'".contains(c);
    let e = |c: char| "^x=~<>'`".contains(c);
    let one = |c: char| -> Pat {
        match c {
            '(' => cls(|x| x == '('),
            ')' => cls(|x| x == ')'),
            _ => unreachable!(),
        }
    };
    alt(vec![
        // [\^x=~<>]\.\[\^x=~<>] : the flex escapes the bracket, so it is literal text.
        seq(vec![cls(a), ch('.'), lit("[^x=~<>]")]),
        seq(vec![cls(b), cls(|c| c == '_'), cls(b)]),
        seq(vec![
            one('('),
            cls(b),
            opt(cls(|c| c == '_' || c == '.')),
            cls(b),
            one(')'),
        ]),
        seq(vec![one('('), cls(d), ch('-'), cls(e), one(')')]),
    ])
}
/// HTHING = [A-Za-z0-9][A-Za-z0-9.,\u00AD]*(-([A-Za-z0-9\u00AD]+|{ACRO2}\.))+
pub(super) fn hthing() -> Pat {
    seq(vec![
        cls(is_alnum_ascii),
        star(cls(|c| {
            c.is_ascii_alphanumeric() || ".,\u{00AD}".contains(c)
        })),
        plus(seq(vec![
            ch('-'),
            alt(vec![
                plus(cls(|c| c.is_ascii_alphanumeric() || c == '\u{00AD}')),
                seq(vec![acro(1), ch('.')]),
            ]),
        ])),
    ])
}
/// THING = ([dDoOlL]{APOSETCETERA}([:letter:]|[:digit:]))?([:letter:]|[:digit:])+({HYPHEN}(...)?(...)+)*
pub(super) fn thing() -> Pat {
    let ld = || cls(is_letter_or_digit);
    let prefix = || opt(seq(vec![cls(|c| "dDoOlL".contains(c)), apos_etc(), ld()]));
    seq(vec![
        prefix(),
        plus(ld()),
        star(seq(vec![
            cls(|c| "-_\u{058A}\u{2010}\u{2011}".contains(c)),
            prefix(),
            plus(ld()),
        ])),
    ])
}
/// THINGA = [A-Z]+(([+&]|{SPAMP})[A-Z]+)+
pub(super) fn thinga() -> Pat {
    seq(vec![
        plus(cls(is_upper_ascii)),
        plus(seq(vec![
            alt(vec![cls(|c| c == '+' || c == '&'), lit("&amp;")]),
            plus(cls(is_upper_ascii)),
        ])),
    ])
}
pub(super) fn quotes() -> Pat {
    alt(vec![
        apos(),
        lit("''"),
        rep(
            cls(|c| {
                "`\u{2018}\u{2019}\u{201A}\u{201B}\u{201C}\u{201D}\u{0091}\u{0092}\u{0093}\u{0094}\u{201E}\u{201F}\u{2039}\u{203A}\u{00AB}\u{00BB}".contains(c)
            }),
            1,
            2,
        ),
    ])
}
pub(super) fn miscsymbol(c: char) -> bool {
    #[rustfmt::skip]
    const R: &[(u32, u32)] = &[
        (0x00A6, 0x00A8), (0x00A9, 0x00A9), (0x00AC, 0x00AC), (0x00AE, 0x00AF), (0x00B0, 0x00BA),
        (0x00D7, 0x00D7), (0x00F7, 0x00F7), (0x0387, 0x0387), (0x05BE, 0x05BE), (0x05C0, 0x05C0),
        (0x05C3, 0x05C3), (0x05C6, 0x05C6), (0x05F3, 0x05F4), (0x0600, 0x0603), (0x0606, 0x060A),
        (0x060C, 0x060C), (0x0614, 0x0614), (0x061B, 0x061B), (0x061E, 0x061E), (0x066A, 0x066A),
        (0x066D, 0x066D), (0x0703, 0x070D), (0x07F6, 0x07F8), (0x0964, 0x0965), (0x0E4F, 0x0E4F),
        (0x1FBD, 0x1FBD), (0x2016, 0x2017), (0x2020, 0x2023), (0x2030, 0x2038), (0x203B, 0x203B),
        (0x203E, 0x2042), (0x2044, 0x2044), (0x207A, 0x207F), (0x208A, 0x208E), (0x2100, 0x214F),
        (0x2190, 0x21FF), (0x2200, 0x2BFF), (0x3012, 0x3012), (0x30FB, 0x30FB), (0xFF01, 0xFF0F),
        (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65),
    ];
    // \u00A7 and \u00A8 come from the literal `§¨` in the class; ¦ and ¯ likewise.
    "+%&~^|\\".contains(c) || in_ranges(c, R)
}
/// SGML (the 3.4.1 definition, the last one in the file wins).
pub(super) fn sgml() -> Pat {
    let name_ch = |c: char| c.is_ascii_alphanumeric() || "_:.-".contains(c);
    let name = || seq(vec![cls(is_alpha_ascii), star(cls(name_ch))]);
    let sp = || cls(|c| c == ' ');
    let attr_val = alt(vec![
        seq(vec![ch('\''), star(cls(|c| c != '\'')), ch('\'')]),
        seq(vec![
            cls(|c| c == '"'),
            star(cls(|c| c != '"')),
            cls(|c| c == '"'),
        ]),
    ]);
    let attr = alt(vec![
        name(),
        seq(vec![
            name(),
            star(sp()),
            cls(|c| c == '='),
            star(sp()),
            attr_val,
        ]),
    ]);
    seq(vec![
        cls(|c| c == '<'),
        alt(vec![
            seq(vec![
                cls(|c| c == '!' || c == '?'),
                cls(|c| c.is_ascii_alphabetic() || c == '-'),
                star(cls(|c| !">\r\n".contains(c))),
            ]),
            seq(vec![
                name(),
                star(seq(vec![plus(sp()), attr])),
                star(sp()),
                opt(cls(|c| c == '/')),
            ]),
            seq(vec![cls(|c| c == '/'), name()]),
        ]),
        star(sp()),
        cls(|c| c == '>'),
    ])
}

pub(super) fn is_insentp(c: char) -> bool {
    ",;:\u{3001}".contains(c)
}
