//! The spanned syntax tree of a `.kiln` file.
//!
//! This is the contract between the parser (which produces it) and the compiler's `sema` (which
//! resolves and checks it). It knows nothing of shapes or semantics: every node keeps the byte span
//! of the text it came from so that diagnostics can point at the user's file. Comments are kept on
//! the side (`File::comments`) so that `kiln fmt` can re-emit them.

/// A half-open byte range `[start, end)` into the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn join(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> Self {
        (s.start, s.end - s.start).into()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole file: items in source order, plus the comments (for the formatter).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct File {
    pub items: Vec<Item>,
    pub comments: Vec<Comment>,
}

/// A `# ...` comment; `text` excludes the leading `#` and the newline.
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `fn gelu(x) = 0.5 * x * (1.0 + erf(x / sqrt(2.0)))`
    Fn(FnDef),
    /// `block`, `model` and `objective` share one shape: a name, parameters and a statement body.
    Block(BlockDef),
    /// `config gpt2_medium = gpt2(d = 1024, layers = 24, heads = 16)`
    Config(ConfigDef),
    /// `plan gpt3_175b_megatron for gpt3_175b { tensor = 8 ... }`
    Plan(PlanDef),
    /// `hf gpt2_hf for gpt2 { tensor "transformer.wte.weight" = "wte" ... }`
    Hf(HfDef),
}

impl Item {
    pub fn name(&self) -> &Ident {
        match self {
            Item::Fn(f) => &f.name,
            Item::Block(b) => &b.name,
            Item::Config(c) => &c.name,
            Item::Plan(p) => &p.name,
            Item::Hf(h) => &h.name,
        }
    }
    pub fn span(&self) -> Span {
        match self {
            Item::Fn(f) => f.span,
            Item::Block(b) => b.span,
            Item::Config(c) => c.span,
            Item::Plan(p) => p.span,
            Item::Hf(h) => h.span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub body: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Block,
    Model,
    Objective,
}

impl BlockKind {
    pub fn keyword(self) -> &'static str {
        match self {
            BlockKind::Block => "block",
            BlockKind::Model => "model",
            BlockKind::Objective => "objective",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub kind: BlockKind,
    pub name: Ident,
    pub params: Vec<ParamDecl>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A formal parameter of a `fn`/`block`/`model`/`objective`:
/// `x`, `x: [..., d]`, `eps = 1e-5`, `tokens: i32[batch, seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: Option<TensorType>,
    pub default: Option<Expr>,
    pub span: Span,
}

/// `f32[batch, seq, d]`, `[..., d]`: an optional dtype name and a list of dims.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    pub dtype: Option<Ident>,
    pub dims: Vec<DimPat>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DimPat {
    /// `...`: any number of leading dims.
    Ellipsis(Span),
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigDef {
    pub name: Ident,
    /// A model or another config.
    pub base: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanDef {
    pub name: Ident,
    /// The config (or model) the plan is for.
    pub target: Ident,
    pub entries: Vec<PlanEntry>,
    pub span: Span,
}

/// How a model's parameters sit in a Hugging Face checkpoint (see `compiler::sema::hf`).
#[derive(Clone, Debug, PartialEq)]
pub struct HfDef {
    pub name: Ident,
    /// The model block the layout is for.
    pub target: Ident,
    pub entries: Vec<HfEntry>,
    pub span: Span,
}

/// `key [subject] = value, value, ...`: `config d = "n_embd"`, `tensor "x.weight" = "x"`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfEntry {
    pub key: Ident,
    pub subject: Option<HfSubject>,
    pub values: Vec<Expr>,
    pub span: Span,
}

/// What an entry is about: a hyperparameter name or a quoted key or tensor name.
#[derive(Clone, Debug, PartialEq)]
pub enum HfSubject {
    Name(Ident),
    /// The string's contents (no escapes are allowed in it) and the span of the literal.
    Str(String, Span),
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlanEntry {
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input tokens: i32[batch, seq]`
    Input {
        name: Ident,
        ty: TensorType,
        span: Span,
    },
    /// `param weight: [d, out] = normal(0.02)`
    Param {
        name: Ident,
        ty: TensorType,
        init: Expr,
        span: Span,
    },
    /// `x = expr`
    Assign {
        target: Ident,
        value: Expr,
        span: Span,
    },
    /// `return expr`
    Return { value: Expr, span: Span },
    /// `repeat layers as h { ... }`, `repeat i in layers as h { ... }`
    Repeat {
        var: Option<Ident>,
        count: Expr,
        label: Option<Ident>,
        body: Vec<Stmt>,
        span: Span,
    },
    /// `if cond { ... } else { ... }`; `else if` is an `If` alone in `else_body`.
    If {
        cond: Expr,
        then_body: Vec<Stmt>,
        else_body: Option<Vec<Stmt>>,
        span: Span,
    },
    /// `assert cond, "message"`
    Assert {
        cond: Expr,
        message: Option<String>,
        span: Span,
    },
    /// `data span_corruption(noise_density = 0.15)`: a data-side transform of an objective.
    Data { call: Expr, span: Span },
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Input { span, .. }
            | Stmt::Param { span, .. }
            | Stmt::Assign { span, .. }
            | Stmt::Return { span, .. }
            | Stmt::Repeat { span, .. }
            | Stmt::If { span, .. }
            | Stmt::Assert { span, .. }
            | Stmt::Data { span, .. } => *span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    MatMul,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::FloorDiv => "//",
            BinaryOp::Mod => "%",
            BinaryOp::Pow => "**",
            BinaryOp::MatMul => "@",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    /// The value and the literal's text as written (`1e-5` stays `1e-5` when formatted).
    Float(f64, String),
    Bool(bool),
    Str(String),
    None,
    Name(Ident),
    /// `[a, b, c]`
    List(Vec<Expr>),
    Unary {
        op: UnaryOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `layernorm(x, eps = 1e-5) as ln_1`: the label names the call's parameter scope.
    Call {
        callee: Ident,
        args: Vec<Arg>,
        label: Option<Ident>,
    },
    /// `tokens[:, :-1]`
    Index {
        base: Box<Expr>,
        items: Vec<IndexItem>,
    },
    /// `cfg.d` (reserved: member access on records)
    Member {
        base: Box<Expr>,
        name: Ident,
    },
    /// `if c then a else b`
    IfElse {
        cond: Box<Expr>,
        then_expr: Box<Expr>,
        else_expr: Box<Expr>,
    },
    /// `(e)`: kept so that the formatter can preserve the user's grouping.
    Paren(Box<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    Expr(Expr),
    /// `start:end:step`, each optional
    Slice {
        start: Option<Expr>,
        end: Option<Expr>,
        step: Option<Expr>,
        span: Span,
    },
    /// `...`
    Ellipsis(Span),
}
