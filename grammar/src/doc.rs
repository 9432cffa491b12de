//! A small layout engine for the formatter (Wadler's "prettier printer", as Prettier implements
//! it): a statement is described once as a `Doc` with optional line breaks grouped together, and
//! each group is printed on one line if what follows it up to the next line break fits in the
//! width, or else with all of its breaks taken.
//!
//! The formatter uses groups only for bracketed lists (arguments, parameters, list literals), so a
//! long statement breaks like Black or rustfmt would break it: the outermost list that does not fit
//! goes one element per line, with a trailing comma.

/// A layout description.
#[derive(Clone, Debug)]
pub(crate) enum Doc {
    Text(String),
    /// A space when its group is flat, a newline when broken.
    Line,
    /// Nothing when its group is flat, a newline when broken.
    SoftLine,
    /// Always a newline; the groups around it break (it follows an end-of-line comment).
    HardLine,
    /// Text printed only when its group is broken (a trailing comma).
    IfBreak(&'static str),
    /// Lines inside are indented one more level.
    Indent(Box<Doc>),
    /// Breaks all of its lines or none of them.
    Group(Box<Doc>),
    Concat(Vec<Doc>),
}

impl Doc {
    pub(crate) fn text(s: impl Into<String>) -> Doc {
        Doc::Text(s.into())
    }

    /// `open`, the items separated by `,`, `close`: one line, or one item per line with a
    /// trailing comma.
    pub(crate) fn bracketed(open: &str, items: Vec<Doc>, close: &str) -> Doc {
        if items.is_empty() {
            return Doc::text(format!("{open}{close}"));
        }
        let mut inner = vec![Doc::SoftLine];
        let n = items.len();
        for (i, item) in items.into_iter().enumerate() {
            inner.push(item);
            if i + 1 < n {
                inner.push(Doc::text(","));
                inner.push(Doc::Line);
            }
        }
        inner.push(Doc::IfBreak(","));
        Doc::Group(Box::new(Doc::Concat(vec![
            Doc::text(open),
            Doc::Indent(Box::new(Doc::Concat(inner))),
            Doc::SoftLine,
            Doc::text(close),
        ])))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flat,
    Break,
}

const INDENT: usize = 4;

/// Prints `doc` starting at column `indent` (which is also the indentation of broken lines), in
/// at most `width` columns where the layout allows.
pub(crate) fn render(doc: &Doc, indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut col = indent;
    let mut stack: Vec<(usize, Mode, &Doc)> = vec![(indent, Mode::Break, doc)];
    while let Some((ind, mode, d)) = stack.pop() {
        match d {
            Doc::Text(s) => {
                out.push_str(s);
                col += s.chars().count();
            }
            Doc::HardLine | Doc::Line | Doc::SoftLine if mode == Mode::Break => {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', ind));
                col = ind;
            }
            Doc::Line => {
                out.push(' ');
                col += 1;
            }
            Doc::SoftLine => {}
            Doc::IfBreak(s) => {
                if mode == Mode::Break {
                    out.push_str(s);
                    col += s.chars().count();
                }
            }
            Doc::Indent(inner) => stack.push((ind + INDENT, mode, inner)),
            Doc::Concat(parts) => stack.extend(parts.iter().rev().map(|p| (ind, mode, p))),
            Doc::HardLine => {
                // Only reachable in a flat group, which cannot hold one (see `Group`); stay safe.
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', ind));
                col = ind;
            }
            Doc::Group(inner) => {
                let flat = !has_hard_line(inner)
                    && (mode == Mode::Flat
                        || fits(
                            width.saturating_sub(col) as isize,
                            (ind, Mode::Flat, inner),
                            &stack,
                        ));
                stack.push((ind, if flat { Mode::Flat } else { Mode::Break }, inner));
            }
        }
    }
    out
}

/// Whether `first`, and whatever follows it up to the next line break, fits in `room` columns.
fn fits(mut room: isize, first: (usize, Mode, &Doc), rest: &[(usize, Mode, &Doc)]) -> bool {
    let mut local = vec![first];
    let mut rest_index = rest.len();
    loop {
        if room < 0 {
            return false;
        }
        let Some((ind, mode, d)) = local.pop() else {
            if rest_index == 0 {
                return true;
            }
            rest_index -= 1;
            local.push(rest[rest_index]);
            continue;
        };
        match d {
            Doc::Text(s) => room -= s.chars().count() as isize,
            Doc::HardLine => return true,
            Doc::Line | Doc::SoftLine if mode == Mode::Break => return true,
            Doc::Line => room -= 1,
            Doc::SoftLine => {}
            Doc::IfBreak(s) => {
                if mode == Mode::Break {
                    room -= s.chars().count() as isize;
                }
            }
            Doc::Indent(inner) => local.push((ind + INDENT, mode, inner)),
            Doc::Concat(parts) => local.extend(parts.iter().rev().map(|p| (ind, mode, p))),
            // A group not yet laid out: its first break in break mode ends the line.
            Doc::Group(inner) => local.push((ind, mode, inner)),
        }
    }
}

/// Whether a hard line break lies inside: such a group cannot be flat.
fn has_hard_line(doc: &Doc) -> bool {
    match doc {
        Doc::HardLine => true,
        Doc::Text(_) | Doc::Line | Doc::SoftLine | Doc::IfBreak(_) => false,
        Doc::Indent(inner) | Doc::Group(inner) => has_hard_line(inner),
        Doc::Concat(parts) => parts.iter().any(has_hard_line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[&str]) -> Doc {
        Doc::Concat(vec![
            Doc::text(name),
            Doc::bracketed("(", args.iter().map(|a| Doc::text(*a)).collect(), ")"),
        ])
    }

    #[test]
    fn a_group_that_fits_stays_flat() {
        assert_eq!(render(&call("f", &["a", "b"]), 0, 10), "f(a, b)");
    }

    #[test]
    fn a_group_that_does_not_fit_breaks_with_a_trailing_comma() {
        assert_eq!(
            render(&call("f", &["aaaa", "bbbb"]), 4, 12),
            "f(\n        aaaa,\n        bbbb,\n    )"
        );
    }

    #[test]
    fn text_after_a_group_counts_until_the_next_break() {
        let d = Doc::Concat(vec![call("f", &["a"]), Doc::text(" as long_label")]);
        assert_eq!(render(&d, 0, 10), "f(\n    a,\n) as long_label");
        assert_eq!(render(&d, 0, 40), "f(a) as long_label");
    }

    #[test]
    fn the_outer_group_breaks_first() {
        let inner = call("g", &["x", "y"]);
        let d = Doc::Concat(vec![
            Doc::text("f"),
            Doc::bracketed("(", vec![inner, Doc::text("zzzzzzzz")], ")"),
        ]);
        assert_eq!(render(&d, 0, 16), "f(\n    g(x, y),\n    zzzzzzzz,\n)");
    }
}
