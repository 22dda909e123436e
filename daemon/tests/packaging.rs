//! What operators install: the systemd unit (`systemd-analyze verify`, and that it grants what
//! the daemon's configuration needs), the Kubernetes manifests (they parse, carry the mounts,
//! probes and settings, and their config and policy load), and the Helm chart (rendered with a
//! renderer for its template subset: by default it renders the plain manifests; its values set
//! mode, policy and keys). The Debian package is built, installed and purged by `cargo xtask
//! test` (xtask/src/package.rs).
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod chart_render;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine as _;
use imagegate::config::Config;
use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------------------------------------------------------------- systemd

/// `key → values` of a unit file (a key may repeat; values keep their order).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        out.entry(format!("{section}.{key}"))
            .or_default()
            .push(value.to_owned());
    }
    out
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("packaging/systemd/imagegate.service")).unwrap()
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    // verify checks that ExecStart's binary exists: point it at the one just built (the Debian
    // package test verifies the installed unit with the installed binary).
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("imagegate.service");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/bin/imagegate", env!("CARGO_BIN_EXE_imagegate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // It exits 0 on unknown keys and bad values too, with a warning: none may be printed.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("imagegate.service"))
        .collect();
    assert!(
        warnings.is_empty(),
        "systemd-analyze verify warns: {warnings:?}"
    );

    // And it does warn on a misspelt key: the check above can fail.
    std::fs::write(
        &unit,
        unit_text()
            .replace("Type=notify", "Typ=notify")
            .replace("/usr/bin/imagegate", env!("CARGO_BIN_EXE_imagegate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unknown key"),
        "{out:?}"
    );
}

#[test]
fn systemd_unit_is_notify_watchdog_ordered_and_grants_what_the_defaults_need() {
    let settings = unit_settings(&unit_text());
    let one = |key: &str| -> String {
        let values = settings.get(key).unwrap_or_else(|| panic!("{key} missing"));
        values.last().unwrap().clone()
    };
    let words = |key: &str| -> Vec<String> {
        settings
            .get(key)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(one("Service.Type"), "notify");
    assert_eq!(one("Service.Restart"), "always");
    assert!(one("Service.WatchdogSec").ends_with('s'));
    assert!(words("Unit.After").contains(&"containerd.service".to_owned()));
    assert!(words("Unit.Before").contains(&"kubelet.service".to_owned()));
    assert_eq!(
        one("Service.ExecStart"),
        format!(
            "/usr/bin/imagegate daemon --config {}",
            imagegate::config::DEFAULT_PATH
        )
    );

    // The capabilities: the ones the backends need, granted both ways, each known to libcap.
    let bounding = words("Service.CapabilityBoundingSet");
    assert_eq!(bounding, words("Service.AmbientCapabilities"));
    for needed in [
        "CAP_SYS_ADMIN",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_DAC_READ_SEARCH",
        "CAP_SYS_PTRACE",
    ] {
        assert!(
            bounding.contains(&needed.to_owned()),
            "{needed} not granted"
        );
    }
    for cap in &bounding {
        let ok = Command::new("capsh")
            .arg(format!("--supports={}", cap.to_lowercase()))
            .status()
            .expect("capsh (libcap2-bin)")
            .success();
        assert!(ok, "{cap} is not a capability libcap knows");
    }

    // The filesystem is read-only but for what the default configuration writes.
    assert_eq!(one("Service.ProtectSystem"), "strict");
    let defaults = Config::default();
    let state = Path::new("/var/lib").join(one("Service.StateDirectory"));
    assert_eq!(
        defaults.state_dir, state,
        "StateDirectory must be the default state_dir"
    );
    let run = Path::new("/run").join(one("Service.RuntimeDirectory"));
    assert_eq!(defaults.status_socket.parent(), Some(run.as_path()));
    let listen = imagegate::metrics::Listen::parse(&defaults.metrics_listen).unwrap();
    assert_eq!(
        listen,
        Some(imagegate::metrics::Listen::Unix(run.join("metrics.sock"))),
        "the default metrics socket lives in the RuntimeDirectory"
    );
    let writable = words("Service.ReadWritePaths");
    assert!(
        writable.iter().any(|p| defaults.pin_dir.starts_with(p)),
        "pin_dir {} not writable under {writable:?}",
        defaults.pin_dir.display()
    );
}

// ---------------------------------------------------------------- Kubernetes

/// Every document in the YAML files of `dir`, by (kind, name).
fn manifests(dir: &Path) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            add_documents(
                &std::fs::read_to_string(&path).unwrap(),
                &path.display().to_string(),
                &mut out,
            );
        }
    }
    out
}

