//! Images signed as cosign 3.1+ signs them with Rekor v2 and a timestamping authority (a sigstore
//! bundle v0.3: Fulcio-style certificate, DSSE envelope with cosign's sign predicate, a `dsse` or
//! `hashedrekord` 0.0.2 entry with an inclusion proof and an Ed25519-signed checkpoint, no
//! integrated time and no SET, an RFC 3161 timestamp), attached as OCI 1.1 referrers with the
//! `sha256-<hex>` referrers tag, end to end through the product: Debian's docker-registry on
//! 127.0.0.1, `imagegate verify`, and `imagegate daemon` (fanotify backend) with a private
//! containerd on its own tmpfs running the containers. The bundles come from an independent
//! signer run at test time (tests/signer/sign_rekor_v2.py, Python `cryptography`; testkit's
//! `bundle` module runs it and attaches its output).
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::{path::Path, process::Command, time::Instant};

use imagegate_testkit::{
    bundle::{self, Entry, Request, Signed, Tamper},
    image::{self, File, Image},
    registry::{Client, LocalRegistry},
};
use serde_json::Value;
use support::{
    daemon::{self, DaemonProcess, Settings},
    explain,
    signed::SignedBed,
    tuf_repo,
};

const IDENTITY: &str = "release@imagegate.test";
const ISSUER: &str = "https://issuer.imagegate.test";
const AUTHORITY: &str = "release-v2";
/// The witness the signer has cosign every checkpoint (tests/signer/sign_rekor_v2.py).
const WITNESS: &str = "witness.imagegate.test/w1";

/// One image to push and sign: repository (under the registry), image, entry kind, tampering.
struct ToSign<'a> {
    repo: &'a str,
    image: &'a Image,
    entry: Entry,
    tamper: Option<Tamper>,
}

