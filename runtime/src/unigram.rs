//! The unigram baseline a trained language model must beat: every position predicted with the
//! training split's token frequencies, whatever came before. Its validation loss is the entropy
//! of the corpus's characters (or tokens) as a context-free model sees them, so "beats the unigram
//! baseline" means the model learned something about order, not just which tokens are common.
//!
//! Frequencies are add-one (Laplace) smoothed over the model's vocabulary, so a validation token
//! never seen in training costs a finite loss.

use crate::data::Tokens;

/// Mean cross-entropy (nats per token) on `val` of the add-one-smoothed unigram model of `train`
/// over `vocab` ids; `None` when `val` is empty or an id is outside the vocabulary.
pub fn unigram_loss(train: &Tokens, val: &Tokens, vocab: usize) -> Option<f64> {
    if val.is_empty() || vocab == 0 {
        return None;
    }
    let mut counts = vec![1u64; vocab];
    for id in train.to_vec() {
        *counts.get_mut(id as usize)? += 1;
    }
    let total: u64 = counts.iter().sum();
    let mut nll = 0.0f64;
    let val = val.to_vec();
    for &id in &val {
        let c = *counts.get(id as usize)?;
        nll -= (c as f64 / total as f64).ln();
    }
    Some(nll / val.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_example() {
        // Train 0,0,1 over 3 ids: counts with add-one 3,2,1 of 6. Val 0,2: -(ln 1/2 + ln 1/6)/2.
        let train = Tokens::from_vec(vec![0, 0, 1]);
        let val = Tokens::from_vec(vec![0, 2]);
        let want = -((0.5f64).ln() + (1.0f64 / 6.0).ln()) / 2.0;
        let got = unigram_loss(&train, &val, 3).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn out_of_vocabulary_and_empty_splits_have_no_loss() {
        let t = Tokens::from_vec(vec![0, 5]);
        assert_eq!(unigram_loss(&t, &Tokens::from_vec(vec![0]), 3), None);
        assert_eq!(
            unigram_loss(&Tokens::from_vec(vec![0]), &Tokens::from_vec(vec![]), 3),
            None
        );
    }
}
