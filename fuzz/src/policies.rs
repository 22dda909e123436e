//! Policy files: imagegate's TOML format and containers-policy.json, parsed as if they lay in
//! `tests/fixtures/policy` (so relative key and trust paths in the seeds resolve to real files).
//!
//! Invariants: parsing is deterministic (same hash, same scopes), every accepted scope pattern
//! can be matched against, and nothing is accepted unsigned unless the file says so in its own
//! words (`require = "accept"`, `insecureAcceptAnything`): no silent allow.

use std::path::PathBuf;

use imagegate::policy::{containers, file, Policy, Requirement};
use imagegate::verify::ImageRef;
use serde_json::Value;

use super::{files_in, fixtures};

fn policy_path(name: &str) -> PathBuf {
    fixtures().join("policy").join(name)
}

/// References every accepted policy is asked about.
const IMAGES: &[&str] = &[
    "busybox",
    "docker.io/library/busybox:latest",
    "ghcr.io/kubewarden/kubewarden-controller@sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172",
    "192.168.64.2:5000/cosign-signed/multi-signature",
    "mirror.example.com/library/alpine",
    "localhost/x",
];

fn accepts_unsigned(policy: &Policy) -> bool {
    std::iter::once(&policy.default)
        .chain(policy.scopes.iter().map(|(_, rule)| rule))
        .any(|rule| matches!(rule.requirement, Requirement::Accept))
}

fn check_policy(policy: &Policy, again: &Policy) {
    assert_eq!(policy.hash, again.hash, "parsing is not deterministic");
    assert_eq!(policy.scopes.len(), again.scopes.len());
    for image in IMAGES {
        let image = ImageRef::parse(image).expect("a valid reference");
        let rule = policy.rule_for(&image);
        assert_eq!(rule.scope, again.rule_for(&image).scope);
    }
}

/// Whether a TOML table anywhere says `require = "accept"`.
fn says_accept_toml(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(table) => table.iter().any(|(key, value)| {
            (key == "require" && value.as_str() == Some("accept")) || says_accept_toml(value)
        }),
        toml::Value::Array(items) => items.iter().any(says_accept_toml),
        _ => false,
    }
}

pub fn check_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = policy_path("fuzz.toml");
    let Ok(policy) = file::parse(&path, text) else {
        return;
    };
    let again = file::parse(&path, text).expect("the same text parses again");
    check_policy(&policy, &again);
    if accepts_unsigned(&policy) {
        let value: toml::Value = toml::from_str(text).expect("an accepted policy is TOML");
        assert!(
            says_accept_toml(&value),
            "a policy that never says require = \"accept\" accepts unsigned images"
        );
    }
}

/// Whether a JSON object anywhere says `"type": "insecureAcceptAnything"`.
fn says_accept_json(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(key, value)| {
            (key == "type" && value == "insecureAcceptAnything") || says_accept_json(value)
        }),
        Value::Array(items) => items.iter().any(says_accept_json),
        _ => false,
    }
}

pub fn check_containers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = policy_path("fuzz.json");
    let Ok(policy) = containers::parse(&path, text) else {
        return;
    };
    let again = containers::parse(&path, text).expect("the same text parses again");
    check_policy(&policy, &again);
    if accepts_unsigned(&policy) {
        let value: Value = serde_json::from_str(text).expect("an accepted policy is JSON");
        assert!(
            says_accept_json(&value),
            "a policy without insecureAcceptAnything accepts unsigned images"
        );
    }
}

fn seeds_with_extension(extension: &str, inline: &[&str]) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = files_in(&fixtures().join("policy"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .filter_map(|path| std::fs::read(path).ok())
        .collect();
    seeds.extend(inline.iter().map(|text| text.as_bytes().to_vec()));
    seeds
}

pub fn toml_seeds() -> Vec<Vec<u8>> {
    seeds_with_extension(
        "toml",
        &[
            "version = 1\n[default]\nrequire = \"reject\"\n",
            "version = 1\n[default]\nrequire = \"accept\"\nmode = \"audit\"\n[[scope]]\nmatch = \"docker.io\"\nrequire = \"reject\"\n",
            "version = 1\n[trust.t]\ntrusted_root = \"../testvectors/trust/sigstore-public-good/trusted_root.json\"\n[default]\nrequire = \"signatures\"\nthreshold = 1\n[[default.keyless]]\ntrust = \"t\"\nissuer_regex = \".*\"\nsubject = \"a@b\"\n",
        ],
    )
}

pub fn containers_seeds() -> Vec<Vec<u8>> {
    seeds_with_extension(
        "json",
        &[
            r#"{"default":[{"type":"reject"}]}"#,
            r#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"docker.io":[{"type":"reject"}]}}}"#,
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io/x":[{"type":"sigstoreSigned","keyPath":"../testvectors/trust/containers-image/cosign.pub","signedIdentity":{"type":"matchRepository"}}]}}}"#,
        ],
    )
}