/// Signs every image's manifest digest in one signer run (one private sigstore) and attaches
/// each bundle to its image (pushed before) as a referrer; returns the run's trust material and
/// each referrer manifest's digest.
fn sign_and_attach(
    client: &Client,
    dir: &Path,
    addr: &str,
    images: &[ToSign<'_>],
) -> (Signed, Vec<String>) {
    let digests: Vec<String> = images.iter().map(|i| i.image.manifest_digest()).collect();
    let repositories: Vec<String> = images
        .iter()
        .map(|i| format!("{addr}/{}", i.repo))
        .collect();
    let stems: Vec<String> = images.iter().map(|i| i.repo.replace('/', "_")).collect();
    let requests: Vec<Request<'_>> = images
        .iter()
        .enumerate()
        .map(|(n, i)| Request {
            stem: &stems[n],
            digest: &digests[n],
            repository: &repositories[n],
            entry: i.entry,
            tamper: i.tamper,
        })
        .collect();
    let started = Instant::now();
    let signed =
        bundle::sign_rekor_v2(&dir.join("signer"), IDENTITY, ISSUER, &requests).expect("sign");
    eprintln!(
        "signer: {} bundles in {:?}",
        images.len(),
        started.elapsed()
    );
    let referrers = images
        .iter()
        .zip(&stems)
        .map(|(i, stem)| {
            bundle::attach_referrer(client, i.repo, i.image, &signed.bundle(stem).unwrap())
                .expect("attach")
        })
        .collect();
    (signed, referrers)
}

/// Writes `dir/FILE`: images under `ADDR/PREFIX/**` need a keyless signature by [`IDENTITY`]
/// from [`ISSUER`], under the signer run's trusted root, with checkpoints cosigned by every one
/// of `witnesses` (signed-note verifier keys); everything else is rejected.
fn write_policy(
    dir: &Path,
    file: &str,
    (addr, prefix): (&str, &str),
    signed: &Signed,
    witnesses: &[&str],
) -> std::path::PathBuf {
    let path = dir.join(file);
    std::fs::write(
        &path,
        format!(
            "version = 1\n[trust.rekor-v2]\ntrusted_root = \"{root}\"\nwitnesses = {witnesses:?}\n\
             [default]\nrequire = \"reject\"\n\
             [[scope]]\nmatch = \"{addr}/{prefix}/**\"\nrequire = \"signatures\"\n\
             [[scope.keyless]]\nname = \"{AUTHORITY}\"\ntrust = \"rekor-v2\"\nsubject = \"{identity}\"\n\
             issuer = \"{issuer}\"\n",
            root = signed.trusted_root.display(),
            identity = signed.identity,
            issuer = signed.issuer,
        ),
    )
    .expect("policy");
    path
}

/// `imagegate verify NAME --policy POLICY --insecure-registry ADDR [--output json]`: exit code
/// and stdout.
fn verify(name: &str, policy: &Path, addr: &str, json: bool) -> (i32, String) {
    let mut command = Command::new(daemon::imagegate_bin());
    command
        .args(["verify", name, "--policy"])
        .arg(policy)
        .args(["--insecure-registry", addr]);
    if json {
        command.args(["--output", "json"]);
    }
    let out = command.output().expect("run imagegate verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "imagegate verify {name}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// The one reason of a verdict (`--output json`) whose signature is `label`.
fn reason<'a>(verdict: &'a Value, label: &str) -> &'a Value {
    verdict["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["signature"] == label))
        .unwrap_or_else(|| panic!("no reason for {label}: {verdict}"))
}

#[test]
fn imagegate_verify_trusts_rekor_v2_bundles_and_refuses_what_only_v2_checks_catch() {
    if !support::signed::registry_installed() {
        return;
    }
    let started = Instant::now();
    let dir = support::scratch_dir("rekor-v2-verify");
    let registry = LocalRegistry::start(&dir.join("registry")).expect("start docker-registry");
    let addr = registry.addr.clone();
    let client = Client::new(&addr).expect("registry client");
    let make = |marker: &str| {
        image::image(
            vec![image::layer(&[File::new(&format!("etc/{marker}"), marker, 0o644)]).unwrap()],
            &["/bin/true"],
        )
    };
    let (dsse, hashedrekord, checkpoint, late) = (
        make("dsse"),
        make("hashedrekord"),
        make("checkpoint"),
        make("late"),
    );
    let cases = [
        ToSign {
            repo: "v2/dsse",
            image: &dsse,
            entry: Entry::Dsse,
            tamper: None,
        },
        ToSign {
            repo: "v2/hashedrekord",
            image: &hashedrekord,
            entry: Entry::HashedRekord,
            tamper: None,
        },
        ToSign {
            repo: "v2/other-checkpoint-key",
            image: &checkpoint,
            entry: Entry::Dsse,
            tamper: Some(Tamper::CheckpointOtherKey),
        },
        ToSign {
            repo: "v2/timestamp-after-certificate",
            image: &late,
            entry: Entry::Dsse,
            tamper: Some(Tamper::TimestampAfterCertificate),
        },
    ];
    for case in &cases {
        client
            .push_image(case.repo, "v1", case.image)
            .expect("push");
    }
    let (signed, referrers) = sign_and_attach(&client, &dir, &addr, &cases);
    let policy = write_policy(&dir, "policy.toml", (&addr, "v2"), &signed, &[]);

    // Trusted, and the report names what vouched: the Rekor v2 entry (its kind, proven by an
    // inclusion proof to a signed checkpoint) and the TSA's timestamp, found in the referrers tag.
    for (case, referrer, entry) in [
        (&cases[0], &referrers[0], "dsse/0.0.2"),
        (&cases[1], &referrers[1], "hashedrekord/0.0.2"),
    ] {
        let name = format!("{addr}/{}:v1", case.repo);
        let label = format!("referrers-tag:{referrer}");
        let (code, text) = verify(&name, &policy, &addr, false);
        assert_eq!(code, 0, "{text}");
        assert!(
            text.starts_with(&format!("TRUSTED: {name}@{}", case.image.manifest_digest())),
            "{text}"
        );
        for expected in [
            format!("authorities satisfied: 1/1 [\"{AUTHORITY}\"]"),
            format!(
                "ok   {label} ({AUTHORITY}): signature accepted by {AUTHORITY}; vouched for by Rekor v2 \
                 entry {entry} at log index "
            ),
            "(inclusion proof to a checkpoint signed by the log); RFC 3161 timestamp ".to_owned(),
        ] {
            assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
        }
        let (code, json) = verify(&name, &policy, &addr, true);
        assert_eq!(code, 0, "{json}");
        let verdict: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(verdict["outcome"], "trusted", "{verdict}");
        assert_eq!(
            verdict["verified_digests"],
            serde_json::json!([case.image.manifest_digest()]),
            "{verdict}"
        );
        let accepted = reason(&verdict, &label);
        assert_eq!(accepted["accepted"], true, "{verdict}");
        assert_eq!(
            accepted["signer"]["subjects"],
            serde_json::json!([IDENTITY]),
            "{verdict}"
        );
        explain::assert_rekor_v2_evidence(&accepted["evidence"], entry);
    }

    // Tampered where only Rekor v2's checks look: untrusted (exit 1), for that reason.
    for (case, referrer, kind, phrase) in [
        (
            &cases[2],
            &referrers[2],
            "tlog-proof",
            "checkpoint signature does not verify with the log key",
        ),
        (&cases[3], &referrers[3], "cert-chain", "is not valid at"),
    ] {
        let name = format!("{addr}/{}:v1", case.repo);
        let (code, text) = verify(&name, &policy, &addr, false);
        assert_eq!(code, 1, "{text}");
        assert!(text.starts_with("UNTRUSTED: "), "{text}");
        assert!(
            text.contains(&format!(
                "FAIL referrers-tag:{referrer} ({AUTHORITY}): [{kind}] "
            )) && text.contains(phrase),
            "{text}"
        );
        let (code, json) = verify(&name, &policy, &addr, true);
        assert_eq!(code, 1, "{json}");
        let verdict: Value = serde_json::from_str(&json).unwrap();
        let rejected = reason(&verdict, &format!("referrers-tag:{referrer}"));
        assert_eq!(rejected["accepted"], false, "{verdict}");
        assert_eq!(rejected["kind"], kind, "{verdict}");
        assert!(rejected["evidence"].is_null(), "{verdict}");
    }

    // Witnesses required (C2SP tlog-cosignature): the checkpoint's cosignature by the signer's
    // witness is verified and named; a policy that also requires a witness that cosigned nothing
    // refuses the same bundle, naming the missing witness.
    let name = format!("{addr}/{}:v1", cases[0].repo);
    let label = format!("referrers-tag:{}", referrers[0]);
    let witnessed = write_policy(
        &dir,
        "witnessed.toml",
        (&addr, "v2"),
        &signed,
        &[&signed.witness_vkey],
    );
    let (code, text) = verify(&name, &witnessed, &addr, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "(inclusion proof to a checkpoint signed by the log, cosigned by witness {WITNESS})"
        )),
        "{text}"
    );
    let two = write_policy(
        &dir,
        "two-witnesses.toml",
        (&addr, "v2"),
        &signed,
        &[&signed.witness_vkey, &signed.absent_witness_vkey],
    );
    let (code, json) = verify(&name, &two, &addr, true);
    assert_eq!(code, 1, "{json}");
    let verdict: Value = serde_json::from_str(&json).unwrap();
    let rejected = reason(&verdict, &label);
    assert_eq!(rejected["kind"], "tlog-proof", "{verdict}");
    assert!(
        rejected["detail"].as_str().is_some_and(|e| e.contains(
            "checkpoint cosigned by 1 of the witnesses, 2 required (no cosignature by \
             witness.imagegate.test/w2)"
        )),
        "{verdict}"
    );
    eprintln!("rekor v2 verify test: {:?}", started.elapsed());
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rekor_v2_signed_image_runs_and_a_tampered_one_cannot() {
    let Some(bed) = SignedBed::start("e2e-rekor-v2") else {
        return;
    };
    let started = Instant::now();
    let dir = bed.dir.clone();
    let hello = ["/bin/busybox", "echo", "hello from rekor v2"];
    let signed = image::image(vec![bed.busybox_layer(Some("rekor-v2-signed"))], &hello);
    let tampered = image::image(vec![bed.busybox_layer(Some("rekor-v2-tampered"))], &hello);
    let signed_digest = bed.push("v2/signed", &signed, None);
    let tampered_digest = bed.push("v2/tampered", &tampered, None);
    let (trust, referrers) = sign_and_attach(
        &bed.client,
        &dir,
        &bed.addr,
        &[
            ToSign {
                repo: "v2/signed",
                image: &signed,
                entry: Entry::Dsse,
                tamper: None,
            },
            ToSign {
                repo: "v2/tampered",
                image: &tampered,
                entry: Entry::Dsse,
                tamper: Some(Tamper::CheckpointOtherKey),
            },
        ],
    );
    // Checkpoints must carry the signer's witness's cosignature, too.
    write_policy(
        &dir,
        "policy.toml",
        (&bed.addr, "v2"),
        &trust,
        &[&trust.witness_vkey],
    );

    let settings = Settings {
        mode: "enforce",
        backend: "fanotify",
        insecure: vec![bed.addr.clone()],
        tag: "rekor-v2",
    };
    let config = settings.write(&dir, &bed.containerd);
    let daemon = DaemonProcess::start(&dir, &config, "rekor-v2");
    let (signed_name, tampered_name) = (bed.name("v2/signed"), bed.name("v2/tampered"));
    bed.pull(&signed_name);
    bed.pull(&tampered_name);
    let status = daemon.wait_for_verdicts(
        &dir,
        &[
            (signed_name.clone(), "trusted"),
            (tampered_name.clone(), "untrusted"),
        ],
    );
    assert_eq!(status["backend"], "fanotify", "{status}");
    // Status names what vouched: the signed digest and the bundle, with its Rekor v2 evidence.
    let verdict = status["verdicts"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["image"] == signed_name.as_str()))
        .unwrap_or_else(|| panic!("no verdict for {signed_name}: {status}"));
    assert_eq!(verdict["digest"], signed_digest.as_str(), "{verdict}");
    assert_eq!(
        verdict["signed_digests"],
        serde_json::json!([signed_digest]),
        "{verdict}"
    );
    let signature = &verdict["signatures"][0];
    assert_eq!(
        signature["signature"],
        format!("referrers-tag:{}", referrers[0]),
        "{verdict}"
    );
    assert_eq!(signature["authority"], AUTHORITY, "{verdict}");
    explain::assert_rekor_v2_evidence(&signature["evidence"], "dsse/0.0.2");
    let tlog = signature["evidence"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "tlog"))
        .unwrap_or_else(|| panic!("no log entry: {verdict}"));
    assert_eq!(
        tlog["witnessed_by"],
        serde_json::json!([WITNESS]),
        "{verdict}"
    );

    // The signed image's container runs its entrypoint.
    let out = bed.containerd.run(&signed_name, "c-v2-signed", &[]);
    daemon::assert_ran(&out, "signed image", &daemon, "hello from rekor v2");

    // The tampered one's cannot execute, and the event says why and names it.
    let out = bed.containerd.run(&tampered_name, "c-v2-tampered", &[]);
    daemon::assert_denied(&out, "the tampered Rekor v2 image");
    let events = settings.events(&dir);
    let event = daemon::wait_for_event(&events, |e| e["container"]["id"] == "c-v2-tampered");
    assert_eq!(event["verdict"], "denied", "{event}");
    daemon::assert_names_image(&event, &tampered_name, &tampered_digest);
    assert_eq!(event["path"], "/bin/busybox", "{event}");

    // explain: the signed image was trusted by the bundle (where found, which authority, who
    // signed, the Rekor v2 entry, its witness and timestamp); the tampered one's container was denied because
    // its checkpoint does not verify.
    explain::assert_signed_by_rekor_v2_bundle(
        &dir,
        "c-v2-signed",
        &signed_name,
        &signed_digest,
        AUTHORITY,
        (IDENTITY, ISSUER),
        ("dsse/0.0.2", WITNESS),
    );
    let json = explain::json(&dir, "c-v2-tampered", &[]);
    let judged = &json["images"][0];
    assert_eq!(
        judged["manifest_digest"],
        tampered_digest.as_str(),
        "{json}"
    );
    assert_eq!(judged["verdict"], "untrusted", "{json}");
    let rejected = &judged["signatures"][0];
    assert_eq!(rejected["found_in"], "referrers_tag", "{json}");
    assert_eq!(rejected["failure"], "tlog-proof", "{json}");
    assert!(
        rejected["why"]
            .as_str()
            .is_some_and(|w| w.contains("checkpoint signature does not verify with the log key")),
        "{json}"
    );
    assert!(
        json["denials"].as_array().is_some_and(|d| d
            .iter()
            .any(|d| d["reason"] == "untrusted_image" && d["path"] == "/bin/busybox")),
        "{json}"
    );
    daemon.stop();
    eprintln!("rekor v2 daemon test: {:?}", started.elapsed());
}

