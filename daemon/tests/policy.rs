//! Policy files: the documented example loads and picks the right scope; every kind of mistake
//! is refused with file, line and field; containers-policy.json maps or is refused.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

use std::path::{Path, PathBuf};

use imagegate::policy::{Mode, Policy, PolicyError, Requirement};
use imagegate::verify::{ImageRef, SignedIdentity, Signer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/policy")
}

fn rule_of<'a>(p: &'a Policy, image: &str) -> &'a imagegate::policy::Rule {
    p.rule_for(&ImageRef::parse(image).unwrap())
}

#[test]
fn example_policy_selects_the_most_specific_scope() {
    let p = Policy::load(&fixtures().join("example.toml")).unwrap();
    let r = rule_of(&p, "192.168.64.2:5000/cosign-signed/key-1:latest");
    assert_eq!(r.scope, "192.168.64.2:5000/cosign-signed/**");
    match &r.requirement {
        Requirement::Signatures {
            authorities,
            threshold,
        } => {
            assert_eq!((authorities.len(), *threshold), (1, 1));
            assert!(authorities[0].require_tlog);
            assert_eq!(authorities[0].name, "release-key");
        }
        other => panic!("{other:?}"),
    }
    let r = rule_of(&p, "ghcr.io/kubewarden/kubewarden-controller:v1.34.0");
    assert!(
        matches!(&r.requirement, Requirement::Signatures { authorities, .. }
        if matches!(&authorities[0].signer, Signer::Certificate { require_sct: true, .. }))
    );
    let r = rule_of(&p, "mirror.example.com/library/busybox");
    assert_eq!(r.mode, Mode::Audit);
    match &r.requirement {
        Requirement::Signatures {
            authorities,
            threshold,
        } => {
            assert_eq!((authorities.len(), *threshold), (2, 1));
            assert!(matches!(
                authorities[0].signed_identity,
                SignedIdentity::Remap { .. }
            ));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rule_of(&p, "busybox").requirement,
        Requirement::Accept
    ));
    assert_eq!(rule_of(&p, "busybox").mode, Mode::Audit);
    let r = rule_of(&p, "quay.io/anything/else");
    assert_eq!((r.scope.as_str(), r.mode), ("default", Mode::Enforce));
    assert!(matches!(r.requirement, Requirement::Reject));
}

/// docs/kubernetes.md's policy: registry.k8s.io (pause included) needs the Kubernetes release
/// process's keyless signature, with the identity and issuer the Kubernetes documentation gives;
/// what nothing covers is reported (audit) while rolling out.
#[test]
fn the_kubernetes_policy_trusts_the_release_process_for_registry_k8s_io() {
    let p = Policy::load(&fixtures().join("kubernetes.toml")).unwrap();
    for image in [
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/kube-apiserver:v1.34.0",
        "registry.k8s.io/coredns/coredns:v1.12.0",
    ] {
        let r = rule_of(&p, image);
        assert_eq!(
            (r.scope.as_str(), r.mode),
            ("registry.k8s.io", Mode::Enforce),
            "{image}"
        );
        let Requirement::Signatures {
            authorities,
            threshold,
        } = &r.requirement
        else {
            panic!("{image}: {:?}", r.requirement);
        };
        assert_eq!((authorities.len(), *threshold), (1, 1));
        assert!(
            authorities[0].require_tlog,
            "keyless needs the transparency log"
        );
        let Signer::Certificate {
            identities,
            require_sct,
        } = &authorities[0].signer
        else {
            panic!("{image}: not keyless");
        };
        assert!(*require_sct);
        let identity = &identities[0];
        assert!(identity
            .subject
            .matches("krel-trust@k8s-releng-prod.iam.gserviceaccount.com"));
        assert!(!identity
            .subject
            .matches("krel-staging@k8s-releng-prod.iam.gserviceaccount.com"));
        let issuer = identity.issuer.as_ref().expect("an issuer");
        assert!(issuer.matches("https://accounts.google.com"));
        assert!(!issuer.matches("https://token.actions.githubusercontent.com"));
    }
    // A look-alike registry is not the Kubernetes project's.
    let r = rule_of(&p, "registry.k8s.io.evil.example/pause:3.10");
    assert_eq!((r.scope.as_str(), r.mode), ("default", Mode::Audit));
    assert!(matches!(r.requirement, Requirement::Reject));
}

/// Write `body` as a policy next to the fixtures (so relative key paths resolve) and load it.
fn load_text(name: &str, body: &str) -> Result<Policy, PolicyError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let fx = fixtures()
        .join("../testvectors/trust")
        .canonicalize()
        .unwrap();
    std::fs::write(&path, body.replace("TRUST", fx.to_str().unwrap())).unwrap();
    Policy::load(&path)
}

