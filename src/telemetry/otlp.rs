//! Where traces go: the standard OpenTelemetry variables, read strictly
//! (a value that does not parse stops start-up naming the variable, where
//! the SDK alone would fall back in silence).
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector's OTLP/gRPC address (`http://localhost:4317`); unset: no tracing |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc`, the only one spoken |
//! | `OTEL_EXPORTER_OTLP_HEADERS` | `key=value,…` sent with every export (API keys) |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` | ms per export, `10000` |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource; the name defaults to the command's (`capsule-auth`, …) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` by default; `traceidratio` with a ratio samples by trace id alone, so a client's sampled flag cannot force it |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE` | ms between exports (`5000`); spans held at most (`2048`, more are dropped) |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | no tracing whatever else is set |
//!
//! An `https://` endpoint is verified against `CAPSULE_TLS_CA_FILE`.

use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    runtime::Tokio,
    trace::{BatchConfigBuilder, Sampler, SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};

use crate::config::{ConfigError, Source, parse_bool, positive};

/// How this process exports traces.
#[derive(Debug)]
pub struct TraceConfig {
    pub endpoint: String,
    pub service_name: String,
    pub sampler: Sampler,
    pub schedule_delay: Duration,
    pub max_queue_size: usize,
    pub timeout: Duration,
}

/// The first of `variables` that is set, with its name.
fn first(source: &dyn Source, variables: &[&'static str]) -> Option<(&'static str, String)> {
    variables
        .iter()
        .find_map(|variable| source.get(variable).map(|value| (*variable, value)))
}

impl TraceConfig {
    /// The settings in `source`; `None` when no endpoint is set or tracing
    /// is turned off.
    pub fn from_source(source: &dyn Source, default_name: &str) -> Result<Option<Self>, ConfigError> {
        if parse_bool(source, "OTEL_SDK_DISABLED", false)? {
            return Ok(None);
        }
        match source.get("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(ConfigError::invalid(
                    "OTEL_TRACES_EXPORTER",
                    other,
                    "expected otlp or none",
                ));
            }
        }
        let Some((variable, endpoint)) = first(
            source,
            &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
        ) else {
            return Ok(None);
        };
        let parsed = url::Url::parse(endpoint.trim()).map_err(|_| {
            ConfigError::invalid(
                variable,
                &endpoint,
                "expected the collector's OTLP/gRPC URL, like http://localhost:4317",
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::invalid(
                variable,
                &endpoint,
                "expected an http:// or https:// URL with a host, like http://localhost:4317",
            ));
        }
        if let Some((variable, protocol)) = first(
            source,
            &["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"],
        ) && protocol.trim() != "grpc"
        {
            return Err(ConfigError::invalid(
                variable,
                &protocol,
                "only grpc is spoken: point the endpoint at the collector's OTLP/gRPC port (4317)",
            ));
        }
        let timeout_ms = match first(
            source,
            &["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
        ) {
            Some((variable, _)) => positive(source, variable, 10_000_u64)?,
            None => 10_000,
        };
        Ok(Some(Self {
            endpoint: endpoint.trim().to_owned(),
            service_name: source
                .get("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| default_name.to_owned()),
            sampler: sampler(source)?,
            schedule_delay: Duration::from_millis(positive(source, "OTEL_BSP_SCHEDULE_DELAY", 5_000_u64)?),
            max_queue_size: positive(source, "OTEL_BSP_MAX_QUEUE_SIZE", 2_048_usize)?,
            timeout: Duration::from_millis(timeout_ms),
        }))
    }

    /// The tracer provider exporting to the endpoint, batching on this
    /// tokio runtime. The channel connects on first export.
    pub fn provider(&self) -> anyhow::Result<SdkTracerProvider> {
        let channel = crate::tls::endpoint(&self.endpoint)?
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_timeout(self.timeout)
            .build()?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(self.schedule_delay)
            .with_max_queue_size(self.max_queue_size)
            .with_max_export_timeout(self.timeout)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, Tokio)
            .with_batch_config(batch)
            .build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(self.sampler.clone())
            .with_resource(Resource::builder().with_service_name(self.service_name.clone()).build())
            .build())
    }
}

/// `OTEL_TRACES_SAMPLER` (and the ratio in `OTEL_TRACES_SAMPLER_ARG`).
fn sampler(source: &dyn Source) -> Result<Sampler, ConfigError> {
    const ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    let ratio = || -> Result<f64, ConfigError> {
        match source.get(ARG) {
            None => Ok(1.0),
            Some(raw) => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .ok_or_else(|| ConfigError::invalid(ARG, &raw, "expected a ratio from 0 to 1, like 0.01 for 1 %")),
        }
    };
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    Ok(match source.get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
        None | Some("parentbased_always_on") => parent_based(Sampler::AlwaysOn),
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatioBased(ratio()?),
        Some("parentbased_always_off") => parent_based(Sampler::AlwaysOff),
        Some("parentbased_traceidratio") => parent_based(Sampler::TraceIdRatioBased(ratio()?)),
        Some(other) => {
            return Err(ConfigError::invalid(
                "OTEL_TRACES_SAMPLER",
                other,
                "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Option<TraceConfig>, ConfigError> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let source = move |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        TraceConfig::from_source(&source, "capsule-test")
    }

    #[test]
    fn no_endpoint_no_tracing() {
        assert!(config(&[]).expect("valid").is_none());
        let off = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert!(config(&off).expect("valid").is_none());
        let none = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert!(config(&none).expect("valid").is_none());
    }

    #[test]
    fn reads_the_standard_variables() {
        let config = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
        .expect("valid")
        .expect("on");
        assert_eq!(config.endpoint, "http://traces:4317");
        assert_eq!(config.service_name, "capsule-test");
        assert!(matches!(config.sampler, Sampler::TraceIdRatioBased(ratio) if (ratio - 0.01).abs() < f64::EPSILON));
        assert_eq!(config.schedule_delay, Duration::from_millis(100));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317");
        for (pairs, variable) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![endpoint, ("OTEL_BSP_SCHEDULE_DELAY", "soon")],
                "OTEL_BSP_SCHEDULE_DELAY",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "jaeger")],
                "OTEL_TRACES_EXPORTER",
            ),
        ] {
            let err = config(&pairs).expect_err(variable);
            assert_eq!(err.variable, variable, "{err}");
        }
    }
}
