//! Talking to a running `imagegate daemon` in end-to-end tests: its status socket and its
//! JSON-lines event log.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

/// `imagegate status` against the daemon whose status socket is `dir/status.sock`; `None`
/// until it answers.
pub fn status(dir: &Path) -> Option<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .args(["status", "--socket"])
        .arg(dir.join("status.sock"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Every decision event logged so far.
pub fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The first logged event matching `what`, waited for up to 10 s.
pub fn wait_for_event(path: &Path, what: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        if let Some(event) = events(path).into_iter().find(|e| what(e)) {
            return event;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no such event in {:?}",
            events(path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a decision event names image `name` among the images holding its layer.
pub fn names_image(event: &Value, name: &str) -> bool {
    event["images"]
        .as_array()
        .is_some_and(|images| images.iter().any(|i| i["image"]["name"] == name))
}
