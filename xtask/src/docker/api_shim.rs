//! A Unix socket in front of the engine's that lowers the API version in request paths.
//!
//! The testcontainers client (bollard) puts its own API version in every path
//! (`/v1.52/containers/create`) and never negotiates; the engine Debian ships answers up to
//! an older one (Docker 20.10: 1.41) and refuses newer requests. The shim forwards bytes both
//! ways and rewrites a request's `/v1.NN/` to the engine's version when `NN` is newer: the
//! same length, so no header changes. Everything stays on local Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;

/// A running shim; its socket file is removed on drop (its threads end with the xtask).
pub(crate) struct ApiShim {
    path: PathBuf,
}

impl ApiShim {
    /// Listens on `path` and forwards every connection to the engine socket `engine`,
    /// rewriting versions above `max_minor` (the `NN` of `1.NN`).
    pub(crate) fn start(path: &Path, engine: &Path, max_minor: u32) -> Result<ApiShim, String> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let engine = engine.to_path_buf();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let engine = engine.clone();
                thread::spawn(move || {
                    if let Ok(server) = UnixStream::connect(&engine) {
                        relay(client, server, max_minor);
                    }
                });
            }
        });
        Ok(ApiShim { path: path.to_path_buf() })
    }

    /// The `DOCKER_HOST` value of the shim.
    pub(crate) fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for ApiShim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn relay(client: UnixStream, server: UnixStream, max_minor: u32) {
    let (Ok(client_r), Ok(server_w)) = (client.try_clone(), server.try_clone()) else { return };
    let up = thread::spawn(move || copy(client_r, server_w, Some(max_minor)));
    copy(server, client, None);
    let _ = up.join();
}

/// Copies until EOF, rewriting versions when `max_minor` is given; shuts down the write side
/// at the end so the peer sees the close.
fn copy(mut from: UnixStream, mut to: UnixStream, max_minor: Option<u32>) {
    let mut rewriter = max_minor.map(Rewriter::new);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let out = match rewriter.as_mut() {
            Some(r) => r.feed(&buf[..n]),
            None => buf[..n].to_vec(),
        };
        if to.write_all(&out).is_err() {
            break;
        }
    }
    if let Some(r) = rewriter.as_mut() {
        let _ = to.write_all(&r.finish());
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The pattern ` /v1.NN/`: 8 bytes.
const PATTERN_LEN: usize = 8;

/// Rewrites ` /v1.NN/` (a request line's path) to the engine's version when `NN` is newer,
/// across read boundaries: the last bytes that could start a match wait for the next read.
struct Rewriter {
    max_minor: u32,
    pending: Vec<u8>,
}

impl Rewriter {
    fn new(max_minor: u32) -> Rewriter {
        Rewriter { max_minor, pending: Vec::new() }
    }

    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        let mut i = 0;
        while i + PATTERN_LEN <= self.pending.len() {
            let w = &self.pending[i..i + PATTERN_LEN];
            if &w[..5] == b" /v1." && w[5].is_ascii_digit() && w[6].is_ascii_digit() && w[7] == b'/' {
                let minor = u32::from(w[5] - b'0') * 10 + u32::from(w[6] - b'0');
                if minor > self.max_minor && self.max_minor < 100 {
                    self.pending[i + 5] = b'0' + (self.max_minor / 10) as u8;
                    self.pending[i + 6] = b'0' + (self.max_minor % 10) as u8;
                }
                i += PATTERN_LEN;
            } else {
                i += 1;
            }
        }
        // Bytes before `i` are settled; of the rest, only a tail that could begin a match waits.
        let keep =
            (i..self.pending.len()).find(|&j| could_begin(&self.pending[j..])).unwrap_or(self.pending.len());
        self.pending.drain(..keep).collect()
    }

    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Whether `tail` (shorter than the pattern) is the start of ` /v1.NN/`.
fn could_begin(tail: &[u8]) -> bool {
    tail.iter().enumerate().all(|(k, &b)| match k {
        0..=4 => b == b" /v1."[k],
        5 | 6 => b.is_ascii_digit(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(chunks: &[&[u8]], max_minor: u32) -> Vec<u8> {
        let mut r = Rewriter::new(max_minor);
        let mut out: Vec<u8> = chunks.iter().flat_map(|c| r.feed(c)).collect();
        out.extend(r.finish());
        out
    }

    #[test]
    fn newer_versions_are_lowered_in_request_lines_only() {
        let request = b"POST /v1.52/containers/create HTTP/1.1\r\nHost: d\r\n\r\n{\"a\":\"x /v1.30/\"}";
        let out = rewrite(&[request], 41);
        assert_eq!(
            out,
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n\r\n{\"a\":\"x /v1.30/\"}".to_vec()
        );
    }

    #[test]
    fn a_match_split_across_reads_is_rewritten() {
        let request = b"GET /v1.52/_ping HTTP/1.1\r\n\r\nGET /v1.52/info HTTP/1.1\r\n\r\n";
        for cut in 0..request.len() {
            let out = rewrite(&[&request[..cut], &request[cut..]], 41);
            assert_eq!(
                out,
                b"GET /v1.41/_ping HTTP/1.1\r\n\r\nGET /v1.41/info HTTP/1.1\r\n\r\n".to_vec(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_whole_request_goes_out_at_once() {
        let request = b"GET /v1.52/_ping HTTP/1.1\r\nHost: d\r\n\r\n";
        let mut r = Rewriter::new(41);
        assert_eq!(r.feed(request), b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n\r\n".to_vec());
        assert_eq!(r.feed(b"GET /v1"), b"GET".to_vec(), "only what may begin a path waits");
    }

    #[test]
    fn older_or_equal_versions_pass_unchanged() {
        let request = b"GET /v1.41/version HTTP/1.1\r\n\r\nGET /v1.24/info HTTP/1.1\r\n\r\n";
        assert_eq!(rewrite(&[request], 41), request.to_vec());
    }
}
