//! The one HTTP/1.0 client of the CLI commands that talk to a running podflow
//! (`flows`, `cost`, `probe NODE --server`): plain `http://host:port`, one request per
//! connection, the whole answer read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};

/// A request to `base` (`http://host:port`, named by `flag` in errors).
pub struct Request<'a> {
    /// The server, as given on the command line.
    pub base: &'a str,
    /// The flag that gave it (`--url`, `--server`).
    pub flag: &'a str,
    /// `GET` or `POST`.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Bearer token.
    pub token: Option<&'a str>,
    /// A JSON body (POST).
    pub json: Option<&'a str>,
    /// How long the answer may take.
    pub timeout: Duration,
}

impl Request<'_> {
    /// Sends it; the answer's status and body.
    pub fn send(&self) -> anyhow::Result<(u16, String)> {
        let (base, flag, path) = (self.base, self.flag, self.path);
        let hostport = base
            .strip_prefix("http://")
            .with_context(|| format!("{flag} {base}: only http://host:port is supported"))?
            .trim_end_matches('/');
        let mut s = TcpStream::connect(hostport).with_context(|| {
            format!(
                "connect to {hostport} (is `podflow run` or `podflow server` running? see {flag})"
            )
        })?;
        s.set_read_timeout(Some(self.timeout))?;
        let auth = self
            .token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let body = match self.json {
            Some(b) => format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => "\r\n".to_string(),
        };
        write!(
            s,
            "{} {path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: application/json\r\n{auth}{body}",
            self.method
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)
            .with_context(|| format!("read the answer of {hostport}"))?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP answer")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{base}{path}: malformed status line"))?;
        Ok((status, body.to_string()))
    }

    /// Sends it; the body of a 200 answer, else an error naming the status.
    pub fn ok(&self) -> anyhow::Result<String> {
        let (status, body) = self.send()?;
        if status != 200 {
            bail!("{}{} answered {status}: {body}", self.base, self.path);
        }
        Ok(body)
    }
}
