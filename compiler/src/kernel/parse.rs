//! Reads back the text form written by [`super::print`], so that kernels can be kept as text in
//! tests and snapshots and every printed kernel can be checked to round-trip.
//!
//! Accepts exactly the printer's grammar (one item per line, `;` starts a comment that runs to
//! the end of the line, blank lines ignored). It checks syntax only: the result still has to pass
//! [`super::validate::validate`]. It never panics on any input.

use super::row::{
    BinaryOp, CmpOp, DType, IndexKind, InputAccess, InputDecl, InputId, Inst, OutputAccess,
    OutputDecl, ReduceOp, RowProgram, UnaryOp, ValueId,
};

/// A syntax error, with its 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// A name: bare (`[A-Za-z0-9_.]+`) or a Rust-escaped string literal. Returns it and the rest.
fn name(s: &str, line: usize) -> Result<(String, &str), ParseError> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((out, &rest[i + 1..])),
                '\\' => {
                    let Some((_, e)) = chars.next() else {
                        break;
                    };
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        '\\' | '"' | '\'' => out.push(e),
                        'u' => {
                            let mut hex = String::new();
                            for (_, h) in chars.by_ref() {
                                match h {
                                    '{' => {}
                                    '}' => break,
                                    _ => hex.push(h),
                                }
                            }
                            let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            match ch {
                                Some(ch) => out.push(ch),
                                None => return err(line, format!("bad escape \\u{{{hex}}}")),
                            }
                        }
                        _ => return err(line, format!("bad escape \\{e}")),
                    }
                }
                _ => out.push(c),
            }
        }
        err(line, "unterminated string")
    } else {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(s.len());
        if end == 0 {
            return err(line, format!("expected a name at `{s}`"));
        }
        Ok((s[..end].to_string(), &s[end..]))
    }
}

fn value(s: &str, line: usize) -> Result<ValueId, ParseError> {
    let s = s.trim();
    match s.strip_prefix('%').and_then(|n| n.parse::<u32>().ok()) {
        Some(n) => Ok(ValueId(n)),
        None => err(line, format!("expected a value like %3, found `{s}`")),
    }
}

fn values(s: &str, n: usize, line: usize) -> Result<Vec<ValueId>, ParseError> {
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() != n {
        return err(line, format!("expected {n} operands, found `{}`", s.trim()));
    }
    parts.iter().map(|p| value(p, line)).collect()
}

fn f32_literal(s: &str, line: usize) -> Result<f32, ParseError> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("nan(0x").and_then(|h| h.strip_suffix(')')) {
        return match u32::from_str_radix(hex, 16) {
            Ok(bits) => Ok(f32::from_bits(bits)),
            Err(_) => err(line, format!("bad NaN literal `{s}`")),
        };
    }
    s.parse::<f32>()
        .or_else(|_| err(line, format!("bad f32 literal `{s}`")))
}

fn unary(m: &str) -> Option<UnaryOp> {
    use UnaryOp::*;
    [
        Neg, Abs, Exp, Log, Sqrt, Rsqrt, Recip, Tanh, Erf, Sigmoid, Not,
    ]
    .into_iter()
    .find(|op| op.mnemonic() == m)
}

fn binary(m: &str) -> Option<BinaryOp> {
    use BinaryOp::*;
    [Add, Sub, Mul, Div, Rem, Max, Min, And, Or]
        .into_iter()
        .find(|op| op.mnemonic() == m)
}

fn cmp(m: &str) -> Option<CmpOp> {
    use CmpOp::*;
    [Eq, Ne, Lt, Le, Gt, Ge]
        .into_iter()
        .find(|op| op.mnemonic() == m)
}

fn reduce(m: &str) -> Option<ReduceOp> {
    [ReduceOp::Sum, ReduceOp::Max]
        .into_iter()
        .find(|op| op.mnemonic() == m)
}

fn index(m: &str) -> Option<IndexKind> {
    use IndexKind::*;
    [Row, Col, Rows, Cols]
        .into_iter()
        .find(|k| k.mnemonic() == m)
}

fn inst(text: &str, line: usize) -> Result<Inst, ParseError> {
    let text = text.trim();
    let (m, rest) = text.split_once(' ').unwrap_or((text, ""));
    if let Some(k) = index(m) {
        return Ok(Inst::Index(k));
    }
    if let Some(op) = unary(m) {
        return Ok(Inst::Unary(op, value(rest, line)?));
    }
    if let Some(op) = binary(m) {
        let v = values(rest, 2, line)?;
        return Ok(Inst::Binary(op, v[0], v[1]));
    }
    if let Some(op) = cmp(m) {
        let v = values(rest, 2, line)?;
        return Ok(Inst::Cmp(op, v[0], v[1]));
    }
    if let Some(op) = reduce(m) {
        return Ok(Inst::Reduce(op, value(rest, line)?));
    }
    match m {
        "load" => match rest.trim().strip_prefix("in").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(Inst::Load(InputId(n))),
            None => err(line, format!("expected an input like in0, found `{rest}`")),
        },
        "const.f32" => Ok(Inst::ConstF32(f32_literal(rest, line)?)),
        "const.i32" => match rest.trim().parse() {
            Ok(c) => Ok(Inst::ConstI32(c)),
            Err(_) => err(line, format!("bad i32 literal `{}`", rest.trim())),
        },
        "fma" => {
            let v = values(rest, 3, line)?;
            Ok(Inst::Fma(v[0], v[1], v[2]))
        }
        "select" => {
            let v = values(rest, 3, line)?;
            Ok(Inst::Select(v[0], v[1], v[2]))
        }
        "i32_to_f32" => Ok(Inst::I32ToF32(value(rest, line)?)),
        "rand_uniform" => {
            let parts: Vec<&str> = rest.split(',').collect();
            let stream = parts
                .get(2)
                .and_then(|p| p.trim().strip_prefix("stream "))
                .and_then(|n| n.trim().parse().ok());
            match (parts.len(), stream) {
                (3, Some(stream)) => Ok(Inst::RandUniform {
                    seed: value(parts[0], line)?,
                    step: value(parts[1], line)?,
                    stream,
                }),
                _ => err(line, "expected `rand_uniform %seed, %step, stream N`"),
            }
        }
        _ => err(line, format!("unknown instruction `{m}`")),
    }
}