fn expect_error(body: &str, line: usize, field: &str, message_part: &str) {
    match load_text("p.toml", body) {
        Ok(_) => panic!("accepted:\n{body}"),
        Err(PolicyError::Invalid {
            line: l,
            field: f,
            message,
            file,
            ..
        }) => {
            assert!(file.ends_with("p.toml"));
            assert_eq!((l, f.as_str()), (line, field), "message: {message}");
            assert!(message.contains(message_part), "{message}");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn mistakes_are_reported_with_line_and_field() {
    expect_error(
        "version = 1\n[default]\nrequire = \"reject\"\nrequre = \"x\"\n",
        4,
        "requre",
        "unknown field",
    );
    expect_error(
        "version = 2\n[default]\nrequire = \"reject\"\n",
        1,
        "version",
        "version 1",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"maybe\"\n",
        3,
        "default.require",
        "unknown requirement",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"reject\"\nmode = \"warn\"\n",
        4,
        "default.mode",
        "audit or enforce",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"ghcr.io/*/x\"\nrequire = \"accept\"\n",
        5, "scope[0].match", "only allowed",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"ghcr.io\"\nrequire = \"accept\"\n[[scope]]\nmatch = \"ghcr.io/**\"\nrequire = \"reject\"\n",
        8, "scope[1].match", "defined twice",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"signatures\"\nthreshold = 2\n[[default.keys]]\npath = \"TRUST/containers-image/cosign.pub\"\n",
        4, "default.threshold", "between 1 and 1",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"signatures\"\n[[default.keys]]\npath = \"TRUST/no-such.pub\"\n",
        5, "default.keys[0].path", "cannot read",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"signatures\"\n[[default.keys]]\npath = \"TRUST/containers-image/fulcio_v1.crt.pem\"\n",
        5, "default.keys[0]", "PUBLIC KEY",
    );
    expect_error(
        "version = 1\n[trust.pg]\ntrusted_root = \"TRUST/sigstore-public-good/trusted_root.json\"\n[default]\nrequire = \"signatures\"\n[[default.keyless]]\ntrust = \"pg\"\nissuer = \"https://x\"\nsubject_regex = \"(unclosed\"\n",
        9, "default.keyless[0].subject_regex", "regular expression",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"signatures\"\n[[default.keyless]]\ntrust = \"nope\"\nissuer = \"https://x\"\nsubject = \"a@b\"\n",
        5, "default.keyless[0].trust", "no [trust.nope]",
    );
    expect_error(
        "version = 1\n[trust.pg]\ntrusted_root = \"TRUST/sigstore-public-good/trusted_root.json\"\n[default]\nrequire = \"signatures\"\n[[default.keyless]]\ntrust = \"pg\"\nsubject = \"a@b\"\n",
        6, "default.keyless[0]", "issuer",
    );
    expect_error(
        "version = 1\n[trust.pg]\nca_roots = \"TRUST/containers-image/fulcio_v1.crt.pem\"\n[default]\nrequire = \"signatures\"\n[[default.keys]]\npath = \"TRUST/containers-image/cosign.pub\"\ntlog = true\ntrust = \"pg\"\n",
        9, "default.keys[0].trust", "Rekor keys",
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"accept\"\n[[default.keys]]\ndata = \"x\"\n",
        4,
        "default.require",
        "only apply",
    );
    expect_error("version = 1\n[default\n", 2, "(syntax)", "");
}

#[test]
fn policy_hash_covers_referenced_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pub");
    let trust = fixtures().join("../testvectors/trust/containers-image");
    std::fs::copy(trust.join("cosign.pub"), &key).unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "version = 1\n[default]\nrequire = \"signatures\"\n[[default.keys]]\npath = \"k.pub\"\n",
    )
    .unwrap();
    let h1 = Policy::load(&path).unwrap().hash;
    assert_eq!(h1, Policy::load(&path).unwrap().hash);
    std::fs::copy(trust.join("cosign2.pub"), &key).unwrap();
    assert_ne!(
        h1,
        Policy::load(&path).unwrap().hash,
        "changing a key must change the policy hash"
    );
}

#[test]
fn containers_policy_json_maps_supported_requirements() {
    let p = Policy::load(&fixtures().join("containers-policy.json")).unwrap();
    let r = rule_of(&p, "192.168.64.2:5000/cosign-signed-single-sample@sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00");
    match &r.requirement {
        Requirement::Signatures {
            authorities,
            threshold,
        } => {
            assert_eq!(*threshold, 1);
            assert_eq!(
                authorities[0].signed_identity,
                SignedIdentity::MatchRepository
            );
            assert!(!authorities[0].require_tlog);
        }
        other => panic!("{other:?}"),
    }
    let r = rule_of(&p, "192.168.64.2:5000/cosign-signed/fulcio-rekor-1");
    assert!(
        matches!(&r.requirement, Requirement::Signatures { authorities, .. }
        if authorities[0].require_tlog && matches!(authorities[0].signer, Signer::Certificate { require_sct: false, .. }))
    );
    // A containers/image namespace scope also covers the repository of the same name.
    assert_eq!(
        rule_of(&p, "192.168.64.2:5000/cosign-signed").scope,
        "192.168.64.2:5000/cosign-signed/**"
    );
    assert!(matches!(
        rule_of(&p, "docker.io/library/busybox").requirement,
        Requirement::Accept
    ));
    assert!(matches!(
        rule_of(&p, "a.example.com/x").requirement,
        Requirement::Signatures { .. }
    ));
    assert!(matches!(
        rule_of(&p, "quay.io/x").requirement,
        Requirement::Reject
    ));
    assert!(matches!(
        rule_of(&p, "localhost:5000/test").requirement,
        Requirement::Signatures { .. }
    ));
}

fn json_error(body: &str, message_part: &str) {
    match load_text("policy.json", body) {
        Ok(_) => panic!("accepted: {body}"),
        Err(e) => assert!(e.to_string().contains(message_part), "{e}"),
    }
}

#[test]
fn containers_policy_json_refuses_what_it_cannot_honour() {
    json_error(
        r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k"}]}"#,
        "signedBy",
    );
    json_error(
        r#"{"default":[{"type":"reject"}],"transports":{"docker-daemon":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
        "not supported",
    );
    json_error(
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"ghcr.io/a/b:tag":[{"type":"reject"}]}}}"#,
        "tag or digest",
    );
    json_error(
        r#"{"default":[{"type":"reject"}],"extra":1}"#,
        "unknown field",
    );
    json_error(
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"TRUST/containers-image/cosign.pub","bogus":1}]}"#,
        "unknown field",
    );
    json_error(
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"TRUST/containers-image/cosign.pub","keyData":"eA=="}]}"#,
        "exactly one",
    );
    json_error(
        r#"{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"TRUST/containers-image/fulcio_v1.crt.pem","oidcIssuer":"i","subjectEmail":"e"}}]}"#,
        "requires rekor",
    );
    json_error(r#"{"default":[]}"#, "empty requirement list");
    json_error(
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{"x.example":[{"type":"reject","x":1}]}}}"#,
        "takes no other fields",
    );
    json_error(
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"TRUST/containers-image/cosign.pub","signedIdentity":{"type":"matchAnything"}}]}"#,
        "unknown signedIdentity",
    );
    json_error(
        "{\n  \"default\": [\n    {\"type\": \"reject\",}\n  ]\n}",
        "line 3",
    );
}

