//! The signature format's cases, and the file that pins them for the
//! Python SDK (`sdk/signature-cases.json`): built here from a fixed key,
//! compared with the file, rewritten when `CONCORD_WRITE_CASES=1`.

use super::*;

/// A key made once with `openssl genpkey -algorithm ed25519` (PKCS#8 v1):
/// a test key, trusted by nothing else.
const CASE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIHplj3jEQcQT7fPzlrgBfhjmtzk9CaFNG8miIeLSBhmV
-----END PRIVATE KEY-----
";
/// Its public key, as `openssl pkey -pubout` prints it.
const CASE_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAiNjeBmQbejsoBpLZPlS+YCxV5vcHgOBPVdYO7Uz9dEk=
-----END PUBLIC KEY-----
";

const NOW: u64 = 1_800_000_000_000;
const EXPIRES: u64 = NOW + 90_000;
const TXN: &str = "019a0d3c-5e1f-7c44-9a8b-2f3e4d5c6b7a";
const PAYLOAD: &[u8] = br#"{"account":"alice","delta":-500}"#;

fn prepare() -> SignedCall<'static> {
    SignedCall {
        method: "Prepare",
        transaction_id: TXN,
        branch: "alice",
        payload: PAYLOAD,
    }
}

struct Case {
    name: &'static str,
    call: SignedCall<'static>,
    signature: String,
    now_ms: u64,
    expect: &'static str,
}

fn kind(result: &Result<(), SignatureError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(SignatureError::Missing) => "missing",
        Err(SignatureError::Malformed(_)) => "malformed",
        Err(SignatureError::UnknownKey(_)) => "unknown_key",
        Err(SignatureError::Expired { .. }) => "expired",
        Err(SignatureError::Mismatch) => "mismatch",
    }
}

fn cases() -> Vec<Case> {
    let signer = CallSigner::from_pem(CASE_KEY).expect("the case key");
    let good = signer.sign_until(&prepare(), EXPIRES);
    let check = SignedCall {
        method: "CheckMessage",
        transaction_id: TXN,
        branch: "",
        payload: b"",
    };
    let later = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[2] = (EXPIRES + 3_600_000).to_string();
        parts.join(".")
    };
    let unknown = {
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = "0011223344556677";
        parts.join(".")
    };
    let case = |name, call, signature: &str, now_ms, expect| Case {
        name,
        call,
        signature: signature.to_owned(),
        now_ms,
        expect,
    };
    vec![
        case("a prepare as signed", prepare(), &good, NOW, "ok"),
        case(
            "a check-back as signed",
            check,
            &signer.sign_until(&check, EXPIRES),
            NOW,
            "ok",
        ),
        case("the last millisecond", prepare(), &good, EXPIRES, "ok"),
        case(
            "another branch",
            SignedCall {
                branch: "bob",
                ..prepare()
            },
            &good,
            NOW,
            "mismatch",
        ),
        case(
            "another payload",
            SignedCall {
                payload: br#"{"account":"alice","delta":1000000}"#,
                ..prepare()
            },
            &good,
            NOW,
            "mismatch",
        ),
        case(
            "another method",
            SignedCall {
                method: "CommitOnePhase",
                ..prepare()
            },
            &good,
            NOW,
            "mismatch",
        ),
        case(
            "another transaction",
            SignedCall {
                transaction_id: "019a0d3c-5e1f-7c44-9a8b-000000000000",
                ..prepare()
            },
            &good,
            NOW,
            "mismatch",
        ),
        case("an expiry moved later", prepare(), &later, NOW, "mismatch"),
        case("expired", prepare(), &good, EXPIRES + 1, "expired"),
        case("no signature", prepare(), "", NOW, "missing"),
        case(
            "another version",
            prepare(),
            &good.replacen("v1", "v2", 1),
            NOW,
            "malformed",
        ),
        case("not dotted", prepare(), "garbage", NOW, "malformed"),
        case(
            "expiry not a number",
            prepare(),
            &good.replacen(&EXPIRES.to_string(), "soon", 1),
            NOW,
            "malformed",
        ),
        case(
            "signature not base64url",
            prepare(),
            &format!("{}.***", &good[..good.rfind('.').expect("dotted")]),
            NOW,
            "malformed",
        ),
        case("a key not trusted", prepare(), &unknown, NOW, "unknown_key"),
        case(
            "far too long",
            prepare(),
            &format!("{good}{}", "A".repeat(200)),
            NOW,
            "malformed",
        ),
    ]
}

/// A batch case: its entries, as (method, transaction, branch, payload).
struct BatchCase {
    name: &'static str,
    entries: Vec<(&'static str, &'static str, &'static str, &'static [u8])>,
    signature: String,
    expect: &'static str,
}

fn entries_call(entries: &[(&'static str, &'static str, &'static str, &'static [u8])]) -> Vec<u8> {
    batch_payload(
        entries
            .iter()
            .map(|(method, transaction_id, branch, payload)| SignedCall {
                method,
                transaction_id,
                branch,
                payload,
            }),
    )
}

fn batch_cases() -> Vec<BatchCase> {
    let signer = CallSigner::from_pem(CASE_KEY).expect("the case key");
    let first = ("Prepare", TXN, "alice", PAYLOAD);
    let second = (
        "Commit",
        "019a0d3c-5e1f-7c44-9a8b-000000000002",
        "bob",
        &b"{}"[..],
    );
    let signed = entries_call(&[first, second]);
    let good = signer.sign_until(
        &SignedCall {
            method: BATCH_METHOD,
            transaction_id: "",
            branch: "",
            payload: &signed,
        },
        EXPIRES,
    );
    let case = |name, entries: Vec<_>, expect| BatchCase {
        name,
        entries,
        signature: good.clone(),
        expect,
    };
    vec![
        case("a batch as signed", vec![first, second], "ok"),
        case("entries swapped", vec![second, first], "mismatch"),
        case("an entry dropped", vec![first], "mismatch"),
        case("an entry added", vec![first, second, second], "mismatch"),
        case(
            "an entry's payload changed",
            vec![
                first,
                (
                    "Commit",
                    "019a0d3c-5e1f-7c44-9a8b-000000000002",
                    "bob",
                    b"{ }",
                ),
            ],
            "mismatch",
        ),
    ]
}

