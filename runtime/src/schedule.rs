//! The learning-rate schedule: nanoGPT's `get_lr`, plus linear and constant decay.
//!
//! Users compare Kiln runs against nanoGPT's loss curves, so the cosine schedule is nanoGPT's
//! formula to the letter (including its `(it + 1) / (warmup + 1)` warmup, which never starts at 0):
//!
//! ```python
//! if it < warmup_iters: return learning_rate * (it + 1) / (warmup_iters + 1)
//! if it > lr_decay_iters: return min_lr
//! decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
//! coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
//! return min_lr + coeff * (learning_rate - min_lr)
//! ```
//!
//! `it` is the 0-based index of the optimizer step about to be taken.

use crate::config::{Decay, OptimizerConfig, ScheduleConfig};

/// A fully resolved schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Learning rate at and after `decay_steps`.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup: u64,
    /// Step at which the decay reaches `min_lr`.
    pub decay_steps: u64,
    /// Shape of the decay.
    pub decay: Decay,
}

impl LrSchedule {
    /// The schedule of a run config: `min_lr` defaults to `lr / 10`, `decay_steps` to `steps`.
    pub fn from_config(opt: &OptimizerConfig, sched: &ScheduleConfig, steps: u64) -> LrSchedule {
        LrSchedule {
            lr: opt.lr,
            min_lr: sched.min_lr.unwrap_or(opt.lr / 10.0),
            warmup: sched.warmup,
            decay_steps: sched.decay_steps.unwrap_or(steps),
            decay: sched.decay,
        }
    }

    /// The learning rate for 0-based step `it`.
    pub fn lr_at(&self, it: u64) -> f64 {
        if it < self.warmup {
            return self.lr * (it + 1) as f64 / (self.warmup + 1) as f64;
        }
        let ratio = match self.decay {
            Decay::Constant => return self.lr,
            Decay::Cosine | Decay::Linear => {
                if it > self.decay_steps {
                    return self.min_lr;
                }
                // nanoGPT divides by zero here when the decay ends where warmup ends; the decay
                // is over, so the floor is the answer.
                if self.decay_steps <= self.warmup {
                    return self.min_lr;
                }
                (it - self.warmup) as f64 / (self.decay_steps - self.warmup) as f64
            }
        };
        let coeff = match self.decay {
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()),
            Decay::Linear => 1.0 - ratio,
            Decay::Constant => 1.0,
        };
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nanoGPT's shakespeare_char settings: lr 1e-3, min_lr 1e-4, warmup 100, decay 5000.
    fn nanogpt_char() -> LrSchedule {
        LrSchedule {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 100,
            decay_steps: 5000,
            decay: Decay::Cosine,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-15 + 1e-12 * b.abs(), "{a} != {b}");
    }

    #[test]
    fn cosine_matches_hand_computed_nanogpt_values() {
        let s = nanogpt_char();
        // Warmup: 1e-3 * (it + 1) / 101.
        close(s.lr_at(0), 1e-3 / 101.0);
        close(s.lr_at(49), 1e-3 * 50.0 / 101.0);
        close(s.lr_at(99), 1e-3 * 100.0 / 101.0);
        // End of warmup: ratio 0, coeff 1 → lr.
        close(s.lr_at(100), 1e-3);
        // Halfway through the decay (it = 2550): ratio 0.5, coeff 0.5 → 5.5e-4.
        close(s.lr_at(2550), 5.5e-4);
        // A quarter in (it = 1325): coeff = 0.5 (1 + cos(pi/4)) = 0.853553390593...
        close(s.lr_at(1325), 1e-4 + 0.853_553_390_593_273_7 * 9e-4);
        // At lr_decay_iters the cosine reaches min_lr exactly; after it, min_lr.
        close(s.lr_at(5000), 1e-4);
        assert_eq!(s.lr_at(5001), 1e-4);
        assert_eq!(s.lr_at(1_000_000), 1e-4);
    }

    #[test]
    fn linear_and_constant() {
        let lin = LrSchedule {
            decay: Decay::Linear,
            ..nanogpt_char()
        };
        close(lin.lr_at(2550), 5.5e-4);
        close(lin.lr_at(1325), 1e-4 + 0.75 * 9e-4);
        close(lin.lr_at(5000), 1e-4);
        close(lin.lr_at(9), 1e-3 * 10.0 / 101.0);
        let constant = LrSchedule {
            decay: Decay::Constant,
            ..nanogpt_char()
        };
        close(constant.lr_at(0), 1e-3 / 101.0);
        assert_eq!(constant.lr_at(100), 1e-3);
        assert_eq!(constant.lr_at(10_000), 1e-3);
    }

    #[test]
    fn no_warmup_starts_at_peak_and_degenerate_decay_is_floor() {
        let s = LrSchedule {
            warmup: 0,
            decay_steps: 10,
            ..nanogpt_char()
        };
        assert_eq!(s.lr_at(0), 1e-3);
        let degenerate = LrSchedule {
            warmup: 10,
            decay_steps: 10,
            ..nanogpt_char()
        };
        close(degenerate.lr_at(9), 1e-3 * 10.0 / 11.0);
        assert_eq!(degenerate.lr_at(10), 1e-4);
    }
}
