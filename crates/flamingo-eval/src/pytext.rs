//! Python's notion of whitespace, which the reference eval relies on (`str.strip()`,
//! `str.split()` in vqaEval.py, pycocoevalcap's CIDEr and the v1 eval's demo texts). It is
//! Unicode White_Space (Rust's `char::is_whitespace`) plus the ASCII information separators
//! U+001C..U+001F, which Python counts as whitespace and Rust does not.

/// Python's `str.isspace()` for one character.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()` (no argument).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.split()` (no argument): runs of whitespace separate, no empty words.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn information_separators_are_whitespace_as_in_python() {
        // Python: "a\x1cb\x1dc\x1ed\x1fe".split() == ['a', 'b', 'c', 'd', 'e']
        assert_eq!(
            py_split("a\u{1c}b\u{1d}c\u{1e}d\u{1f}e").collect::<Vec<_>>(),
            ["a", "b", "c", "d", "e"]
        );
        // Python: "\x1f yes \x1c\n".strip() == 'yes'
        assert_eq!(py_strip("\u{1f} yes \u{1c}\n"), "yes");
        // Rust's own whitespace would keep them.
        assert_eq!("\u{1f}yes".split_whitespace().count(), 1);
        assert_eq!("\u{1f}yes".trim(), "\u{1f}yes");
    }

    /// Every code point for which Python 3.11's `str.isspace()` is true.
    const PYTHON_SPACES: &[u32] = &[
        0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001,
        0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029,
        0x202f, 0x205f, 0x3000,
    ];

    #[test]
    fn agrees_with_python_on_every_code_point() {
        let ours: Vec<u32> = (0..=0x10ffff_u32)
            .filter_map(char::from_u32)
            .filter(|&c| is_py_space(c))
            .map(|c| c as u32)
            .collect();
        assert_eq!(ours, PYTHON_SPACES);
    }

    #[test]
    fn unicode_whitespace_and_non_whitespace() {
        // Python: "a\xa0b\u3000c\u2028d\x85e".split() == ['a', 'b', 'c', 'd', 'e']
        assert_eq!(
            py_split("a\u{a0}b\u{3000}c\u{2028}d\u{85}e").collect::<Vec<_>>(),
            ["a", "b", "c", "d", "e"]
        );
        // Not whitespace in Python: ZERO WIDTH SPACE, BOM, MONGOLIAN VOWEL SEPARATOR.
        for c in ['\u{200b}', '\u{feff}', '\u{180e}'] {
            assert!(!is_py_space(c), "{c:?}");
        }
        assert_eq!(py_split("  \t\n ").count(), 0);
    }
}
