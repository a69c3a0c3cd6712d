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