/// containers/image ignores a scope that does not start with a registry host (it matches fully
/// qualified names only): importing one would show a rule that is not in force. Refused, with
/// the fully qualified name to write instead; hosts (with a dot, a port, or `localhost`) pass.
#[test]
fn containers_policy_json_refuses_short_name_scopes() {
    for (short, qualified) in [
        ("busybox", "docker.io/library/busybox"),
        ("library/busybox", "docker.io/library/busybox"),
        ("team/app", "docker.io/team/app"),
    ] {
        let body = format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{short}":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
        );
        json_error(&body, "is a short name");
        json_error(&body, &format!("{qualified:?}"));
    }
    for host in [
        "localhost",
        "localhost/app",
        "registry:5000",
        "r.example/app",
        "*.example.com",
    ] {
        let body = format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{host}":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
        );
        load_text("policy.json", &body).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
}

/// `pki` `subjectEmail`/`subjectHostname` and `fulcio` `subjectEmail` become matchers of that
/// SAN type only (as containers/image checks them), not "any SAN".
#[test]
fn containers_policy_json_subjects_keep_their_san_type() {
    for (pki, kind) in [
        (
            r#""subjectEmail":"dev@example.com""#,
            imagegate::verify::SanKind::Email,
        ),
        (
            r#""subjectHostname":"signer.example.com""#,
            imagegate::verify::SanKind::Dns,
        ),
    ] {
        let body = format!(
            r#"{{"default":[{{"type":"sigstoreSigned","pki":{{"caRootsPath":"TRUST/containers-image/pki_root_crts.pem",{pki}}}}}]}}"#
        );
        let policy = load_text("policy.json", &body).unwrap();
        let Requirement::Signatures { authorities, .. } = &policy.default.requirement else {
            panic!()
        };
        let Signer::Certificate { identities, .. } = &authorities[0].signer else {
            panic!()
        };
        assert_eq!(identities[0].san, Some(kind), "{pki}");
    }
    let policy = load_text(
        "policy.json",
        r#"{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"TRUST/containers-image/fulcio_v1.crt.pem","oidcIssuer":"i","subjectEmail":"e@x"},"rekorPublicKeyPath":"TRUST/containers-image/rekor.pub"}]}"#,
    )
    .unwrap();
    let Requirement::Signatures { authorities, .. } = &policy.default.requirement else {
        panic!()
    };
    let Signer::Certificate { identities, .. } = &authorities[0].signer else {
        panic!()
    };
    assert_eq!(identities[0].san, Some(imagegate::verify::SanKind::Email));
}

