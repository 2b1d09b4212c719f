//! A loopback TCP proxy that injects network faults between two parties
//! (coordinator and participant, or client and coordinator): latency, a
//! partition in one or both directions, and dropped connections.
//!
//! A partitioned direction stalls: bytes are held, not discarded, as TCP
//! would keep retransmitting through a partition, so the HTTP/2 stream stays
//! well-formed and resumes on heal. To lose what was held (a response that
//! never arrives), drop the connections: every open connection is closed and
//! the peers reconnect.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The faults in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before each chunk is passed on, each way.
    pub latency: Duration,
    /// Client-to-target bytes are held.
    pub forward_stalled: bool,
    /// Target-to-client bytes are held.
    pub backward_stalled: bool,
    /// Bumped to close every open connection.
    generation: u64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    faults: watch::Sender<Faults>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (faults, watching) = watch::channel(Faults::default());
        let accept = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) ends every
            // connection's task.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let watching = watching.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        relay(client, server, watching).await;
                    }
                });
                // Reap finished connections as we go.
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            faults,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Holds traffic one way or both.
    pub fn partition(&self, forward: bool, backward: bool) {
        self.faults.send_modify(|f| {
            f.forward_stalled = forward;
            f.backward_stalled = backward;
        });
    }

    /// Lets held and new traffic through.
    pub fn heal(&self) {
        self.partition(false, false);
    }

    /// Closes every open connection; what they held is lost.
    pub fn drop_connections(&self) {
        self.faults.send_modify(|f| f.generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, faults: watch::Receiver<Faults>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let generation = faults.borrow().generation;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let forward = pump(client_read, server_write, faults.clone(), true);
    let backward = pump(server_read, client_write, faults.clone(), false);
    let mut dropped = faults;
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
        _ = dropped.wait_for(|f| f.generation != generation) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
    forward: bool,
) {
    let stalled = move |f: &Faults| {
        if forward {
            f.forward_stalled
        } else {
            f.backward_stalled
        }
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = faults.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        // A partition holds the chunk until heal (or the connection drops).
        if faults.wait_for(|f| !stalled(f)).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
