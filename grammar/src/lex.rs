//! A small lexer that runs before pest.
//!
//! pest reports only "expected X at position P"; some mistakes deserve a sharper diagnostic that a
//! linear scan finds more reliably: an unterminated string, a character that is not part of the
//! language, an unclosed or mismatched bracket, and nesting so deep that the recursive-descent
//! parser (or any later recursive pass) could run out of stack. The same scan collects the comments
//! for `File::comments` and names the token at an error position ("found `=`").
//!
//! The scan accepts everything the grammar accepts: it must never reject a valid file, so its
//! character classes mirror `kiln.pest` exactly (strings, comments, identifiers, numbers,
//! punctuation).

use crate::ast::{Comment, Span};
use crate::error::{SyntaxError, SyntaxErrorKind};

/// Most brackets (plus pending `if` expressions) open at once. pest recurses about fifteen rules
/// deep per bracket; 64 levels keep the parser well inside a 2 MiB test-thread stack in a debug
/// build, and no readable spec comes close.
pub const MAX_NESTING: usize = 64;

/// Stop reporting stray characters after this many: a binary file would otherwise give thousands.
const MAX_STRAY_ERRORS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokKind {
    /// An identifier or a keyword.
    Word,
    Number,
    Str {
        terminated: bool,
    },
    Comment,
    Punct,
    /// A character that no rule of the grammar accepts here.
    Stray,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Tok {
    pub kind: TokKind,
    pub start: usize,
    pub end: usize,
}

const PUNCT3: &[&str] = &["..."];
const PUNCT2: &[&str] = &["**", "//", "==", "!=", "<=", ">="];
const PUNCT1: &[u8] = b"()[]{},:;.=+-*/%@<>";

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The token starting at byte `i` (which must not be whitespace).
fn token_at(src: &str, i: usize) -> Tok {
    let bytes = src.as_bytes();
    let b = bytes[i];
    let tok = |kind, end| Tok {
        kind,
        start: i,
        end,
    };
    if b == b'#' {
        let end = src[i..].find('\n').map_or(src.len(), |n| i + n);
        return tok(TokKind::Comment, end);
    }
    if b == b'"' {
        let mut j = i + 1;
        while j < bytes.len() {
            match bytes[j] {
                b'"' => return tok(TokKind::Str { terminated: true }, j + 1),
                b'\n' => break,
                b'\\' if j + 1 < bytes.len() && bytes[j + 1] != b'\n' => {
                    // Skip the escaped character, which may be multi-byte.
                    let next_len = src[j + 1..].chars().next().map_or(1, char::len_utf8);
                    j += 1 + next_len;
                }
                _ => j += 1,
            }
        }
        return tok(TokKind::Str { terminated: false }, j.min(bytes.len()));
    }
    if b.is_ascii_alphabetic() || b == b'_' {
        let end = i + bytes[i..].iter().take_while(|&&c| is_ident_char(c)).count();
        return tok(TokKind::Word, end);
    }
    if b.is_ascii_digit() {
        // Generous on purpose: this token is only displayed, pest decides what a number is.
        let mut j = i + 1;
        while j < bytes.len() {
            let c = bytes[j];
            let prev = bytes[j - 1];
            let take = is_ident_char(c)
                || (c == b'.' && bytes.get(j + 1).is_some_and(u8::is_ascii_digit))
                || ((c == b'+' || c == b'-') && (prev == b'e' || prev == b'E'));
            if !take {
                break;
            }
            j += 1;
        }
        return tok(TokKind::Number, j);
    }
    let rest = &src[i..];
    for p in PUNCT3.iter().chain(PUNCT2) {
        if rest.starts_with(p) {
            return tok(TokKind::Punct, i + p.len());
        }
    }
    if PUNCT1.contains(&b) {
        return tok(TokKind::Punct, i + 1);
    }
    // A run of the same stray character is one mistake (`&&`, `||`).
    let first = rest.chars().next().unwrap_or('\0');
    let len: usize = rest
        .chars()
        .take_while(|&c| c == first)
        .map(char::len_utf8)
        .sum();
    tok(TokKind::Stray, i + len.max(1))
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// All tokens of `src`, comments included, whitespace skipped.
pub(crate) fn tokenize(src: &str) -> Vec<Tok> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if is_space(bytes[i]) {
            i += 1;
            continue;
        }
        let t = token_at(src, i);
        debug_assert!(t.end > i);
        i = t.end.max(i + 1);
        out.push(t);
    }
    out
}

