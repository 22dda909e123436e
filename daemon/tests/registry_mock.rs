//! What Debian's docker-registry cannot show: the OCI 1.1 referrers API and token
//! authentication. A minimal HTTP/1.1 server on 127.0.0.1 serves gen.py's images, with the
//! bundle index only behind `/referrers/` (not the fallback tag) and every `/v2/` path behind a
//! bearer token obtained with basic credentials.

#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imagegate::discover::{verify_image, Credentials, DiscoveryConfig, RegistryClient};
use imagegate::policy::file;
use imagegate::verdict::Outcome;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn gen_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/generated")
}

type Routes = HashMap<String, (String, Vec<u8>)>;

fn routes() -> Routes {
    let pushes: Vec<Value> =
        serde_json::from_slice(&std::fs::read(gen_dir().join("registry/pushes.json")).unwrap())
            .unwrap();
    let mut r = Routes::new();
    for p in pushes {
        let repo = p["repo"].as_str().unwrap();
        let digest = p["digest"].as_str().unwrap();
        let body = std::fs::read(gen_dir().join("registry/blobs").join(&digest[7..])).unwrap();
        if p["kind"] == "blob" {
            r.insert(
                format!("/v2/{repo}/blobs/{digest}"),
                ("application/octet-stream".into(), body),
            );
            continue;
        }
        let mt = p["media_type"].as_str().unwrap().to_string();
        let reference = p["reference"].as_str().unwrap();
        r.insert(
            format!("/v2/{repo}/manifests/{digest}"),
            (mt.clone(), body.clone()),
        );
        match reference.strip_prefix("sha256-") {
            // A referrers-tag index: serve it only through the referrers API.
            Some(hex) if !hex.ends_with(".sig") => {
                r.insert(format!("/v2/{repo}/referrers/sha256:{hex}"), (mt, body));
            }
            _ => {
                r.insert(format!("/v2/{repo}/manifests/{reference}"), (mt, body));
            }
        }
    }
    r
}

/// Serve `routes` until aborted; log each request line with its Authorization header.
async fn serve(
    listener: tokio::net::TcpListener,
    routes: Arc<Routes>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let port = listener.local_addr().unwrap().port();
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let (routes, log) = (routes.clone(), log.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let auth = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_default();
            log.lock().unwrap().push(format!("{target} [{auth}]"));
            let path = target.split('?').next().unwrap_or("/").to_string();
            let (status, extra, ctype, body): (u16, String, String, Vec<u8>) = if path == "/token" {
                // "user:pass" in base64
                if auth == "Basic dXNlcjpwYXNz" {
                    (
                        200,
                        String::new(),
                        "application/json".into(),
                        br#"{"token":"tok123"}"#.to_vec(),
                    )
                } else {
                    (
                        401,
                        String::new(),
                        "text/plain".into(),
                        b"bad credentials".to_vec(),
                    )
                }
            } else if auth != "Bearer tok123" {
                let challenge = format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"mock\"\r\n");
                (
                    401,
                    challenge,
                    "application/json".into(),
                    br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
                )
            } else if let Some((ct, b)) = routes.get(&path) {
                (200, String::new(), ct.clone(), b.clone())
            } else {
                (
                    404,
                    String::new(),
                    "application/json".into(),
                    br#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_vec(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\n{extra}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.write_all(&body).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_api_behind_token_auth() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(serve(listener, Arc::new(routes()), log.clone()));
    let g = gen_dir();
    let policy = file::parse(
        Path::new("/mock/policy.toml"),
        &format!(
            "version = 1\n[trust.test]\ntrusted_root = \"{}\"\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{addr}/app/**\"\nrequire = \"signatures\"\n[[scope.keyless]]\ntrust = \"test\"\nissuer = \"https://issuer.imagegate.test\"\nsubject = \"dev@imagegate.test\"\n",
            g.join("trust/trusted_root.json").display()
        ),
    )
    .unwrap();
    let images: Value =
        serde_json::from_slice(&std::fs::read(g.join("registry/images.json")).unwrap()).unwrap();
    let reference = format!("{addr}/app/bundle:v1");
    let platform = imagegate::oci::platform("linux", "amd64", None);
    let mut creds = Credentials::default();
    creds.insert(&addr, "user", "pass");
    let cfg = DiscoveryConfig {
        insecure_registries: vec![addr.clone()],
        credentials: creds,
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let client = RegistryClient::new(cfg).unwrap();

    let v = verify_image(&client, &policy, None, &reference, &platform).await;
    assert_eq!(
        v.outcome,
        Outcome::Trusted,
        "{}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    assert_eq!(v.digest, images["bundle"]["digest"].as_str().unwrap());
    // Labelled as found through the API (`imagegate explain` says where each signature was).
    assert!(
        v.reasons
            .iter()
            .any(|r| r.accepted && r.signature.starts_with("referrer:sha256:")),
        "{}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    let seen = log.lock().unwrap().clone();
    assert!(
        seen.iter().any(
            |l| l.starts_with(&format!("/v2/app/bundle/referrers/{}", v.digest))
                && l.contains("Bearer tok123")
        ),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("/token?")
            && l.contains("repository%3Aapp%2Fbundle%3Apull")
            && l.contains("Basic")),
        "{seen:#?}"
    );
    // The fallback tag was not needed.
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("/manifests/sha256-") && !l.contains(".sig")),
        "{seen:#?}"
    );

    // Without credentials the token endpoint refuses: an error verdict, not a pass.
    let anon = RegistryClient::new(DiscoveryConfig {
        insecure_registries: vec![addr.clone()],
        ..Default::default()
    })
    .unwrap();
    let v = verify_image(&anon, &policy, None, &reference, &platform).await;
    assert_eq!(
        (v.outcome, v.allows()),
        (Outcome::Error, false),
        "{}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    assert!(v
        .reasons
        .iter()
        .any(|r| r.detail.contains("authentication failed")));
    server.abort();
}
