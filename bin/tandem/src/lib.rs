//! The `tandem` command's library: what `tandem up` and `tandem serve` run,
//! so tests can run the very same thing on port 0.

pub mod bench;
pub mod demo;
pub mod scenario;
pub mod serve;
pub mod up;
pub mod webhook;
