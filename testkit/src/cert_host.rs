//! A static file host for certificates (the stand-in for Microsoft's blob storage and for
//! AIA `caIssuers` locations): each path answers a fixed status, headers and body.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use warp::{Filter, http::Response};

/// What one path answers.
#[derive(Debug, Clone)]
pub struct FileReply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait before answering.
    pub delay: Option<Duration>,
}

impl FileReply {
    /// 200 with this body.
    pub fn ok(body: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body,
            delay: None,
        }
    }

    /// A redirect to `location`.
    pub fn redirect(location: &str) -> Self {
        Self {
            status: 302,
            headers: vec![("Location".into(), location.into())],
            body: Vec::new(),
            delay: None,
        }
    }

    /// A bare status.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: None,
        }
    }
}

/// A plain-HTTP file host on 127.0.0.1 (put an `HttpsFront` before it for https).
pub struct CertHost {
    addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, FileReply>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CertHost {
    /// Starts an empty host.
    pub async fn start() -> Self {
        let files: Arc<Mutex<HashMap<String, FileReply>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let (f, h, t) = (files.clone(), hits.clone(), total.clone());
        let route = warp::path::full().then(move |path: warp::path::FullPath| {
            let (f, h, t) = (f.clone(), h.clone(), t.clone());
            async move {
                let path = path.as_str().to_owned();
                t.fetch_add(1, Ordering::SeqCst);
                *h.lock().expect("hits").entry(path.clone()).or_default() += 1;
                let reply = f
                    .lock()
                    .expect("files")
                    .get(&path)
                    .cloned()
                    .unwrap_or_else(|| FileReply::status(404));
                if let Some(delay) = reply.delay {
                    tokio::time::sleep(delay).await;
                }
                let mut response = Response::builder().status(reply.status);
                for (k, v) in &reply.headers {
                    response = response.header(k, v);
                }
                response.body(reply.body).expect("response")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(warp::serve(route).incoming(listener).run());
        Self {
            addr,
            files,
            hits,
            total,
            task,
        }
    }

    /// Sets what `path` (starting with `/`) answers.
    pub fn set(&self, path: &str, reply: FileReply) {
        self.files
            .lock()
            .expect("files")
            .insert(path.to_owned(), reply);
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// All requests received.
    pub fn total_hits(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for CertHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}
