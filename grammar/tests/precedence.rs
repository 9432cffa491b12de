//! Expression structure, checked two ways:
//! - a table of tricky expressions with their expected tree written by hand as s-expressions;
//! - a differential test: random trees are generated, parenthesised where a reference precedence
//!   table (written here, independently of the grammar) says they must be, printed with
//!   `format_expr`, parsed back, and compared with the generated tree.

use kiln_grammar::ast::*;
use kiln_grammar::ast_eq::expr_without_spans;
use kiln_grammar::fmt::format_expr;
use kiln_grammar::parse;

fn parse_expr(src: &str) -> Result<Expr, String> {
    let text = format!("fn f() = {src}\n");
    match parse(&text) {
        Ok(file) => match file.items.into_iter().next() {
            Some(Item::Fn(f)) => Ok(f.body),
            other => Err(format!("unexpected item {other:?}")),
        },
        Err(errors) => Err(errors
            .iter()
            .map(|e| format!("{}: {}", e.code(), e.message))
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// A compact rendering of the tree: `(+ a (* b c))`, `(neg x)`, `(call f x (= k v)) as l`.
fn sexpr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(_, text) => text.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::None => "none".into(),
        ExprKind::Name(id) => id.name.clone(),
        ExprKind::List(items) => format!(
            "[{}]",
            items.iter().map(sexpr).collect::<Vec<_>>().join(" ")
        ),
        ExprKind::Unary {
            op: UnaryOp::Neg,
            operand,
        } => format!("(neg {})", sexpr(operand)),
        ExprKind::Unary {
            op: UnaryOp::Not,
            operand,
        } => format!("(not {})", sexpr(operand)),
        ExprKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", op.symbol(), sexpr(lhs), sexpr(rhs))
        }
        ExprKind::Call {
            callee,
            args,
            label,
        } => {
            let mut s = format!("(call {}", callee.name);
            for a in args {
                match &a.name {
                    Some(n) => s.push_str(&format!(" (= {} {})", n.name, sexpr(&a.value))),
                    None => s.push_str(&format!(" {}", sexpr(&a.value))),
                }
            }
            s.push(')');
            if let Some(l) = label {
                s.push_str(&format!(" as {}", l.name));
            }
            s
        }
        ExprKind::Index { base, items } => {
            let items: Vec<String> = items
                .iter()
                .map(|i| match i {
                    IndexItem::Expr(e) => sexpr(e),
                    IndexItem::Ellipsis(_) => "...".into(),
                    IndexItem::Slice {
                        start, end, step, ..
                    } => {
                        let part = |p: &Option<Expr>| p.as_ref().map_or("_".to_string(), sexpr);
                        format!("(slice {} {} {})", part(start), part(end), part(step))
                    }
                })
                .collect();
            format!("(index {} {})", sexpr(base), items.join(" "))
        }
        ExprKind::Member { base, name } => format!("(. {} {})", sexpr(base), name.name),
        ExprKind::IfElse {
            cond,
            then_expr,
            else_expr,
        } => {
            format!(
                "(if {} {} {})",
                sexpr(cond),
                sexpr(then_expr),
                sexpr(else_expr)
            )
        }
        ExprKind::Paren(inner) => format!("(paren {})", sexpr(inner)),
    }
}

