//! `GET /docs` in a real browser: headless Chromium (Debian's `chromium`,
//! which `scripts/prerequisites` installs) loads the page from a test mesh
//! under its Content-Security-Policy, and every operation of
//! `/openapi.json` is listed. A screenshot is kept as a test artefact
//! (`<target>/tmp/artifacts/docs.png`), not committed.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;

/// The Chromium to drive: `CHROMIUM`, else the first one on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .expect("no Chromium: install Debian's chromium (scripts/prerequisites does) or set CHROMIUM")
}

/// Runs headless Chromium on `url` with `action` (`--dump-dom` or
/// `--screenshot=…`) and returns what it printed.
async fn browse(url: &str, action: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let run = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1280,1600",
            // Time enough for the page's scripts and its fetch of the
            // document, whatever the machine's load.
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("Chromium finishes within two minutes")
        .expect("Chromium starts");
    assert!(output.status.success(), "Chromium failed: {:?}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_page_lists_every_operation_in_a_real_browser() {
    let mesh = common::start().await;
    let base = format!("http://{}", mesh.http);
    let http = reqwest::Client::new();

    let page = http.get(format!("{base}/docs")).send().await.expect("the page");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("a policy")
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let html = page.text().await.expect("the page's text");
    assert!(
        !html.contains("//cdn") && !html.contains("https://"),
        "nothing from another origin: {html}"
    );
    let script = http
        .get(format!("{base}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .expect("the bundle");
    assert_eq!(script.headers()["content-type"], "text/javascript");

    let document: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("the document")
        .json()
        .await
        .expect("JSON");
    let paths: Vec<&String> = document["paths"].as_object().expect("paths").keys().collect();
    assert!(paths.len() > 20, "{paths:?}");

    let dom = browse(&format!("{base}/docs"), "--dump-dom").await;
    for path in &paths {
        assert!(dom.contains(&format!("data-path=\"{path}\"")), "the page lists {path}");
    }

    let artefacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artefacts).expect("the artefacts directory");
    let shot = artefacts.join("docs.png");
    let _ = std::fs::remove_file(&shot);
    browse(&format!("{base}/docs"), &format!("--screenshot={}", shot.display())).await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    println!("screenshot: {}", shot.display());
    mesh.stop().await;
}
