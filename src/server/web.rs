//! gRPC-Web on a gRPC port: calls whose content type is
//! `application/grpc-web…` are translated to gRPC for the services below;
//! everything else (gRPC over HTTP/2, `/metrics`, the front door's other
//! routes over HTTP/1.1) passes untouched. tonic-web alone would refuse any
//! HTTP/1.1 request that is not gRPC-Web.

use std::task::{Context, Poll};

use http::{Request, header::CONTENT_TYPE};
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Layer, Service, util::Either};

/// Wraps a service so it also answers gRPC-Web.
#[derive(Clone, Copy, Default)]
pub(super) struct GrpcWebOnlyLayer;

impl<S: Clone> Layer<S> for GrpcWebOnlyLayer {
    type Service = GrpcWebOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebOnly {
            web: GrpcWebLayer::new().layer(inner.clone()),
            plain: inner,
        }
    }
}

#[derive(Clone)]
pub(super) struct GrpcWebOnly<S> {
    web: GrpcWebService<S>,
    plain: S,
}

fn is_grpc_web<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc-web"))
}

impl<S, B> Service<Request<B>> for GrpcWebOnly<S>
where
    S: Service<Request<B>> + Clone,
    GrpcWebService<S>: Service<Request<B>, Response = S::Response, Error = S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = <Either<GrpcWebService<S>, S> as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match (self.web.poll_ready(cx)?, self.plain.poll_ready(cx)?) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The instance made ready serves this call; a clone waits for the next.
        if is_grpc_web(&request) {
            let fresh = self.web.clone();
            let ready = std::mem::replace(&mut self.web, fresh);
            Either::<_, S>::Left(ready).call(request)
        } else {
            let fresh = self.plain.clone();
            let ready = std::mem::replace(&mut self.plain, fresh);
            Either::<GrpcWebService<S>, _>::Right(ready).call(request)
        }
    }
}
