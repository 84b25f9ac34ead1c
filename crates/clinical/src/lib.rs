//! Tandem's clinical rules: instruments, scoring, risk rules and trends; pure, no I/O