#[test]
fn trust_entries_combine_pem_files_into_one_trust_material() {
    let g = fixtures()
        .join("../generated/trust")
        .canonicalize()
        .unwrap();
    let text = format!(
        "version = 1\n[trust.own]\nca_roots = \"{g}/ca.pem\"\nrekor_keys = [\"{g}/rekor.pub\"]\nctlog_keys = [\"{g}/ctlog.pub\"]\ntsa_certs = \"{g}/tsa-chain.pem\"\n[default]\nrequire = \"signatures\"\n[[default.keyless]]\ntrust = \"own\"\nissuer = \"https://issuer.imagegate.test\"\nsubject = \"dev@imagegate.test\"\n",
        g = g.display()
    );
    let p = imagegate::policy::file::parse(Path::new("/x/p.toml"), &text).unwrap();
    let Requirement::Signatures { authorities, .. } = &p.default.requirement else {
        panic!()
    };
    let t = &authorities[0].trust;
    assert_eq!(
        (t.cas.len(), t.tlogs.len(), t.ctlogs.len(), t.tsas.len()),
        (1, 1, 1, 2)
    );
    // Without CT log keys a keyless entry must opt out of SCTs explicitly.
    let no_ct = text.replace(
        &format!("ctlog_keys = [\"{}/ctlog.pub\"]\n", g.display()),
        "",
    );
    let err = imagegate::policy::file::parse(Path::new("/x/p.toml"), &no_ct)
        .unwrap_err()
        .to_string();
    assert!(err.contains("require_sct"), "{err}");
    imagegate::policy::file::parse(
        Path::new("/x/p.toml"),
        &no_ct.replace("subject = ", "require_sct = false\nsubject = "),
    )
    .unwrap();
}