/// The comments of `src`, in order, text without `#` and without trailing whitespace.
pub(crate) fn comments(tokens: &[Tok], src: &str) -> Vec<Comment> {
    tokens
        .iter()
        .filter(|t| t.kind == TokKind::Comment)
        .map(|t| Comment {
            text: src[t.start + 1..t.end].trim_end().to_string(),
            span: Span::new(t.start, t.end),
        })
        .collect()
}

/// Describes the token that starts at (or after whitespace following) `pos`, for "found ...".
pub(crate) fn describe_found(src: &str, pos: usize) -> (String, Span) {
    let bytes = src.as_bytes();
    let mut i = pos.min(src.len());
    while i < bytes.len() && is_space(bytes[i]) {
        i += 1;
    }
    if i >= bytes.len() {
        return ("end of file".to_string(), Span::new(src.len(), src.len()));
    }
    // pest positions are always on char boundaries, but be safe against a caller's arithmetic.
    while !src.is_char_boundary(i) {
        i -= 1;
    }
    let t = token_at(src, i);
    let text = &src[t.start..t.end];
    let span = Span::new(t.start, t.end);
    let shown = match t.kind {
        TokKind::Word if crate::parser::is_keyword(text) => format!("keyword `{text}`"),
        TokKind::Str { .. } => "a string".to_string(),
        TokKind::Comment => "a comment".to_string(),
        _ => format!("`{text}`"),
    };
    (shown, span)
}

