//! Container logs over HTTPS, at the kubelet's path
//! `/containerLogs/<namespace>/<pod>/<container>`, which is what the API
//! server calls for `kubectl logs` (and the conformance suite's
//! `GetLogs`). Supported query parameters: `follow`, `previous`,
//! `sinceSeconds`, `sinceTime`, `timestamps`, `tailLines`, `limitBytes`,
//! `stream`.
//!
//! Each container has a directory of CRI log files, one per start
//! (`0.log`, `1.log`, …): the newest is the current one, the one before it
//! `previous`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::Config;

/// Where the logs of the pods on this node are: `(namespace, pod)` → the
/// pod's `logs/` directory.
#[derive(Clone, Debug, Default)]
pub struct LogIndex(Arc<RwLock<HashMap<(String, String), PathBuf>>>);

impl LogIndex {
    pub fn insert(&self, namespace: &str, pod: &str, dir: PathBuf) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert((namespace.to_owned(), pod.to_owned()), dir);
    }

    /// Removes the entry if it still is `dir` (a newer pod of the same name
    /// keeps its own).
    pub fn remove(&self, namespace: &str, pod: &str, dir: &Path) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_owned(), pod.to_owned());
        if map.get(&key).is_some_and(|d| d == dir) {
            map.remove(&key);
        }
    }

    pub fn get(&self, namespace: &str, pod: &str) -> Option<PathBuf> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(&(namespace.to_owned(), pod.to_owned())).cloned()
    }
}

/// Which output streams to return.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Streams {
    #[default]
    All,
    Stdout,
    Stderr,
}

/// The query of a log request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub streams: Streams,
}

impl LogQuery {
    pub fn parse(query: &str, now: Timestamp) -> Result<LogQuery, String> {
        let mut q = LogQuery::default();
        let flag = |v: &str| matches!(v, "true" | "1");
        let number = |k: &str, v: &str| v.parse::<i64>().map_err(|_| format!("{k}: not a number: {v:?}"));
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "follow" => q.follow = flag(&value),
                "previous" => q.previous = flag(&value),
                "timestamps" => q.timestamps = flag(&value),
                "sinceSeconds" => {
                    let seconds = number(&key, &value)?;
                    q.since = Some(now - SignedDuration::from_secs(seconds.max(0)));
                }
                "sinceTime" => q.since = Some(value.parse().map_err(|e| format!("sinceTime: {e}"))?),
                // Negative: all lines.
                "tailLines" => q.tail_lines = usize::try_from(number(&key, &value)?).ok(),
                "limitBytes" => q.limit_bytes = usize::try_from(number(&key, &value)?).ok().filter(|n| *n > 0),
                "stream" => {
                    q.streams = match &*value {
                        "All" | "" => Streams::All,
                        "Stdout" => Streams::Stdout,
                        "Stderr" => Streams::Stderr,
                        other => return Err(format!("stream: unknown {other:?}")),
                    }
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// One parsed CRI log line.
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    at: Timestamp,
    stream: &'a str,
    /// `F`: a full line; `P`: part of a line continued by the next entry.
    full: bool,
    text: &'a str,
}

fn parse_entry(line: &str) -> Option<Entry<'_>> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (at, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    let (tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Entry { at: at.parse().ok()?, stream, full: tag != "P", text })
}

/// Renders the complete lines of a CRI log as `kubectl logs` shows them.
/// `all_lines` applies `since` and `tailLines` (the first response; the
/// following chunks of a `follow` only filter streams).
pub fn render(log: &str, q: &LogQuery, all_lines: bool) -> String {
    let entries: Vec<Entry<'_>> = log
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(parse_entry)
        .filter(|e| match q.streams {
            Streams::All => true,
            Streams::Stdout => e.stream == "stdout",
            Streams::Stderr => e.stream == "stderr",
        })
        .filter(|e| !all_lines || q.since.is_none_or(|since| e.at >= since))
        .collect();
    let skip = match (all_lines, q.tail_lines) {
        (true, Some(n)) => entries.len().saturating_sub(n),
        _ => 0,
    };
    let mut out = String::new();
    for e in &entries[skip..] {
        if q.timestamps {
            out.push_str(&format!("{} ", e.at));
        }
        out.push_str(e.text);
        if e.full {
            out.push('\n');
        }
    }
    out
}

/// Cuts `text` to at most `limit` bytes (on a character boundary) and
/// lowers the limit by what was kept.
fn take_limit(mut text: String, limit: &mut Option<usize>) -> String {
    if let Some(left) = limit {
        let mut cut = text.len().min(*left);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        *left -= cut;
    }
    text
}

/// The log files of a container directory, oldest start first.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let n = path.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// The TLS configuration of the log server: the given certificate, or a
/// self-signed one for the node's address and name; client certificates
/// are required if a client CA is given.
pub fn tls_config(config: &Config) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certs, key) = match &config.tls_cert {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            (certs, key)
        }
        None => {
            let names = vec![config.node_ip.to_string(), config.node_name.clone()];
            let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
            let key = PrivateKeyDer::try_from(signing_key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?;
            (vec![cert.der().clone()], key)
        }
    };
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))? {
                roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Serves log requests on `listener` forever.
pub async fn serve(listener: TcpListener, tls: ServerConfig, index: LogIndex) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "log server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let index = index.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "log server: TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let index = index.clone();
                async move { Ok::<_, Infallible>(handle(req, &index).await) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(%peer, error = %e, "log server: connection failed");
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn reply(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let text = text.into();
    if status != StatusCode::OK {
        tracing::debug!(%status, "log server: {text}");
    }
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text)).boxed())
        .expect("valid response")
}

