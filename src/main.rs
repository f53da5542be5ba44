//! The `raftlog` command line.

fn main() {
    println!("raftlog {}", env!("CARGO_PKG_VERSION"));
}
