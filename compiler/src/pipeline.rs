//! The whole pass order in one readable function.