async fn handle(req: Request<Incoming>, index: &LogIndex) -> Response<Body> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.strip_prefix("/containerLogs/").map(|p| p.split('/').collect()).unwrap_or_default();
    let [namespace, pod, container] = parts[..] else {
        return reply(StatusCode::NOT_FOUND, "this node serves /containerLogs/<namespace>/<pod>/<container> only");
    };
    let mut q = match LogQuery::parse(req.uri().query().unwrap_or(""), Timestamp::now()) {
        Ok(q) => q,
        Err(e) => return reply(StatusCode::BAD_REQUEST, e),
    };
    let Some(logs) = index.get(namespace, pod) else {
        return reply(StatusCode::NOT_FOUND, format!("pod {namespace}/{pod} is not running on this node"));
    };
    let dir = logs.join(container);
    let files = log_files(&dir);
    let file = if q.previous { files.iter().rev().nth(1) } else { files.last() };
    let Some(file) = file.cloned() else {
        let why = if q.previous { "has no previous terminated instance" } else { "has not started yet" };
        return reply(StatusCode::BAD_REQUEST, format!("container {container:?} in pod {namespace}/{pod} {why}"));
    };
    let content = match tokio::fs::read(&file).await {
        Ok(bytes) => bytes,
        Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", file.display())),
    };
    // Only complete lines; a follow continues after them.
    let complete = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut limit = q.limit_bytes;
    let first = take_limit(render(&String::from_utf8_lossy(&content[..complete]), &q, true), &mut limit);
    if !q.follow || q.previous || limit == Some(0) {
        return reply(StatusCode::OK, first);
    }
    q.limit_bytes = limit;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let _ = tx.send(Bytes::from(first)).await;
    let key = (namespace.to_owned(), pod.to_owned());
    tokio::spawn(follow(tx, file, complete as u64, q, index.clone(), key, logs));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(StreamBody::new(stream).boxed())
        .expect("valid response")
}

