//! Bad input of every kind gets INVALID_ARGUMENT (or the precise status its
//! situation calls for) with a message naming the field, and changes nothing.

use concord_proto::v1 as pb;
use tonic::Code;

use super::support::{TestParticipant, client, quick_config, start_coordinator};

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?} mentioning {needle:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(
                status.message().contains(needle),
                "{:?} does not mention {needle:?}",
                status.message()
            );
        }
    }
}

#[tokio::test]
async fn every_bad_field_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let participant = TestParticipant::start(dir.path(), "p", None).await;
    let client = client(&node);
    let mut raw = client.raw();
    let id = client
        .begin(Default::default())
        .await
        .expect("begin")
        .transaction_id;
    let count = |raw: &mut pb::coordinator_client::CoordinatorClient<_>| {
        let mut raw = raw.clone();
        async move {
            raw.list_transactions(pb::ListTransactionsRequest::default())
                .await
                .expect("list")
                .into_inner()
                .transactions
                .len()
        }
    };
    let before = count(&mut raw).await;

    let begin = |timeout_ms, key: &str, description: &str| pb::BeginRequest {
        timeout_ms,
        idempotency_key: key.into(),
        description: description.into(),
        ..Default::default()
    };
    expect(
        raw.begin(begin(5, "", "")).await,
        Code::InvalidArgument,
        "timeout_ms",
    );
    expect(
        raw.begin(begin(86_400_001, "", "")).await,
        Code::InvalidArgument,
        "timeout_ms",
    );
    expect(
        raw.begin(begin(0, &"k".repeat(129), "")).await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    expect(
        raw.begin(begin(0, "new\nline", "")).await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    expect(
        raw.begin(begin(0, "", &"d".repeat(257))).await,
        Code::InvalidArgument,
        "description",
    );

    // Committing in the Begin needs something to commit, and a sane
    // prepare deadline.
    expect(
        raw.begin(pb::BeginRequest {
            commit: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "commit: a transaction committed in its Begin needs at least one branch",
    );
    expect(
        raw.begin(pb::BeginRequest {
            prepare_timeout_ms: u64::MAX,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "prepare_timeout_ms",
    );

    // Branches given with Begin are checked like Enlist's, by position.
    let spec = |participant: &str, branch: &str| pb::BranchSpec {
        participant: participant.into(),
        payload: vec![],
        branch: branch.into(),
    };
    let with_branches = |branches| pb::BeginRequest {
        branches,
        ..Default::default()
    };
    let url = participant.url.as_str();
    expect(
        raw.begin(with_branches(vec![spec(url, ""), spec("nope", "")]))
            .await,
        Code::InvalidArgument,
        "branches[1].participant",
    );
    expect(
        raw.begin(with_branches(vec![spec(url, "x"), spec(url, "x")]))
            .await,
        Code::InvalidArgument,
        "branches[1].branch \"x\" is given twice",
    );
    expect(
        raw.begin(with_branches(vec![spec(url, "bad name")])).await,
        Code::InvalidArgument,
        "branches[0].branch",
    );
    expect(
        raw.begin(with_branches(
            (0..65).map(|i| spec(url, &format!("b{i}"))).collect(),
        ))
        .await,
        Code::ResourceExhausted,
        "limit",
    );

    let enlist = |txn: &str, participant: &str, payload: Vec<u8>, branch: &str| pb::EnlistRequest {
        transaction_id: txn.into(),
        participant: participant.into(),
        payload,
        branch: branch.into(),
    };
    for bad_id in [
        "",
        "42",
        "not-a-uuid",
        &id.to_uppercase(),
        &format!("{id}x"),
    ] {
        expect(
            raw.enlist(enlist(bad_id, url, vec![], "")).await,
            Code::InvalidArgument,
            "transaction_id",
        );
    }
    for bad_endpoint in [
        "",
        "localhost:7501",
        "ftp://h:1",
        "http://",
        "http://h:1/x",
        "http://[::1",
    ] {
        expect(
            raw.enlist(enlist(&id, bad_endpoint, vec![], "")).await,
            Code::InvalidArgument,
            "participant",
        );
    }
    expect(
        raw.enlist(enlist(&id, url, vec![0; 1024 * 1024 + 1], ""))
            .await,
        Code::InvalidArgument,
        "payload is 1048577 bytes",
    );
    expect(
        raw.enlist(enlist(&id, url, vec![], "white space")).await,
        Code::InvalidArgument,
        "branch",
    );

    let commit = |txn: &str, prepare_timeout_ms| pb::CommitRequest {
        transaction_id: txn.into(),
        wait_for_completion: false,
        prepare_timeout_ms,
    };
    expect(
        raw.commit(commit(&id, 600_001)).await,
        Code::InvalidArgument,
        "prepare_timeout_ms",
    );
    expect(
        raw.commit(commit("", 0)).await,
        Code::InvalidArgument,
        "transaction_id",
    );
    expect(
        raw.rollback(pb::RollbackRequest {
            transaction_id: id.clone(),
            reason: "r".repeat(257),
        })
        .await,
        Code::InvalidArgument,
        "reason",
    );
    expect(
        raw.get_transaction(pb::GetTransactionRequest {
            transaction_id: "x".into(),
            include_payloads: true,
        })
        .await,
        Code::InvalidArgument,
        "transaction_id",
    );
    expect(
        raw.get_outcome(pb::GetOutcomeRequest {
            transaction_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "transaction_id",
    );
    let list = |states: Vec<i32>, page_size, page_token: &str| pb::ListTransactionsRequest {
        needs_attention: false,
        states,
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    expect(
        raw.list_transactions(pb::ListTransactionsRequest {
            kind: 99,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "kind",
    );
    expect(
        raw.list_transactions(pb::ListTransactionsRequest {
            min_age_ms: u64::MAX,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "min_age_ms",
    );
    expect(
        raw.retry_transaction(pb::RetryTransactionRequest {
            transaction_id: "nope".into(),
        })
        .await,
        Code::InvalidArgument,
        "transaction_id",
    );
    expect(
        raw.list_transactions(list(vec![], 1001, "")).await,
        Code::InvalidArgument,
        "page_size",
    );
    expect(
        raw.list_transactions(list(vec![0], 0, "")).await,
        Code::InvalidArgument,
        "states",
    );
    expect(
        raw.list_transactions(list(vec![99], 0, "")).await,
        Code::InvalidArgument,
        "states",
    );
    expect(
        raw.list_transactions(list(vec![], 0, "garbage")).await,
        Code::InvalidArgument,
        "page_token",
    );

    // Nothing changed: no new transaction, and the one we had is still
    // active with no branch.
    assert_eq!(count(&mut raw).await, before);
    let txn = client.transaction(&id).await.expect("get");
    assert_eq!(txn.state, pb::TransactionState::Active as i32);
    assert!(txn.branches.is_empty());
}

#[tokio::test]
async fn malformed_protobuf_bytes_to_every_rpc_are_invalid_argument_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let participant = TestParticipant::start(dir.path(), "p", None).await;
    let client = client(&node);
    let id = client
        .begin(Default::default())
        .await
        .expect("begin")
        .transaction_id;
    // Bytes that no request type parses: a length running past the end,
    // a truncated varint, an unknown wire type (7), a group end without
    // its start, and a field number 0.
    let unparsable: [&[u8]; 5] = [
        &[0x0a, 0xff, 0x01, 0x41],
        &[0x08, 0x96],
        &[0x0f, 0x00],
        &[0x0c],
        &[0x00, 0x01],
    ];
    // Bytes that may parse as some message: a string that is not UTF-8 for
    // field 1, all ones, and seeded noise.
    let mut maybe: Vec<Vec<u8>> = vec![vec![0x0a, 0x02, 0xc3, 0x28], vec![0xff; 32]];
    let mut noise = fastrand::Rng::with_seed(11);
    for len in [1usize, 7, 64, 4096] {
        maybe.push((0..len).map(|_| noise.u8(..)).collect());
    }
    const COORDINATOR: [&str; 12] = [
        "/concord.v1.Coordinator/Begin",
        "/concord.v1.Coordinator/Enlist",
        "/concord.v1.Coordinator/Commit",
        "/concord.v1.Coordinator/Rollback",
        "/concord.v1.Coordinator/GetTransaction",
        "/concord.v1.Coordinator/ListTransactions",
        "/concord.v1.Coordinator/SubmitSaga",
        "/concord.v1.Coordinator/GetOutcome",
        "/concord.v1.Coordinator/RetryTransaction",
        "/concord.v1.Coordinator/ResolveBranch",
        "/concord.v1.Coordinator/PrepareMessage",
        "/concord.v1.Coordinator/SubmitMessage",
    ];
    // The SDK's Participant service decodes with the same codec.
    const PARTICIPANT: [&str; 9] = [
        "/concord.v1.Participant/Prepare",
        "/concord.v1.Participant/Commit",
        "/concord.v1.Participant/Abort",
        "/concord.v1.Participant/CommitOnePhase",
        "/concord.v1.Participant/Execute",
        "/concord.v1.Participant/Compensate",
        "/concord.v1.Participant/Batch",
        "/concord.v1.Participant/Deliver",
        "/concord.v1.Participant/CheckMessage",
    ];
    let targets = COORDINATOR.iter().map(|rpc| (node.url(), *rpc)).chain(
        PARTICIPANT
            .iter()
            .map(|rpc| (participant.url.clone(), *rpc)),
    );
    for (url, rpc) in targets {
        for bytes in unparsable {
            let status = raw_call(&url, rpc, bytes).await;
            // The client's fault, said as such: never INTERNAL (kept for
            // the service's own faults).
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{rpc} answered {status:?} to {bytes:?}"
            );
            assert!(
                status
                    .message()
                    .starts_with("failed to decode Protobuf message"),
                "{rpc}: {:?}",
                status.message()
            );
        }
        if !rpc.starts_with("/concord.v1.Coordinator/") {
            continue;
        }
        for bytes in &maybe {
            // Bytes that happen to parse meet the field checks instead.
            let code = raw_call(&url, rpc, bytes).await.code();
            assert!(
                matches!(
                    code,
                    Code::InvalidArgument | Code::NotFound | Code::Ok | Code::FailedPrecondition
                ),
                "{rpc} answered {code:?} to {bytes:?}"
            );
        }
    }
    // Still serving, state intact, and the participant did nothing.
    let txn = client.transaction(&id).await.expect("get after garbage");
    assert_eq!(txn.state, pb::TransactionState::Active as i32);
    assert!(txn.branches.is_empty());
    assert_eq!(participant.effect_count().await, 0);
}

/// Sends `body` as one gRPC message to `path` without any typed encoding.
async fn raw_call(url: &str, path: &'static str, body: &[u8]) -> tonic::Status {
    use tonic::codegen::http;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = BytesCodec;
    let result = grpc
        .unary(
            tonic::Request::new(body.to_vec()),
            http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await;
    match result {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// A codec that passes bytes through untouched.
#[derive(Clone, Copy)]
struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test]
async fn endpoints_without_a_usable_port_are_refused_where_they_enter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let mut raw = client.raw();
    let id = client
        .begin(Default::default())
        .await
        .expect("begin")
        .transaction_id;
    for (bad, needle) in [
        ("http://127.0.0.1", "no port"),
        ("https://bank.internal", "no port"),
        ("http://127.0.0.1:0", "between 1 and 65535"),
        ("http://127.0.0.1:65536", "participant"),
        ("http://127.0.0.1:7501/v1", "no path"),
        ("http://ops:secret@127.0.0.1:7501", "user information"),
    ] {
        expect(
            raw.enlist(pb::EnlistRequest {
                transaction_id: id.clone(),
                participant: bad.into(),
                payload: b"commit".to_vec(),
                branch: "a".into(),
            })
            .await,
            Code::InvalidArgument,
            needle,
        );
        let begin = raw
            .begin(pb::BeginRequest {
                branches: vec![pb::BranchSpec {
                    participant: bad.into(),
                    payload: b"commit".to_vec(),
                    branch: "a".into(),
                }],
                commit: true,
                ..pb::BeginRequest::default()
            })
            .await;
        expect(begin, Code::InvalidArgument, "branches[0].participant");
        let saga = raw
            .submit_saga(pb::SubmitSagaRequest {
                steps: vec![pb::SagaStep {
                    name: "pay".into(),
                    participant: bad.into(),
                    kind: pb::StepKind::Pivot as i32,
                    action: b"x".to_vec(),
                    ..pb::SagaStep::default()
                }],
                ..pb::SubmitSagaRequest::default()
            })
            .await;
        expect(saga, Code::InvalidArgument, "step \"pay\": participant");
    }
    // Nothing was enlisted and nothing began.
    let txn = client.transaction(&id).await.expect("get");
    assert_eq!(txn.state, pb::TransactionState::Active as i32);
    assert!(txn.branches.is_empty());
    let listed = raw
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.transactions.len(), 1);
}

/// No request can stall a node (DESIGN §12): a repeated field past its
/// limit is refused by its count before any item of it is looked at, so a
/// 4 MiB request costs what decoding it costs. A Begin with 150,000
/// branches, just under 4 MiB (200,000 held a node 46 s when names were
/// compared pairwise first)
/// is RESOURCE_EXHAUSTED naming the flag; a saga step depending on more
/// steps than the saga has, INVALID_ARGUMENT; nothing of either is kept,
/// and the node answers its next call.
#[tokio::test]
async fn oversized_repeated_fields_are_refused_by_their_count_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let participant = TestParticipant::start(dir.path(), "p", None).await;
    let client = client(&node);
    let mut raw = client.raw();
    let branches: Vec<pb::BranchSpec> = (0..150_000)
        .map(|i| pb::BranchSpec {
            participant: "http://a:1".into(),
            payload: Vec::new(),
            branch: format!("b{i}"),
        })
        .collect();
    expect(
        raw.begin(pb::BeginRequest {
            branches,
            commit: true,
            ..pb::BeginRequest::default()
        })
        .await,
        Code::ResourceExhausted,
        "150000 branches; the limit is 64 (--max-branches)",
    );
    let step = |name: &str, deps: Vec<String>| pb::SagaStep {
        name: name.into(),
        participant: participant.url.clone(),
        kind: pb::StepKind::Pivot as i32,
        action: b"x".to_vec(),
        depends_on: Some(pb::Dependencies { steps: deps }),
        ..pb::SagaStep::default()
    };
    expect(
        raw.submit_saga(pb::SubmitSagaRequest {
            steps: vec![step("a", vec![]), step("b", vec!["a".into(); 100_000])],
            ..pb::SubmitSagaRequest::default()
        })
        .await,
        Code::InvalidArgument,
        "depends on 100000 steps; the saga has 2",
    );
    let listed = raw
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .expect("the node answers")
        .into_inner();
    assert!(listed.transactions.is_empty(), "{listed:?}");
    assert_eq!(participant.effect_count().await, 0);
}

/// DESIGN §12: a node holds at most `--max-in-flight` live transactions.
/// Past it a new Begin is RESOURCE_EXHAUSTED with gRPC's retry pushback,
/// and nothing is begun; a keyed Begin already taken is still answered
/// (its client is retrying, not adding); once one ends, there is room.
#[tokio::test]
async fn past_max_in_flight_a_new_transaction_is_refused_until_one_ends() {
    use concord_coordinator::runtime::RuntimeConfig;
    use concord_participant::BeginOptions;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(
        &dir.path().join("coordinator"),
        RuntimeConfig {
            max_in_flight: 2,
            ..quick_config()
        },
    )
    .await;
    let client = client(&node);
    let keyed = BeginOptions {
        idempotency_key: Some("order-1".into()),
        ..Default::default()
    };
    let first = client.begin(keyed.clone()).await.expect("first");
    client.begin(BeginOptions::default()).await.expect("second");
    let refused = client
        .raw()
        .begin(pb::BeginRequest::default())
        .await
        .expect_err("a third");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-in-flight"), "{refused:?}");
    assert!(
        refused.metadata().get("grpc-retry-pushback-ms").is_some(),
        "{refused:?}"
    );
    let again = client.begin(keyed).await.expect("the keyed retry");
    assert_eq!(again.transaction_id, first.transaction_id);
    let listed = client
        .raw()
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.transactions.len(), 2, "nothing more was begun");
    client
        .rollback(&first.transaction_id, "making room")
        .await
        .expect("rollback");
    // The rolled-back one leaves the node's live table as it ends.
    super::support::eventually("room for one more", || async {
        client.begin(BeginOptions::default()).await.ok()
    })
    .await;
}
