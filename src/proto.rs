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

mod wire;

/// The descriptors of [`FILE_DESCRIPTOR_SET`] (without source info),
/// decoded once: methods' permissions, messages' validation rules. In a
/// process that serves one service ([`serve_only`]), only the files of
/// the packages it serves and what they import.
pub fn pool() -> &'static prost_reflect::DescriptorPool {
    POOL.get_or_init(|| {
        let chosen = std::mem::replace(&mut *served(), Served::Decoded);
        let set = match &chosen {
            Served::Only(set) => set.as_slice(),
            Served::Every | Served::Decoded => CHECKED_DESCRIPTOR_SET,
        };
        prost_reflect::DescriptorPool::decode(set).expect("the built-in descriptor set decodes")
    })
}

static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();

/// Which files [`pool`] decodes; chosen and taken under one lock, so a
/// choice made while the pool is being decoded is refused, not lost.
enum Served {
    Every,
    Only(Vec<u8>),
    Decoded,
}

static SERVED: std::sync::Mutex<Served> = std::sync::Mutex::new(Served::Every);

fn served() -> std::sync::MutexGuard<'static, Served> {
    // Nothing panics while holding it: a poisoned lock holds a whole value.
    SERVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes [`pool`] hold only the files that declare the services of
/// `packages` and those they import (`capsule serve auth` decodes 86 of
/// the set's 136 KB; the descriptors it builds stay resident): methods
/// of packages neither served nor imported are then unknown
/// (UNIMPLEMENTED), and their messages are decoded without the text
/// check. Called before the process's first call, once.
pub fn serve_only(packages: &[&str]) -> Result<(), String> {
    let set = serving_files(CHECKED_DESCRIPTOR_SET, packages)?;
    let mut served = served();
    if matches!(*served, Served::Decoded) {
        return Err("the descriptor pool is in use already".to_owned());
    }
    *served = Served::Only(set);
    Ok(())
}

/// The files of the encoded set `set` that declare a service of one of
/// `packages`, and every file they import, in the set's order, encoded.
fn serving_files(set: &[u8], packages: &[&str]) -> Result<Vec<u8>, String> {
    /// `FileDescriptorProto`'s `name`, `package`, `dependency`, `service`.
    const NAME: u32 = 1;
    const PACKAGE: u32 = 2;
    const DEPENDENCY: u32 = 3;
    const SERVICE: u32 = 6;
    let text = |field| {
        wire::length_delimited(field).and_then(|bytes| std::str::from_utf8(bytes).map_err(|err| err.to_string()))
    };
    let mut files = Vec::new();
    let mut imports = std::collections::HashMap::new();
    let mut wanted = Vec::new();
    let mut found = std::collections::HashSet::new();
    for (encoded, file) in wire::files(set)? {
        let (mut name, mut package, mut serves, mut imported) = ("", "", false, Vec::new());
        for (number, field) in wire::fields(file)? {
            match number {
                NAME => name = text(field)?,
                PACKAGE => package = text(field)?,
                DEPENDENCY => imported.push(text(field)?),
                SERVICE => serves = true,
                _ => {}
            }
        }
        if serves && packages.contains(&package) {
            wanted.push(name);
            found.insert(package);
        }
        imports.insert(name, imported);
        files.push((name, encoded));
    }
    if let Some(package) = packages.iter().find(|package| !found.contains(*package)) {
        return Err(format!("no service of the package {package} in the descriptor set"));
    }
    let mut kept = std::collections::HashSet::new();
    while let Some(name) = wanted.pop() {
        if kept.insert(name) {
            wanted.extend(imports.get(name).into_iter().flatten().copied());
        }
    }
    Ok(files
        .into_iter()
        .filter(|(name, _)| kept.contains(name))
        .flat_map(|(_, encoded)| encoded.iter().copied())
        .collect())
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

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::DescriptorPool;

    use super::*;

    fn serving(packages: &[&str]) -> DescriptorPool {
        let set = serving_files(CHECKED_DESCRIPTOR_SET, packages).unwrap();
        DescriptorPool::decode(set.as_slice()).unwrap()
    }

    #[test]
    fn a_service_keeps_its_contracts_their_imports_and_their_rules() {
        use crate::config::ServiceKind;

        let whole = DescriptorPool::decode(CHECKED_DESCRIPTOR_SET).unwrap();
        for kind in [ServiceKind::Auth, ServiceKind::Project, ServiceKind::Deploy] {
            let packages = kind.served_packages().unwrap();
            let pool = serving(packages);
            assert!(pool.files().count() < whole.files().count(), "{kind:?}: fewer files");
            assert!(
                pool.get_service_by_name("capsule.gateway.v1.GatewayService").is_none(),
                "{kind:?}: the gateway's contract left out"
            );
            for extension in [
                "buf.validate.field",
                "capsule.auth.v1.access",
                "capsule.auth.v1.permission",
            ] {
                assert!(pool.get_extension_by_name(extension).is_some(), "{kind:?}: {extension}");
            }
            // Every served method's access level, and every field's options
            // (the validation rules), as the whole set has them.
            let served: Vec<_> = whole
                .services()
                .filter(|service| packages.contains(&service.package_name()))
                .collect();
            assert_eq!(served.len(), packages.len(), "{kind:?}: one service a package");
            assert!(
                served
                    .iter()
                    .any(|service| service.full_name() == kind.grpc_service_name())
            );
            for full in served.iter().flat_map(|service| service.methods()) {
                let method = pool
                    .get_service_by_name(full.parent_service().full_name())
                    .and_then(|service| service.methods().find(|m| m.name() == full.name()))
                    .unwrap_or_else(|| panic!("{kind:?}: {} kept", full.full_name()));
                assert_eq!(
                    crate::auth::method_access(&method),
                    crate::auth::method_access(&full),
                    "{kind:?}: {}",
                    full.full_name()
                );
                for field in full.input().fields() {
                    let kept = method.input().get_field_by_name(field.name()).unwrap();
                    assert_eq!(
                        kept.options().encode_to_vec(),
                        field.options().encode_to_vec(),
                        "{kind:?}: {}",
                        field.full_name()
                    );
                }
            }
        }
        let auth = serving(&["capsule.auth.v1"]);
        let email = auth
            .get_message_by_name("capsule.auth.v1.RegisterRequest")
            .and_then(|message| message.get_field_by_name("email"))
            .unwrap();
        let rules = auth.get_extension_by_name("buf.validate.field").unwrap();
        assert!(email.options().has_extension(&rules), "the email's rules are kept");
        assert!(
            auth.get_service_by_name("capsule.deploy.v1.DeployService").is_none(),
            "what auth does not import is left out"
        );
    }

    #[test]
    fn a_package_that_serves_nothing_is_refused_by_name() {
        let err = serving_files(CHECKED_DESCRIPTOR_SET, &["capsule.auth.v1", "capsule.nothing.v1"]).unwrap_err();
        assert!(err.contains("capsule.nothing.v1"), "{err}");
        // A package of messages only (no service) serves nothing either.
        let err = serving_files(CHECKED_DESCRIPTOR_SET, &["capsule.audit.v1"]).unwrap_err();
        assert!(err.contains("capsule.audit.v1"), "{err}");
    }
}
