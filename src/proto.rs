//! The generated contracts of every service, and the descriptor set they
//! were compiled from.

/// `capsule.admin.v1`.
pub mod admin {
    pub mod v1 {
        tonic::include_proto!("capsule.admin.v1");
    }
}

/// `capsule.audit.v1`.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("capsule.audit.v1");
    }
}

/// `capsule.auth.v1`.
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("capsule.auth.v1");
    }
}

/// `capsule.project.v1`.
pub mod project {
    pub mod v1 {
        tonic::include_proto!("capsule.project.v1");
    }
}

/// `capsule.deploy.v1`.
pub mod deploy {
    pub mod v1 {
        tonic::include_proto!("capsule.deploy.v1");
    }
}

/// `capsule.gateway.v1`.
pub mod gateway {
    pub mod v1 {
        tonic::include_proto!("capsule.gateway.v1");
    }
}

/// The FileDescriptorSet of every Capsule proto and its imports (google.api,
/// google.protobuf): what reflection serves and the gateway transcodes from.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("capsule_descriptor");

/// [`FILE_DESCRIPTOR_SET`] without source info (comments and their spans,
/// three quarters of its bytes, which no check reads).
const CHECKED_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capsule_descriptor_lean.bin"));

/// The descriptors of [`FILE_DESCRIPTOR_SET`] (without source info),
/// decoded once: methods' permissions, messages' validation rules.
pub fn pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(CHECKED_DESCRIPTOR_SET).expect("the built-in descriptor set decodes")
    })
}

/// The `/package.Service/Method` paths of every RPC in the descriptor set,
/// plus health and reflection: the only values the `method` label of the
/// request metrics takes, so a caller cannot grow the metric set.
pub fn known_method_paths() -> &'static std::collections::HashSet<String> {
    static PATHS: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let mut paths: std::collections::HashSet<String> = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        // The decoded pool every call's checks share, not a second decode
        // of the whole set for a few hundred names.
        for service in pool().services() {
            for method in service.methods() {
                paths.insert(format!("/{}/{}", service.full_name(), method.name()));
            }
        }
        paths
    })
}
