//! The web page: served with its headers by the real binary, and driven in a real browser.
//!
//! The browser test runs `e2e/seatmap.mjs` (Debian's chromium through playwright-core, see that file) against a
//! node started here, and passes when the script exits 0. It needs `/usr/bin/chromium` (or `BOXOFFICE_CHROMIUM`),
//! `node` and `e2e/node_modules/playwright-core`; when one is missing the test runs `scripts/install-browser-deps.sh`
//! (apt-get and npm) first, and fails saying what is missing if that does not bring them. It never skips.

mod common;

use common::{ADMIN_TOKEN, Server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The page's Content-Security-Policy, as `api::routes::web` sends it.
const POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; \
     connect-src 'self'; frame-ancestors 'none'";
/// The browser script runs for about half a minute; past this it has hung.
const BROWSER_TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Short enough that the browser test waits one out to see the page say the hold expired, long enough for every
/// step between a hold and its purchase on a loaded machine.
const HOLD_TTL_S: &str = "10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_files_are_served_with_a_strict_policy() {
    let server = Server::start(&[]);
    for (path, content_type, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script type=\"module\" src=\"/app.js\">",
        ),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "new EventSource(",
        ),
        ("/app.css", "text/css; charset=utf-8", ".seatmap"),
    ] {
        let response = server
            .client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("request completes");
        assert_eq!(response.status(), 200, "GET {path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some(content_type),
            "{path}"
        );
        assert_eq!(
            header("cache-control").as_deref(),
            Some("no-cache"),
            "{path}"
        );
        assert_eq!(
            header("content-security-policy").as_deref(),
            Some(POLICY),
            "{path}"
        );
        assert_eq!(
            header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        let body = response.text().await.expect("body");
        assert!(body.contains(needle), "{path} holds {needle:?}");
    }
    // The page's paths take no other method, and their neighbours are still JSON 404s.
    let refused = server.post("/", None, serde_json::json!({})).await;
    refused.expect_error(405, "method_not_allowed");
    server
        .get("/index.html", None)
        .await
        .expect_error(404, "not_found");
}

#[test]
fn two_browsers_hold_buy_and_cancel_seats_and_see_each_other_live() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    let e2e = repository.join("e2e");
    let chromium = std::env::var_os("BOXOFFICE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let missing = || {
        let mut missing = Vec::new();
        if !chromium.exists() {
            missing.push(format!("{}", chromium.display()));
        }
        if Command::new("node").arg("--version").output().is_err() {
            missing.push("node".to_owned());
        }
        if !e2e.join("node_modules/playwright-core").exists() {
            missing.push("e2e/node_modules/playwright-core".to_owned());
        }
        missing.join(", ")
    };
    if !missing().is_empty() {
        // Never a skip: what the test needs is installed here, or the test fails saying why.
        let _ = writeln!(
            std::io::stderr(),
            "browser test: {} missing, running scripts/install-browser-deps.sh",
            missing()
        );
        let installed = Command::new(repository.join("scripts/install-browser-deps.sh"))
            .current_dir(&repository)
            .status()
            .expect("run scripts/install-browser-deps.sh");
        assert!(
            installed.success(),
            "scripts/install-browser-deps.sh failed ({installed}): the browser test needs {}",
            missing()
        );
        let still = missing();
        assert!(
            still.is_empty(),
            "{still} still missing after scripts/install-browser-deps.sh"
        );
    }

    let server = Server::start(&["--hold-ttl-s", HOLD_TTL_S]);
    // Beside the test binaries' scratch space, so that it follows CARGO_TARGET_DIR: target/e2e/.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("e2e");
    std::fs::create_dir_all(&out).expect("screenshot dir");
    let screenshot = out.join("seatmap.png");
    let _ = std::fs::remove_file(&screenshot);
    let log_path = out.join("seatmap.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut script = Command::new("node")
        .arg("seatmap.mjs")
        .current_dir(&e2e)
        .env("BOXOFFICE_URL", &server.base)
        .env("BOXOFFICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("BOXOFFICE_E2E_OUT", &out)
        .env("BOXOFFICE_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start node");
    let deadline = Instant::now() + BROWSER_TEST_TIMEOUT;
    let status = loop {
        if let Some(status) = script.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = script.kill();
            let _ = script.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => {
            assert!(
                output.contains("e2e: passed"),
                "the script exited 0 without passing:\n{output}"
            );
            assert!(screenshot.exists(), "the seat map screenshot");
        }
        Some(status) => panic!(
            "e2e/seatmap.mjs failed ({status}); screenshots in {}:\n{output}",
            out.display()
        ),
        None => panic!("e2e/seatmap.mjs did not finish within {BROWSER_TEST_TIMEOUT:?}:\n{output}"),
    }
}
