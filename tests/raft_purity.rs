//! The Raft core must stay pure: no IO, no clock, no threads, no global randomness, no
//! metrics. This test reads every file under `src/raft/` and fails on any forbidden name.

/// Wrapped in `mod raft` so that `cargo test raft` selects it.
mod raft {
    use std::path::Path;

    const FORBIDDEN: &[&str] = &[
        "tokio",
        "std::fs",
        "std::net",
        "std::time",
        "std::thread",
        "rand",
        "metrics",
    ];

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/raft readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// True if `word` occurs in `text` as a whole identifier path (so `rand` does not match
    /// `operand` or `randomized`).
    fn mentions(text: &str, word: &str) -> bool {
        let is_ident = |c: char| c.is_alphanumeric() || c == '_';
        text.match_indices(word).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
    }

    #[test]
    fn raft_core_is_pure() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft");
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        assert!(files.len() >= 5, "expected the core's files under {dir:?}");
        let mut violations = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("readable source");
            for word in FORBIDDEN {
                if mentions(&text, word) {
                    violations.push(format!("{} mentions {word}", file.display()));
                }
            }
        }
        assert!(
            violations.is_empty(),
            "impure Raft core:\n{}",
            violations.join("\n")
        );
    }

    #[test]
    fn purity_check_catches_forbidden_names() {
        assert!(mentions("use tokio::sync;", "tokio"));
        assert!(mentions("rand::random()", "rand"));
        assert!(!mentions("randomized operand", "rand"));
        assert!(mentions("use std::time::Instant;", "std::time"));
    }
}
