//! What an operator configures and reads: the log formats, and the offline tools against a running node.

mod common;

use common::Server;

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_text_logs_in_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json_log = dir.path().join("json.log");
    let server = Server::start_logged(
        tempfile::tempdir().expect("data dir"),
        &["--log-format", "json"],
        &json_log,
    );
    server.get("/health", None).await.expect(200);
    server.stop();
    let text = std::fs::read_to_string(&json_log).expect("the log");
    let lines: Vec<&str> = text.lines().filter(|line| !line.is_empty()).collect();
    assert!(lines.len() > 3, "{text}");
    for line in &lines {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON object ({error}): {line}"));
        assert!(
            entry["timestamp"].is_string()
                && entry["level"].is_string()
                && entry["target"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|line| line.contains(r#""message":"recovery finished""#)),
        "{text}"
    );

    // The environment variable sets it too; text to a file is plain.
    let text_log = dir.path().join("text.log");
    let server = Server::start_logged(tempfile::tempdir().expect("data dir"), &[], &text_log);
    server.stop();
    let text = std::fs::read_to_string(&text_log).expect("the log");
    assert!(text.contains("recovery finished"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
}

/// The series names a Grafana dashboard's queries read.
fn dashboard_series(path: &std::path::Path) -> std::collections::BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut series = std::collections::BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("an expr");
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.starts_with("boxoffice_") || token.starts_with("http_") {
                    series.insert(token.to_owned());
                }
            }
        }
    }
    series
}

#[tokio::test]
async fn every_series_the_grafana_dashboard_queries_exists_on_a_node_that_sold() {
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/boxoffice-sale.json");
    let wanted = dashboard_series(&dashboard);
    assert!(wanted.len() > 10, "{wanted:?}");
    let server = Server::start(&[]);
    let concert = server.create_general(100, 2, 1000).await;
    let (_, token) = server.register("buyer", common::GOOD_CARD).await;
    server
        .post(
            "/orders",
            Some(&token),
            serde_json::json!({"concert_id": concert, "quantity": 1}),
        )
        .await
        .expect(201);
    server
        .hold(
            &token,
            serde_json::json!({"concert_id": concert, "quantity": 1}),
        )
        .await;
    // The order's capture runs after its answer, and the order keeps its payment slot until it is done.
    server
        .wait_for_metric("boxoffice_payment_pool_admitted", 0.0)
        .await;
    let text = server.metrics_text().await;
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    // Every exported metric has its HELP, and the build is named.
    for name in &exported {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# HELP {base} ")) || text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    assert!(text.contains("boxoffice_build_info{version=\""), "{text}");
    // The order is done with its payment slot once captured, and the hold never took one.
    assert!(
        text.contains("\nboxoffice_payment_pool_admitted 0\n"),
        "{text}"
    );
    server.stop();
}

/// The README's walk-through, as a newcomer pastes it: a fenced `sh` block after the heading `heading`.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("the README");
    let section = readme
        .split_once(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading:?}"))
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("a sh block")
        .1
        .split_once("\n```")
        .expect("its end")
        .0;
    block.to_owned()
}

/// `jq`, which the walk-through uses: installed with apt-get if missing, or the test fails saying so.
fn ensure_jq() {
    let present = || {
        std::process::Command::new("jq")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if present() {
        return;
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0"));
    let sudo: &[&str] = if root { &[] } else { &["sudo"] };
    for args in [
        &["apt-get", "update", "-qq"][..],
        &["apt-get", "install", "-y", "-qq", "jq"],
    ] {
        let mut command: Vec<&str> = sudo.to_vec();
        command.extend_from_slice(args);
        let _ = std::process::Command::new(command[0])
            .args(&command[1..])
            .status();
    }
    assert!(
        present(),
        "the README walk-through needs jq, and apt-get could not install it"
    );
}

#[tokio::test]
async fn the_readme_walk_through_runs_verbatim_against_a_fresh_node() {
    ensure_jq();
    let script = readme_block("A sale, request by request");
    assert!(script.starts_with("B=http://127.0.0.1:8080;"), "{script}");
    let server = Server::start(&["--demo"]);
    // Where the newcomer runs it: beside the node's data dir, whose admin-token the script reads.
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(cwd.path().join("data")).expect("data");
    std::fs::write(cwd.path().join("data/admin-token"), common::ADMIN_TOKEN).expect("token");
    let script = script.replacen("B=http://127.0.0.1:8080", &format!("B={}", server.base), 1);
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(cwd.path())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0]["kind"], "seated");
    assert_eq!(lines[0]["capacity"], 260);
    assert_eq!(lines[1]["status"], "confirmed");
    assert_eq!(lines[1]["amount_cents"], 9000);
    assert!(
        lines[2]["seat"].is_string() && lines[2]["checked_in_at"].is_string(),
        "{stdout}"
    );
    assert_eq!(lines[3], "already_checked_in");
    server.stop();
}

