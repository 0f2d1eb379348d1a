//! A tiny backtracking-free regex engine with JFlex semantics, just big enough to transcribe
//! `PTBLexer.flex`: every pattern reports *all* the positions where a match starting at a given
//! position can end, so the lexer can apply JFlex's longest-match-then-first-rule choice,
//! trailing contexts (`r1/r2`) included.

use smallvec::SmallVec;

/// A set of positions; almost always 0-2 of them, so kept inline.
pub(crate) type Positions = SmallVec<[usize; 4]>;

/// One pattern node. Literals match ASCII case-insensitively because the lexer is `%caseless`;
/// character classes do not (JFlex: "%caseless ... does not effect character classes").
pub(crate) enum Pat {
    /// One char satisfying the predicate.
    Class(fn(char) -> bool),
    /// A caseless literal.
    Lit(&'static str),
    /// A literal whose first char is matched exactly and the rest caselessly: the flex's
    /// `[A]bout` (a one-char class, which caselessness does not touch, then literal text).
    CapLit(&'static str),
    Seq(Vec<Pat>),
    Alt(Vec<Pat>),
    /// `min..=max` repetitions (`max == None`: unbounded).
    Rep(Box<Pat>, usize, Option<usize>),
}

impl Pat {
    /// Sorted, deduplicated end positions of matches of `self` starting at any of `starts`.
    pub(crate) fn ends(&self, text: &[char], starts: &[usize]) -> Positions {
        let mut out = Positions::new();
        match self {
            Pat::Class(f) => {
                for &s in starts {
                    if s < text.len() && f(text[s]) {
                        out.push(s + 1);
                    }
                }
                return out; // already sorted and unique
            }
            Pat::Lit(lit) => {
                for &s in starts {
                    if lit_matches(text, s, lit) {
                        out.push(s + lit.chars().count());
                    }
                }
                return out;
            }
            Pat::CapLit(lit) => {
                for &s in starts {
                    let first = lit.chars().next();
                    if text.get(s).copied() == first && lit_matches(text, s, lit) {
                        out.push(s + lit.chars().count());
                    }
                }
                return out;
            }
            Pat::Seq(parts) => {
                let mut cur: Positions = starts.iter().copied().collect();
                for p in parts {
                    if cur.is_empty() {
                        break;
                    }
                    cur = p.ends(text, &cur);
                }
                return cur;
            }
            Pat::Alt(alts) => {
                for p in alts {
                    out.extend(p.ends(text, starts));
                }
            }
            Pat::Rep(p, min, max) => {
                let mut frontier: Positions = starts.iter().copied().collect();
                let mut n = 0;
                if *min == 0 {
                    out.extend_from_slice(starts);
                }
                while !frontier.is_empty() && max.is_none_or(|m| n < m) {
                    frontier = p.ends(text, &frontier);
                    n += 1;
                    // Positions only grow (no pattern here matches the empty string inside a
                    // repetition), so an unbounded loop terminates; drop already-seen ends.
                    if n >= *min {
                        frontier.retain(|e| !out.contains(e));
                        out.extend_from_slice(&frontier);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the pattern matches the empty string.
    fn nullable(&self) -> bool {
        match self {
            Pat::Class(_) => false,
            Pat::Lit(l) | Pat::CapLit(l) => l.is_empty(),
            Pat::Seq(parts) => parts.iter().all(Pat::nullable),
            Pat::Alt(alts) => alts.iter().any(Pat::nullable),
            Pat::Rep(p, min, _) => *min == 0 || p.nullable(),
        }
    }

    /// Whether a non-empty match can start with `c` (a cheap filter before `ends`).
    pub(crate) fn can_start(&self, c: char) -> bool {
        match self {
            Pat::Class(f) => f(c),
            Pat::Lit(l) => l.chars().next().is_some_and(|f| f.eq_ignore_ascii_case(&c)),
            Pat::CapLit(l) => l.starts_with(c),
            Pat::Seq(parts) => {
                for p in parts {
                    if p.can_start(c) {
                        return true;
                    }
                    if !p.nullable() {
                        return false;
                    }
                }
                false
            }
            Pat::Alt(alts) => alts.iter().any(|p| p.can_start(c)),
            Pat::Rep(p, _, _) => p.can_start(c),
        }
    }

    /// Longest match from `start`, if any.
    pub(crate) fn longest(&self, text: &[char], start: usize) -> Option<usize> {
        self.ends(text, &[start]).last().copied()
    }
}

fn lit_matches(text: &[char], start: usize, lit: &str) -> bool {
    let mut i = start;
    for l in lit.chars() {
        match text.get(i) {
            Some(c) if c.eq_ignore_ascii_case(&l) => i += 1,
            _ => return false,
        }
    }
    true
}

pub(crate) fn lit(s: &'static str) -> Pat {
    Pat::Lit(s)
}
pub(crate) fn cap(s: &'static str) -> Pat {
    Pat::CapLit(s)
}
pub(crate) fn cls(f: fn(char) -> bool) -> Pat {
    Pat::Class(f)
}
pub(crate) fn seq(v: Vec<Pat>) -> Pat {
    Pat::Seq(v)
}
pub(crate) fn alt(v: Vec<Pat>) -> Pat {
    Pat::Alt(v)
}
/// Alternation of caseless literals.
pub(crate) fn lits(v: &[&'static str]) -> Pat {
    Pat::Alt(v.iter().map(|s| Pat::Lit(s)).collect())
}
pub(crate) fn star(p: Pat) -> Pat {
    Pat::Rep(Box::new(p), 0, None)
}
pub(crate) fn plus(p: Pat) -> Pat {
    Pat::Rep(Box::new(p), 1, None)
}
pub(crate) fn opt(p: Pat) -> Pat {
    Pat::Rep(Box::new(p), 0, Some(1))
}
pub(crate) fn rep(p: Pat, min: usize, max: usize) -> Pat {
    Pat::Rep(Box::new(p), min, Some(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn reports_all_ends() {
        let p = seq(vec![lit("ab"), star(lit("c"))]);
        assert_eq!(p.ends(&chars("abccx"), &[0]).as_slice(), &[2, 3, 4]);
        assert_eq!(p.longest(&chars("ABc"), 0), Some(3));
        assert_eq!(p.longest(&chars("xab"), 0), None);
    }

    #[test]
    fn bounded_repetition() {
        let p = rep(cls(|c| c.is_ascii_digit()), 2, 3);
        assert_eq!(p.ends(&chars("12345"), &[0]).as_slice(), &[2, 3]);
        assert!(p.ends(&chars("1x"), &[0]).is_empty());
    }

    #[test]
    fn classes_are_case_sensitive() {
        let p = cls(|c| c == 'a');
        assert_eq!(p.longest(&chars("A"), 0), None);
    }
}
