//! Signed participant calls (DESIGN §12, `docs/security.md`): the
//! coordinator signs every call it makes to a participant with the
//! deployment's Ed25519 key, and a participant obeys only a call signed by
//! a key it trusts. This module owns the format both sides must agree on —
//! what is signed, how the signature travels, how keys are stored — so the
//! coordinator ([`CallSigner`]) and the SDKs ([`TrustedKeys`]) cannot
//! drift; `sdk/signature-cases.json` pins it for the Python SDK.
//!
//! What is signed, for each call: the method's name, the transaction id,
//! the branch, the SHA-256 of the payload and an expiry, each framed by its
//! length so that no two calls share the signed bytes:
//!
//! ```text
//! "concord-call-v1" 0x00
//! u32be len | method        ("Prepare", "Commit", ..., "CheckMessage")
//! u32be len | transaction id
//! u32be len | branch        (empty for CheckMessage)
//! sha256(payload)           (32 bytes; of nothing for CheckMessage)
//! u64be expires             (Unix milliseconds)
//! ```
//!
//! A `Batch` is signed once, as a whole: the method `Batch`, an empty
//! transaction id and branch, and as payload every entry in order, each
//! framed as above without its expiry (`u32be len | method`, `u32be len |
//! transaction id`, `u32be len | branch`, `sha256(payload)`; see
//! [`batch_payload`]). One signature vouches for every entry, and no entry
//! can be added, dropped, reordered or changed without breaking it; the
//! coordinator makes one signature per batch instead of one per call, and
//! the participant checks one. An entry may instead carry a signature of
//! its own (`BatchCall.signature`, as for the call alone), which is checked
//! when the batch's is missing or does not verify.
//!
//! The signature travels as `v1.<key id>.<expires>.<signature>`: in the
//! `concord-signature` metadata of a call (a `Batch` too), or in
//! `BatchCall.signature` for an entry signed alone. The key id is the
//! first 8 bytes of the SHA-256 of the raw public key, in hex; the
//! signature is base64url without padding.
//!
//! Keys are PEM files as OpenSSL writes them: the private key is PKCS#8
//! (`PRIVATE KEY`), a public key is SubjectPublicKeyInfo (`PUBLIC KEY`); a
//! file of trusted keys may hold several, so a new key can be trusted
//! before the coordinators switch to it (rotation).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

/// The metadata key of a call sent alone.
pub const SIGNATURE_HEADER: &str = "concord-signature";

/// How long past its own deadline a signature stays good: the slack for
/// clocks that differ between the coordinator's host and the
/// participant's. Hosts whose clocks differ by more refuse each other's
/// calls (UNAUTHENTICATED, "expired"), which stalls but never corrupts.
pub const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// The longest header value a well-formed signature makes; anything
/// longer is refused before it is parsed.
const MAX_HEADER_LEN: usize = 160;

const DOMAIN: &[u8] = b"concord-call-v1\0";
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The one call a signature is about.
#[derive(Debug, Clone, Copy)]
pub struct SignedCall<'a> {
    /// The Participant method's name as in the proto: `Prepare`, `Commit`,
    /// `Abort`, `CommitOnePhase`, `Execute`, `Compensate`, `Deliver`,
    /// `CheckMessage`.
    pub method: &'a str,
    pub transaction_id: &'a str,
    /// The branch, step or destination; empty for `CheckMessage`.
    pub branch: &'a str,
    /// The call's payload; empty for `CheckMessage`.
    pub payload: &'a [u8],
}

impl SignedCall<'_> {
    /// The bytes the signature is made over (the module's picture).
    pub fn signed_bytes(&self, expires_ms: u64) -> Vec<u8> {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.payload);
        let mut bytes = Vec::with_capacity(
            DOMAIN.len()
                + 12
                + self.method.len()
                + self.transaction_id.len()
                + self.branch.len()
                + 40,
        );
        bytes.extend_from_slice(DOMAIN);
        for field in [self.method, self.transaction_id, self.branch] {
            // Fields are at most a few hundred bytes (checked by the
            // coordinator); a length past u32 cannot be signed or forged.
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(field.as_bytes());
        }
        bytes.extend_from_slice(digest.as_ref());
        bytes.extend_from_slice(&expires_ms.to_be_bytes());
        bytes
    }
}

/// The method name a whole `Batch` is signed under.
pub const BATCH_METHOD: &str = "Batch";

