//! Query pieces every service's database code shares: the keyset condition
//! of a newest-first page, and EXPLAIN of a query exactly as diesel builds
//! it (binds included), for the benchmarks that check index use.

use chrono::{DateTime, Utc};
use diesel::{
    BoxableExpression, PgConnection, QueryResult, RunQueryDsl,
    dsl::sql,
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    sql_types::{Bool, Json, Timestamptz},
};
use uuid::Uuid;

/// `(created_at, id) < (time, id)` on `table`: the rows after a cursor of a
/// page ordered by `created_at DESC, id DESC`. One row comparison, so an
/// index on those two columns (after any equality prefix) seeks straight
/// to the cursor, however deep the page; the equivalent `a < x OR (a = x
/// AND b < y)` makes PostgreSQL walk every row before it.
pub fn older_than<QS>(
    table: &'static str,
    (time, id): (DateTime<Utc>, Uuid),
) -> Box<dyn BoxableExpression<QS, Pg, SqlType = Bool>> {
    Box::new(
        sql::<Bool>(&format!("(\"{table}\".\"created_at\", \"{table}\".\"id\") < ("))
            .bind::<Timestamptz, _>(time)
            .sql(", ")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .sql(")"),
    )
}

/// `EXPLAIN (FORMAT JSON)` of a query, with its binds: PostgreSQL's plan
/// for the statement the service sends.
pub fn explain<Q: QueryFragment<Pg>>(conn: &mut PgConnection, query: &Q) -> QueryResult<serde_json::Value> {
    Explain(query).get_result(conn)
}

struct Explain<'q, Q>(&'q Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Explain<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("EXPLAIN (FORMAT JSON) ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> QueryId for Explain<'_, Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> Query for Explain<'_, Q> {
    type SqlType = Json;
}

impl<Q> RunQueryDsl<PgConnection> for Explain<'_, Q> {}

/// The plan's nodes, depth first: each node's type and, for index scans,
/// its index (`"Seq Scan on projects"`, `"Index Scan using projects_pkey"`).
pub fn plan_nodes(plan: &serde_json::Value) -> Vec<String> {
    fn walk(node: &serde_json::Value, out: &mut Vec<String>) {
        let kind = node["Node Type"].as_str().unwrap_or("?");
        out.push(match (node["Index Name"].as_str(), node["Relation Name"].as_str()) {
            (Some(index), _) => format!("{kind} using {index}"),
            (None, Some(relation)) => format!("{kind} on {relation}"),
            (None, None) => kind.to_owned(),
        });
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    for root in plan.as_array().into_iter().flatten() {
        walk(&root["Plan"], &mut out);
    }
    out
}
