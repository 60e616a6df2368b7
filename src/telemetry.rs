//! Structured logs: one JSON object per line on stdout (the host turns each into an
//! Information log), errors on stderr. Spans carry `invocation_id` and `referral_id`.

use tracing::{Level, Subscriber};
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, fmt::writer::MakeWriterExt};

/// A JSON subscriber writing to `sink`; `default_filter` applies unless `RUST_LOG` is set.
pub fn get_subscriber<W>(default_filter: &str, sink: W) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(sink)
        .finish()
}

/// Installs the process-wide subscriber: errors to stderr, everything else to stdout.
pub fn init(default_filter: &str) {
    let sink = std::io::stderr
        .with_max_level(Level::ERROR)
        .or_else(std::io::stdout);
    let _ = tracing::subscriber::set_global_default(get_subscriber(default_filter, sink));
}