#[test]
fn expressions_have_the_documented_structure() {
    let table = [
        ("a + b * c", "(+ a (* b c))"),
        ("a - b - c", "(- (- a b) c)"),
        ("a / b // c % d @ e", "(@ (% (// (/ a b) c) d) e)"),
        ("-x ** 2", "(neg (** x 2))"),
        ("2 ** -1", "(** 2 (neg 1))"),
        ("a ** b ** c", "(** a (** b c))"),
        ("-a ** -b ** c", "(neg (** a (neg (** b c))))"),
        ("- -x", "(neg (neg x))"),
        ("-x * y", "(* (neg x) y)"),
        ("not a and b or c", "(or (and (not a) b) c)"),
        ("not a == b", "(not (== a b))"),
        ("not not a", "(not (not a))"),
        ("a or b and c", "(or a (and b c))"),
        ("a + 1 < b * 2", "(< (+ a 1) (* b 2))"),
        ("if a then b else c + 1", "(if a b (+ c 1))"),
        ("if a then b else if c then d else e", "(if a b (if c d e))"),
        ("if if a then b else c then d else e", "(if (if a b c) d e)"),
        ("if a then if b then c else d else e", "(if a (if b c d) e)"),
        ("f(x) as l @ w", "(@ (call f x) as l w)"),
        (
            "f(g(x) as i, k = 2) as o",
            "(call f (call g x) as i (= k 2)) as o",
        ),
        ("f(x) as l[0]", "(index (call f x) as l 0)"),
        ("x[:, :-1]", "(index x (slice _ _ _) (slice _ (neg 1) _))"),
        ("x[1:]", "(index x (slice 1 _ _))"),
        ("x[::2]", "(index x (slice _ _ 2))"),
        ("x[a:b:c, ..., 0]", "(index x (slice a b c) ... 0)"),
        ("x[1][2]", "(index (index x 1) 2)"),
        ("a.b.c", "(. (. a b) c)"),
        ("-a.b[0]", "(neg (index (. a b) 0))"),
        ("(a + b) * c", "(* (paren (+ a b)) c)"),
        ("[1, [2, 3],]", "[1 [2 3]]"),
        ("model(x)", "(call model x)"),
        ("50_257", "50257"),
        ("1e-5 + 2.5E+3 + 1_0.5", "(+ (+ 1e-5 2.5E+3) 1_0.5)"),
        ("\"a\\\"b\\\\c\\n\"", "\"a\\\"b\\\\c\\n\""),
        ("true and false or none", "(or (and true false) none)"),
    ];
    let mut failures = Vec::new();
    for (src, want) in table {
        match parse_expr(src) {
            Ok(e) if sexpr(&e) == want => {}
            Ok(e) => failures.push(format!("{src}\n   want {want}\n    got {}", sexpr(&e))),
            Err(msg) => failures.push(format!("{src}\n   want {want}\n    got error {msg}")),
        }
    }
    assert!(
        failures.is_empty(),
        "wrong structure:\n{}",
        failures.join("\n")
    );
}

#[test]
fn invalid_expressions_are_rejected() {
    for (src, code) in [
        ("a < b < c", "syntax::chained_comparison"),
        ("a == b != c", "syntax::chained_comparison"),
        ("f(a = 1, b)", "syntax::positional_after_named"),
        ("1 + not a", "syntax::unexpected"),
        ("1 + if a then b else c", "syntax::unexpected"),
        ("(f)(x)", "syntax::unexpected"),
        ("x[]", "syntax::unexpected"),
        (".5", "syntax::unexpected"),
        ("2.", "syntax::unexpected"),
        ("1_", "syntax::unexpected"),
        ("9223372036854775808", "syntax::int_overflow"),
        ("\"\\x\"", "syntax::bad_escape"),
    ] {
        let text = format!("fn f() = {src}\n");
        match parse(&text) {
            Ok(_) => panic!("`{src}` should not parse"),
            Err(errors) => {
                let codes: Vec<&str> = errors.iter().map(|e| e.code()).collect();
                assert!(
                    codes.contains(&code),
                    "`{src}`: expected {code}, got {codes:?}"
                );
            }
        }
    }
    // The largest integer still parses.
    assert!(parse_expr("9223372036854775807").is_ok());
}

// ---- differential: random trees against an independent precedence table ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Binding strength in the reference table: higher binds tighter.
const IF: u8 = 0;
const OR: u8 = 1;
const AND: u8 = 2;
const NOT: u8 = 3;
const CMP: u8 = 4;
const ADD: u8 = 5;
const MUL: u8 = 6;
const NEG: u8 = 7;
const POW: u8 = 8;
const ATOM: u8 = 9;

fn binary_level(op: BinaryOp) -> u8 {
    use BinaryOp::*;
    match op {
        Or => OR,
        And => AND,
        Eq | Ne | Lt | Le | Gt | Ge => CMP,
        Add | Sub => ADD,
        Mul | Div | FloorDiv | Mod | MatMul => MUL,
        Pow => POW,
    }
}

fn level(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::IfElse { .. } => IF,
        ExprKind::Unary {
            op: UnaryOp::Not, ..
        } => NOT,
        ExprKind::Unary {
            op: UnaryOp::Neg, ..
        } => NEG,
        ExprKind::Binary { op, .. } => binary_level(*op),
        _ => ATOM,
    }
}

fn ex(kind: ExprKind) -> Expr {
    Expr {
        kind,
        span: Span::default(),
    }
}

