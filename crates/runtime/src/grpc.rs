//! gRPC plumbing shared by every server: health checking, reflection, and
//! `INVALID_ARGUMENT` statuses with `google.rpc.BadRequest` field violations.

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// `INVALID_ARGUMENT` carrying every violation as `google.rpc.BadRequest`.
pub fn invalid_argument(message: impl Into<String>, violations: &[Violation]) -> Status {
    let details = ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Health service (`grpc.health.v1.Health`) with every named service and the
/// overall server (`""`) marked serving; the reporter flips them on drain.
pub async fn health<S: AsRef<str>>(
    services: &[S],
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, server) = tonic_health::server::health_reporter();
    for service in services {
        reporter
            .set_service_status(service.as_ref(), tonic_health::ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    (reporter, server)
}

/// Marks every service not serving, so clients stop sending new work.
pub async fn set_not_serving<S: AsRef<str>>(
    reporter: &tonic_health::server::HealthReporter,
    services: &[S],
) {
    for service in services {
        reporter
            .set_service_status(service.as_ref(), tonic_health::ServingStatus::NotServing)
            .await;
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// Server reflection (v1 and v1alpha) over the given encoded descriptor sets
/// plus the health service's.
pub fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, set| b.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The connections `listener` accepts, with `TCP_NODELAY` set, for
/// `serve_with_incoming_shutdown`. tonic sets nodelay only on listeners it
/// binds itself; without it a small unary answer can wait ~40 ms for a
/// delayed ACK (Nagle's algorithm).
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream
            && let Err(error) = stream.set_nodelay(true)
        {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        stream
    })
}
