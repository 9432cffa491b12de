//! Shapes whose dimensions may be symbolic (`batch`, `seq`, `seq - 1`, `batch*seq`).
//!
//! A spec is checked once for every batch size and sequence length, so dims are integer polynomials
//! over named symbols, kept in a canonical form (sorted monomials, no zero coefficients) so that two
//! dims are equal exactly when they are structurally equal. Binding the symbols to integers (from a
//! run config) turns every dim into a constant; see `Graph::bind`.

use std::collections::BTreeMap;
use std::fmt;

use super::IrError;

/// A named symbolic dimension, such as `batch` or `seq`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol(String);

impl Symbol {
    pub fn new(name: impl Into<String>) -> Self {
        Symbol(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Values for the symbols of a graph (`batch = 8, seq = 256`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    map: BTreeMap<Symbol, i64>,
}

impl Bindings {
    pub fn new() -> Self {
        Self::default()
    }
    /// Builder-style insert: `Bindings::new().with("batch", 4).with("seq", 16)`.
    pub fn with(mut self, name: &str, value: i64) -> Self {
        self.insert(name, value);
        self
    }
    pub fn insert(&mut self, name: &str, value: i64) {
        self.map.insert(Symbol::new(name), value);
    }
    pub fn get(&self, name: &str) -> Option<i64> {
        self.map.get(&Symbol::new(name)).copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Symbol, i64)> {
        self.map.iter().map(|(k, v)| (k, *v))
    }
}

impl<'a> FromIterator<(&'a str, i64)> for Bindings {
    fn from_iter<T: IntoIterator<Item = (&'a str, i64)>>(iter: T) -> Self {
        let mut b = Bindings::new();
        for (k, v) in iter {
            b.insert(k, v);
        }
        b
    }
}

/// A dimension: a polynomial with `i64` coefficients over symbols, in canonical form.
///
/// Each key is a monomial: a sorted list of symbols (repeats mean powers; the empty list is the
/// constant term). Zero coefficients are never stored, so `Dim` equality is polynomial equality.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dim {
    terms: BTreeMap<Vec<Symbol>, i64>,
}

impl Dim {
    /// The constant dim `n`.
    pub fn c(n: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if n != 0 {
            terms.insert(Vec::new(), n);
        }
        Dim { terms }
    }

    /// The symbolic dim `name`.
    pub fn sym(name: &str) -> Dim {
        let mut terms = BTreeMap::new();
        terms.insert(vec![Symbol::new(name)], 1);
        Dim { terms }
    }

    /// `Some(n)` when the dim has no symbols.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    pub fn is_const(&self) -> bool {
        self.as_const().is_some()
    }

    /// The symbols that occur in the dim, sorted and without repeats.
    pub fn symbols(&self) -> Vec<Symbol> {
        let mut out: Vec<Symbol> = self.terms.keys().flatten().cloned().collect();
        out.sort();
        out.dedup();
        out
    }

    fn add_term(&mut self, mono: Vec<Symbol>, coef: i64) {
        if coef == 0 {
            return;
        }
        let entry = self.terms.entry(mono).or_insert(0);
        *entry = entry.wrapping_add(coef);
        if *entry == 0 {
            self.terms.retain(|_, c| *c != 0);
        }
    }

    pub fn add(&self, other: &Dim) -> Dim {
        let mut out = self.clone();
        for (m, c) in &other.terms {
            out.add_term(m.clone(), *c);
        }
        out
    }

    pub fn sub(&self, other: &Dim) -> Dim {
        let mut out = self.clone();
        for (m, c) in &other.terms {
            out.add_term(m.clone(), c.wrapping_neg());
        }
        out
    }

