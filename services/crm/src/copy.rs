//! Rows in PostgreSQL's binary `COPY` format, sent with `COPY ... FROM STDIN
//! (FORMAT binary)`: the cheapest way to append many rows, with no text to
//! parse and no arrays to unpack on the server.
//!
//! The format (PostgreSQL documentation, "COPY", "Binary Format"): a fixed
//! header, then per row a 16-bit field count and per field a 32-bit length
//! (-1 for NULL) followed by the value in the type's binary send format,
//! then a 16-bit -1 trailer. Values here are `text`, `bytea`, `int4`, `int8`
//! and `timestamptz`; the column list of the statement must match the order
//! in which a row's fields are written.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Rows being encoded for one `COPY`.
pub struct BinaryRows {
    buf: Vec<u8>,
    columns: i16,
    rows: usize,
    /// Fields written to the current row.
    fields: i16,
    /// A value longer than a field can say (2 GiB), or a row with the wrong
    /// number of fields: reported by [`BinaryRows::finish`].
    error: Option<String>,
}

impl BinaryRows {
    pub fn new(columns: i16) -> Self {
        Self::with_capacity(columns, 64 * 1024)
    }

    /// Rows expected to take about `bytes` in all.
    pub fn with_capacity(columns: i16, bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + 32);
        buf.extend_from_slice(SIGNATURE);
        // Flags, then the length of the header extension: none.
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Self {
            buf,
            columns,
            rows: 0,
            fields: columns,
            error: None,
        }
    }

    /// Starts a row; write exactly `columns` fields next.
    pub fn row(&mut self) -> &mut Self {
        self.check_row_complete();
        self.buf.extend_from_slice(&self.columns.to_be_bytes());
        self.rows += 1;
        self.fields = 0;
        self
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn check_row_complete(&mut self) {
        if self.fields != self.columns && self.error.is_none() {
            self.error = Some(format!(
                "row {} has {} fields, the copy {}",
                self.rows, self.fields, self.columns
            ));
        }
    }

    fn field(&mut self, value: &[u8]) -> &mut Self {
        self.fields += 1;
        match i32::try_from(value.len()) {
            Ok(len) => {
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(value);
            }
            Err(_) => {
                self.error
                    .get_or_insert_with(|| format!("a value of {} bytes", value.len()));
                self.buf.extend_from_slice(&(-1i32).to_be_bytes());
            }
        }
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.fields += 1;
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.field(value.as_bytes())
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    pub fn bytea(&mut self, value: &[u8]) -> &mut Self {
        self.field(value)
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn opt_int8(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => self.int8(value),
            None => self.null(),
        }
    }

    pub fn timestamptz(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        match value {
            Some(at) => self.int8(at.timestamp_micros() - POSTGRES_EPOCH_MICROS),
            None => self.null(),
        }
    }

    /// The encoded rows with the trailer.
    pub fn finish(mut self) -> Result<Vec<u8>, String> {
        if self.rows > 0 {
            self.check_row_complete();
        }
        if let Some(error) = self.error {
            return Err(error);
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        Ok(self.buf)
    }
}

/// Runs `statement` (a `COPY ... FROM STDIN (FORMAT binary)`) with `rows`
/// on `conn`, inside whatever transaction it is in; returns the rows copied.
pub async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    rows: BinaryRows,
) -> Result<u64, sqlx::Error> {
    if rows.rows() == 0 {
        return Ok(0);
    }
    let data = rows.finish().map_err(sqlx::Error::Protocol)?;
    let mut copy = conn.copy_in_raw(statement).await?;
    // One message per 1 MiB keeps each write to the server bounded.
    for chunk in data.chunks(1 << 20) {
        if let Err(error) = copy.send(chunk).await {
            // Leaves the connection usable: the server ends the COPY.
            let _ = copy.abort(error.to_string()).await;
            return Err(error);
        }
    }
    copy.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_with_too_few_fields_is_refused() {
        let mut rows = BinaryRows::new(2);
        rows.row().text("only one");
        assert!(rows.finish().is_err());
    }

    /// What PostgreSQL reads back is what was written, for every type and
    /// NULL, and a failed copy leaves the connection usable.
    #[tokio::test]
    async fn postgres_reads_back_every_value() {
        use chrono::TimeZone;
        let db = dealmesh_testkit::TestDatabase::create().await;
        let mut conn = db.pool.acquire().await.expect("connection");
        sqlx::query(
            "CREATE TABLE t (s text PRIMARY KEY, o text, b bytea, i int4, l int8, n int8,
                 at timestamptz, never timestamptz)",
        )
        .execute(&mut *conn)
        .await
        .expect("table");
        let at = Utc
            .with_ymd_and_hms(1999, 12, 31, 23, 59, 58)
            .unwrap()
            .checked_add_signed(chrono::TimeDelta::microseconds(123_456))
            .unwrap();
        let later = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let mut rows = BinaryRows::new(8);
        rows.row()
            .text("ünïcode, \"quotes\", tab\tand\nnewline")
            .opt_text(None)
            .bytea(&[0, 255, b'\\', 10])
            .int4(-7)
            .int8(i64::MAX)
            .opt_int8(None)
            .timestamptz(Some(at))
            .timestamptz(None);
        rows.row()
            .text("second")
            .opt_text(Some(""))
            .bytea(&[])
            .int4(i32::MIN)
            .int8(-1)
            .opt_int8(Some(42))
            .timestamptz(Some(later))
            .timestamptz(None);
        let statement = "COPY t (s, o, b, i, l, n, at, never) FROM STDIN (FORMAT binary)";
        assert_eq!(copy_in(&mut conn, statement, rows).await.expect("copy"), 2);

        type Row = (
            String,
            Option<String>,
            Vec<u8>,
            i32,
            i64,
            Option<i64>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        );
        let back: Vec<Row> = sqlx::query_as("SELECT * FROM t ORDER BY i DESC")
            .fetch_all(&mut *conn)
            .await
            .expect("rows");
        assert_eq!(
            back,
            vec![
                (
                    "ünïcode, \"quotes\", tab\tand\nnewline".to_owned(),
                    None,
                    vec![0, 255, b'\\', 10],
                    -7,
                    i64::MAX,
                    None,
                    at,
                    None
                ),
                (
                    "second".to_owned(),
                    Some(String::new()),
                    vec![],
                    i32::MIN,
                    -1,
                    Some(42),
                    later,
                    None
                ),
            ]
        );

        // A key that is already there fails the copy and adds nothing.
        let mut again = BinaryRows::new(8);
        again
            .row()
            .text("second")
            .null()
            .null()
            .int4(0)
            .int8(0)
            .null()
            .null()
            .null();
        let error = copy_in(&mut conn, statement, again)
            .await
            .expect_err("duplicate key");
        assert!(error.to_string().contains("duplicate key"), "{error}");
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut *conn)
            .await
            .expect("the connection still works");
        assert_eq!(count, 2);
    }

    #[test]
    fn the_layout_is_postgres_binary_copy() {
        let mut rows = BinaryRows::new(2);
        rows.row().int4(7).null();
        let bytes = rows.finish().expect("encoded");
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&2i16.to_be_bytes());
        expected.extend_from_slice(&4i32.to_be_bytes());
        expected.extend_from_slice(&7i32.to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(bytes, expected);
    }
}
