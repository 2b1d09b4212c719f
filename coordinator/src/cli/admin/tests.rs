//! `concord txn`'s parsing and printing, by example.

use super::text::*;
use super::*;

#[test]
fn an_address_without_a_scheme_is_https_with_tls_settings_and_http_without() {
    assert_eq!(with_scheme("coord:7400", false), "http://coord:7400");
    assert_eq!(with_scheme("coord:7400", true), "https://coord:7400");
    assert_eq!(with_scheme("http://coord:7400", true), "http://coord:7400");
}

#[test]
fn client_text_cannot_forge_lines_or_drive_the_terminal() {
    assert_eq!(shown("paid 20.00"), "paid 20.00");
    assert_eq!(
        shown("ok\nstate COMMITTED\u{1b}[2J"),
        "ok\\nstate COMMITTED\\u{1b}[2J"
    );
    assert_eq!(shown("a\u{202e}b"), "a\\u{202e}b");
    let txn = pb::Transaction {
        id: "t".into(),
        description: "x\n  state           COMMITTED".into(),
        ..Default::default()
    };
    let text = show_text(&txn, 0);
    assert!(
        !text
            .lines()
            .any(|line| line.starts_with("  state") && line.ends_with("COMMITTED")),
        "a forged line: {text}"
    );
}

#[test]
fn ages_read_the_way_operators_write_them() {
    assert_eq!(parse_age("90s"), Ok(90_000));
    assert_eq!(parse_age("5m"), Ok(300_000));
    assert_eq!(parse_age("2h"), Ok(7_200_000));
    assert_eq!(parse_age("1d"), Ok(86_400_000));
    assert_eq!(parse_age("250ms"), Ok(250));
    assert!(parse_age("5 minutes").is_err());
    assert!(parse_age("m").is_err());
    assert!(parse_age("99999999999999999d").is_err());
}

#[test]
fn states_and_kinds_parse_by_their_short_names() {
    assert_eq!(
        parse_state("committing"),
        Ok(pb::TransactionState::Committing)
    );
    let refused = parse_state("NEEDS").expect_err("no such state");
    assert!(
        refused.starts_with("\"NEEDS\" is not a transaction state: active, ")
            && refused.ends_with("delivered or dropped"),
        "names the states: {refused}"
    );
    assert!(parse_state("unspecified").is_err());
    assert_eq!(parse_kind("saga"), Ok(pb::TransactionKind::Saga));
    assert!(parse_kind("xa").is_err());
}

#[test]
fn moments_are_utc_and_relative() {
    // 2025-11-24T01:02:03.004Z
    let ms = 1_763_946_123_004;
    assert_eq!(
        moment(ms, ms + 192_000),
        "2025-11-24T01:02:03.004Z (3m12s ago)"
    );
    assert_eq!(moment(0, ms), "-");
    assert_eq!(
        moment(951_782_400_000, 951_782_400_000),
        "2000-02-29T00:00:00.000Z (0ms ago)"
    );
}