fn closer_of(open: u8) -> u8 {
    match open {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

/// Checks what the grammar cannot explain well. Returns every error found (stray characters are
/// capped); an empty result means pest gets to parse the file.
pub(crate) fn prescan(src: &str, tokens: &[Tok]) -> Vec<SyntaxError> {
    let mut errors = Vec::new();
    let mut strays = 0usize;
    // Each open bracket, with the number of `if` expressions pending at its level.
    let mut stack: Vec<(u8, usize)> = Vec::new();
    let mut pending_ifs = 0usize; // at the top level (outside every bracket)
    let mut ifs_in_stack = 0usize; // the sum of the stack's pending `if`s, kept to stay linear
    let mut too_deep_reported = false;
    for (idx, t) in tokens.iter().enumerate() {
        let text = &src[t.start..t.end];
        let span = Span::new(t.start, t.end);
        match t.kind {
            TokKind::Str { terminated: false } => {
                errors.push(
                    SyntaxError::new(
                        SyntaxErrorKind::UnterminatedString,
                        "unterminated string",
                        span,
                        "this string is never closed",
                    )
                    .with_help(
                        "close it with `\"` on the same line (a string cannot span lines; write \
                         `\\n` for a newline)",
                    ),
                );
                // Whatever follows is inside the string as the user meant it: stop here.
                return errors;
            }
            TokKind::Stray => {
                strays += 1;
                if strays <= MAX_STRAY_ERRORS {
                    errors.push(stray_error(src, t));
                }
            }
            TokKind::Punct => {
                let b = text.as_bytes()[0];
                if text.len() == 1 && matches!(b, b'(' | b'[' | b'{') {
                    if b == b'{' {
                        // `{` never occurs inside an expression: any `if` still pending at this
                        // level was a statement `if`.
                        match stack.last_mut() {
                            Some(top) => {
                                ifs_in_stack -= top.1;
                                top.1 = 0;
                            }
                            None => pending_ifs = 0,
                        }
                    }
                    stack.push((b, 0));
                } else if text.len() == 1 && matches!(b, b')' | b']' | b'}') {
                    let popped = stack.pop();
                    if let Some((_, ifs)) = popped {
                        ifs_in_stack -= ifs;
                    }
                    match popped {
                        None => errors.push(
                            SyntaxError::new(
                                SyntaxErrorKind::UnmatchedClose,
                                format!("unmatched `{text}`"),
                                span,
                                "nothing opened here is closed by this",
                            )
                            .with_help("delete it, or add the opening bracket it belongs to"),
                        ),
                        Some((open, _)) if closer_of(open) != b => {
                            let open_pos = open_position(tokens, src, t.start, open);
                            let open_ch = open as char;
                            let want = closer_of(open) as char;
                            errors.push(
                                SyntaxError::new(
                                    SyntaxErrorKind::Unclosed,
                                    format!("unclosed `{open_ch}`"),
                                    Span::new(open_pos, open_pos + 1),
                                    format!("this `{open_ch}` is never closed"),
                                )
                                .with_label(span, format!("expected `{want}` before this `{text}`"))
                                .with_help(format!(
                                    "add `{want}` where the `{open_ch}` group ends"
                                )),
                            );
                            // Brackets after a mismatch only produce noise.
                            return errors;
                        }
                        Some(_) => {}
                    }
                }
            }
            TokKind::Word => match text {
                // `if = 2` is a plan entry whose key happens to be a keyword, not an `if`.
                "if" if next_is_assign(src, &tokens[idx + 1..]) => {}
                "if" => match stack.last_mut() {
                    Some(top) => {
                        top.1 += 1;
                        ifs_in_stack += 1;
                    }
                    None => pending_ifs += 1,
                },
                "else" => match stack.last_mut() {
                    Some(top) if top.1 > 0 => {
                        top.1 -= 1;
                        ifs_in_stack -= 1;
                    }
                    Some(_) => {}
                    None => pending_ifs = pending_ifs.saturating_sub(1),
                },
                _ => {}
            },
            TokKind::Str { terminated: true } | TokKind::Comment | TokKind::Number => {}
        }
        let depth = stack.len() + pending_ifs + ifs_in_stack;
        if depth > MAX_NESTING && !too_deep_reported {
            too_deep_reported = true;
            errors.push(
                SyntaxError::new(
                    SyntaxErrorKind::TooDeep,
                    "nesting too deep",
                    span,
                    format!("more than {MAX_NESTING} brackets or `if`s are open here"),
                )
                .with_help("split the expression into named steps (`y = ...`)"),
            );
        }
    }
    if let Some(&(open, _)) = stack.last() {
        let open_pos = open_position(tokens, src, src.len(), open);
        let open_ch = open as char;
        let want = closer_of(open) as char;
        errors.push(
            SyntaxError::new(
                SyntaxErrorKind::Unclosed,
                format!("unclosed `{open_ch}`"),
                Span::new(open_pos, open_pos + 1),
                format!("this `{open_ch}` is never closed"),
            )
            .with_help(format!("add `{want}` where the `{open_ch}` group ends")),
        );
    }
    errors
}

/// Whether the next token that is not a comment is a lone `=`.
fn next_is_assign(src: &str, rest: &[Tok]) -> bool {
    rest.iter()
        .find(|t| t.kind != TokKind::Comment)
        .is_some_and(|t| &src[t.start..t.end] == "=")
}

/// The position of the innermost bracket `open` still open before `before`.
fn open_position(tokens: &[Tok], src: &str, before: usize, open: u8) -> usize {
    let mut stack: Vec<usize> = Vec::new();
    for t in tokens.iter().take_while(|t| t.start < before) {
        if t.kind != TokKind::Punct || t.end - t.start != 1 {
            continue;
        }
        match src.as_bytes()[t.start] {
            b'(' | b'[' | b'{' => stack.push(t.start),
            b')' | b']' | b'}' => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack
        .last()
        .copied()
        .filter(|&p| src.as_bytes()[p] == open)
        .unwrap_or(0)
}

fn stray_error(src: &str, t: &Tok) -> SyntaxError {
    let text = &src[t.start..t.end];
    let help = match text.chars().next() {
        Some('!') => Some("write `not x` for negation; `!=` compares"),
        Some('&') => Some("write `and`"),
        Some('|') => Some("write `or`"),
        Some('\'') => Some("strings use double quotes: \"...\""),
        Some('\\') => Some("a backslash is only allowed inside a string"),
        Some('^') => Some("write `**` for a power"),
        _ => None,
    };
    let shown = match text.chars().next() {
        Some(c) if c.is_control() || c.is_whitespace() => format!("{:?}", c),
        _ => format!("`{text}`"),
    };
    let mut e = SyntaxError::new(
        SyntaxErrorKind::StrayChar,
        if text.chars().count() > 1 {
            format!("unexpected characters {shown}")
        } else {
            format!("unexpected character {shown}")
        },
        Span::new(t.start, t.end),
        "not part of the Kiln language",
    );
    if let Some(h) = help {
        e = e.with_help(h);
    }
    e
}
