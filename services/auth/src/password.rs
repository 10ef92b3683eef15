//! Passwords: the NIST SP 800-63B policy (8 to 128 characters, nothing from
//! a list of common passwords: rules in the protos, checked by the kernel's
//! rules layer; here only "not the email address") and argon2id with OWASP's parameters
//! (19 MiB, 2 passes, 1 lane), hashed and verified on `AUTH_HASH_CONCURRENCY`
//! threads of their own, so a storm of sign-ins costs a bounded amount of
//! memory (19 MiB a thread) and waits, or is turned away.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{self, Output, ParamsString, SaltString},
};
use capsule::rpc::FieldViolations;
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const MAX_CHARS: usize = 128;

fn argon2() -> Argon2<'static> {
    // The constants are valid parameters.
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP's argon2id parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The part of the password policy the rules in the protos cannot say
/// (lengths and the common passwords are there): not the email address.
pub fn not_the_email(password: &str, email: &str, field: &str, violations: &mut FieldViolations) {
    if !email.is_empty() && password.eq_ignore_ascii_case(email) {
        violations.add(field, "must not be the email address");
    }
}

/// Hashing and verifying passwords on threads of their own, a fixed number
/// of them: each keeps the 19 MiB its hash needs and reuses it, so memory
/// is bounded by the thread count (on the runtime's blocking pool, every
/// thread that ever hashed could keep a malloc arena that size).
#[derive(Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    max_wait: Duration,
}

type Job = Box<dyn FnOnce() + Send>;

impl Hasher {
    /// `concurrency` hashing threads; a call that cannot start within
    /// `max_wait` is refused.
    pub fn new(concurrency: usize, max_wait: Duration) -> Self {
        let concurrency = concurrency.max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(concurrency);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for index in 0..concurrency {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a password hashing thread");
            }
        }
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            jobs,
            max_wait,
        }
    }

    /// Runs `work` on a hashing thread, once one is free within the wait.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
        let _slot = match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                let mut details = ErrorDetails::new();
                details.set_retry_info(Some(Duration::from_secs(1)));
                return Err(Status::with_error_details(
                    Code::Unavailable,
                    "the service is busy checking passwords; retry in 1 s",
                    details,
                ));
            }
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| capsule::rpc::internal("the password hashing threads have stopped"))?;
        answer
            .await
            .map_err(|_| capsule::rpc::internal("a password hashing job ended without an answer"))
    }

    /// The argon2id hash of a new password.
    pub async fn hash(&self, password: String) -> Result<String, Status> {
        self.run(move || hash_now(&password))
            .await?
            .map_err(|err| capsule::rpc::internal(format_args!("cannot hash a password: {err}")))
    }

    /// Whether `password` matches `hash` (see [`verify_now`]).
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Status> {
        self.run(move || verify_now(&password, hash)).await
    }
}

thread_local! {
    /// The memory argon2 works in, kept by the thread for its next hash:
    /// allocated and freed each time, glibc keeps every copy (aligned
    /// blocks of 19 MiB are not reused), and memory grows with each hash.
    static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output of `argon2` for `password` and `salt`, `length` bytes,
/// computed in this thread's reusable memory.
fn compute(argon2: &Argon2<'_>, password: &[u8], salt: &[u8], length: usize) -> anyhow::Result<Output> {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let needed = argon2.params().block_count();
        if blocks.len() < needed {
            blocks.resize(needed, Block::default());
        }
        Output::init_with(length, |out| {
            argon2
                .hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
                .map_err(|_| password_hash::Error::Crypto)
        })
        .map_err(|err| anyhow::anyhow!("hashing failed: {err}"))
    })
}

/// The argon2id hash (PHC string) of a password with a fresh salt, on the
/// calling thread.
fn hash_now(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    hash_with_salt(password, &salt)
}

fn hash_with_salt(password: &str, salt: &[u8]) -> anyhow::Result<String> {
    let salt_string = SaltString::encode_b64(salt).map_err(|err| anyhow::anyhow!("{err}"))?;
    let argon2 = argon2();
    let output = compute(&argon2, password.as_bytes(), salt, Params::DEFAULT_OUTPUT_LEN)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).map_err(|err| anyhow::anyhow!("{err}"))?,
        salt: Some(salt_string.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// The argon2id hash of a password, on a blocking thread of the runtime
/// (for one-off use outside the service, like the development admin).
pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_now(&password)).await?
}

/// Whether `password` matches `hash` (any argon2 variant and parameters
/// the PHC string names). With no hash (unknown account) a dummy hash is
/// checked so the answer takes as long either way.
fn verify_now(password: &str, hash: Option<String>) -> bool {
    let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
    let Ok(parsed) = PasswordHash::new(&hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let (Ok(algorithm), Ok(params), Ok(salt)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        salt.decode_b64(&mut salt_bytes),
    ) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|version| Version::try_from(version).ok())
        .unwrap_or_default();
    let argon2 = Argon2::new(algorithm, version, params);
    // Output's equality is constant-time.
    compute(&argon2, password.as_bytes(), salt, expected.len()).is_ok_and(|computed| computed == expected)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_with_salt("not a password anyone has", b"capsule-dummy-salt").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_not_the_email_address() {
        let mut violations = FieldViolations::new();
        not_the_email(
            "correct horse battery staple",
            "ada@example.com",
            "password",
            &mut violations,
        );
        assert!(violations.is_empty());
        not_the_email("ADA@example.com", "ada@example.com", "password", &mut violations);
        assert!(violations.check().unwrap_err().message().contains("email"));
    }

    #[tokio::test]
    async fn hashes_verify_and_differ() {
        let first = hash("correct horse battery staple".to_owned()).await.unwrap();
        let second = hash("correct horse battery staple".to_owned()).await.unwrap();
        assert!(first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_ne!(first, second, "salted");
        let hasher = Hasher::new(2, Duration::from_secs(5));
        assert!(
            hasher
                .verify("correct horse battery staple".to_owned(), Some(first.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse battery staple".to_owned(), Some(first))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("anything".to_owned(), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_hasher_runs_a_bounded_number_at_once_and_turns_away_who_waits_too_long() {
        let hasher = Hasher::new(1, Duration::from_millis(1));
        let held = hasher.slots.clone().acquire_owned().await.unwrap();
        let busy = hasher
            .hash("correct horse battery staple".to_owned())
            .await
            .unwrap_err();
        assert_eq!(busy.code(), Code::Unavailable);
        assert!(busy.get_details_retry_info().is_some(), "{busy:?}");
        drop(held);
        assert!(hasher.hash("correct horse battery staple".to_owned()).await.is_ok());
    }
}
