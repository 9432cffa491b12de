//! Pipeline parallelism's schedule: the 1F1B order of forward and backward micro-batch passes on
//! each stage (Narayanan et al. 2021, PipeDream-Flush), its bubble, and how many micro-batches'
//! activations a stage holds at once — the number the memory report multiplies by.
//!
//! Stage `s` of `p` first runs `min(p - s - 1, m)` warm-up forwards, then alternates one forward
//! and one backward until its forwards are done, then drains the remaining backwards. At most
//! `min(p - s, m)` micro-batches are between their forward and backward on stage `s`; all `p`
//! stages are busy for `m` of the `m + p - 1` slots, so the bubble is `(p - 1) / (m + p - 1)`.

/// One pass of one micro-batch on one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward(u64),
    Backward(u64),
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pass::Forward(i) => write!(f, "F{i}"),
            Pass::Backward(i) => write!(f, "B{i}"),
        }
    }
}

/// The 1F1B order of stage `stage` of `stages`, for `micro` micro-batches.
pub fn one_f_one_b(stages: u64, stage: u64, micro: u64) -> Vec<Pass> {
    let warmup = stages.saturating_sub(stage + 1).min(micro);
    let mut out = Vec::with_capacity(2 * micro as usize);
    let (mut f, mut b) = (0u64, 0u64);
    while f < warmup {
        out.push(Pass::Forward(f));
        f += 1;
    }
    while f < micro {
        out.push(Pass::Forward(f));
        f += 1;
        out.push(Pass::Backward(b));
        b += 1;
    }
    while b < micro {
        out.push(Pass::Backward(b));
        b += 1;
    }
    out
}

/// The most micro-batches between their forward and backward at once in `order`.
pub fn in_flight(order: &[Pass]) -> u64 {
    let (mut cur, mut most) = (0i64, 0i64);
    for p in order {
        cur += match p {
            Pass::Forward(_) => 1,
            Pass::Backward(_) => -1,
        };
        most = most.max(cur);
    }
    most.max(0) as u64
}

/// The fraction of slots a stage idles: `(p - 1) / (m + p - 1)`.
pub fn bubble(stages: u64, micro: u64) -> f64 {
    let slots = micro + stages.max(1) - 1;
    if slots == 0 {
        0.0
    } else {
        (stages.max(1) - 1) as f64 / slots as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_f_one_b_runs_every_pass_once_in_dependency_order() {
        for p in 1..6 {
            for m in 1..10 {
                for s in 0..p {
                    let o = one_f_one_b(p, s, m);
                    assert_eq!(o.len() as u64, 2 * m);
                    for i in 0..m {
                        let f = o.iter().position(|x| *x == Pass::Forward(i)).unwrap();
                        let b = o.iter().position(|x| *x == Pass::Backward(i)).unwrap();
                        assert!(f < b);
                    }
                    assert_eq!(in_flight(&o), (p - s).min(m), "p={p} s={s} m={m}");
                }
            }
        }
        assert_eq!(
            one_f_one_b(4, 0, 6)
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5"
        );
        assert!((bubble(8, 64) - 7.0 / 71.0).abs() < 1e-12);
    }
}