/// Copies `from` into `to`, private to this user as a data dir must be.
fn copy_private(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).expect("a dir");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).expect("mode");
    for entry in std::fs::read_dir(from).expect("the fixture") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_private(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("a copy");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .expect("mode");
        }
    }
}

#[tokio::test]
async fn a_data_dir_of_the_previous_release_opens_recovers_and_sells() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/previous-release/data");
    let data = tempfile::tempdir().expect("tempdir");
    copy_private(&fixture, data.path());
    let server = Server::start_in(data, &[]);
    // The user logs in with the password the old release stored, and still has the card (moved to the vault).
    let login = server
        .post(
            "/users/verify",
            None,
            serde_json::json!({"username": "alice", "password": "correct horse"}),
        )
        .await
        .expect(200);
    let (id, token) = (
        login["id"].as_str().expect("an id").to_owned(),
        login["token"].as_str().expect("a token").to_owned(),
    );
    let profile = server
        .get(&format!("/users/{id}"), Some(&token))
        .await
        .expect(200);
    assert_eq!(profile["city"], "Lyon");
    assert_eq!(profile["card"]["last4"], "4242");
    // Every ticket sold, the counts, and the long-expired hold given back.
    let tickets = server
        .get(&format!("/users/{id}/tickets"), Some(&token))
        .await
        .expect(200);
    let tickets = tickets["tickets"].as_array().expect("tickets");
    assert_eq!(tickets.len(), 5, "{tickets:?}");
    let mut seats: Vec<&str> = tickets.iter().filter_map(|t| t["seat"].as_str()).collect();
    seats.sort();
    assert_eq!(seats, ["A-1-1", "A-1-2"]);
    let concert = |concerts: &serde_json::Value, name: &str| {
        concerts["concerts"]
            .as_array()
            .expect("concerts")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    // The hold expired long ago: its expiry runs as soon as the shard is back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (night, recital) = loop {
        let concerts = server.get("/concerts", None).await.expect(200);
        let recital = concert(&concerts, "Recital");
        if recital["held"] == 0 || std::time::Instant::now() > deadline {
            break (concert(&concerts, "Night"), recital);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        (&night["remaining"], &night["sold"]),
        (&997.into(), &3.into())
    );
    assert_eq!(
        (&recital["remaining"], &recital["held"], &recital["sold"]),
        (&38.into(), &0.into(), &2.into())
    );
    // The old order's idempotency key still answers the old order.
    let night_id = night["id"].as_str().expect("an id");
    let replay = server
        .send(
            reqwest::Method::POST,
            "/orders",
            Some(&token),
            Some(serde_json::json!({"concert_id": night_id, "quantity": 3})),
            &[("idempotency-key", "fixture-order-1")],
        )
        .await;
    assert_eq!(replay.status.as_u16(), 201, "{}", replay.body);
    assert_eq!(
        replay.body["tickets"].as_array().map(Vec::len),
        Some(3),
        "{}",
        replay.body
    );
    // And it sells on, with the card from the vault.
    server
        .post(
            "/orders",
            Some(&token),
            serde_json::json!({"concert_id": night_id, "quantity": 1}),
        )
        .await
        .expect(201);
    // A second start has nothing left to move, and the data dir checks clean offline.
    let data = server.stop();
    let server = Server::start_in(data, &[]);
    let profile = server
        .get(&format!("/users/{id}"), Some(&token))
        .await
        .expect(200);
    assert_eq!(profile["card"]["last4"], "4242");
    let data = server.stop();
    common::inspect(data.path());
}
