//! A listener's connections served on one single-threaded runtime per
//! core.
//!
//! The caller's runtime accepts; each connection is handed, in turn, to
//! one of the cores' threads, and every task of that connection (hyper's
//! connection task, a task per HTTP/2 stream, the handler) lives there.
//! On the runtime's shared pool of workers, a stream's task spawned on one
//! worker woke the other to steal it, and the two passed a call back and
//! forth: tonic alone answered a health check in 41–47 µs of CPU here
//! against 46–66 µs on the shared pool, with a quarter more calls per
//! second (bench/README.md, "A runtime per core"). What a connection does
//! off its thread (diesel on a blocking thread, a call to another
//! service) comes back to it by the same wake-ups as before.
//!
//! The price: a connection stays on its core however busy that core is.
//! Clients that open several connections (every load balancer, h2load,
//! the gateway's channels) spread over the cores; one connection's calls
//! share one core.

use std::future::Future;

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_stream::{Stream, StreamExt as _, wrappers::UnboundedReceiverStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The connections handed to one core, as the server there accepts them.
pub type Connections = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<TcpStream>> + Send>>;

/// Serves what `listener` accepts on a thread per core, each running
/// `serve(connections, stop)` on a runtime of its own, until
/// `stop_accepting`: then the listener closes and each core's server is
/// told to stop (and lets its calls finish). `abort` closes what is still
/// open at once. Returns when every core's server has ended.
pub async fn serve<F, Fut, E>(
    listener: TcpListener,
    name: &str,
    stop_accepting: CancellationToken,
    abort: CancellationToken,
    serve: F,
) -> anyhow::Result<()>
where
    F: Fn(Connections, WaitForCancellationFutureOwned) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut queues = Vec::with_capacity(cores);
    let mut ended = Vec::with_capacity(cores);
    for core in 0..cores {
        let (queue, connections) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let (done, end) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a core's runtime")?;
        let (serve, stop, abort) = (serve.clone(), stop_accepting.clone(), abort.clone());
        std::thread::Builder::new()
            .name(format!("{name}-{core}"))
            .spawn(move || {
                let served = runtime.block_on(async move {
                    // Registered with this core's reactor as they arrive.
                    let connections: Connections =
                        Box::pin(UnboundedReceiverStream::new(connections).map(TcpStream::from_std));
                    tokio::select! {
                        served = serve(connections, stop.cancelled_owned()) => served.map_err(anyhow::Error::from),
                        () = abort.cancelled() => Ok(()),
                    }
                });
                // Closes whatever connection is still open.
                drop(runtime);
                let _ = done.send(served);
            })
            .context("cannot start a core's thread")?;
        queues.push(queue);
        ended.push(end);
    }

    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted.and_then(|(stream, _)| {
            // Small unary answers go out at once, not after Nagle's wait.
            stream.set_nodelay(true)?;
            stream.into_std()
        }) {
            Ok(stream) => {
                // A core whose server ended early drops what it is sent;
                // its error is returned below.
                let _ = queues[next % cores].send(stream);
                next = next.wrapping_add(1);
            }
            Err(err) => {
                // Out of descriptors, or a client gone before its turn:
                // the listener is tried again shortly, not in a hot loop.
                tracing::debug!(error = %err, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    drop(queues);
    let mut result = Ok(());
    for end in ended {
        let served = end
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a core's thread panicked")));
        if result.is_ok() {
            result = served;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Each core answers a connection with its thread's name.
    async fn answer_with_thread_name(
        mut connections: Connections,
        stop: WaitForCancellationFutureOwned,
    ) -> std::io::Result<()> {
        tokio::pin!(stop);
        loop {
            let mut stream = tokio::select! {
                () = &mut stop => return Ok(()),
                next = connections.next() => match next {
                    Some(stream) => stream?,
                    None => return Ok(()),
                },
            };
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            stream.write_all(name.as_bytes()).await?;
        }
    }

    #[tokio::test]
    async fn connections_go_to_each_core_in_turn_and_serving_ends_when_told() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
        let served = tokio::spawn(serve(listener, "spread", stop.clone(), abort, answer_with_thread_name));

        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut names = BTreeSet::new();
        for _ in 0..cores * 2 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let mut name = String::new();
            client.read_to_string(&mut name).await.unwrap();
            names.insert(name);
        }
        let expected: BTreeSet<String> = (0..cores).map(|core| format!("spread-{core}")).collect();
        assert_eq!(
            names, expected,
            "every core took connections, none served on the caller's runtime"
        );

        stop.cancel();
        served.await.unwrap().unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once serving ends"
        );
    }
}
