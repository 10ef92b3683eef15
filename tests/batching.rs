//! Natural batching keeps each call's semantics: its own answer and
//! per-row error, a failed batch statement fails only that batch's callers,
//! callers that give up are left out, and turning it off runs calls alone.
//! Then GetProject under concurrency: ownership and NOT_FOUND per caller.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use capsule::{
    config::ServiceKind,
    db::{Batcher, Database, DbError},
    proto::project::v1 as pb,
    testing::TestDatabase,
};
use diesel::{
    QueryResult, QueryableByName, RunQueryDsl,
    sql_types::{Array, Integer},
};
use tonic::Code;

/// Inputs from this one up hold the connection for a while, so that the
/// calls after them queue.
const SLOW: i32 = 1000;
/// Input that makes the whole statement fail (division by zero).
const POISON: i32 = 0;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Integer)]
    input: i32,
    #[diesel(sql_type = Integer)]
    output: i32,
}

/// A batcher on one connection that answers 2v, computed by PostgreSQL in
/// one statement per batch (`v / v` makes a 0 fail the whole statement);
/// negative inputs are a per-row NOT_FOUND. Records every batch's size.
async fn doubler(batching: bool) -> (Batcher<i32, i32>, Arc<Mutex<Vec<usize>>>, TestDatabase) {
    let test_db = TestDatabase::empty(ServiceKind::Project).await;
    let mut config = test_db.db_config();
    config.pool_size = 1;
    config.batching = batching;
    let db = Database::new(config).unwrap();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let batcher = Batcher::new(db, "test_doubler", move |conn, inputs: &[i32]| {
        seen.lock().unwrap().push(inputs.len());
        if inputs.iter().any(|input| *input >= SLOW) {
            diesel::sql_query("SELECT pg_sleep(0.3)").execute(conn)?;
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT v AS input, (v / v) * v * 2 AS output FROM unnest($1) AS v WHERE v >= 0")
                .bind::<Array<Integer>, _>(inputs.to_vec())
                .load(conn)?;
        Ok(inputs
            .iter()
            .map(|input| -> QueryResult<i32> {
                rows.iter()
                    .find(|row| row.input == *input)
                    .map(|row| row.output)
                    .ok_or(diesel::result::Error::NotFound)
            })
            .collect())
    });
    (batcher, sizes, test_db)
}

/// Starts the slow call, then gives it time to take the connection.
async fn hold_the_connection(batcher: &Batcher<i32, i32>) -> tokio::task::JoinHandle<Result<i32, DbError>> {
    let slow = {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.call(SLOW).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow
}

/// Calls `batcher` once per value, all at once; each answer with its value.
fn call_all(
    batcher: &Batcher<i32, i32>,
    values: impl IntoIterator<Item = i32>,
) -> Vec<tokio::task::JoinHandle<(i32, Result<i32, DbError>)>> {
    values
        .into_iter()
        .map(|value| {
            let batcher = batcher.clone();
            tokio::spawn(async move { (value, batcher.call(value).await) })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_calls_run_together_and_each_gets_its_own_answer_or_error() {
    let (batcher, sizes, _db) = doubler(true).await;
    let slow = hold_the_connection(&batcher).await;
    let calls = call_all(&batcher, (-5..45).filter(|value| *value != POISON));
    for call in calls {
        let (value, answer) = call.await.unwrap();
        if value < 0 {
            let status = tonic::Status::from(answer.unwrap_err());
            assert_eq!(status.code(), Code::NotFound, "{value}: {status:?}");
        } else {
            assert_eq!(answer.unwrap(), value * 2, "{value}");
        }
    }
    assert_eq!(slow.await.unwrap().unwrap(), SLOW * 2);
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 50, "every call ran once: {sizes:?}");
    assert!(
        sizes.iter().any(|size| *size > 1),
        "calls that queued behind a busy connection ran together: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_statement_fails_only_its_own_callers() {
    let (batcher, _sizes, _db) = doubler(true).await;
    let slow = hold_the_connection(&batcher).await;
    let doomed = call_all(&batcher, [2, POISON, 3]);
    for call in doomed {
        let err = call.await.unwrap().1.unwrap_err();
        assert!(err.to_string().contains("division by zero"), "{err}");
    }
    slow.await.unwrap().unwrap();
    // The next batch is whole again.
    let after = call_all(&batcher, [4, 5]);
    for call in after {
        let (value, answer) = call.await.unwrap();
        assert_eq!(answer.unwrap(), value * 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_are_left_out_and_the_others_are_answered() {
    let (batcher, sizes, _db) = doubler(true).await;
    let slow = hold_the_connection(&batcher).await;
    let impatient: Vec<_> = (1..=10)
        .map(|value| {
            let batcher = batcher.clone();
            tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(50), batcher.call(value)).await })
        })
        .collect();
    let patient = call_all(&batcher, 11..=20);
    for call in impatient {
        assert!(
            call.await.unwrap().is_err(),
            "the deadline passed while the connection was busy"
        );
    }
    for call in patient {
        let (value, answer) = call.await.unwrap();
        assert_eq!(answer.unwrap(), value * 2);
    }
    slow.await.unwrap().unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        11,
        "only the slow call and the 10 that waited ran: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_is_answered_when_its_batch_is_done_not_when_the_queue_is() {
    let (batcher, sizes, _db) = doubler(true).await;
    // The slow call leads; another slow one queues behind it and runs in
    // the batch after.
    let first = hold_the_connection(&batcher).await;
    let second = call_all(&batcher, [SLOW + 1]).pop().unwrap();
    assert_eq!(first.await.unwrap().unwrap(), SLOW * 2);
    assert!(
        !second.is_finished(),
        "the first caller was answered while the batch after its own still ran"
    );
    let (_, answer) = second.await.unwrap();
    assert_eq!(answer.unwrap(), (SLOW + 1) * 2);
    assert_eq!(sizes.lock().unwrap().clone(), [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batching_off_every_call_runs_alone() {
    let (batcher, sizes, _db) = doubler(false).await;
    let slow = hold_the_connection(&batcher).await;
    let calls = call_all(&batcher, 1..=10);
    for call in calls {
        let (value, answer) = call.await.unwrap();
        assert_eq!(answer.unwrap(), value * 2);
    }
    slow.await.unwrap().unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|size| *size == 1), "{sizes:?}");
    assert_eq!(sizes.len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_project_reads_answer_each_caller_by_its_own_rights() {
    let mesh = common::start().await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let (bob, _) = mesh.user("bob@example.com").await;
    let admin = mesh.admin("root@example.com").await;
    let mut ids = Vec::new();
    for (token, name) in [(&alice, "alpha"), (&alice, "beta"), (&bob, "gamma")] {
        let project = mesh
            .projects()
            .await
            .create_project(common::authed(
                pb::CreateProjectRequest {
                    project: Some(pb::Project {
                        name: name.to_owned(),
                        ..Default::default()
                    }),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(project.id);
    }
    let missing = uuid::Uuid::new_v4().to_string();
    // (who, which project, what they must get)
    let mut cases = Vec::new();
    for _ in 0..20 {
        cases.push((alice.clone(), ids[0].clone(), Code::Ok));
        cases.push((alice.clone(), ids[2].clone(), Code::NotFound));
        cases.push((bob.clone(), ids[1].clone(), Code::NotFound));
        cases.push((bob.clone(), ids[2].clone(), Code::Ok));
        cases.push((admin.clone(), ids[1].clone(), Code::Ok));
        cases.push((alice.clone(), missing.clone(), Code::NotFound));
    }
    let client = mesh.projects().await;
    let calls: Vec<_> = cases
        .into_iter()
        .map(|(token, id, expected)| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let answer = client
                    .get_project(common::authed(pb::GetProjectRequest { project_id: id.clone() }, &token))
                    .await;
                (id, expected, answer)
            })
        })
        .collect();
    for call in calls {
        let (id, expected, answer) = call.await.unwrap();
        match answer {
            Ok(project) => {
                assert_eq!(expected, Code::Ok, "{id} was shown to a caller who may not see it");
                assert_eq!(project.into_inner().id, id, "each caller gets the project it asked for");
            }
            Err(status) => assert_eq!(status.code(), expected, "{id}: {status:?}"),
        }
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_each_get_their_own_project_or_their_own_conflict() {
    let mesh = common::start().await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let client = mesh.projects().await;
    // (name, chosen slug): ten with one derived slug, five fighting over one
    // chosen slug, fifteen all different.
    let mut wanted: Vec<(String, String)> = (0..10).map(|_| ("Same Name".to_owned(), String::new())).collect();
    wanted.extend((0..5).map(|i| (format!("Fixed {i}"), "fixed".to_owned())));
    wanted.extend((0..15).map(|i| (format!("Distinct {i}"), String::new())));
    let calls: Vec<_> = wanted
        .into_iter()
        .map(|(name, slug)| {
            let (mut client, token) = (client.clone(), alice.clone());
            tokio::spawn(async move {
                let project = pb::Project {
                    name: name.clone(),
                    slug: slug.clone(),
                    ..Default::default()
                };
                let answer = client
                    .create_project(common::authed(
                        pb::CreateProjectRequest { project: Some(project) },
                        &token,
                    ))
                    .await;
                (name, slug, answer)
            })
        })
        .collect();
    let (mut slugs, mut fixed_won, mut fixed_refused) = (Vec::new(), 0, 0);
    for call in calls {
        let (name, slug, answer) = call.await.unwrap();
        match answer {
            Ok(project) => {
                let project = project.into_inner();
                assert_eq!(project.name, name, "each caller gets the project it asked for");
                if slug == "fixed" {
                    fixed_won += 1;
                }
                slugs.push(project.slug);
            }
            Err(status) if slug == "fixed" => {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                fixed_refused += 1;
            }
            Err(status) => panic!("{name}: {status:?}"),
        }
    }
    assert_eq!((fixed_won, fixed_refused), (1, 4), "one chosen slug, one owner");
    let count = slugs.len();
    slugs.sort();
    slugs.dedup();
    assert_eq!(slugs.len(), count, "every project has a slug of its own: {slugs:?}");
    assert_eq!(count, 26);
    let listed = mesh
        .projects()
        .await
        .list_projects(common::authed(
            pb::ListProjectsRequest {
                page_size: 100,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.projects.len(), 26, "what was answered is what is stored");
    mesh.stop().await;
}
