//! `imagegate explain` against a test daemon (its status socket at `dir/status.sock`): the
//! text, the JSON document and the exit code, and the checks the end-to-end suites share.

use std::{path::Path, process::Command};

use serde_json::Value;

/// What one `imagegate explain` printed, and its exit code.
pub struct Explained {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Explained {
    /// The JSON document it printed (`--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("explain's JSON does not parse ({e}): {}", self.stdout))
    }
}

/// `imagegate explain --socket DIR/status.sock [EXTRA...] TARGET`.
pub fn run(dir: &Path, target: &str, extra: &[&str]) -> Explained {
    let out = Command::new(super::daemon::imagegate_bin())
        .args(["explain", "--socket"])
        .arg(dir.join("status.sock"))
        .args(extra)
        .arg(target)
        .output()
        .expect("run imagegate explain");
    Explained {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The text explanation of `target`, asserted answered (exit 0).
pub fn text(dir: &Path, target: &str) -> String {
    let explained = run(dir, target, &[]);
    eprintln!("imagegate explain {target}:\n{}", explained.stdout);
    assert_eq!(
        explained.code, 0,
        "explain {target}: {} {}",
        explained.stdout, explained.stderr
    );
    explained.stdout
}

/// The JSON explanation of `target`, asserted answered (exit 0) by the daemon.
pub fn json(dir: &Path, target: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    let explained = run(dir, target, &args);
    assert_eq!(
        explained.code, 0,
        "explain {target}: {} {}",
        explained.stdout, explained.stderr
    );
    let json = explained.json();
    assert_eq!(json["answered_by"], "daemon", "{json}");
    json
}

/// A denied container of an unsigned image, explained: its image and manifest digest, the
/// scope and its mode, the verdict untrusted for want of a signature, and the denial of
/// `path` (reason `untrusted_image`), in the text and in the JSON document alike.
pub fn assert_unsigned_denied(
    dir: &Path,
    container: &str,
    image: &str,
    digest: &str,
    scope: &str,
    path: &str,
) -> Value {
    let text = text(dir, container);
    for expected in [
        format!("container {container} "),
        format!("created from: {image}"),
        format!("image {image} "),
        format!("manifest digest: {digest}"),
        format!("policy scope: {scope} (mode enforce)"),
        "verdict: UNTRUSTED: no signatures found (looked in the OCI 1.1 referrers API".to_owned(),
        "effect: denied".to_owned(),
        "signatures: none found".to_owned(),
        format!("denied exec of {path} "),
        "untrusted_image (the container's image is not trusted".to_owned(),
        "answered by the running daemon".to_owned(),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
    }
    let json = json(dir, container, &[]);
    assert_eq!(json["container"]["id"], container, "{json}");
    assert_eq!(json["container"]["image"], image, "{json}");
    let judged = &json["images"][0];
    assert_eq!(judged["reference"], image, "{json}");
    assert_eq!(judged["manifest_digest"], digest, "{json}");
    assert_eq!(judged["scope"], scope, "{json}");
    assert_eq!(judged["mode"], "enforce", "{json}");
    assert_eq!(judged["verdict"], "untrusted", "{json}");
    assert_eq!(judged["signatures"], Value::Array(Vec::new()), "{json}");
    assert!(
        judged["notes"]
            .as_array()
            .is_some_and(|notes| notes.iter().any(|n| n == "no signatures found")),
        "{json}"
    );
    let denials = json["denials"].as_array().expect("denials");
    assert!(
        denials.iter().any(|d| d["reason"] == "untrusted_image"
            && d["verdict"] == "denied"
            && d["path"] == path
            && d["time"].as_f64().is_some_and(|t| t > 0.0)),
        "{json}"
    );
    json
}

/// `explain --output json` of `target`: `image` judged trusted at `digest`, and its accepted
/// signature (with the whole answer, for messages).
fn accepted_signature(
    dir: &Path,
    target: &str,
    image: &str,
    digest: &str,
) -> (serde_json::Value, serde_json::Value) {
    let json = json(dir, target, &[]);
    let judged = json["images"]
        .as_array()
        .and_then(|images| images.iter().find(|i| i["reference"] == image))
        .unwrap_or_else(|| panic!("{image} not explained: {json}"));
    assert_eq!(judged["verdict"], "trusted", "{json}");
    assert_eq!(judged["manifest_digest"], digest, "{json}");
    let accepted = judged["signatures"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["accepted"] == true))
        .unwrap_or_else(|| panic!("no accepted signature: {json}"))
        .clone();
    (json, accepted)
}

/// A trusted container (or image) explained: signed by the policy's key authority `authority`,
/// the signature found in the legacy `.sig` tag and accepted, in text and JSON.
pub fn assert_signed(dir: &Path, target: &str, image: &str, digest: &str, authority: &str) {
    let text = text(dir, target);
    for expected in [
        format!("manifest digest: {digest}"),
        format!("verdict: TRUSTED: signature accepted by {authority}"),
        format!("in the legacy .sig tag, authority {authority} (policy key sha256:"),
        format!("accepted by {authority}: signed with key"),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
    }
    let (json, accepted) = accepted_signature(dir, target, image, digest);
    let accepted = &accepted;
    assert_eq!(accepted["authority"], authority, "{json}");
    assert_eq!(accepted["found_in"], "legacy_sig_tag", "{json}");
    assert!(
        accepted["authority_kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("policy key sha256:")),
        "{json}"
    );
    assert_eq!(accepted["signer"]["kind"], "key", "{json}");
}

/// The status socket's protocol: a client that sends nothing (and keeps its sending side open)
/// still gets the status document once the daemon's request wait is over; a request line the
/// daemon does not understand gets an error answer.
pub fn assert_socket_protocol(dir: &Path) {
    use std::io::{Read as _, Write as _};
    let socket = dir.join("status.sock");
    let mut silent = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut body = String::new();
    silent.read_to_string(&mut body).expect("read status");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    assert!(status["backend"].is_string(), "{status}");
    let mut asking = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    asking
        .write_all(b"{\"request\":\"reboot\"}\n")
        .expect("write");
    asking
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut body = String::new();
    asking.read_to_string(&mut body).expect("read answer");
    let answer: Value = serde_json::from_str(&body).expect("answer JSON");
    assert_eq!(answer["answer"], "error", "{answer}");
}

/// A trusted container (or image) explained whose signature is a sigstore bundle found through
/// the `sha256-<hex>` referrers tag (Debian's docker-registry has no referrers API), accepted by
/// the keyless authority `authority` for `identity` (issuer `issuer`) and vouched for by a
/// Rekor v2 entry of `entry` (`dsse/0.0.2`) whose checkpoint `witness` cosigned, and an RFC 3161
/// timestamp, in text and JSON. Returns the accepted signature's JSON.
pub fn assert_signed_by_rekor_v2_bundle(
    dir: &Path,
    target: &str,
    image: &str,
    digest: &str,
    authority: &str,
    (identity, issuer): (&str, &str),
    (entry, witness): (&str, &str),
) -> Value {
    let text = text(dir, target);
    for expected in [
        format!("manifest digest: {digest}"),
        format!("verdict: TRUSTED: signature accepted by {authority}"),
        format!(
            "in the sha256-<hex> referrers tag, authority {authority} (keyless identity {identity} (issuer {issuer})): \
             accepted by {authority}: signed by {identity} (issuer {issuer}); vouched for by Rekor v2 entry {entry} \
             at log index "
        ),
        format!(
            "(inclusion proof to a checkpoint signed by the log, cosigned by witness {witness}); \
             RFC 3161 timestamp "
        ),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
    }
    let (json, accepted) = accepted_signature(dir, target, image, digest);
    assert_eq!(accepted["authority"], authority, "{json}");
    assert_eq!(accepted["found_in"], "referrers_tag", "{json}");
    assert!(
        accepted["authority_kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("keyless identity ")),
        "{json}"
    );
    assert_eq!(accepted["signer"]["kind"], "certificate", "{json}");
    assert_eq!(
        accepted["signer"]["subjects"],
        serde_json::json!([identity]),
        "{json}"
    );
    assert_eq!(accepted["signer"]["issuer"], issuer, "{json}");
    assert_rekor_v2_evidence(&accepted["evidence"], entry);
    assert!(
        accepted["evidence"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["witnessed_by"] == serde_json::json!([witness]))),
        "{json}"
    );
    accepted
}

/// `evidence` (a verdict reason's, or an explained signature's) is a Rekor v2 entry of `entry`
/// proven by its inclusion proof (no SET, no integrated time) and one RFC 3161 timestamp taken
/// within the last ten minutes.
pub fn assert_rekor_v2_evidence(evidence: &Value, entry: &str) {
    let list = evidence
        .as_array()
        .unwrap_or_else(|| panic!("no evidence: {evidence}"));
    let tlog = list
        .iter()
        .find(|e| e["kind"] == "tlog")
        .unwrap_or_else(|| panic!("no log entry: {evidence}"));
    assert_eq!(tlog["rekor"], 2, "{evidence}");
    assert_eq!(tlog["entry"], entry, "{evidence}");
    assert_eq!(tlog["inclusion_proof"], true, "{evidence}");
    assert!(tlog["integrated_time"].is_null(), "{evidence}");
    assert!(
        tlog["log_index"].as_i64().is_some_and(|i| i >= 0),
        "{evidence}"
    );
    let times: Vec<i64> = list
        .iter()
        .filter(|e| e["kind"] == "timestamp")
        .filter_map(|e| e["time"].as_i64())
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        matches!(times.as_slice(), [t] if (now - 600..=now + 60).contains(t)),
        "{evidence}"
    );
}