/// The public-good root kept current through TUF (`trusted_root = "public-good"`, here a TUF
/// repository the test builds in a mirror directory, whose root the daemon's TUF cache is seeded
/// with): an image signed under its CA is trusted and runs; then the repository publishes a root
/// in which that CA's validity ended before the signing (a revoked CA), SIGHUP asks for a
/// refresh, and the daemon re-judges on the root change alone: the image is untrusted and its
/// containers run nothing. A trusted verdict does not outlive the CA it relied on.
#[test]
fn a_new_public_good_root_revoking_the_ca_revokes_trust() {
    let Some(bed) = SignedBed::start("e2e-public-good") else {
        return;
    };
    let started = Instant::now();
    let dir = bed.dir.clone();
    let hello = ["/bin/busybox", "echo", "hello from public-good"];
    let app = image::image(vec![bed.busybox_layer(Some("public-good"))], &hello);
    let digest = bed.push("pg/app", &app, None);
    let (signed, _) = sign_and_attach(
        &bed.client,
        &dir,
        &bed.addr,
        &[ToSign {
            repo: "pg/app",
            image: &app,
            entry: Entry::Dsse,
            tamper: None,
        }],
    );
    let root_a = std::fs::read(&signed.trusted_root).unwrap();
    // The same root, with the CA's validity ended at its start: nothing it issued since counts.
    let mut revoked: Value = serde_json::from_slice(&root_a).unwrap();
    for ca in revoked["certificateAuthorities"].as_array_mut().unwrap() {
        let start = ca["validFor"]["start"].clone();
        ca["validFor"]["end"] = start;
    }
    let root_b = serde_json::to_vec_pretty(&revoked).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tuf = runtime.block_on(tuf_repo::first_version(&dir.join("tuf"), &root_a));
    // The daemon's TUF cache starts from this repository's root (as after an earlier refresh).
    let metadata = dir.join("state/tuf/metadata");
    std::fs::create_dir_all(&metadata).unwrap();
    std::fs::write(metadata.join("root.json"), &tuf.root1_signed).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            "version = 1\n[trust.sigstore]\ntrusted_root = \"public-good\"\n[default]\nrequire = \"reject\"\n\
             [[scope]]\nmatch = \"{addr}/pg/**\"\nrequire = \"signatures\"\n\
             [[scope.keyless]]\nname = \"{AUTHORITY}\"\ntrust = \"sigstore\"\nsubject = \"{identity}\"\n\
             issuer = \"{issuer}\"\n",
            addr = bed.addr,
            identity = signed.identity,
            issuer = signed.issuer,
        ),
    )
    .unwrap();
    let settings = Settings {
        mode: "enforce",
        backend: "fanotify",
        insecure: vec![bed.addr.clone()],
        tag: "public-good",
    };
    let config = settings.write(&dir, &bed.containerd);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[tuf]\nmirror_dir = \"{}\"\n",
        tuf.repo.dir.display()
    ));
    std::fs::write(&config, text).unwrap();
    let daemon = DaemonProcess::start(&dir, &config, "public-good");
    let name = bed.name("pg/app");
    bed.pull(&name);
    let status = daemon.wait_for_verdicts(&dir, &[(name.clone(), "trusted")]);
    let sha256 = |bytes: &[u8]| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    assert_eq!(
        status["public_good_root"]["sha256"],
        sha256(&root_a),
        "{status}"
    );
    let out = bed.containerd.run(&name, "c-pg-before", &[]);
    daemon::assert_ran(
        &out,
        "the image signed under the public-good CA",
        &daemon,
        "hello from public-good",
    );
    // `imagegate verify` with the daemon's configuration uses the root the daemon keeps.
    let offline = || {
        let out = Command::new(daemon::imagegate_bin())
            .args(["verify", &name, "--policy"])
            .arg(dir.join("policy.toml"))
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run imagegate verify");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text)
    };
    let (code, text) = offline();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("TRUSTED: "), "{text}");

    // The repository publishes the root that revokes the CA; the policy file is unchanged.
    runtime.block_on(
        tuf.repo
            .publish(1, &tuf.online, 2, tuf_repo::at(86_400), &root_b),
    );
    daemon.hangup();
    // Trusted until the new root is fetched and the re-judged table swapped in.
    let deadline = Instant::now() + 3 * daemon::wait_limit();
    let status = loop {
        let status = daemon::status(&dir).unwrap_or_default();
        if daemon::outcome(&status, &name).as_deref() == Some("untrusted") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still trusted after the root revoking its CA: {status}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        status["public_good_root"]["sha256"],
        sha256(&root_b),
        "{status}"
    );
    assert!(
        daemon
            .log_text()
            .contains("the public-good trusted root in use changed"),
        "{}",
        daemon.log_text()
    );
    let (code, text) = offline();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("UNTRUSTED: ") && text.contains("[cert-chain]"),
        "{text}"
    );
    let out = bed.containerd.run(&name, "c-pg-after", &[]);
    daemon::assert_denied(&out, "an image whose CA the new public-good root revoked");
    let event = daemon::wait_for_event(&settings.events(&dir), |e| {
        e["container"]["id"] == "c-pg-after"
    });
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    daemon::assert_names_image(&event, &name, &digest);
    daemon.stop();
    eprintln!("public-good root change test: {:?}", started.elapsed());
}