#[test]
fn every_batch_case_verifies_as_expected() {
    let trusted = TrustedKeys::from_pem(CASE_PUBLIC).expect("the case's public key");
    for case in batch_cases() {
        let payload = entries_call(&case.entries);
        let call = SignedCall {
            method: BATCH_METHOD,
            transaction_id: "",
            branch: "",
            payload: &payload,
        };
        let result = trusted.verify_at(&call, Some(&case.signature), NOW);
        assert_eq!(kind(&result), case.expect, "{}: {result:?}", case.name);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_case_verifies_as_expected() {
    let trusted = TrustedKeys::from_pem(CASE_PUBLIC).expect("the case's public key");
    for case in cases() {
        let result = trusted.verify_at(&case.call, Some(&case.signature), case.now_ms);
        assert_eq!(kind(&result), case.expect, "{}: {result:?}", case.name);
    }
}

#[test]
fn the_signer_names_the_key_openssl_made() {
    let signer = CallSigner::from_pem(CASE_KEY).expect("the case key");
    assert_eq!(signer.public_key_pem().trim(), CASE_PUBLIC.trim());
    let trusted = TrustedKeys::from_pem(CASE_PUBLIC).expect("public key");
    assert_eq!(trusted.ids().collect::<Vec<_>>(), vec![signer.key_id()]);
}

#[test]
fn a_new_key_signs_what_its_public_key_verifies_and_no_other_does() {
    let signer = CallSigner::from_pem(&generate_private_key_pem().expect("key")).expect("parses");
    let trusted = TrustedKeys::from_pem(&signer.public_key_pem()).expect("public key");
    let signature = signer.sign(&prepare(), Duration::from_secs(5));
    assert_eq!(trusted.verify(&prepare(), Some(&signature)), Ok(()));
    let case_trusted = TrustedKeys::from_pem(CASE_PUBLIC).expect("public key");
    assert!(matches!(
        case_trusted.verify(&prepare(), Some(&signature)),
        Err(SignatureError::UnknownKey(_))
    ));
    // Rotation: one file trusting both keys accepts either's calls.
    let both = TrustedKeys::from_pem(&format!("{CASE_PUBLIC}{}", signer.public_key_pem()))
        .expect("two keys");
    assert_eq!(both.verify(&prepare(), Some(&signature)), Ok(()));
    assert_eq!(both.ids().count(), 2);
}

#[test]
fn key_files_of_the_wrong_kind_are_refused_by_name() {
    assert!(matches!(
        CallSigner::from_pem(CASE_PUBLIC),
        Err(KeyError::WrongBlock { .. })
    ));
    assert!(matches!(
        TrustedKeys::from_pem(CASE_KEY),
        Err(KeyError::WrongBlock { .. })
    ));
    assert!(matches!(TrustedKeys::from_pem(""), Err(KeyError::NoKeys)));
    assert!(CallSigner::from_pem("not a key").is_err());
}

/// The cases as JSON, for the Python SDK's tests.
fn cases_json() -> String {
    let cases: Vec<serde_json::Value> = cases()
        .into_iter()
        .map(|case| {
            serde_json::json!({
                "name": case.name,
                "method": case.call.method,
                "transaction_id": case.call.transaction_id,
                "branch": case.call.branch,
                "payload_hex": hex(case.call.payload),
                "signature": case.signature,
                "now_ms": case.now_ms,
                "expect": case.expect,
            })
        })
        .collect();
    let batch_cases: Vec<serde_json::Value> = batch_cases()
        .into_iter()
        .map(|case| {
            let entries: Vec<serde_json::Value> = case
                .entries
                .iter()
                .map(|(method, transaction_id, branch, payload)| {
                    serde_json::json!({
                        "method": method,
                        "transaction_id": transaction_id,
                        "branch": branch,
                        "payload_hex": hex(payload),
                    })
                })
                .collect();
            serde_json::json!({
                "name": case.name,
                "entries": entries,
                "signature": case.signature,
                "now_ms": NOW,
                "expect": case.expect,
            })
        })
        .collect();
    let file = serde_json::json!({
        "about": "Signed participant calls (proto/src/signature.rs): each case's signature checked \
                  against public_key_pem at now_ms must end as `expect`; a batch case's signature \
                  is over method Batch, empty transaction and branch, and its entries framed in \
                  order (batch_payload). Written by `CONCORD_WRITE_CASES=1 cargo test -p \
                  concord-proto`; do not edit by hand.",
        "public_key_pem": CASE_PUBLIC,
        "cases": cases,
        "batch_cases": batch_cases,
    });
    serde_json::to_string_pretty(&file).expect("JSON") + "\n"
}

#[test]
fn the_shared_cases_file_is_what_these_cases_make() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/signature-cases.json");
    let made = cases_json();
    if std::env::var_os("CONCORD_WRITE_CASES").is_some() {
        std::fs::write(path, &made).expect("write the cases file");
    }
    let kept = std::fs::read_to_string(path).expect("sdk/signature-cases.json");
    assert_eq!(
        kept, made,
        "rerun with CONCORD_WRITE_CASES=1 and commit the file"
    );
}
