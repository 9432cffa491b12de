//! Properties of symbolic dims: canonical form makes ring laws hold structurally, and binding is
//! a ring homomorphism (evaluating a combination equals combining the evaluations).

use kiln_compiler::ir::{Bindings, Dim};
use proptest::prelude::*;

const SYMS: [&str; 3] = ["batch", "seq", "heads"];

/// A random polynomial: sum of up to 4 terms coef * (product of up to 2 symbols).
fn dim() -> impl Strategy<Value = Dim> {
    prop::collection::vec((-5i64..=5, prop::collection::vec(0usize..3, 0..=2)), 0..=4).prop_map(
        |terms| {
            terms.into_iter().fold(Dim::c(0), |acc, (c, syms)| {
                let mono = syms
                    .iter()
                    .fold(Dim::c(c), |m, s| m.mul(&Dim::sym(SYMS[*s])));
                acc.add(&mono)
            })
        },
    )
}

fn bindings() -> impl Strategy<Value = Bindings> {
    (1i64..50, 1i64..50, 1i64..9).prop_map(|(b, s, h)| {
        Bindings::new()
            .with("batch", b)
            .with("seq", s)
            .with("heads", h)
    })
}

proptest! {
    #[test]
    fn ring_laws_hold_structurally(a in dim(), b in dim(), c in dim()) {
        prop_assert_eq!(a.add(&b), b.add(&a));
        prop_assert_eq!(a.mul(&b), b.mul(&a));
        prop_assert_eq!(a.mul(&b.add(&c)), a.mul(&b).add(&a.mul(&c)));
        prop_assert_eq!(a.add(&b).sub(&b), a.clone());
        prop_assert_eq!(a.mul(&Dim::c(1)), a.clone());
        prop_assert_eq!(a.sub(&a), Dim::c(0));
        // Display is a function of the value (equal dims print equally).
        prop_assert_eq!(a.add(&b).to_string(), b.add(&a).to_string());
    }

    #[test]
    fn bind_is_a_homomorphism(a in dim(), b in dim(), env in bindings()) {
        let (x, y) = (a.bind(&env).unwrap(), b.bind(&env).unwrap());
        prop_assert_eq!(a.add(&b).bind(&env).unwrap(), x + y);
        prop_assert_eq!(a.sub(&b).bind(&env).unwrap(), x - y);
        prop_assert_eq!(a.mul(&b).bind(&env).unwrap(), x * y);
        prop_assert_eq!(a.substitute(&env).as_const(), Some(x));
    }

    #[test]
    fn div_exact_inverts_mul(a in dim(), k in 1i64..7) {
        prop_assert_eq!(a.mul(&Dim::c(k)).div_exact(k), Some(a.clone()));
        if let Some(q) = a.div_exact(k) {
            prop_assert_eq!(q.mul(&Dim::c(k)), a);
        }
    }
}
