//! Natural batching: calls of one kind that arrive while the service's
//! connections are busy wait in a queue, and the next connection to come
//! free takes all of them and runs them as one statement.
//!
//! No timer: a call that finds a runner slot free runs at once, alone (at
//! low load nothing waits). At most `max_running` batches run at a time,
//! one connection each (by default as many as the machine has cores, and
//! no more than the pool's connections: measured on 2 cores, two batch
//! runners kept GetProject at 29k req/s where four gave 18k — more batches
//! at once make each smaller and add thread hand-offs the cores cannot
//! run in parallel anyway); whatever arrives meanwhile queues and goes in
//! the next batch, up to `MAX_BATCH` calls.
//!
//! Each caller keeps its own fate:
//! - its own answer (the batch's work returns one result per input, in
//!   order), its own error when the work says so;
//! - a batch statement that fails fails only the callers of that batch,
//!   each with the database's error;
//! - a caller that gives up (deadline, cancellation) before its batch
//!   starts is left out of it; one that gives up mid-batch takes no one
//!   with it: the answers are sent from the connection's thread.
//!
//! `<SVC>_DB_BATCHING=false` turns it off: every call then runs alone on a
//! connection of its own (for comparison in `bench/run`).

use std::sync::{Arc, Mutex};

use diesel::{PgConnection, QueryResult, result::Error};
use tokio::sync::oneshot;

use super::{Database, DbError};

/// The most calls one batch takes.
pub const MAX_BATCH: usize = 256;

/// A batch's work: one answer per input, in the inputs' order. An `Err`
/// fails every caller of the batch; an `Ok(Err(_))` only its own.
pub type BatchWork<In, Out> = dyn Fn(&mut PgConnection, &[In]) -> QueryResult<Vec<QueryResult<Out>>> + Send + Sync;

/// Runs calls of one kind in batches; see the module doc.
pub struct Batcher<In, Out> {
    inner: Arc<Inner<In, Out>>,
}

impl<In, Out> Clone for Batcher<In, Out> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<In, Out> {
    db: Database,
    name: &'static str,
    work: Box<BatchWork<In, Out>>,
    max_running: usize,
    queue: Mutex<Queue<In, Out>>,
    /// `db_batch_size` of this batcher, found once.
    sizes: std::sync::OnceLock<metrics::Histogram>,
}

struct Queue<In, Out> {
    waiting: Vec<Job<In, Out>>,
    running: usize,
}

struct Job<In, Out> {
    input: In,
    reply: oneshot::Sender<Result<Out, DbError>>,
}

impl<In, Out> Batcher<In, Out>
where
    In: Clone + Send + Sync + 'static,
    Out: Send + 'static,
{
    /// A batcher named `name` (its metrics' `batch` label) running `work`
    /// on `db`'s connections, at most one batch per core at once (and no
    /// more than the pool has connections).
    pub fn new(
        db: Database,
        name: &'static str,
        work: impl Fn(&mut PgConnection, &[In]) -> QueryResult<Vec<QueryResult<Out>>> + Send + Sync + 'static,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let max_running = db.config.pool_size.min(cores).max(1);
        Self::with_max_running(db, name, max_running, work)
    }

    /// Like [`Self::new`], with at most `max_running` batches at once.
    pub fn with_max_running(
        db: Database,
        name: &'static str,
        max_running: usize,
        work: impl Fn(&mut PgConnection, &[In]) -> QueryResult<Vec<QueryResult<Out>>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                name,
                work: Box::new(work),
                max_running: max_running.max(1),
                queue: Mutex::new(Queue {
                    waiting: Vec::new(),
                    running: 0,
                }),
                sizes: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Runs `input` in the next batch and returns its own answer.
    pub async fn call(&self, input: In) -> Result<Out, DbError> {
        if !self.inner.db.config.batching {
            return self.alone(input).await;
        }
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.waiting.push(Job {
                input: input.clone(),
                reply,
            });
            let lead = queue.running < self.inner.max_running;
            if lead {
                queue.running += 1;
            }
            lead
        };
        if lead {
            // This call takes a runner slot: it runs the queue (its own job
            // included) on one connection, then hands the slot on.
            let slot = Slot(Some(self.inner.clone()));
            slot.run_one().await;
        }
        match answer.await {
            Ok(result) => result,
            // The batch that held this call was dropped before it started
            // (its runner's caller gave up while waiting for a connection):
            // run it alone rather than fail it.
            Err(_) => self.alone(input).await,
        }
    }

    async fn alone(&self, input: In) -> Result<Out, DbError> {
        let inner = self.inner.clone();
        let mut answers = self
            .inner
            .db
            .run(move |conn| (inner.work)(conn, std::slice::from_ref(&input)))
            .await?;
        match answers.pop() {
            Some(answer) => answer.map_err(DbError::from),
            None => Err(DbError::Query(Error::NotFound)),
        }
    }
}

