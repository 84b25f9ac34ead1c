//! The `tandem` command's library: what `tandem up` runs, so tests can run
//! the very same thing on port 0.

pub mod up;