fn id(name: &str) -> Ident {
    Ident {
        name: name.to_string(),
        span: Span::default(),
    }
}

/// Wraps `e` in parentheses when it binds more loosely than `min`.
fn at_least(e: Expr, min: u8) -> Expr {
    if level(&e) < min {
        ex(ExprKind::Paren(Box::new(e)))
    } else {
        e
    }
}

const OPS: [BinaryOp; 16] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::FloorDiv,
    BinaryOp::Mod,
    BinaryOp::Pow,
    BinaryOp::MatMul,
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::And,
    BinaryOp::Or,
];

fn gen(rng: &mut Rng, depth: u32) -> Expr {
    let leaf = depth == 0 || rng.below(4) == 0;
    if leaf {
        return match rng.below(7) {
            0 => ex(ExprKind::Int(rng.below(1000) as i64)),
            1 => ex(ExprKind::Float(2.5, "2.5".into())),
            2 => ex(ExprKind::Bool(rng.below(2) == 0)),
            3 => ex(ExprKind::None),
            4 => ex(ExprKind::Str("s \" \\".into())),
            _ => ex(ExprKind::Name(id(["a", "b", "x", "layers"][rng.below(4)]))),
        };
    }
    let d = depth - 1;
    match rng.below(10) {
        0..=3 => {
            let op = OPS[rng.below(OPS.len())];
            let p = binary_level(op);
            let (lmin, rmin) = match op {
                BinaryOp::Pow => (ATOM, NEG),
                _ if p == CMP => (p + 1, p + 1),
                _ => (p, p + 1),
            };
            let lhs = at_least(gen(rng, d), lmin);
            let rhs = at_least(gen(rng, d), rmin);
            ex(ExprKind::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            })
        }
        4 => {
            let (op, min) = if rng.below(2) == 0 {
                (UnaryOp::Neg, NEG)
            } else {
                (UnaryOp::Not, NOT)
            };
            ex(ExprKind::Unary {
                op,
                operand: Box::new(at_least(gen(rng, d), min)),
            })
        }
        5 => ex(ExprKind::IfElse {
            cond: Box::new(gen(rng, d)),
            then_expr: Box::new(gen(rng, d)),
            else_expr: Box::new(gen(rng, d)),
        }),
        6 => {
            let n = rng.below(4);
            let mut args = Vec::new();
            for i in 0..n {
                let name = (i + 1 == n && rng.below(2) == 0).then(|| id("k"));
                args.push(Arg {
                    name,
                    value: gen(rng, d),
                    span: Span::default(),
                });
            }
            let label = (rng.below(3) == 0).then(|| id("lbl"));
            ex(ExprKind::Call {
                callee: id(["f", "model"][rng.below(2)]),
                args,
                label,
            })
        }
        7 => {
            let base = at_least(gen(rng, d), ATOM);
            let mut items = Vec::new();
            for _ in 0..1 + rng.below(3) {
                items.push(match rng.below(3) {
                    0 => IndexItem::Expr(gen(rng, d)),
                    1 => IndexItem::Ellipsis(Span::default()),
                    _ => {
                        let mut part = || (rng.below(2) == 0).then(|| gen(rng, d));
                        let (start, end, step) = (part(), part(), part());
                        IndexItem::Slice {
                            start,
                            end,
                            step,
                            span: Span::default(),
                        }
                    }
                });
            }
            ex(ExprKind::Index {
                base: Box::new(base),
                items,
            })
        }
        8 => ex(ExprKind::Member {
            base: Box::new(at_least(gen(rng, d), ATOM)),
            name: id("d"),
        }),
        _ => ex(ExprKind::List(
            (0..rng.below(3)).map(|_| gen(rng, d)).collect(),
        )),
    }
}

#[test]
fn random_trees_survive_printing_and_parsing() {
    let mut rng = Rng(0x00C0_FFEE);
    for case in 0..3000 {
        let tree = gen(&mut rng, 5);
        let text = format_expr(&tree);
        match parse_expr(&text) {
            Ok(parsed) => assert_eq!(
                sexpr(&expr_without_spans(&parsed)),
                sexpr(&tree),
                "case {case}: `{text}` parsed into another tree"
            ),
            Err(msg) => panic!("case {case}: `{text}` does not parse: {msg}"),
        }
    }
}
