//! `--allow-remote-target` (its own process: the switch is process-wide). Nothing here connects anywhere: only
//! how targets are read is checked.

use scenarios::client::{allow_remote_targets, parse_targets};

#[test]
fn remote_targets_are_refused_until_allowed_and_then_read() {
    let refused = parse_targets("http://10.1.2.3:8080").expect_err("loopback only by default");
    assert!(refused.contains("--allow-remote-target"), "{refused}");
    allow_remote_targets();
    assert_eq!(
        parse_targets("http://10.1.2.3:8080,http://127.0.0.1:9/").expect("allowed"),
        ["http://10.1.2.3:8080", "http://127.0.0.1:9"]
    );
    assert!(
        parse_targets("http://10.1.2.3:8080/path").is_err(),
        "a path"
    );
    assert!(
        parse_targets("https://10.1.2.3").is_err(),
        "plain HTTP only"
    );
}
