//! The docs describe the binary there is (issue 32): every `concord ...`
//! command the README, the docs and the SDK READMEs show (in code blocks
//! and inline code) names subcommands and flags that `concord ... --help`
//! lists. A flag renamed or removed fails here until the docs follow.

use std::collections::HashMap;
use std::path::Path;

const CONCORD: &str = env!("CARGO_BIN_EXE_concord-failpoints");

/// The Markdown files a newcomer reads.
const DOCUMENTS: &[&str] = &[
    "README.md",
    "docs/design.md",
    "docs/operations.md",
    "docs/security.md",
    "docs/performance.md",
    "docs/reliability.md",
    "docs/decisions.md",
    "sdk/python/README.md",
    "examples/python/README.md",
];

/// The code of `markdown`: fenced blocks (continued lines joined) and
/// inline code spans, one string each.
fn code_of(markdown: &str) -> Vec<String> {
    let mut code = Vec::new();
    let mut fenced: Option<String> = None;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            match fenced.take() {
                Some(block) => code.extend(block.lines().map(str::to_owned)),
                None => fenced = Some(String::new()),
            }
            continue;
        }
        match fenced.as_mut() {
            Some(block) => match line.trim_end().strip_suffix('\\') {
                Some(continued) => block.push_str(continued),
                None => {
                    block.push_str(line);
                    block.push('\n');
                }
            },
            None => code.extend(line.split('`').skip(1).step_by(2).map(str::to_owned)),
        }
    }
    code
}

/// Each `concord` command in `code`: its words after `concord` (a
/// `cargo run --bin concord --` prefix taken as `concord`), up to a pipe
/// into another program or a comment.
fn commands(code: &str) -> Vec<Vec<String>> {
    let code = code.replace("--bin concord --", "concord");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("concord ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "concord ".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '/') {
            continue;
        }
        let end = rest.find(['#', ';', '&', '\n', ')']).unwrap_or(rest.len());
        let words: Vec<String> = rest[..end].split_whitespace().map(str::to_owned).collect();
        if words
            .first()
            .is_some_and(|w| w.starts_with(|c: char| c.is_ascii_lowercase() || c == '-'))
        {
            found.push(words);
        }
    }
    found
}

/// `concord <path> --help`, run once per path: None when it fails.
fn help(cache: &mut HashMap<Vec<String>, Option<String>>, path: &[String]) -> Option<String> {
    cache
        .entry(path.to_vec())
        .or_insert_with(|| {
            let output = std::process::Command::new(CONCORD)
                .args(path)
                .arg("--help")
                .output()
                .expect("run concord --help");
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        })
        .clone()
}

/// The subcommands a help text lists under `Commands:`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn every_concord_command_the_docs_show_exists_with_its_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cache = HashMap::new();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for document in DOCUMENTS {
        let text = std::fs::read_to_string(root.join(document)).expect(document);
        for code in code_of(&text) {
            for words in commands(&code) {
                // `txn list|show|retry` and `shards init/show/...` name
                // several: each is checked.
                let mut paths: Vec<Vec<String>> = vec![Vec::new()];
                let mut flags = Vec::new();
                let mut open = true;
                // A flag's value (`--coordinator URL`) is no subcommand; a
                // subcommand may follow it (`shards --coordinator URL move`).
                let mut value_next = false;
                for word in &words {
                    if let Some(flag) = word.strip_prefix("--") {
                        value_next = !flag.contains('=');
                        let flag = flag.split('=').next().unwrap_or_default();
                        if !flag.is_empty()
                            && flag.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                        {
                            flags.push(format!("--{flag}"));
                        }
                        continue;
                    }
                    if std::mem::take(&mut value_next) || !open {
                        continue;
                    }
                    let choices: Vec<&str> = word.split(['|', '/']).collect();
                    let named = choices.iter().all(|c| {
                        c.starts_with(|c: char| c.is_ascii_lowercase())
                            && c.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    });
                    let parent = paths[0].clone();
                    let known = help(&mut cache, &parent)
                        .map(|h| subcommands(&h))
                        .unwrap_or_default();
                    if named && choices.iter().all(|c| known.iter().any(|k| k == c)) {
                        paths = choices
                            .iter()
                            .map(|c| [parent.clone(), vec![(*c).to_owned()]].concat())
                            .collect();
                    } else if named && !known.is_empty() {
                        // Where a subcommand must come, a word that is none.
                        wrong.push(format!(
                            "{document}: `concord {}`: no subcommand {word:?}",
                            words.join(" ")
                        ));
                        open = false;
                    } else {
                        // A value (an id, shard numbers, `...`): the path
                        // ends.
                        open = false;
                    }
                }
                for path in &paths {
                    let Some(text) = help(&mut cache, path) else {
                        wrong.push(format!(
                            "{document}: `concord {}` has no help",
                            path.join(" ")
                        ));
                        continue;
                    };
                    for flag in &flags {
                        checked += 1;
                        let listed = text
                            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=')
                            .any(|token| token == flag.as_str());
                        if !listed && flag != "--help" {
                            wrong.push(format!(
                                "{document}: `concord {} {flag}`: no such flag",
                                path.join(" ")
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the docs and the binary disagree:\n{}",
        wrong.join("\n")
    );
    assert!(
        checked > 20,
        "only {checked} flags found: is the extraction broken?"
    );
}

/// `-h` is the short help (one line a flag, the first of its text) and
/// `--help` the long (issue 32): for every command with long texts, the
/// short one is shorter, and lists the same flags.
#[test]
fn dash_h_is_the_short_help_of_the_same_flags() {
    let flags = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .filter(|word| word.starts_with("--") && word.len() > 2)
            .map(|word| word.trim_end_matches([',', '.', ')']).to_owned())
            .filter(|word| {
                word.chars()
                    .skip(2)
                    .all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect()
    };
    for path in [
        &["serve"][..],
        &["bench"],
        &["txn", "list"],
        &["txn", "resolve"],
        &["shards", "move"],
        &["keys", "generate"],
    ] {
        let run = |help: &str| {
            let output = std::process::Command::new(CONCORD)
                .args(path)
                .arg(help)
                .output()
                .expect("run concord");
            assert!(output.status.success(), "concord {path:?} {help}");
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let (short, long) = (run("-h"), run("--help"));
        assert!(
            short.len() < long.len(),
            "`concord {} -h` is no shorter than --help",
            path.join(" ")
        );
        // Each flag the short help names heads a line of the long one.
        let heads = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|line| line.trim_start().starts_with('-'))
                .flat_map(|line| flags(line.split("  ").find(|p| !p.is_empty()).unwrap_or("")))
                .collect()
        };
        assert_eq!(heads(&short), heads(&long), "concord {}", path.join(" "));
    }
}