/// The payload a whole `Batch` is signed over: each entry framed in order
/// (the module's picture). Signed as [`SignedCall`] `{ method: "Batch",
/// transaction_id: "", branch: "", payload: &batch_payload(..) }`.
pub fn batch_payload<'a>(entries: impl IntoIterator<Item = SignedCall<'a>>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in entries {
        for field in [entry.method, entry.transaction_id, entry.branch] {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(field.as_bytes());
        }
        bytes
            .extend_from_slice(ring::digest::digest(&ring::digest::SHA256, entry.payload).as_ref());
    }
    bytes
}

/// What the signature of a `Batch` entry covers: its method, branch and
/// payload.
pub fn batch_entry(call: &crate::v1::batch_call::Call) -> SignedCall<'_> {
    use crate::v1::batch_call::Call;
    let (method, branch, payload) = match call {
        Call::Prepare(r) => ("Prepare", r.branch.as_ref(), &r.payload),
        Call::Commit(r) => ("Commit", r.branch.as_ref(), &r.payload),
        Call::Abort(r) => ("Abort", r.branch.as_ref(), &r.payload),
        Call::CommitOnePhase(r) => ("CommitOnePhase", r.branch.as_ref(), &r.payload),
        Call::Execute(r) => ("Execute", r.branch.as_ref(), &r.payload),
        Call::Compensate(r) => ("Compensate", r.branch.as_ref(), &r.payload),
        Call::Deliver(r) => ("Deliver", r.branch.as_ref(), &r.payload),
    };
    SignedCall {
        method,
        transaction_id: branch.map_or("", |b| b.transaction_id.as_str()),
        branch: branch.map_or("", |b| b.branch.as_str()),
        payload,
    }
}

/// The payload a `Batch` of `calls` is signed over; an entry that names no
/// call is framed as an empty one (it is refused on its own anyway).
pub fn batch_payload_of(calls: &[crate::v1::BatchCall]) -> Vec<u8> {
    batch_payload(calls.iter().map(|call| {
        call.call.as_ref().map_or(
            SignedCall {
                method: "",
                transaction_id: "",
                branch: "",
                payload: b"",
            },
            batch_entry,
        )
    }))
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not PEM: {0}")]
    NotPem(String),
    #[error("expected a {expected} PEM block, found {found}")]
    WrongBlock {
        expected: &'static str,
        found: String,
    },
    #[error("not an Ed25519 key: {0}")]
    NotEd25519(String),
    #[error("no PUBLIC KEY block found")]
    NoKeys,
    #[error("cannot make a key: {0}")]
    Generate(String),
}

/// The short name of a public key: the first 8 bytes of its SHA-256, in
/// hex. It names the key in every signature and in every refusal.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(public_key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut id = [0; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        Self(id)
    }
}

impl KeyId {
    /// A key id as signatures write it: 16 hex digits.
    fn parse(hex: &str) -> Option<Self> {
        if hex.len() != 16 {
            return None;
        }
        let mut id = [0; 8];
        for (byte, pair) in id.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A new private key, PEM (PKCS#8), for `concord keys generate`.
pub fn generate_private_key_pem() -> Result<String, KeyError> {
    let document = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(pem_text("PRIVATE KEY", document.as_ref().to_vec()))
}

/// What the coordinator signs its participant calls with: the deployment's
/// private key (every node of a deployment holds the same).
pub struct CallSigner {
    key: Ed25519KeyPair,
    id: KeyId,
}

impl fmt::Debug for CallSigner {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallSigner(key {})", self.id)
    }
}

impl CallSigner {
    /// The signer of a PEM `PRIVATE KEY` (PKCS#8 v1 or v2, as `concord keys
    /// generate` or `openssl genpkey -algorithm ed25519` write).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::NotPem(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::WrongBlock {
                expected: "PRIVATE KEY",
                found: block.tag().to_owned(),
            });
        }
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents())
            .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        let id = KeyId::of(key.public_key().as_ref());
        Ok(Self { key, id })
    }

    /// A signer of a new key, for a deployment that lives in one process
    /// (a demo, a benchmark): its participants trust [`CallSigner::trusted`].
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_pem(&generate_private_key_pem()?)
    }

    /// The keys that trust this signer's calls: its public key alone.
    pub fn trusted(&self) -> TrustedKeys {
        let mut raw = [0; 32];
        raw.copy_from_slice(self.key.public_key().as_ref());
        TrustedKeys {
            keys: vec![(self.id, raw)],
        }
    }

    /// The key this signer signs with.
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// The public key, PEM (`PUBLIC KEY`), for participants to trust.
    pub fn public_key_pem(&self) -> String {
        let mut spki = SPKI_ED25519_PREFIX.to_vec();
        spki.extend_from_slice(self.key.public_key().as_ref());
        pem_text("PUBLIC KEY", spki)
    }

    /// The signature of `call`, good until `expires_ms`, as it travels.
    pub fn sign_until(&self, call: &SignedCall<'_>, expires_ms: u64) -> String {
        let signature = self.key.sign(&call.signed_bytes(expires_ms));
        format!(
            "v1.{}.{expires_ms}.{}",
            self.id,
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// The signature of `call` sent now with `deadline`: good for the
    /// deadline and [`CLOCK_SLACK`].
    pub fn sign(&self, call: &SignedCall<'_>, deadline: Duration) -> String {
        let expires = now_ms().saturating_add(millis(deadline + CLOCK_SLACK));
        self.sign_until(call, expires)
    }
}

/// Why a participant refused a call's signature. Each says what was wrong,
/// so that whoever reads the refusal knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the call is not signed: this participant obeys only a coordinator whose key it trusts \
         (concord serve --signing-key)"
    )]
    Missing,
    #[error("the call's signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("the call is signed with key {0}, which this participant does not trust")]
    UnknownKey(String),
    #[error(
        "the call's signature expired {ago_ms} ms ago (a replayed call, or clocks more than {} s \
         apart)", CLOCK_SLACK.as_secs()
    )]
    Expired { ago_ms: u64 },
    #[error(
        "the call's signature does not match it (signed for another method, transaction, branch \
         or payload)"
    )]
    Mismatch,
}