/// Sends what is appended to `file` until the client leaves, the limit is
/// reached, the container starts again (a newer file) or the pod leaves
/// the node.
async fn follow(
    tx: mpsc::Sender<Bytes>,
    file: PathBuf,
    mut offset: u64,
    mut q: LogQuery,
    index: LogIndex,
    key: (String, String),
    logs: PathBuf,
) {
    let mut limit = q.limit_bytes.take();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tx.is_closed() {
            return;
        }
        let mut appended = Vec::new();
        if let Ok(mut f) = tokio::fs::File::open(&file).await
            && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
        {
            let _ = f.read_to_end(&mut appended).await;
        }
        let complete = appended.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        offset += complete as u64;
        let chunk = take_limit(render(&String::from_utf8_lossy(&appended[..complete]), &q, false), &mut limit);
        if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
        let restarted =
            file.parent().and_then(|dir| log_files(dir).last().cloned()).is_some_and(|newest| newest != file);
        let gone = index.get(&key.0, &key.1).is_none_or(|d| d != logs);
        if limit == Some(0) || restarted || gone {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-05-01T10:00:00Z stdout F Starting server, listening on port 3000 (http)\n\
                       2026-05-01T10:00:01Z stderr F warning: something\n\
                       2026-05-01T10:00:02Z stdout P partial \n\
                       2026-05-01T10:00:02.5Z stdout F line\n\
                       2026-05-01T10:00:03Z stdout F incomplete";

    fn now() -> Timestamp {
        "2026-05-01T10:00:05Z".parse().unwrap()
    }

    #[test]
    fn renders_complete_lines_like_kubectl_logs() {
        let q = LogQuery::default();
        assert_eq!(
            render(LOG, &q, true),
            "Starting server, listening on port 3000 (http)\nwarning: something\npartial line\n"
        );
    }

    #[test]
    fn filters_by_time_stream_and_tail_and_adds_timestamps() {
        let q = LogQuery::parse("sinceTime=2026-05-01T10%3A00%3A01Z&stream=Stdout", now()).unwrap();
        assert_eq!(render(LOG, &q, true), "partial line\n");
        let q = LogQuery::parse("sinceSeconds=4", now()).unwrap();
        assert_eq!(render(LOG, &q, true), "warning: something\npartial line\n");
        let q = LogQuery::parse("tailLines=1&timestamps=true", now()).unwrap();
        assert_eq!(render(LOG, &q, true), "2026-05-01T10:00:02.5Z line\n");
        // Follow chunks ignore since and tail.
        assert_eq!(render(LOG, &q, false).lines().count(), 3);
    }

    #[test]
    fn parses_queries() {
        let q = LogQuery::parse("follow=true&previous=1&tailLines=-1&limitBytes=10&stream=Stderr", now()).unwrap();
        assert_eq!(
            q,
            LogQuery {
                follow: true,
                previous: true,
                tail_lines: None,
                limit_bytes: Some(10),
                streams: Streams::Stderr,
                ..Default::default()
            }
        );
        assert!(LogQuery::parse("sinceTime=yesterday", now()).is_err());
        assert!(LogQuery::parse("tailLines=many", now()).is_err());
        assert!(LogQuery::parse("stream=Both", now()).is_err());
    }

    #[test]
    fn limits_bytes_on_character_boundaries() {
        let mut limit = Some(4);
        assert_eq!(take_limit("aé€b".to_owned(), &mut limit), "aé");
        assert_eq!(limit, Some(1));
        let mut none = None;
        assert_eq!(take_limit("abc".to_owned(), &mut none), "abc");
    }

    #[test]
    fn finds_current_and_previous_log_files() {
        let dir = std::env::temp_dir().join(format!("agimo-node-agent-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["0.log", "10.log", "2.log", "notes.txt"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let files: Vec<String> =
            log_files(&dir).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(files, ["0.log", "2.log", "10.log"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn index_keeps_a_newer_pods_entry() {
        let index = LogIndex::default();
        index.insert("ns", "p", PathBuf::from("/a"));
        index.insert("ns", "p", PathBuf::from("/b"));
        index.remove("ns", "p", Path::new("/a"));
        assert_eq!(index.get("ns", "p"), Some(PathBuf::from("/b")));
        index.remove("ns", "p", Path::new("/b"));
        assert_eq!(index.get("ns", "p"), None);
    }
}
