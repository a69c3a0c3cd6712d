//! `boxoffice-load` end to end against the `boxoffice` debug binary of this workspace (started with `--spawn`): a
//! burst of 200 simultaneous orders, a two-point payment sweep and a short peak search, each checked through the
//! report it writes; and the runs it refuses.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The server binary beside this test's directory: `target/debug/deps/<test>` → `target/debug/boxoffice`.
fn boxoffice_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("boxoffice");
    assert!(
        binary.is_file(),
        "{} is missing: build the server first (cargo build -p api), or run cargo test --workspace",
        binary.display()
    );
    binary
}

fn load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_boxoffice-load"))
        .args(args)
        .env_remove("BOXOFFICE_ADMIN_TOKEN")
        .output()
        .expect("run boxoffice-load")
}

/// Runs a scenario with `--spawn` into a temporary directory; returns `report.json` and `report.html`.
fn run_spawned(args: &[&str]) -> (Value, String, tempfile::TempDir) {
    let out = tempfile::tempdir().expect("temp dir");
    let binary = boxoffice_binary();
    let mut all = args.to_vec();
    all.extend([
        "--spawn",
        binary.to_str().expect("utf-8 path"),
        "--out",
        out.path().to_str().expect("utf-8 path"),
    ]);
    let output = load(&all);
    assert!(
        output.status.success(),
        "boxoffice-load {all:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(out.path().join("report.json")).expect("report.json");
    let html = std::fs::read_to_string(out.path().join("report.html")).expect("report.html");
    (serde_json::from_str(&json).expect("JSON"), html, out)
}

fn count(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

#[test]
fn a_burst_of_200_simultaneous_orders_sells_200_tickets() {
    let (report, html, out) = run_spawned(&["burst", "--users", "200", "--concurrency", "200"]);
    assert_eq!(count(&report, "orders"), 200);
    assert_eq!(count(&report, "ok"), 200, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
    assert_eq!(count(&report, "sold_out"), 0);
    let latency = &report["latency_ms"];
    for field in ["min", "mean", "p50", "p90", "p99", "max"] {
        assert!(latency[field].as_f64().is_some(), "latency_ms.{field}");
    }
    assert!(latency["min"].as_f64() <= latency["max"].as_f64());
    assert!(report["duration_s"].as_f64().is_some_and(|s| s > 0.0));
    assert!(report["throughput_per_s"].as_f64().is_some_and(|n| n > 0.0));
    assert_eq!(report["invariants"]["hold"], true);
    assert_eq!(count(&report["invariants"], "sold"), 200);
    assert_eq!(
        report["spawned"]["runs"][0]["exit"], "exit status: 0",
        "the server stopped cleanly on SIGTERM"
    );
    assert!(html.contains("<svg"), "charts in the page");
    assert!(!html.contains("<script"), "no script in the page");
    let samples = std::fs::read_to_string(out.path().join("samples.csv")).expect("samples.csv");
    assert_eq!(samples.lines().count(), 1 + 200);
}

#[test]
fn a_payment_sweep_runs_one_burst_per_latency() {
    let (report, html, _out) =
        run_spawned(&["sweep-payment", "--latencies-ms", "0,100", "--users", "50"]);
    let points = report["points"].as_array().expect("points");
    assert_eq!(points.len(), 2);
    for (point, latency_ms) in points.iter().zip([0, 100]) {
        assert_eq!(count(point, "payment_latency_ms"), latency_ms);
        assert_eq!(
            (count(point, "ok"), count(point, "errors")),
            (50, 0),
            "{point}"
        );
    }
    // No order is answered before its charge is: the provider's latency is a floor.
    assert!(points[1]["latency_ms"]["min"].as_f64().expect("min") >= 100.0);
    let sweep_chart = 1;
    let charts_per_burst = 4;
    assert_eq!(
        html.matches("<svg").count(),
        sweep_chart + 2 * charts_per_burst
    );
}

#[test]
fn a_peak_search_that_always_holds_stops_at_the_bound() {
    let (report, _html, _out) = run_spawned(&[
        "peak",
        "--slo-s",
        "600",
        "--start-users",
        "10",
        "--max-users",
        "40",
        "--payment-latency-ms",
        "0",
    ]);
    let sizes: Vec<u64> = report["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|point| count(point, "orders"))
        .collect();
    assert_eq!(sizes, [10, 20, 40]);
    assert_eq!(count(&report["peak"], "largest_held"), 40);
    assert_eq!(report["peak"]["bounded_by_max"], true);
}

#[test]
fn runs_that_cannot_be_carried_out_are_refused() {
    let check = |args: &[&str], message: &str| {
        let output = load(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    };
    let out = tempfile::tempdir().expect("temp dir");
    let out = out.path().to_str().expect("utf-8 path");
    check(
        &["sweep-payment", "--out", out, "--admin-token", "t"],
        "needs --spawn",
    );
    check(
        &[
            "burst",
            "--users",
            "1",
            "--out",
            out,
            "--admin-token",
            "t",
            "--target",
            "http://10.1.2.3:80",
        ],
        "loopback only",
    );
    check(&["burst", "--users", "1", "--out", out], "--admin-token");
    check(
        &[
            "burst",
            "--users",
            "1",
            "--out",
            out,
            "--spawn",
            "/nonexistent/boxoffice",
        ],
        "no such file",
    );
    check(
        &[
            "burst",
            "--users",
            "1",
            "--out",
            out,
            "--spawn-cluster",
            "3",
        ],
        "--spawn",
    );
    check(
        &[
            "burst",
            "--users",
            "1",
            "--out",
            out,
            "--admin-token",
            "t",
            "--fronts",
            "1",
        ],
        "--fronts needs --spawn-cluster",
    );
    check(
        &[
            "throughput",
            "--out",
            out,
            "--spawn",
            "/nonexistent/boxoffice",
            "--runs",
            "hop",
        ],
        "--spawn-cluster 2 or more",
    );
    check(
        &[
            "burst",
            "--users",
            "1",
            "--out",
            out,
            "--spawn",
            "/nonexistent/boxoffice",
            "--spawn-cluster",
            "2",
            "--durability",
            "none",
        ],
        "--durability none is for a single node",
    );
}

#[test]
fn the_planner_calibrates_predicts_and_measures_its_error() {
    let (report, html, _out) = run_spawned(&[
        "plan",
        "--orders",
        "200",
        "--payment-latency-ms",
        "300",
        "--slo-s",
        "600",
        "--calibration-orders",
        "200",
        "--verify",
    ]);
    let plan = &report["plan"];
    assert_eq!(plan["calibrated"], true);
    let rate = plan["calibration"]["service_rate_per_s"].as_f64().unwrap();
    let phase = plan["calibration"]["phase_s"].as_f64().unwrap();
    assert!(rate > 0.0 && rate.is_finite(), "{plan}");
    assert!(
        phase >= 0.5 / rate - 1e-12 && phase <= 1.0 / rate + 1e-12,
        "{plan}"
    );
    let predicted = plan["prediction"]["max_latency_s"].as_f64().unwrap();
    // No prediction can beat the provider itself.
    assert!(predicted >= 0.3, "{plan}");
    assert_eq!(plan["prediction"]["meets_slo"], true);
    let verification = &plan["verification"];
    let measured = verification["measured_max_s"].as_f64().unwrap();
    assert!(measured >= 0.3, "{plan}");
    let error = verification["max_error_percent"].as_f64().unwrap();
    assert!(
        (error - (measured - predicted) / measured * 100.0).abs() < 1e-6,
        "{plan}"
    );
    // Two calibration bursts and the verification, each with its counts checked.
    let points = report["points"].as_array().expect("points");
    assert_eq!(points.len(), 3);
    assert_eq!(points[0]["payment_latency_ms"], 0);
    assert_eq!(points[2]["payment_latency_ms"], 300);
    for point in points {
        assert_eq!(count(point, "ok"), 200);
        assert_eq!(point["invariants"]["hold"], true);
    }
    assert!(html.contains("Capacity plan"));
    // The prediction beside the burst that verified it.
    assert!(html.contains("Predicted and measured: latency"), "no chart");
    assert!(html.contains("longest, predicted") && html.contains("longest, measured"));
    assert!(html.contains("Predicted and measured: orders per second"));
}

#[test]
fn the_planner_answers_from_given_rates_without_a_server() {
    let out = tempfile::tempdir().expect("tempdir");
    let out_dir = out.path().join("plan");
    let output = load(&[
        "--out",
        out_dir.to_str().expect("a UTF-8 path"),
        "plan",
        "--orders",
        "10000",
        "--payment-latency-ms",
        "1400",
        "--slo-s",
        "3",
        "--service-rate",
        "2000",
        "--base-latency-ms",
        "50",
        "--phase-share",
        "0.6",
        "--cores",
        "2",
    ]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let start = stdout.find('{').expect("the plan as JSON");
    let end = stdout.rfind('}').expect("its end");
    let json: Value = serde_json::from_str(&stdout[start..=end]).expect("JSON");
    // --out has the same plan.
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("plan.json")).expect("plan.json in --out"),
    )
    .expect("JSON");
    assert_eq!(written, json);
    // 10,000 / 2,000 = 5 s of CPU beats 1.4 + 10,000 x 0.3 ms: the longest is 5.05 s.
    let max = json["prediction"]["max_latency_s"].as_f64().unwrap();
    assert!((max - 5.05).abs() < 1e-9, "{json}");
    assert_eq!(json["prediction"]["meets_slo"], false);
    assert_eq!(json["calibrated"], false);
    assert!(json["prediction"]["required_cores"].as_u64().unwrap() >= 4);
}

#[test]
fn throughput_measures_the_durable_node_the_volatile_one_and_a_bare_endpoint() {
    let (report, html, _out) = run_spawned(&[
        "throughput",
        "--connections",
        "8",
        "--seconds",
        "1",
        "--warmup-s",
        "0",
    ]);
    let section = &report["throughput"];
    assert_eq!(count(section, "connections"), 8);
    for run in ["durable", "durability_none", "bare"] {
        let run = &section[run];
        // A rate above zero, never a limit: the machine is shared and noisy.
        assert!(
            run["created_per_s"].as_f64().is_some_and(|rate| rate > 0.0),
            "{run}"
        );
        assert_eq!(count(run, "transport_errors"), 0, "{run}");
        assert_eq!(count(run, "orders"), count(run, "created"), "{run}");
        assert!(run["latency_ms"]["p99"].as_f64().is_some(), "{run}");
        assert_eq!(run["exit"], "exit status: 0", "{run}");
    }
    for run in ["durable", "durability_none"] {
        let invariants = &section[run]["invariants"];
        assert_eq!(invariants["hold"], true, "{invariants}");
        assert_eq!(
            count(invariants, "sold"),
            count(&section[run], "created"),
            "{invariants}"
        );
    }
    assert!(section["bare"]["invariants"].is_null());
    let rate = |run: &str| section[run]["created_per_s"].as_f64().expect("a rate");
    let ratio = section["ratio_durable_to_bare"]
        .as_f64()
        .expect("the ratio");
    assert!(
        (ratio - rate("durable") / rate("bare")).abs() < 1e-3,
        "{section}"
    );
    assert!(section["ratio_durable_to_none"].as_f64().is_some());
    assert!(html.contains("Throughput") && html.contains("<svg"));
}

#[test]
fn throughput_needs_spawn() {
    let out = tempfile::tempdir().expect("temp dir");
    let output = load(&[
        "throughput",
        "--out",
        out.path().to_str().expect("utf-8 path"),
        "--admin-token",
        "t",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("throughput needs --spawn"));
}

#[test]
fn a_flash_sale_sells_each_seat_once_and_every_subscriber_sees_every_change() {
    let (report, html, _out) = run_spawned(&[
        "flash-sale",
        "--sections",
        "1",
        "--rows",
        "20",
        "--seats-per-row",
        "30",
        "--buyers",
        "150",
        "--subscribers",
        "8",
        "--group-max",
        "2",
        "--decline-share",
        "0.1",
        "--cancel-share",
        "0.1",
        "--abandon-share",
        "0.1",
        "--late-share",
        "0.1",
        "--think-ms",
        "100",
        "--hold-ttl-s",
        "1",
    ]);
    let sale = &report["flash_sale"];
    assert_eq!(sale["invariants"]["hold"], true, "{sale}");
    assert_eq!(count(&sale["invariants"], "capacity"), 600);
    assert_eq!(count(&sale["invariants"], "held"), 0, "every hold ended");
    let sold = count(&sale["invariants"], "sold");
    assert_eq!(count(sale, "seats_sold"), sold);
    let buyers = sale["buyers"].as_object().expect("buyers by ending");
    let total: u64 = buyers.values().map(|n| n.as_u64().expect("a count")).sum();
    assert_eq!(total, 150, "every buyer's visit ended once: {buyers:?}");
    // Every intent happened, and nothing ended in an unexpected answer.
    for ending in [
        "bought",
        "card declined",
        "cancelled",
        "walked away (hold expired)",
        "came back late (410 hold_expired)",
    ] {
        assert!(
            buyers.get(ending).and_then(Value::as_u64).unwrap_or(0) > 0,
            "{ending} in {buyers:?}"
        );
    }
    let expected_endings = [
        "bought",
        "card declined",
        "cancelled",
        "walked away (hold expired)",
        "came back late (410 hold_expired)",
        "gave up: seats taken",
        "gave up: nothing free",
    ];
    for ending in buyers.keys() {
        assert!(
            expected_endings.contains(&ending.as_str()),
            "ended: {ending}"
        );
    }
    let bought = buyers["bought"].as_u64().expect("a count");
    assert!(sold >= bought, "one seat or more per purchase");
    let holds = &sale["requests"]["hold"]["answers"];
    assert!(count(holds, "201") > 0, "{holds}");
    let feed = &sale["feed"];
    let changes = count(feed, "changes_expected");
    assert!(
        changes >= 2 * sold,
        "each sold seat was held, then sold: {feed}"
    );
    assert_eq!(count(feed, "changes_seen_min"), changes, "{feed}");
    assert_eq!(count(feed, "changes_seen_max"), changes, "{feed}");
    assert!(feed["delivery_ms"]["p50"].as_f64().is_some(), "{feed}");
    assert_eq!(report["spawned"]["runs"][0]["exit"], "exit status: 0");
    assert!(html.contains("Flash sale: 600 seats"), "the HTML report");
    assert!(html.contains("<svg"), "with charts");
}

#[test]
fn a_flash_sale_with_impossible_shares_or_too_many_seats_is_refused() {
    let binary = boxoffice_binary();
    let spawn = binary.to_str().expect("utf-8 path");
    for (args, complaint) in [
        (
            vec![
                "flash-sale",
                "--decline-share",
                "0.6",
                "--cancel-share",
                "0.6",
            ],
            "add up to 1",
        ),
        (
            vec![
                "flash-sale",
                "--sections",
                "26",
                "--rows",
                "100",
                "--seats-per-row",
                "100",
            ],
            "at most 100000",
        ),
        (
            vec!["flash-sale", "--think-ms", "2000", "--hold-ttl-s", "2"],
            "not shorter than the hold",
        ),
    ] {
        let out = tempfile::tempdir().expect("temp dir");
        let mut all = args.clone();
        all.extend([
            "--spawn",
            spawn,
            "--out",
            out.path().to_str().expect("utf-8"),
        ]);
        let output = load(&all);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(complaint), "{args:?}: {stderr}");
    }
}

/// The orders of a report's `targets` or `nodes` entry: `(orders, ok_201)`.
fn orders_and_ok(entry: &Value) -> (u64, u64) {
    (count(entry, "orders"), count(entry, "ok_201"))
}

#[test]
fn a_burst_through_a_cluster_and_a_front_is_executed_by_every_node() {
    let (report, html, out) = run_spawned(&[
        "burst",
        "--users",
        "300",
        "--spawn-cluster",
        "3",
        "--fronts",
        "1",
    ]);
    assert_eq!(count(&report, "orders"), 300);
    assert_eq!(count(&report, "ok"), 300, "{report}");
    assert_eq!(report["invariants"]["hold"], true, "{report}");
    assert_eq!(count(&report["invariants"], "sold"), 300);
    // One front: every order went through it.
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 1, "{report}");
    assert_eq!(orders_and_ok(&targets[0]), (300, 300));
    for field in ["conflict_409", "unavailable_503", "errors"] {
        assert_eq!(count(&targets[0], field), 0, "{field}");
    }
    // Three nodes, each executing the orders of its own users, as its own /metrics counted them.
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{report}");
    let mut total = 0;
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(count(node, "node"), index as u64);
        let (orders, ok) = orders_and_ok(node);
        assert!(orders > 0, "node {index} got no buyer: {report}");
        assert_eq!(ok, orders, "{node}");
        assert_eq!(
            count(&node["coordinated"], "confirmed"),
            orders,
            "the node coordinated its users' orders: {node}"
        );
        assert!(
            node["url"]
                .as_str()
                .is_some_and(|url| url.starts_with("http://127.0.0.1:"))
        );
        total += orders;
    }
    assert_eq!(total, 300, "every order accounted for once");
    let processes: Vec<&str> = report["spawned"]["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| {
            assert_eq!(run["exit"], "exit status: 0", "{run}");
            run["process"].as_str().expect("a name")
        })
        .collect();
    assert_eq!(processes, ["node 0", "node 1", "node 2", "front 0"]);
    for log in ["node-0.log", "node-1.log", "node-2.log", "front-0.log"] {
        assert!(out.path().join(log).is_file(), "{log}");
    }
    let samples = std::fs::read_to_string(out.path().join("samples.csv")).expect("samples.csv");
    assert_eq!(samples.lines().count(), 1 + 300);
    assert!(html.contains("By the shard node"));
}

#[test]
fn a_burst_in_two_client_processes_merges_every_order() {
    let (report, html, out) = run_spawned(&[
        "burst",
        "--users",
        "200",
        "--client-processes",
        "2",
        "--payment-latency-ms",
        "50",
    ]);
    assert_eq!(count(&report, "client_processes"), 2);
    assert_eq!(count(&report, "orders"), 200);
    assert_eq!(count(&report, "ok"), 200, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
    assert_eq!(report["invariants"]["hold"], true, "{report}");
    // No order is answered before its charge is, timed from the common start.
    assert!(report["latency_ms"]["min"].as_f64().expect("min") >= 50.0);
    let samples = std::fs::read_to_string(out.path().join("samples.csv")).expect("samples.csv");
    let lines: Vec<&str> = samples.lines().skip(1).collect();
    assert_eq!(lines.len(), 200);
    assert!(lines.iter().all(|line| line.contains(",ok,")), "{samples}");
    assert!(html.contains("client processes"));
}

/// Starts `boxoffice serve` on a free port with `admin_token`; its base URL, once `/health` answers 200.
fn start_node(admin_token: &str, data_dir: &std::path::Path) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(boxoffice_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("BOXOFFICE_ADMIN_TOKEN", admin_token)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start boxoffice");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the address line");
    // Keeps draining stdout, so that the node never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let base = line
        .trim()
        .strip_prefix("boxoffice listening on ")
        .expect("the address")
        .to_owned();
    let address = base.strip_prefix("http://").expect("http").to_owned();
    for _ in 0..600 {
        let healthy = std::net::TcpStream::connect(&address).and_then(|mut stream| {
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer.starts_with("HTTP/1.1 200"))
        });
        if healthy.unwrap_or(false) {
            return (child, base);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the node never became healthy");
}

#[test]
fn a_burst_over_two_targets_spreads_its_connections() {
    let data = tempfile::tempdir().expect("temp dir");
    let token = "scenarios-test-admin-token-0123456789abcdef";
    let (mut node, base) = start_node(token, data.path());
    // The same node under two names: two targets to the client.
    let port = base.rsplit(':').next().expect("a port");
    let targets = format!("{base},http://localhost:{port}");
    let out = tempfile::tempdir().expect("temp dir");
    let output = load(&[
        "burst",
        "--users",
        "100",
        "--target",
        &targets,
        "--admin-token",
        token,
        "--out",
        out.path().to_str().expect("utf-8"),
    ]);
    let _ = node.kill();
    let _ = node.wait();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    assert_eq!(count(&report, "ok"), 100, "{report}");
    assert_eq!(report["invariants"]["hold"], true);
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["url"], base.as_str());
    assert_eq!(targets[1]["url"], format!("http://localhost:{port}"));
    assert_eq!(orders_and_ok(&targets[0]), (50, 50));
    assert_eq!(orders_and_ok(&targets[1]), (50, 50));
    assert!(report["nodes"].is_null(), "a single node has no node list");
}

#[test]
fn throughput_compares_a_cluster_with_one_node_and_measures_a_hop() {
    let (report, html, _out) = run_spawned(&[
        "throughput",
        "--spawn-cluster",
        "2",
        "--runs",
        "durable,cluster,hop",
        "--connections",
        "4",
        "--seconds",
        "1",
        "--warmup-s",
        "0",
    ]);
    let section = &report["throughput"];
    for run in ["durable", "cluster"] {
        let run = &section[run];
        assert!(
            run["created_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{run}"
        );
        assert_eq!(count(run, "orders"), count(run, "created"), "{run}");
        assert_eq!(run["invariants"]["hold"], true, "{run}");
        assert!(
            run["cpu_us_per_order"].as_f64().is_some_and(|us| us > 0.0),
            "{run}"
        );
    }
    assert!(
        section["cluster"]["exit"]
            .as_str()
            .unwrap()
            .contains("node 1: exit status: 0")
    );
    let ratio = section["ratio_cluster_to_durable"].as_f64().expect("ratio");
    let rate = |run: &str| section[run]["created_per_s"].as_f64().unwrap();
    assert!(
        (ratio - rate("cluster") / rate("durable")).abs() < 1e-3,
        "{section}"
    );
    assert!(section["durability_none"].is_null() && section["bare"].is_null());
    let hop = &section["hop"];
    assert_eq!(count(hop, "nodes"), 2);
    assert_eq!(hop["invariants"]["hold"], true, "{hop}");
    for run in ["direct", "forwarded", "direct_alone", "forwarded_alone"] {
        let run = &hop[run];
        assert!(count(run, "created") > 0, "{run}");
        assert_eq!(count(run, "orders"), count(run, "created"), "{run}");
    }
    for figure in [
        "rate_ratio",
        "cpu_us_added",
        "cpu_share_added",
        "latency_ms_added",
    ] {
        assert!(hop[figure].as_f64().is_some(), "{figure}: {hop}");
    }
    assert!(html.contains("forwarding hop"));
}

#[test]
fn the_planner_sizes_a_cluster_with_the_cost_of_forwarding_given() {
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--orders",
            "20000",
            "--payment-latency-ms",
            "0",
            "--slo-s",
            "4",
            "--service-rate",
            "2000",
            "--base-latency-ms",
            "50",
            "--cores",
            "2",
        ];
        args.extend(extra);
        let output = load(&args);
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let json: Value = serde_json::from_str(&stdout[stdout.find('{').expect("JSON")..])
            .expect("the plan as JSON");
        json
    };
    let plain = plan(&[]);
    assert_eq!(plain["prediction"]["required_nodes"], 3);
    // A forwarded order costs half an order more: 4 nodes (model.rs's unit test has the arithmetic).
    let forwarding = plan(&["--forward-cpu-share", "0.5", "--hop-latency-ms", "20"]);
    assert_eq!(
        forwarding["prediction"]["required_nodes"], 4,
        "{forwarding}"
    );
    assert_eq!(forwarding["calibration"]["forward_cpu_share"], 0.5);
}