#[test]
fn a_scope_sets_what_its_containers_run_from_outside_their_image() {
    let policy = load_text(
        "p.toml",
        "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"registry.test/strict/**\"\n\
         require = \"accept\"\noutside_image = \"deny\"\n[[scope]]\nmatch = \"registry.test/tools/**\"\n\
         require = \"accept\"\noutside_image = \"allow\"\n",
    )
    .expect("loads");
    use imagegate::enforce::OutsideImage;
    assert_eq!(
        rule_of(&policy, "registry.test/strict/app:1").outside_image,
        Some(OutsideImage::Deny)
    );
    assert_eq!(
        rule_of(&policy, "registry.test/tools/app:1").outside_image,
        Some(OutsideImage::Allow)
    );
    assert_eq!(
        rule_of(&policy, "registry.test/other/app:1").outside_image,
        None,
        "unset: the daemon's outside_image setting applies"
    );
    expect_error(
        "version = 1\n[default]\nrequire = \"reject\"\noutside_image = \"sometimes\"\n",
        4,
        "default.outside_image",
        "allow or deny",
    );
}

/// The tutorial's containerd configuration (issue 13, item 6), exactly its shape, with a real
/// key where it has `...`; the rest of containerd's configuration around it.
fn tutorial(prefix: &str, pem: &str) -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1]\n\
         [[plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1.signature_policy]]\n\
         all = true\n\
         required = [\"cosign\"]\n\
         [[plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1.signature_policy.identity]]\n\
         dockerpolicy = \"{prefix}\"   # image name prefix\n\
         public_key = \"{}\"    # cosign public key, PEM\n",
        pem.trim_end().replace('\n', "\\n")
    )
}

fn tutorial_pem() -> String {
    imagegate_testkit::sign::Key::generate()
        .unwrap()
        .public_pem()
        .unwrap()
}

#[test]
fn the_tutorials_containerd_policy_v1_section_is_read_with_its_semantics() {
    let pem = tutorial_pem();
    let section = tutorial("ghcr.io/example/alpine-signed", &pem);
    // Alone, and inside the rest of a containerd configuration (ignored, whatever it says).
    let whole = format!(
        "version = 2\nroot = \"/var/lib/containerd\"\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.10\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n\
         {section}\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m.test\"]\n\
         [plugins.\"io.containerd.something.else\"]\n  whatever = 1\n"
    );
    for text in [&section, &whole] {
        let p = load_text("config.toml", text).unwrap();
        // Covered: the prefix itself and what lies under it, on path-segment boundaries.
        for image in [
            "ghcr.io/example/alpine-signed:latest",
            "ghcr.io/example/alpine-signed/sub:1",
        ] {
            let r = rule_of(&p, image);
            assert_eq!(r.scope, "ghcr.io/example/alpine-signed/**", "{image}");
            assert_eq!(r.mode, Mode::Enforce);
            match &r.requirement {
                Requirement::Signatures {
                    authorities,
                    threshold,
                } => {
                    assert_eq!((authorities.len(), *threshold), (1, 1));
                    assert!(matches!(authorities[0].signer, Signer::Keys(_)));
                    assert_eq!(
                        authorities[0].signed_identity,
                        SignedIdentity::MatchRepository
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        // Not covered: rejected.
        for image in [
            "ghcr.io/example/alpine-signed-2:latest",
            "ghcr.io/example/alpine:latest",
            "docker.io/library/alpine:latest",
        ] {
            let r = rule_of(&p, image);
            assert_eq!((r.scope.as_str(), r.mode), ("default", Mode::Enforce));
            assert!(matches!(r.requirement, Requirement::Reject), "{image}");
        }
    }
    // Nested prefixes: an image under both is trusted by either key.
    let nested = format!(
        "{}[[plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1.signature_policy.identity]]\n\
         dockerpolicy = \"ghcr.io/example\"\npublic_key = \"{}\"\n",
        tutorial("ghcr.io/example/alpine-signed", &pem),
        tutorial_pem().trim_end().replace('\n', "\\n")
    );
    let p = load_text("config.toml", &nested).unwrap();
    let count = |image| match &rule_of(&p, image).requirement {
        Requirement::Signatures { authorities, .. } => authorities.len(),
        _ => 0,
    };
    assert_eq!(count("ghcr.io/example/alpine-signed:1"), 2);
    assert_eq!(count("ghcr.io/example/other:1"), 1);
    // A containerd configuration without the section is refused, not read as "nothing".
    let error = load_text(
        "config.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  x = 1\n",
    )
    .expect_err("accepted without the section")
    .to_string();
    assert!(
        error.contains("policy.v1") && error.contains("no such section"),
        "{error}"
    );
}

#[test]
fn the_tutorials_section_refuses_what_it_does_not_understand_naming_the_line() {
    let pem = tutorial_pem();
    let good = tutorial("ghcr.io/example/alpine-signed", &pem);
    let sp = "plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1.signature_policy[0]";
    // (edit, line, field, message part)
    let cases: Vec<(String, usize, String, &str)> = vec![
        (
            good.replace("all = true", "all = false"),
            3,
            format!("{sp}.all"),
            "all = true",
        ),
        (
            good.replace("[\"cosign\"]", "[\"cosign\", \"notation\"]"),
            4,
            format!("{sp}.required"),
            "\"notation\" is not supported",
        ),
        (
            good.replace("[\"cosign\"]", "[]"),
            4,
            format!("{sp}.required"),
            "empty",
        ),
        (
            good.replace("all = true\n", "all = true\nany = 1\n"),
            4,
            "any".to_owned(),
            "unknown field",
        ),
        (
            good.replace("dockerpolicy =", "docker_policy ="),
            6,
            "docker_policy".to_owned(),
            "unknown field",
        ),
        (
            good.replace(&pem.trim_end().replace('\n', "\\n"), "not a key"),
            7,
            format!("{sp}.identity[0].public_key"),
            "",
        ),
        (
            good.replace(
                "ghcr.io/example/alpine-signed",
                "ghcr.io/example/alpine-signed:1",
            ),
            6,
            format!("{sp}.identity[0].dockerpolicy"),
            "tag or digest",
        ),
        (
            good.replace(
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1]\n",
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1]\nversion = 1\n",
            ),
            2,
            "version".to_owned(),
            "unknown field",
        ),
    ];
    for (body, line, field, part) in cases {
        let text = format!("version = 2\n{body}");
        // One line down for the `version = 2` above the section.
        expect_error(&text, line + 1, &field, part);
    }
}
