//! Reference interpreter for the IR: plain loops in f64 and f32; the oracle of every numeric test.
