//! Code shared by the detector's training examples.

pub mod training;
