//! The request checks, by example: what each rule accepts and refuses, and
//! the status it answers.

use super::*;

#[test]
fn endpoints_must_be_absolute_http_uris() {
    assert_eq!(
        endpoint("participant", "http://127.0.0.1:7501/")
            .ok()
            .as_deref(),
        Some("http://127.0.0.1:7501")
    );
    assert!(endpoint("participant", "https://bank.internal:443").is_ok());
    assert!(endpoint("participant", "http://[::1]:65535").is_ok());
    for never in [
        "http://169.254.169.254:80",
        "http://[fe80::1]:7501",
        "http://[::ffff:169.254.169.254]:80",
        "http://0.0.0.0:7501",
    ] {
        let status = endpoint("participant", never).expect_err(never);
        assert!(
            status.message().contains("never dialled") || status.message().contains("unspecified"),
            "{never}: {}",
            status.message()
        );
    }
    let status = endpoint("participant", "http://127.0.0.1").expect_err("port-less");
    assert!(status.message().contains("no port"), "{}", status.message());
    for bad in [
        "",
        "127.0.0.1:7501",
        "ftp://x:1",
        "http://",
        "http://h:1/path",
        "http://h:1?q=1",
        "not a uri",
        "http://127.0.0.1",
        "https://bank.internal",
        "http://127.0.0.1:",
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://127.0.0.1:99999999999",
        "http://user:pw@127.0.0.1:7501",
        "http://[::1]",
    ] {
        let status = endpoint("participant", bad).expect_err(bad);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            status.message().starts_with("participant"),
            "{}",
            status.message()
        );
    }
}

#[test]
fn timeouts_are_zero_or_in_range() {
    assert_eq!(optional_ms("timeout_ms", 0, 10, 100).ok(), Some(None));
    assert_eq!(
        optional_ms("timeout_ms", 10, 10, 100).ok(),
        Some(Some(Duration::from_millis(10)))
    );
    assert!(optional_ms("timeout_ms", 9, 10, 100).is_err());
    assert!(optional_ms("timeout_ms", 101, 10, 100).is_err());
}

#[test]
fn keys_and_names_are_checked() {
    assert_eq!(idempotency_key("").ok(), Some(None));
    assert!(idempotency_key("order-42").is_ok());
    assert!(idempotency_key("tab\there").is_err());
    assert!(idempotency_key(&"k".repeat(129)).is_err());
    assert!(branch_name("bank-a:alice").is_ok());
    assert!(branch_name("has space").is_err());
    assert!(branch_name(&"n".repeat(129)).is_err());
}

#[test]
fn payloads_over_the_limit_are_refused() {
    let limits = Limits {
        max_payload_bytes: 4,
        ..Limits::default()
    };
    assert!(payload(&limits, &[0; 4]).is_ok());
    let status = payload(&limits, &[0; 5]).expect_err("too big");
    assert!(status.message().contains("limit is 4"));
}
