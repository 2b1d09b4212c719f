//! OTLP trace export (the coordinator's `otlp` feature): the real `concord`
//! process sends its spans to a collector — here a real OTLP/gRPC server on
//! loopback that keeps what it receives — and its calls carry the W3C
//! `traceparent` that the participant SDK hands to handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::support::processes::{free_addr, start_coordinator_with};
use super::support::{TestParticipant, eventually};
use concord_participant::{BeginOptions, Outcome};
use concord_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// What the collector received: each span with its resource's attributes.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[derive(Debug, Clone)]
struct Received {
    service: HashMap<String, String>,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

fn strings(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            other => Some((kv.key.clone(), format!("{other:?}"))),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = strings(
                &resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: strings(&span.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("collector serves");
        });
        url
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }
}

#[tokio::test]
async fn spans_reach_an_otlp_collector_and_participants_join_the_trace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    let addr = free_addr();
    let coordinator = start_coordinator_with(
        addr,
        &dir.path().join("coordinator"),
        None,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-service-name",
            "concord-under-test",
            "--node-name",
            "node-7",
        ],
    )
    .await;
    let client =
        concord_participant::CoordinatorClient::connect(format!("http://{addr}")).expect("client");
    let id = client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id;
    for (participant, payload) in [(&a, "commit"), (&b, "commit")] {
        client
            .enlist(&id, &participant.url, payload, None)
            .await
            .expect("enlist");
    }
    assert_eq!(
        client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    eventually("phase 2 reaches both participants", || async {
        let done = a.effects(&id).await == ["prepare", "commit"]
            && b.effects(&id).await == ["prepare", "commit"];
        done.then_some(())
    })
    .await;
    eventually("the transaction is finished", || async {
        let state = client.transaction(&id).await.ok()?.state;
        (state == pb::TransactionState::Committed as i32).then_some(())
    })
    .await;

    // A clean stop flushes what is still buffered.
    coordinator.signal("TERM");
    assert!(
        coordinator.exits(Duration::from_secs(15)).await.success(),
        "concord exits 0 after SIGTERM"
    );
    let spans = collector.spans();
    let txn = spans
        .iter()
        .find(|s| s.name == "txn" && s.attributes.get("txn") == Some(&id))
        .unwrap_or_else(|| panic!("no `txn` span for {id} among {spans:#?}"));
    assert_eq!(
        txn.service.get("service.name").map(String::as_str),
        Some("concord-under-test")
    );
    assert_eq!(
        txn.service.get("service.instance.id").map(String::as_str),
        Some("node-7")
    );
    // Each branch's prepare and commit is a child span of the transaction's,
    // and the participant was called with exactly that span as its parent.
    for participant in [&a, &b] {
        let traced = participant.traced(&id).await;
        let ops: Vec<&str> = traced.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(ops, ["prepare", "commit"], "{traced:?}");
        for (op, traceparent) in &traced {
            let call = spans
                .iter()
                .find(|s| {
                    s.name == *op
                        && s.trace_id == txn.trace_id
                        && s.attributes.get("participant") == Some(&participant.url)
                })
                .unwrap_or_else(|| panic!("no {op} span to {} in {spans:#?}", participant.url));
            assert_eq!(call.parent_span_id, txn.span_id, "{call:?}");
            assert_eq!(
                traceparent,
                &format!("00-{}-{}-01", call.trace_id, call.span_id),
                "the participant's {op} carries its call's trace context"
            );
        }
    }
}