/// The coordinator keys a participant trusts: every call must be signed by
/// one of them.
#[derive(Clone)]
pub struct TrustedKeys {
    keys: Vec<(KeyId, [u8; 32])>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl TrustedKeys {
    /// The keys of every `PUBLIC KEY` block in `text` (one file may hold
    /// several: the current key and the next).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(text).map_err(|e| KeyError::NotPem(e.to_string()))?;
        let mut keys = Vec::new();
        for block in blocks {
            if block.tag() != "PUBLIC KEY" {
                return Err(KeyError::WrongBlock {
                    expected: "PUBLIC KEY",
                    found: block.tag().to_owned(),
                });
            }
            let raw = block
                .contents()
                .strip_prefix(&SPKI_ED25519_PREFIX[..])
                .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
                .ok_or_else(|| {
                    KeyError::NotEd25519("a PUBLIC KEY that is not 32 bytes of Ed25519".into())
                })?;
            keys.push((KeyId::of(&raw), raw));
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// These keys and `other`'s.
    pub fn and(mut self, other: &TrustedKeys) -> Self {
        for key in &other.keys {
            if !self.keys.contains(key) {
                self.keys.push(*key);
            }
        }
        self
    }

    /// The ids of the trusted keys.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|(id, _)| *id)
    }

    /// Checks `signature` (a header's or a batch entry's value, None when
    /// there was none) against `call` now.
    pub fn verify(
        &self,
        call: &SignedCall<'_>,
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        self.verify_at(call, signature, now_ms())
    }

    /// [`TrustedKeys::verify`] at `now_ms`.
    pub fn verify_at(
        &self,
        call: &SignedCall<'_>,
        signature: Option<&str>,
        now_ms: u64,
    ) -> Result<(), SignatureError> {
        let value = signature
            .filter(|value| !value.is_empty())
            .ok_or(SignatureError::Missing)?;
        if value.len() > MAX_HEADER_LEN {
            return Err(SignatureError::Malformed("longer than any signature"));
        }
        let mut parts = value.split('.');
        let (Some(version), Some(key_id), Some(expires), Some(signature), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SignatureError::Malformed(
                "expected v1.<key id>.<expires>.<signature>",
            ));
        };
        if version != "v1" {
            return Err(SignatureError::Malformed(
                "unknown version (this SDK knows v1)",
            ));
        }
        let expires_ms: u64 = expires
            .parse()
            .map_err(|_| SignatureError::Malformed("expiry is not a number"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| SignatureError::Malformed("signature is not base64url"))?;
        let unknown = || SignatureError::UnknownKey(key_id.chars().take(16).collect());
        let wanted = KeyId::parse(key_id).ok_or_else(unknown)?;
        let (_, public_key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == wanted)
            .ok_or_else(unknown)?;
        // The expiry is checked only once the signature is known good: an
        // old genuine call says "expired", a forged one "does not match".
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&call.signed_bytes(expires_ms), &signature)
            .map_err(|_| SignatureError::Mismatch)?;
        if now_ms > expires_ms {
            return Err(SignatureError::Expired {
                ago_ms: now_ms - expires_ms,
            });
        }
        Ok(())
    }
}

/// PEM as OpenSSL writes it: LF line ends.
fn pem_text(tag: &str, contents: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, contents),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests;
