//! `phalanx`: the command-line tool.
fn main() {}
