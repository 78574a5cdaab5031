//! OpenTelemetry export of the run and stage spans (cargo feature `otel`).
//!
//! Stageflow's spans are ordinary `tracing` spans (`stageflow.run`, with one `stageflow.stage`
//! child per stage), so exporting them is a matter of adding a
//! [`tracing_opentelemetry`] layer to the subscriber. [`layer`] builds one from an
//! [`SdkTracerProvider`]; plug any exporter into the provider (OTLP through the
//! `opentelemetry-otlp` crate, stdout, or the [`InMemorySpanExporter`] for tests). The crates are
//! re-exported so that versions match.
//!
//! ```
//! use stageflow::observe::otel::{self, InMemorySpanExporter, SdkTracerProvider};
//! use tracing_subscriber::layer::SubscriberExt;
//! use stageflow::{Pipeline, StageContext, StageOutput};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
//! let subscriber = tracing_subscriber::registry().with(otel::layer(&provider));
//! let _guard = tracing::subscriber::set_default(subscriber);
//!
//! let graph = Pipeline::builder("p")
//!     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
//!     .build()
//!     .unwrap();
//! graph.run(()).await.unwrap();
//! provider.force_flush().unwrap();
//! let spans = exporter.get_finished_spans().unwrap();
//! assert_eq!(spans.len(), 2); // the run and its one stage
//! # }
//! ```

pub use opentelemetry;
pub use opentelemetry_sdk;
pub use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
pub use tracing_opentelemetry;

use opentelemetry::trace::TracerProvider as _;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// A `tracing` layer exporting spans through `provider` (instrumentation scope `stageflow`).
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("stageflow"))
}
