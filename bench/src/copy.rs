//! Rows into PostgreSQL with `COPY … FROM STDIN` (text format), in 1 MiB chunks: one round trip per
//! chunk instead of one per row, which is what makes millions of rows a matter of minutes.

use std::fmt::Write as _;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink};

const CHUNK: usize = 1 << 20;

pub struct Copy {
    /// `None` while deferred: the chunks wait in `held` (see [`Copy::deferred`]).
    sink: Option<Pin<Box<CopyInSink<Bytes>>>>,
    held: Vec<Bytes>,
    buf: String,
    rows: u64,
    first_field: bool,
}

impl Copy {
    /// Starts `COPY table (columns) FROM STDIN` on `client`.
    pub async fn start(client: &Client, table: &str, columns: &str) -> anyhow::Result<Self> {
        let sink = client
            .copy_in::<_, Bytes>(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await?;
        Ok(Self {
            sink: Some(Box::pin(sink)),
            ..Self::deferred()
        })
    }

    /// Rows kept in memory until [`Copy::finish_into`]. For tables whose foreign keys point at rows
    /// another COPY is still sending: PostgreSQL's key check would wait for that COPY to commit,
    /// and the COPY for us — a deadlock.
    pub fn deferred() -> Self {
        Self {
            sink: None,
            held: Vec::new(),
            buf: String::with_capacity(CHUNK + 64 * 1024),
            rows: 0,
            first_field: true,
        }
    }

    fn sep(&mut self) {
        if !self.first_field {
            self.buf.push('\t');
        }
        self.first_field = false;
    }

    /// A text field, escaped for COPY's text format.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.sep();
        for c in value.chars() {
            match c {
                '\\' => self.buf.push_str("\\\\"),
                '\t' => self.buf.push_str("\\t"),
                '\n' => self.buf.push_str("\\n"),
                '\r' => self.buf.push_str("\\r"),
                c => self.buf.push(c),
            }
        }
        self
    }

    /// Any value whose `Display` needs no escaping (numbers, dates, uuids, timestamps).
    pub fn plain(&mut self, value: impl std::fmt::Display) -> &mut Self {
        self.sep();
        let _ = write!(self.buf, "{value}");
        self
    }

    pub fn opt(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => {
                self.sep();
                self.buf.push_str("\\N");
                self
            }
        }
    }

    /// Ends the row; sends the buffer once it holds a chunk.
    pub async fn end_row(&mut self) -> anyhow::Result<()> {
        self.buf.push('\n');
        self.first_field = true;
        self.rows += 1;
        if self.buf.len() >= CHUNK {
            let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK + 64 * 1024));
            match &mut self.sink {
                Some(sink) => sink.send(Bytes::from(chunk)).await?,
                None => self.held.push(Bytes::from(chunk)),
            }
        }
        Ok(())
    }

    /// Sends the rows of a deferred copy with `COPY table (columns)` on `client`.
    pub async fn finish_into(
        mut self,
        client: &Client,
        table: &str,
        columns: &str,
    ) -> anyhow::Result<u64> {
        let mut started = Self::start(client, table, columns).await?;
        let sink = started.sink.as_mut().expect("started");
        for chunk in self.held.drain(..) {
            sink.send(chunk).await?;
        }
        started.buf = std::mem::take(&mut self.buf);
        started.rows = self.rows;
        started.finish().await
    }

    /// Sends the rest and completes the COPY; the number of rows PostgreSQL took.
    pub async fn finish(mut self) -> anyhow::Result<u64> {
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| anyhow::anyhow!("a deferred COPY ends with finish_into"))?;
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            sink.send(Bytes::from(chunk)).await?;
        }
        let copied = sink.as_mut().finish().await?;
        anyhow::ensure!(
            copied == self.rows,
            "COPY took {copied} rows of {} sent",
            self.rows
        );
        Ok(copied)
    }
}