fn add_documents(text: &str, origin: &str, out: &mut BTreeMap<(String, String), Value>) {
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = <Value as serde::Deserialize>::deserialize(document)
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        if value.is_null() {
            continue;
        }
        let kind = value["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{origin}: no kind"))
            .to_owned();
        let name = value["metadata"]["name"].as_str().unwrap().to_owned();
        out.insert((kind, name), value);
    }
}

fn get<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|((k, _), _)| k == kind)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

fn seq(value: &Value) -> &Vec<Value> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
}

/// Checks a DaemonSet + ConfigMap + Secret + ServiceAccount set; returns the parsed config.
fn check_node_agent(objects: &BTreeMap<(String, String), Value>, dir: &Path) -> Config {
    let daemonset = get(objects, "DaemonSet");
    let configmap = get(objects, "ConfigMap");
    let secret = get(objects, "Secret");
    let account = get(objects, "ServiceAccount");
    for object in [daemonset, configmap, secret, account] {
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/name"], "imagegate",
            "{object:?}"
        );
        assert!(object["metadata"]["labels"]["app.kubernetes.io/instance"].is_string());
    }

    // The config and policy the pod gets load, as the daemon loads them.
    let config_text = configmap["data"]["imagegate.toml"].as_str().unwrap();
    let config = Config::parse(Path::new("configmap/imagegate.toml"), config_text).unwrap();
    // The Secret's keys, where the pod would see them (/etc/imagegate/keys, here under dir).
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for (name, encoded) in secret["data"].as_mapping().unwrap() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap();
        std::fs::write(keys.join(name.as_str().unwrap()), decoded).unwrap();
    }
    let policy_path = dir.join("policy.toml");
    std::fs::write(
        &policy_path,
        configmap["data"]["policy.toml"]
            .as_str()
            .unwrap()
            .replace("/etc/imagegate/keys", keys.to_str().unwrap()),
    )
    .unwrap();
    imagegate::policy::Policy::load(&policy_path).unwrap();

    let pod = &daemonset["spec"]["template"]["spec"];
    let selector = daemonset["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    for (key, value) in selector {
        assert_eq!(
            &daemonset["spec"]["template"]["metadata"]["labels"][key],
            value
        );
    }
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert!(
        seq(&pod["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "must tolerate every taint"
    );
    let containers = seq(&pod["containers"]);
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(container["securityContext"]["privileged"], true);
    let args: Vec<&str> = seq(&container["args"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        ["daemon", "--config", imagegate::config::DEFAULT_PATH]
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    // Prometheus reaches the metrics port; the probes reach the health endpoints on a
    // listener of their own (its own connection budget: idle connections to the metrics port
    // cannot starve them), bound on the pod's address, where the kubelet probes.
    let tcp_port =
        |listen: &str, what: &str| match imagegate::metrics::Listen::parse(listen).unwrap() {
            Some(imagegate::metrics::Listen::Tcp(addr)) => {
                assert!(
                    addr.ip().is_unspecified(),
                    "{what} must be on the pod's address for its clients, not {addr}"
                );
                addr.port()
            }
            other => panic!("{what} needs TCP, not {other:?}"),
        };
    let metrics_port = tcp_port(&config.metrics_listen, "metrics_listen");
    let health_port = tcp_port(&config.health_listen, "health_listen");
    assert_ne!(metrics_port, health_port);
    let port_named = |name: &str| {
        seq(&container["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("a port named {name}"))["containerPort"]
            .as_u64()
    };
    assert_eq!(port_named("metrics"), Some(u64::from(metrics_port)));
    assert_eq!(port_named("health"), Some(u64::from(health_port)));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "health");

    // Mounts: host paths, where they land, read-only where they must be.
    let volumes: BTreeMap<&str, &Value> = seq(&pod["volumes"])
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mount_at = |path: &Path| -> (&Value, &Value) {
        let mount = seq(&container["volumeMounts"])
            .iter()
            .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == path)
            .unwrap_or_else(|| panic!("nothing mounted at {}", path.display()));
        (mount, volumes[mount["name"].as_str().unwrap()])
    };
    let host_path = |path: &str, read_only: bool| {
        let (mount, volume) = mount_at(Path::new(path));
        assert_eq!(volume["hostPath"]["path"], path, "{path} is the host's");
        assert_eq!(
            mount["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{path} readOnly"
        );
        mount
    };
    assert_eq!(
        host_path("/sys/fs/bpf", false)["mountPropagation"],
        "Bidirectional"
    );
    assert!(config.pin_dir.starts_with("/sys/fs/bpf"));
    host_path("/sys/kernel/security", true);
    host_path("/sys/kernel/btf", true);
    let root = config.containerd.root.to_str().unwrap();
    assert_eq!(host_path(root, true)["mountPropagation"], "HostToContainer");
    let socket_dir = config.containerd.socket.parent().unwrap().to_str().unwrap();
    assert_eq!(
        host_path(socket_dir, false)["mountPropagation"],
        "HostToContainer"
    );
    host_path(config.state_dir.to_str().unwrap(), false);
    host_path(
        config.status_socket.parent().unwrap().to_str().unwrap(),
        false,
    );
    let (mount, volume) = mount_at(Path::new(imagegate::config::DEFAULT_PATH));
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    assert_eq!(mount["subPath"], "imagegate.toml");
    let (mount, volume) = mount_at(&config.policy);
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    assert_eq!(mount["subPath"], "policy.toml");
    let (mount, volume) = mount_at(Path::new("/etc/imagegate/keys"));
    assert_eq!(volume["secret"]["secretName"], secret["metadata"]["name"]);
    assert_eq!(mount["readOnly"], true);
    config
}

/// The NetworkPolicy selects the DaemonSet's pods and admits ingress only from the scraper's
/// namespace (and pods, when given), only to the metrics port.
fn check_network_policy(
    objects: &BTreeMap<(String, String), Value>,
    namespace: &str,
    pod_labels: Option<&Value>,
) {
    let policy = get(objects, "NetworkPolicy");
    let daemonset = get(objects, "DaemonSet");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        daemonset["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        seq(&policy["spec"]["policyTypes"]),
        &vec![Value::from("Ingress")]
    );
    let ingress = seq(&policy["spec"]["ingress"]);
    assert_eq!(ingress.len(), 1, "one rule: the scraper");
    let from = seq(&ingress[0]["from"]);
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        namespace
    );
    match pod_labels {
        Some(labels) => assert_eq!(&from[0]["podSelector"]["matchLabels"], labels),
        None => assert!(from[0].get("podSelector").is_none()),
    }
    let ports = seq(&ingress[0]["ports"]);
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["port"], "metrics", "only the metrics port");
}

#[test]
fn kubernetes_manifests_carry_the_mounts_probes_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let objects = manifests(&repo().join("packaging/kubernetes"));
    let namespace = get(&objects, "Namespace")["metadata"]["name"].clone();
    for ((kind, _), object) in &objects {
        if kind != "Namespace" {
            assert_eq!(object["metadata"]["namespace"], namespace, "{kind}");
        }
    }
    let config = check_node_agent(&objects, dir.path());
    assert_eq!(
        config.mode,
        imagegate::enforce::Mode::Audit,
        "roll out in audit first"
    );
    check_network_policy(&objects, "monitoring", None);
}

#[test]
fn helm_network_policy_follows_its_values() {
    let objects = render(
        "networkPolicy:\n  scraperNamespace: prom\n  scraperPodLabels:\n    app: prometheus\nhealthPort: 9777\n",
    );
    let labels: Value = serde_yaml::from_str("app: prometheus").unwrap();
    check_network_policy(&objects, "prom", Some(&labels));
    let dir = tempfile::tempdir().unwrap();
    let config = check_node_agent(&objects, dir.path());
    assert_eq!(config.health_listen, "0.0.0.0:9777");
    let objects = render("networkPolicy:\n  enabled: false\n");
    assert!(!objects.keys().any(|(kind, _)| kind == "NetworkPolicy"));
}

// ---------------------------------------------------------------- Helm

fn chart() -> chart_render::Chart {
    chart_render::Chart::load(&repo().join("packaging/helm/imagegate")).unwrap()
}

fn render(overrides: &str) -> BTreeMap<(String, String), Value> {
    let overrides: Value = serde_yaml::from_str(overrides).unwrap();
    let rendered = chart()
        .render("imagegate", "imagegate", &overrides)
        .unwrap();
    let mut out = BTreeMap::new();
    for (name, text) in rendered {
        if name.ends_with(".yaml") {
            add_documents(&text, &name, &mut out);
        }
    }
    out
}

/// Removes the labels only Helm adds.
fn strip_helm_labels(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            map.remove("helm.sh/chart");
            map.remove("app.kubernetes.io/managed-by");
            for (_, v) in map.iter_mut() {
                strip_helm_labels(v);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(strip_helm_labels),
        _ => {}
    }
}

/// Trailing blanks on lines and at the end do not change a config or policy.
fn normalized(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_owned()
}

#[test]
fn helm_chart_renders_the_plain_manifests_by_default() {
    let plain = manifests(&repo().join("packaging/kubernetes"));
    let rendered = render("{}");
    let plain_kinds: Vec<_> = plain
        .keys()
        .filter(|(kind, _)| kind != "Namespace")
        .collect();
    let rendered_kinds: Vec<_> = rendered.keys().collect();
    assert_eq!(
        plain_kinds, rendered_kinds,
        "same objects (the chart installs into --namespace)"
    );
    for (key, rendered) in &rendered {
        let mut rendered = rendered.clone();
        strip_helm_labels(&mut rendered);
        let mut plain = plain[key].clone();
        if key.0 == "ConfigMap" {
            for file in ["imagegate.toml", "policy.toml"] {
                assert_eq!(
                    normalized(rendered["data"][file].as_str().unwrap()),
                    normalized(plain["data"][file].as_str().unwrap()),
                    "{file}"
                );
                rendered["data"][file] = Value::Null;
                plain["data"][file] = Value::Null;
            }
        }
        assert_eq!(
            rendered,
            plain,
            "{key:?}: the chart's default rendering differs from packaging/kubernetes:\n{}",
            serde_yaml::to_string(&rendered).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    check_node_agent(&rendered, dir.path());
}

#[test]
fn helm_values_set_mode_policy_keys_and_paths() {
    let key = imagegate_testkit::sign::Key::generate().unwrap();
    let pem = key.public_pem().unwrap();
    let policy = "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"registry.example.com/team/**\"\n\
                  require = \"signatures\"\n[[scope.keys]]\nname = \"release\"\npath = \"/etc/imagegate/keys/release.pub\"\n";
    let overrides = serde_yaml::to_string(&serde_json::json!({
        "mode": "enforce",
        "backend": "fanotify",
        "metricsPort": 9555,
        "policy": policy,
        "keys": {"release.pub": pem},
        "containerd": {"root": "/data/containerd", "runDir": "/run/k3s/containerd", "socket": "/run/k3s/containerd/containerd.sock"},
        "registry": {"insecure": ["127.0.0.1:5000"]},
        "image": {"repository": "registry.example.com/imagegate", "tag": "v9"},
    }))
    .unwrap();
    let objects = render(&overrides);
    let dir = tempfile::tempdir().unwrap();
    let config = check_node_agent(&objects, dir.path());
    assert_eq!(config.mode, imagegate::enforce::Mode::Enforce);
    assert_eq!(config.backend, imagegate::config::BackendChoice::Fanotify);
    assert_eq!(config.metrics_listen, "0.0.0.0:9555");
    assert_eq!(config.containerd.root, Path::new("/data/containerd"));
    assert_eq!(config.registry.insecure, ["127.0.0.1:5000"]);
    let container = &get(&objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/imagegate:v9");

    // The key arrives in the Secret intact (check_node_agent loaded the policy naming it).
    let secret = get(&objects, "Secret");
    let encoded = secret["data"]["release.pub"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(String::from_utf8(decoded.clone()).unwrap(), pem);
    let rendered_policy = get(&objects, "ConfigMap")["data"]["policy.toml"]
        .as_str()
        .unwrap();
    assert_eq!(normalized(rendered_policy), normalized(policy));
}

#[test]
fn chart_renderer_refuses_what_it_does_not_understand() {
    // A typo in a values path fails the render rather than printing nothing.
    let dir = tempfile::tempdir().unwrap();
    let chart_dir = dir.path();
    std::fs::create_dir_all(chart_dir.join("templates")).unwrap();
    std::fs::write(
        chart_dir.join("Chart.yaml"),
        "name: x\nversion: 1.0.0\nappVersion: \"1\"\n",
    )
    .unwrap();
    std::fs::write(chart_dir.join("values.yaml"), "mode: audit\n").unwrap();
    std::fs::write(
        chart_dir.join("templates/a.yaml"),
        "mode: {{ .Values.mdoe }}\n",
    )
    .unwrap();
    let chart = chart_render::Chart::load(chart_dir).unwrap();
    assert!(chart.render("r", "n", &Value::Null).is_err());
    std::fs::write(
        chart_dir.join("templates/a.yaml"),
        "mode: {{ .Values.mode | upper }}\n",
    )
    .unwrap();
    let chart = chart_render::Chart::load(chart_dir).unwrap();
    assert!(chart.render("r", "n", &Value::Null).is_err());
    std::fs::write(
        chart_dir.join("templates/a.yaml"),
        "a:\n  {{- if .Values.mode }}\n  mode: {{ .Values.mode | quote }}\n  {{- end }}\n",
    )
    .unwrap();
    let chart = chart_render::Chart::load(chart_dir).unwrap();
    assert_eq!(
        chart.render("r", "n", &Value::Null).unwrap()["a.yaml"],
        "a:\n  mode: \"audit\"\n"
    );
}