/// The line without its `;` comment (a `;` inside a quoted name does not start one).
fn strip_comment(l: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in l.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return &l[..i],
            _ => {}
        }
    }
    l
}

/// Parses the text form of one row program.
pub fn parse_row_program(text: &str) -> Result<RowProgram, ParseError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, strip_comment(l).trim()))
        .filter(|(_, l)| !l.is_empty());
    let Some((first, header)) = lines.next() else {
        return err(1, "empty input: expected `row_kernel NAME {`");
    };
    let Some(rest) = header.strip_prefix("row_kernel ") else {
        return err(first, "expected `row_kernel NAME {`");
    };
    let (prog_name, rest) = name(rest, first)?;
    if rest.trim() != "{" {
        return err(first, "expected `{` after the kernel name");
    }
    let mut prog = RowProgram {
        name: prog_name,
        inputs: vec![],
        body: vec![],
        outputs: vec![],
    };
    let mut closed = false;
    for (line, l) in lines.by_ref() {
        if l == "}" {
            closed = true;
            break;
        }
        if let Some(rest) = l.strip_prefix('%') {
            let Some((id, text)) = rest.split_once('=') else {
                return err(line, "expected `%N = instruction`");
            };
            if id.trim().parse::<usize>().ok() != Some(prog.body.len()) {
                return err(
                    line,
                    format!(
                        "expected %{} (values are numbered in order)",
                        prog.body.len()
                    ),
                );
            }
            prog.body.push(inst(text, line)?);
        } else if let Some(rest) = l.strip_prefix("in") {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if rest[..digits].parse::<usize>().ok() != Some(prog.inputs.len()) {
                return err(
                    line,
                    format!(
                        "expected in{} (inputs are numbered in order)",
                        prog.inputs.len()
                    ),
                );
            }
            let (n, rest) = name(&rest[digits..], line)?;
            let ty = rest.trim().strip_prefix(':').map(str::trim).unwrap_or("");
            let (dtype, shape) = if let Some(s) = ty.strip_prefix("f32") {
                (DType::F32, s)
            } else if let Some(s) = ty.strip_prefix("i32") {
                (DType::I32, s)
            } else {
                return err(
                    line,
                    format!("expected `: f32[...]` or `: i32[...]`, found `{ty}`"),
                );
            };
            let access = match shape {
                "[rows, cols]" => InputAccess::Full,
                "[rows]" => InputAccess::PerRow,
                "[cols]" => InputAccess::PerCol,
                "[1]" => InputAccess::Scalar,
                _ => return err(line, format!("unknown input shape `{shape}`")),
            };
            prog.inputs.push(InputDecl {
                name: n,
                dtype,
                access,
            });
        } else if let Some(rest) = l.strip_prefix("out") {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if rest[..digits].parse::<usize>().ok() != Some(prog.outputs.len()) {
                return err(
                    line,
                    format!(
                        "expected out{} (outputs are numbered in order)",
                        prog.outputs.len()
                    ),
                );
            }
            let (n, rest) = name(&rest[digits..], line)?;
            let Some((ty, v)) = rest.rsplit_once('=') else {
                return err(line, "expected `outN NAME: f32[...] = %V`");
            };
            let ty = ty.trim().strip_prefix(':').map(str::trim).unwrap_or("");
            let access = match ty.strip_prefix("f32").unwrap_or("") {
                "[rows, cols]" => OutputAccess::Full,
                "[rows]" => OutputAccess::PerRow,
                "[cols] col_sum" => OutputAccess::ColSum,
                "[1] sum" => OutputAccess::Sum,
                _ => return err(line, format!("unknown output type `{ty}`")),
            };
            prog.outputs.push(OutputDecl {
                name: n,
                access,
                value: value(v, line)?,
            });
        } else {
            return err(line, format!("unexpected `{l}`"));
        }
    }
    if !closed {
        return err(text.lines().count().max(1), "missing `}`");
    }
    if let Some((line, l)) = lines.next() {
        return err(line, format!("unexpected `{l}` after the closing `}}`"));
    }
    Ok(prog)
}
