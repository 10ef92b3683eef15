//! Server reflection (v1 and v1alpha), built on its first call.
//!
//! tonic-reflection indexes every symbol of the descriptor set (each
//! message, field, enum value and method by its full name) and keeps a copy
//! of each file's bytes, once per protocol version: a few MiB that every
//! service would hold from start-up for a client that seldom comes (grpcurl,
//! Postman). Each version is built when it is first called and shared by
//! every call after it.

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use tonic::{server::NamedService, service::RoutesBuilder};
use tower::Service;

use crate::proto;

/// Adds reflection for a server advertising `advertised` (besides health
/// and reflection themselves).
pub(super) fn add(routes: &mut RoutesBuilder, advertised: &[String]) {
    let names: Arc<[String]> = advertised.into();
    let v1_names = names.clone();
    routes.add_service(Lazy::new(move || {
        builder(&v1_names)
            .build_v1()
            .expect("the built-in descriptor sets index")
    }));
    routes.add_service(Lazy::new(move || {
        builder(&names)
            .build_v1alpha()
            .expect("the built-in descriptor sets index")
    }));
}

fn builder(advertised: &[String]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    for name in advertised {
        builder = builder.with_service_name(name.clone());
    }
    builder
}

/// A service made by `make` on its first call.
pub(super) struct Lazy<S> {
    make: Arc<dyn Fn() -> S + Send + Sync>,
    built: Arc<OnceLock<S>>,
}

impl<S> Lazy<S> {
    fn new(make: impl Fn() -> S + Send + Sync + 'static) -> Self {
        Self {
            make: Arc::new(make),
            built: Arc::new(OnceLock::new()),
        }
    }
}

impl<S> Clone for Lazy<S> {
    fn clone(&self) -> Self {
        Self {
            make: self.make.clone(),
            built: self.built.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Lazy<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, R> Service<R> for Lazy<S>
where
    S: Service<R, Error = Infallible> + Clone,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // tonic's generated servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.built.get_or_init(|| (self.make)()).clone().call(request)
    }
}
