//! A stable checksum of every table of a read-model schema, to prove two
//! builds of one log identical (or find which table differs).
//!
//! A table's checksum is the MD5 of the MD5s of its rows' text forms, in
//! primary-key order, so it depends on the rows and nothing else (not on
//! physical order, not on when they were written). Bookkeeping tables are
//! listed but do not count as the read model:
//!
//! - `_sqlx_migrations` records when the migrations ran and how long they
//!   took;
//! - `command_requests` is not projected from the log: it is written by the
//!   gRPC service (with `now()`) and carried over by a rebuild;
//! - `projector_offsets` and `projector_checkpoints` say where a projector
//!   stands and where its batches ended, which differ between a live
//!   projector and a replay of the same log (identical for two replays of
//!   one log in full, though, and compared by the determinism test).

use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tracing::instrument;

/// Tables whose content is not a function of the log alone.
pub const NOT_PROJECTED: &[&str] = &["_sqlx_migrations", "command_requests"];
/// Tables that say where a projector stands rather than what the log says.
pub const POSITIONS: &[&str] = &["projector_offsets", "projector_checkpoints"];

/// One table's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChecksum {
    pub table: String,
    pub rows: i64,
    pub md5: String,
}

impl TableChecksum {
    /// Whether the table is part of the read model proper (not
    /// bookkeeping, see the module documentation).
    pub fn is_read_model(&self) -> bool {
        !NOT_PROJECTED.contains(&self.table.as_str()) && !POSITIONS.contains(&self.table.as_str())
    }
}

/// The checksum of every table in `schema`, by table name.
pub async fn checksums(pool: &PgPool, schema: &str) -> Result<Vec<TableChecksum>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    checksums_on(&mut conn, schema).await
}

/// [`checksums`] on one connection, e.g. inside a repeatable-read
/// transaction so that every table is read at one instant.
#[instrument(skip_all, fields(%schema), err)]
pub async fn checksums_on(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<Vec<TableChecksum>, sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    let mut sums = Vec::with_capacity(tables.len());
    for table in tables {
        let key: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(a.attname::text)
             FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
             WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
        )
        .bind(schema)
        .bind(&table)
        .fetch_all(&mut *conn)
        .await?;
        let order = if key.is_empty() {
            "t::text".to_owned()
        } else {
            key.iter()
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let qualified: String = sqlx::query_scalar("SELECT format('%I.%I', $1::text, $2::text)")
            .bind(schema)
            .bind(&table)
            .fetch_one(&mut *conn)
            .await?;
        // The names come from the catalogue, quoted by quote_ident/format.
        let (rows, md5): (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY {order})), md5(''))
             FROM {qualified} t"
        )))
        .fetch_one(&mut *conn)
        .await?;
        sums.push(TableChecksum { table, rows, md5 });
    }
    Ok(sums)
}

/// The read-model tables whose checksums differ between `a` and `b` (or
/// that only one has).
pub fn differences(a: &[TableChecksum], b: &[TableChecksum]) -> Vec<String> {
    let mut names: Vec<&str> = a
        .iter()
        .chain(b)
        .filter(|t| t.is_read_model())
        .map(|t| t.table.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter(|name| {
            let find = |list: &[TableChecksum]| list.iter().find(|t| t.table == *name).cloned();
            find(a) != find(b)
        })
        .map(str::to_owned)
        .collect()
}

/// Prints one line per table: name, rows, checksum, and `(bookkeeping)`
/// for tables that are not the read model.
pub fn render(sums: &[TableChecksum]) -> String {
    let width = sums.iter().map(|t| t.table.len()).max().unwrap_or(0);
    let mut out = String::new();
    for t in sums {
        out.push_str(&format!(
            "{:width$}  {:>9}  {}{}\n",
            t.table,
            t.rows,
            t.md5,
            if t.is_read_model() {
                ""
            } else {
                "  (bookkeeping)"
            }
        ));
    }
    out
}
