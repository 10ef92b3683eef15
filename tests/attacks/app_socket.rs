//! The app's end of the runner's path to it: the socket the runner used
//! to connect to was a file in a directory the app could write, so an app
//! that put a symbolic link there had the gateway's requests for its host
//! name delivered to a Unix socket of the host of its choosing (where
//! `/var/run/docker.sock` exists, that is root on the host).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::{host_marker, logs_until, runner_mesh};
use crate::common::deploy::{app, deploy_live, host_label};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_redirect_the_runner_to_a_host_socket() {
    let mesh = runner_mesh(&[]).await;
    // A socket of the host's, as docker's would be; it counts connections.
    let victim = host_marker("socket");
    let listener = tokio::net::UnixListener::bind(&victim).unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });

    let (mallory, _) = mesh.user("mallory@example.com").await;
    let victim_path = victim.display();
    let start = format!(
        r#"python3 -m http.server "$PORT" &
sleep 3
for dir in /run/capsule /run /tmp /workspace; do
  for socket in "$dir"/*.sock; do
    [ -S "$socket" ] || continue
    ln -sf {victim_path} "$socket.new" && mv -f "$socket.new" "$socket" && echo "swapped $socket"
  done
done
echo "swap-done-$((6 * 7))"
wait"#
    );
    let project = app(&mesh, &mallory, "", &start, &[]).await;
    let deployment = deploy_live(&mesh, &mallory, &project).await;
    logs_until(&mesh, &mallory, &deployment.id, "swap-done-42").await;
    let label = host_label(&mesh, &mallory, &project).await;

    let client = reqwest::Client::new();
    let mut served = 0;
    for _ in 0..20 {
        let response = client
            .get(format!("http://{}/", mesh.http))
            .header("host", format!("{label}.localhost:{}", mesh.http.port()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the gateway's requests reached a socket of the host"
    );
    assert!(served > 0, "the app itself is still served");
    let _ = std::fs::remove_file(&victim);
    mesh.stop().await;
}
