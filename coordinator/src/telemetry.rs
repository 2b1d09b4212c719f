//! Where the node's traces go: logs on stderr always, and — in a build with
//! the `otlp` cargo feature and `--otlp-endpoint` given — every span (the
//! `txn`/`saga` span of each transaction and the span of each participant
//! call under it) exported to an OpenTelemetry collector over OTLP/gRPC.
//! Calls to participants then carry the W3C `traceparent` of their span, so
//! a participant's own spans join the coordinator's trace (the SDK hands it
//! to handlers as `BranchContext::traceparent`).
//!
//! Without the feature the flag is refused with the reason, and [`inject`]
//! does nothing: the default build carries no OpenTelemetry code.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The name of the span of each call to a participant.
pub const PARTICIPANT_CALL: &str = "participant_call";

/// Where to export spans: the collector's OTLP/gRPC endpoint and the
/// `service.name` (plus `service.instance.id` when the node has a name).
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub service_name: String,
    pub instance: Option<String>,
}

/// The installed trace pipeline; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Installs the global subscriber: stderr logs filtered by `RUST_LOG`
/// (default `info`), plus the OTLP exporter when `otlp` is given. Must run
/// inside the tokio runtime: the exporter's gRPC channel and batching task
/// live on it.
pub fn init(otlp: Option<OtlpConfig>) -> anyhow::Result<Telemetry> {
    // Colours only on a terminal: log files and collectors get plain text.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The logs leave out the span of each participant call: nothing is
    // logged inside it (the driver's lines about a call name its branch,
    // under the transaction's span), and a span the logs keep costs a
    // registry slot and its formatted fields for as long as the call is
    // out, about 300 bytes per call in flight (docs/performance.md,
    // memory). Traces keep it: without an exporter no layer wants it and
    // it is never created.
    let logged = filter.and(tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.name() == PARTICIPANT_CALL)
    }));
    let registry = tracing_subscriber::registry().with(logs.with_filter(logged));
    #[cfg(feature = "otlp")]
    {
        let Some(otlp) = otlp else {
            registry.init();
            return Ok(Telemetry { provider: None });
        };
        let provider = otlp::provider(&otlp)?;
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "concord");
        // Traces do not follow RUST_LOG: quieting the logs must not cut
        // the traces. They carry Concord's own spans (not HTTP/2's or SQL's).
        let traced = tracing_subscriber::filter::Targets::new()
            .with_target("concord_coordinator", tracing::Level::INFO);
        registry
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(traced),
            )
            .init();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::info!(endpoint = %otlp.endpoint, "exporting traces over OTLP");
        Ok(Telemetry {
            provider: Some(provider),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        if let Some(otlp) = otlp {
            anyhow::bail!(
                "--otlp-endpoint {} needs a concord built with the `otlp` feature \
                 (cargo build --release -p concord-coordinator --features otlp)",
                otlp.endpoint
            );
        }
        registry.init();
        Ok(Telemetry {})
    }
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter. Bounded: a
    /// collector that does not answer costs at most the export timeout.
    pub async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            // The SDK's shutdown blocks until its batching task (a task on
            // this runtime) has flushed: wait for it off the workers.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "flushing traces failed"),
                Err(error) => tracing::warn!(%error, "flushing traces failed"),
            }
        }
    }
}

/// Puts `span`'s trace context (`traceparent`) into an outgoing call's
/// metadata; a no-op unless traces are exported.
pub fn inject<T>(request: &mut tonic::Request<T>, span: &tracing::Span) {
    #[cfg(feature = "otlp")]
    otlp::inject(request.metadata_mut(), span);
    #[cfg(not(feature = "otlp"))]
    let _ = (request, span);
}

/// `span`'s W3C trace context as the `traceparent` value a call would carry
/// (for calls inside a `Batch`, which share one call's metadata); empty
/// unless traces are exported.
pub fn traceparent(span: &tracing::Span) -> String {
    #[cfg(feature = "otlp")]
    {
        let mut metadata = tonic::metadata::MetadataMap::new();
        otlp::inject(&mut metadata, span);
        metadata
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = span;
        String::new()
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use std::time::Duration;

    use super::OtlpConfig;
    use anyhow::Context;
    use opentelemetry::propagation::Injector;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// How long one export may take before the batch is dropped (the
    /// collector is never allowed to stall the node).
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

    pub(super) fn provider(otlp: &OtlpConfig) -> anyhow::Result<SdkTracerProvider> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(otlp.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("OTLP exporter for {}", otlp.endpoint))?;
        // Spans leave in batches every second; a full queue drops spans
        // rather than grow memory or slow transactions down.
        let batching = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_secs(1))
            .with_max_queue_size(8_192)
            .with_max_export_batch_size(1_024)
            .build();
        let processor =
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .with_batch_config(batching)
            .build();
        let mut resource =
            opentelemetry_sdk::Resource::builder().with_service_name(otlp.service_name.clone());
        if let Some(instance) = &otlp.instance {
            resource = resource.with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                instance.clone(),
            ));
        }
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build())
    }

    struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

    impl Injector for Metadata<'_> {
        fn set(&mut self, key: &str, value: String) {
            // Propagator keys are lowercase ASCII; a value that is not valid
            // metadata is skipped (the call matters more than its trace).
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                self.0.insert(key, value);
            }
        }
    }

    pub(super) fn inject(metadata: &mut tonic::metadata::MetadataMap, span: &tracing::Span) {
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut Metadata(metadata));
        });
    }
}