    pub fn mul(&self, other: &Dim) -> Dim {
        let mut out = Dim::default();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m: Vec<Symbol> = ma.iter().chain(mb.iter()).cloned().collect();
                m.sort();
                out.add_term(m, ca.wrapping_mul(*cb));
            }
        }
        out
    }

    /// `self / d` when every coefficient is divisible by `d`; `None` otherwise (and for `d == 0`).
    pub fn div_exact(&self, d: i64) -> Option<Dim> {
        if d == 0 {
            return None;
        }
        let mut out = Dim::default();
        for (m, c) in &self.terms {
            if c % d != 0 {
                return None;
            }
            out.add_term(m.clone(), c / d);
        }
        Some(out)
    }

    /// Substitutes every symbol; an unbound symbol or an overflow is an error.
    pub fn bind(&self, b: &Bindings) -> Result<i64, IrError> {
        let mut total: i64 = 0;
        for (m, c) in &self.terms {
            let mut v = *c;
            for s in m {
                let x = b.map.get(s).ok_or_else(|| IrError::UnboundSymbol {
                    symbol: s.0.clone(),
                })?;
                v = v.checked_mul(*x).ok_or_else(|| IrError::Overflow {
                    dim: self.to_string(),
                })?;
            }
            total = total.checked_add(v).ok_or_else(|| IrError::Overflow {
                dim: self.to_string(),
            })?;
        }
        Ok(total)
    }

    /// Substitutes the bound symbols and keeps the others symbolic.
    pub fn substitute(&self, b: &Bindings) -> Dim {
        let mut out = Dim::default();
        for (m, c) in &self.terms {
            let mut coef = *c;
            let mut rest = Vec::new();
            for s in m {
                match b.map.get(s) {
                    Some(x) => coef = coef.wrapping_mul(*x),
                    None => rest.push(s.clone()),
                }
            }
            out.add_term(rest, coef);
        }
        out
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Dim {
        Dim::c(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::sym(s)
    }
}

impl std::ops::Add for Dim {
    type Output = Dim;
    fn add(self, o: Dim) -> Dim {
        Dim::add(&self, &o)
    }
}
impl std::ops::Sub for Dim {
    type Output = Dim;
    fn sub(self, o: Dim) -> Dim {
        Dim::sub(&self, &o)
    }
}
impl std::ops::Mul for Dim {
    type Output = Dim;
    fn mul(self, o: Dim) -> Dim {
        Dim::mul(&self, &o)
    }
}
impl std::ops::Add<i64> for Dim {
    type Output = Dim;
    fn add(self, o: i64) -> Dim {
        Dim::add(&self, &Dim::c(o))
    }
}
impl std::ops::Sub<i64> for Dim {
    type Output = Dim;
    fn sub(self, o: i64) -> Dim {
        Dim::sub(&self, &Dim::c(o))
    }
}
impl std::ops::Mul<i64> for Dim {
    type Output = Dim;
    fn mul(self, o: i64) -> Dim {
        Dim::mul(&self, &Dim::c(o))
    }
}

impl fmt::Display for Dim {
    /// Highest degree first, then lexicographic; the constant last: `batch*seq + 2*seq - 1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        let mut terms: Vec<(&Vec<Symbol>, i64)> = self.terms.iter().map(|(m, c)| (m, *c)).collect();
        terms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(b.0)));
        for (i, (mono, coef)) in terms.into_iter().enumerate() {
            let mag = coef.unsigned_abs();
            match (i, coef < 0) {
                (0, true) => f.write_str("-")?,
                (0, false) => {}
                (_, true) => f.write_str(" - ")?,
                (_, false) => f.write_str(" + ")?,
            }
            if mono.is_empty() {
                write!(f, "{mag}")?;
                continue;
            }
            if mag != 1 {
                write!(f, "{mag}*")?;
            }
            for (j, s) in mono.iter().enumerate() {
                if j > 0 {
                    f.write_str("*")?;
                }
                f.write_str(&s.0)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A tensor shape: one `Dim` per axis, outermost first. Rank 0 is a scalar.
pub type Shape = Vec<Dim>;

/// Builds a shape from constants: `shape_of(&[2, 3])`.
pub fn shape_of(dims: &[i64]) -> Shape {
    dims.iter().map(|d| Dim::c(*d)).collect()
}

/// Total element count as a dim.
pub fn numel(shape: &[Dim]) -> Dim {
    shape.iter().fold(Dim::c(1), |acc, d| acc.mul(d))
}

/// `[batch, seq, 768]`.
pub fn shape_str(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Binds every dim; negative sizes are errors.
pub fn bind_shape(shape: &[Dim], b: &Bindings) -> Result<Vec<usize>, IrError> {
    shape
        .iter()
        .map(|d| {
            let v = d.bind(b)?;
            usize::try_from(v).map_err(|_| IrError::NegativeDim {
                dim: d.to_string(),
                value: v,
            })
        })
        .collect()
}

/// Element types. Byte sizes are the storage sizes (`Bool` is one byte).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    I32,
    I64,
    Bool,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
    }
    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }
    /// Parses the printed name (`f32`, `bf16`, ...).
    pub fn from_name(s: &str) -> Option<DType> {
        Some(match s {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            "i32" => DType::I32,
            "i64" => DType::I64,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a value: element type and shape. Prints as `f32[batch, seq, 768]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> Dim {
        numel(&self.shape)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, shape_str(&self.shape))
    }
}

impl fmt::Debug for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_equality_and_display() {
        let b = Dim::sym("batch");
        let s = Dim::sym("seq");
        assert_eq!(b.mul(&s), s.mul(&b));
        assert_eq!(b.mul(&s).to_string(), "batch*seq");
        assert_eq!((s.clone() - 1).to_string(), "seq - 1");
        assert_eq!(Dim::c(768).to_string(), "768");
        assert_eq!(Dim::c(0).to_string(), "0");
        assert_eq!((s.clone() - s.clone()), Dim::c(0));
        let p = b.mul(&s) + s.clone() * 2 - 1;
        assert_eq!(p.to_string(), "batch*seq + 2*seq - 1");
        assert_eq!((Dim::c(3) - s.clone()).to_string(), "-seq + 3");
        assert_eq!(s.mul(&s).to_string(), "seq*seq");
    }

    #[test]
    fn div_exact_and_bind() {
        let s = Dim::sym("seq");
        let d = s.clone() * 4 + 8;
        assert_eq!(d.div_exact(4), Some(s.clone() + 2));
        assert_eq!(d.div_exact(3), None);
        assert_eq!(d.div_exact(0), None);
        let b = Bindings::new().with("seq", 5);
        assert_eq!(d.bind(&b).unwrap(), 28);
        assert!(Dim::sym("batch").bind(&b).is_err());
        assert_eq!(
            Dim::sym("batch").mul(&s).substitute(&b),
            Dim::sym("batch") * 5
        );
        assert_eq!(Dim::c(7).as_const(), Some(7));
        assert_eq!(s.as_const(), None);
    }
}
