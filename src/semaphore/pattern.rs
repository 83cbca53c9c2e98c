//! Slot file names: the filename pattern (Python's `{name}.{number:02d}.lock`) and its checks.

/// Whether `name` names an entry of a directory and nothing else: not
/// empty, no NUL, no path separator of this platform (`/`, and `\` on
/// Windows), and a single normal path component (not `.`, `..`, a root or
/// a Windows drive prefix such as `C:x`).
pub(super) fn is_plain_file_name(name: &str) -> bool {
    use std::path::{Component, Path};
    if name.contains(|ch| ch == '\0' || std::path::is_separator(ch)) {
        return false;
    }
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(n)), None) if n == name
    )
}

/// A parsed Python format string with the fields `name` and `number`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pattern(Vec<Piece>);

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Name,
    Number { width: usize, zero: bool },
}

impl Pattern {
    pub(crate) fn parse(s: &str) -> std::result::Result<Self, String> {
        let bad = |why: &str| format!("invalid filename pattern {s:?}: {why}");
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        let mut has_number = false;
        while let Some(ch) = chars.next() {
            match ch {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(bad("single '}'")),
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => field.push(c),
                            None => return Err(bad("unclosed '{'")),
                        }
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    let (key, spec) = field.split_once(':').unwrap_or((&field, ""));
                    match key {
                        "name" if spec.is_empty() || spec == "s" => pieces.push(Piece::Name),
                        "number" => {
                            pieces.push(parse_int_spec(spec).ok_or_else(|| {
                                bad(&format!("unsupported format spec {spec:?}"))
                            })?);
                            has_number = true;
                        }
                        _ => return Err(bad(&format!("unknown field {{{field}}}"))),
                    }
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if !has_number {
            return Err(bad(
                "it has no {number} field, so every slot would be one file",
            ));
        }
        Ok(Self(pieces))
    }

    pub(crate) fn format(&self, name: &str, number: usize) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Name => out.push_str(name),
                Piece::Number { width, zero: true } => {
                    out.push_str(&format!("{number:0width$}"));
                }
                Piece::Number { width, zero: false } => {
                    out.push_str(&format!("{number:>width$}"));
                }
            }
        }
        out
    }
}

/// `[0][width][d]`, the integer specs that make sense in a file name.
fn parse_int_spec(spec: &str) -> Option<Piece> {
    let spec = spec.strip_suffix('d').unwrap_or(spec);
    let (zero, digits) = match spec.strip_prefix('0') {
        Some(rest) => (true, rest),
        None => (false, spec),
    };
    let width = if digits.is_empty() {
        0
    } else if digits.len() <= 3 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(Piece::Number { width, zero })
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_PATTERN;
    #[test]
    fn slot_file_names_never_leave_the_directory() {
        for ok in ["jobs.00.lock", "a", "..a", "a..", "...", "x y"] {
            assert!(is_plain_file_name(ok), "{ok:?}");
        }
        let mut bad = vec!["", ".", "..", "a/b", "/a", "a\0b"];
        if cfg!(windows) {
            bad.extend(["..\\x", "a\\b", "C:x", "C:", "\\\\srv\\s"]);
        }
        for b in bad {
            assert!(!is_plain_file_name(b), "{b:?}");
        }
    }

    use super::*;

    #[test]
    fn default_pattern_matches_python() {
        let p = Pattern::parse(DEFAULT_PATTERN).unwrap();
        assert_eq!(p.format("jobs", 0), "jobs.00.lock");
        assert_eq!(p.format("jobs", 7), "jobs.07.lock");
        assert_eq!(p.format("jobs", 123), "jobs.123.lock");
    }

    #[test]
    fn pattern_specs() {
        let cases = [
            ("{name}-{number}", "x-5"),
            ("{number:d}.{name}", "5.x"),
            ("{number:03d}", "005"),
            ("{number:3}", "  5"),
            ("{{{name}}}.{number:02}", "{x}.05"),
            ("{name:s}{number}", "x5"),
        ];
        for (pat, want) in cases {
            assert_eq!(Pattern::parse(pat).unwrap().format("x", 5), want, "{pat}");
        }
    }

    #[test]
    fn invalid_patterns() {
        for pat in [
            "{name}.lock",
            "static.lock",
            "{number",
            "{number}}x}",
            "{numbr}",
            "{number:x}",
            "{number:02f}",
            "{number:9999d}",
            "{name:>10}{number}",
            "}{number}",
        ] {
            assert!(Pattern::parse(pat).is_err(), "{pat}");
        }
    }
}

/// Randomised: strings of the characters patterns are made of.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::util::proptest_cases()))]

        #[test]
        fn valid_patterns_give_every_slot_its_own_name(s in "[{}:0123dnameumberx.]{0,48}") {
            if let Ok(p) = super::Pattern::parse(&s) {
                prop_assert_ne!(p.format("n", 3), p.format("n", 4));
            }
        }
    }
}
