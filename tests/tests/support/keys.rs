//! The deployment key of the tests (DESIGN §12): every coordinator a test
//! starts signs its participant calls with it, and every participant a
//! test starts trusts it. One key per test process, made at first use; a
//! test that calls a participant itself signs with it too ([`signed`]).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use concord_proto::signature::{
    CallSigner, SIGNATURE_HEADER, SignedCall, TrustedKeys, generate_private_key_pem,
};

fn private_pem() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| generate_private_key_pem().expect("a test key"))
}

/// The coordinators' signer.
pub fn signer() -> Arc<CallSigner> {
    static SIGNER: OnceLock<Arc<CallSigner>> = OnceLock::new();
    Arc::clone(SIGNER.get_or_init(|| {
        Arc::new(CallSigner::from_pem(private_pem()).expect("the test key parses"))
    }))
}

/// What the participants trust.
pub fn trusted() -> TrustedKeys {
    TrustedKeys::from_pem(&signer().public_key_pem()).expect("the test public key")
}

/// The signature of a call a test makes itself, good for a minute.
pub fn sign(method: &str, transaction_id: &str, branch: &str, payload: &[u8]) -> String {
    signer().sign(
        &SignedCall {
            method,
            transaction_id,
            branch,
            payload,
        },
        std::time::Duration::from_secs(60),
    )
}

/// `message` as a request signed for `method` on `branch` of
/// `transaction_id` with `payload`.
pub fn signed<T>(
    message: T,
    method: &str,
    transaction_id: &str,
    branch: &str,
    payload: &[u8],
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        SIGNATURE_HEADER,
        sign(method, transaction_id, branch, payload)
            .parse()
            .expect("ASCII"),
    );
    request
}

/// The key as files, for the processes a test starts: (private key for
/// `concord serve --signing-key`, public key for a participant's
/// `--coordinator-key`). Written once per test process, in a temp dir of
/// its own.
pub fn files() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("concord-test-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a dir for the test key");
        let private = dir.join("signing.key");
        let public = dir.join("signing.key.pub");
        std::fs::write(&private, private_pem()).expect("write the test key");
        std::fs::write(&public, signer().public_key_pem()).expect("write the test public key");
        (private, public)
    })
}

/// `--signing-key FILE` for a `concord serve` a test starts.
pub fn signing_key_args() -> [String; 2] {
    ["--signing-key".into(), files().0.display().to_string()]
}

/// `--coordinator-key FILE` for a participant process a test starts.
pub fn coordinator_key_args() -> [String; 2] {
    ["--coordinator-key".into(), files().1.display().to_string()]
}

/// What a participant a test starts obeys: the tests' coordinators.
pub fn callers() -> concord_participant::Callers {
    concord_participant::Callers::SignedBy(trusted())
}

/// A Participant client that signs every call with the tests' key, as the
/// coordinator would: for tests that play the coordinator themselves.
/// Same methods as the generated client; an entry of a `Batch` already
/// signed (or deliberately left blank with [`SignedClient::raw`]) is kept.
#[derive(Clone)]
pub struct SignedClient(
    pub concord_proto::v1::participant_client::ParticipantClient<tonic::transport::Channel>,
);

impl SignedClient {
    pub async fn connect(url: impl Into<String>) -> Result<Self, tonic::transport::Error> {
        Ok(Self(
            concord_proto::v1::participant_client::ParticipantClient::connect(url.into()).await?,
        ))
    }

    /// The unsigned client underneath.
    pub fn raw(
        &mut self,
    ) -> &mut concord_proto::v1::participant_client::ParticipantClient<tonic::transport::Channel>
    {
        &mut self.0
    }

    pub async fn check_message(
        &mut self,
        request: concord_proto::v1::CheckMessageRequest,
    ) -> Result<tonic::Response<concord_proto::v1::CheckMessageResponse>, tonic::Status> {
        let id = request.transaction_id.clone();
        self.0
            .check_message(signed(request, "CheckMessage", &id, "", b""))
            .await
    }

    /// A `Batch` signed as a whole, as the coordinator signs it.
    pub async fn batch(
        &mut self,
        request: concord_proto::v1::BatchRequest,
    ) -> Result<tonic::Response<tonic::Streaming<concord_proto::v1::BatchAnswer>>, tonic::Status>
    {
        let signature = batch_signature(&request.calls);
        let mut request = tonic::Request::new(request);
        request
            .metadata_mut()
            .insert(SIGNATURE_HEADER, signature.parse().expect("ASCII"));
        self.0.batch(request).await
    }
}

/// The signature of a `Batch` of `calls` as a whole (DESIGN §12).
pub fn batch_signature(calls: &[concord_proto::v1::BatchCall]) -> String {
    let payload = concord_proto::signature::batch_payload_of(calls);
    sign(concord_proto::signature::BATCH_METHOD, "", "", &payload)
}

/// The branch RPCs of [`SignedClient`]: each signs what it sends.
macro_rules! signed_branch_calls {
    ($($method:ident: $name:literal, $request:ident -> $response:ident;)*) => {
        impl SignedClient {$(
            pub async fn $method(
                &mut self,
                request: concord_proto::v1::$request,
            ) -> Result<tonic::Response<concord_proto::v1::$response>, tonic::Status> {
                let (txn, branch) = request
                    .branch
                    .as_ref()
                    .map(|b| (b.transaction_id.clone(), b.branch.clone()))
                    .unwrap_or_default();
                let payload = request.payload.clone();
                self.0
                    .$method(signed(request, $name, &txn, &branch, &payload))
                    .await
            }
        )*}
    };
}

signed_branch_calls! {
    prepare: "Prepare", PrepareRequest -> PrepareResponse;
    commit: "Commit", CommitBranchRequest -> CommitBranchResponse;
    abort: "Abort", AbortBranchRequest -> AbortBranchResponse;
    commit_one_phase: "CommitOnePhase", CommitOnePhaseRequest -> CommitOnePhaseResponse;
    execute: "Execute", ExecuteRequest -> ExecuteResponse;
    compensate: "Compensate", CompensateRequest -> CompensateResponse;
    deliver: "Deliver", DeliverRequest -> DeliverResponse;
}