/// A runner slot, given back (or handed to a task that keeps draining the
/// queue) when dropped, whatever happens to the future that holds it.
struct Slot<In, Out>(Option<Arc<Inner<In, Out>>>)
where
    In: Clone + Send + Sync + 'static,
    Out: Send + 'static;

impl<In, Out> Slot<In, Out>
where
    In: Clone + Send + Sync + 'static,
    Out: Send + 'static,
{
    /// Runs one batch of what is queued now.
    async fn run_one(&self) {
        let Some(inner) = self.0.clone() else {
            return;
        };
        let jobs = take(&inner);
        if jobs.is_empty() {
            return;
        }
        inner
            .sizes
            .get_or_init(|| {
                crate::telemetry::metrics_handle();
                metrics::histogram!("db_batch_size", "service" => inner.db.config.service.name(), "batch" => inner.name)
            })
            .record(jobs.len() as f64);
        let worker = inner.clone();
        let ran = inner
            .db
            .run(move |conn| {
                let inputs: Vec<In> = jobs.iter().map(|job| job.input.clone()).collect();
                match (worker.work)(conn, &inputs) {
                    Ok(answers) if answers.len() == jobs.len() => {
                        for (job, answer) in jobs.into_iter().zip(answers) {
                            let _ = job.reply.send(answer.map_err(DbError::from));
                        }
                        Ok(())
                    }
                    Ok(answers) => {
                        let message = format!("a batch of {} gave {} answers", jobs.len(), answers.len());
                        for job in jobs {
                            let _ = job
                                .reply
                                .send(Err(DbError::Query(Error::QueryBuilderError(message.clone().into()))));
                        }
                        Ok(())
                    }
                    Err(err) => {
                        for job in jobs {
                            let _ = job.reply.send(Err(DbError::Query(duplicate(&err))));
                        }
                        // Handed back, so a connection that died is dropped.
                        Err(err)
                    }
                }
            })
            .await;
        // Every caller has its answer. Or no connection could be had: the
        // jobs were dropped with the closure, and their callers run alone
        // (and meet the same error).
        let _ = ran;
    }
}

impl<In, Out> Drop for Slot<In, Out>
where
    In: Clone + Send + Sync + 'static,
    Out: Send + 'static,
{
    fn drop(&mut self) {
        let Some(inner) = self.0.take() else {
            return;
        };
        let more = {
            let mut queue = inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.waiting.retain(|job| !job.reply.is_closed());
            if queue.waiting.is_empty() {
                queue.running -= 1;
            }
            !queue.waiting.is_empty()
        };
        if more {
            // Calls arrived meanwhile: a task of their own drains them, so
            // the caller that held the slot answers now.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let slot = Slot(Some(inner));
                    slot.run_one().await;
                });
            } else {
                let mut queue = inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                queue.running -= 1;
            }
        }
    }
}

/// Takes up to `MAX_BATCH` queued jobs whose callers still wait.
fn take<In, Out>(inner: &Inner<In, Out>) -> Vec<Job<In, Out>> {
    let mut queue = inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    queue.waiting.retain(|job| !job.reply.is_closed());
    let count = queue.waiting.len().min(MAX_BATCH);
    queue.waiting.drain(..count).collect()
}

/// The same error again, for each caller of a failed batch (diesel's
/// errors cannot be cloned).
fn duplicate(err: &Error) -> Error {
    match err {
        Error::DatabaseError(kind, info) => Error::DatabaseError(*kind, Box::new(info.message().to_owned())),
        Error::NotFound => Error::NotFound,
        Error::BrokenTransactionManager => Error::BrokenTransactionManager,
        other => Error::QueryBuilderError(other.to_string().into()),
    }
}
