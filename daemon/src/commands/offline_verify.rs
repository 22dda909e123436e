//! `imagegate verify-signature` and `imagegate verify-bundle`: offline checks of detached
//! artifacts with cosign's flag names, for debugging and air-gapped use. Exit codes as
//! `imagegate verify`: 0 verified, 1 not verified, 2 could not check (bad input).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use imagegate::verify::{
    detached::{
        verify_detached_bundle, verify_detached_signature, BundleOptions, DetachedSignature,
        DetachedSigner,
    },
    identity::{IdentityMatcher, StringMatcher},
    trust::TrustMaterial,
};

/// Who must have signed, and the trust material, shared by both commands.
#[derive(Args)]
pub struct SignerArgs {
    /// PEM public key (key-based signatures).
    #[arg(long)]
    key: Option<PathBuf>,
    /// sigstore `trusted_root.json` (Fulcio CAs, Rekor and CT log keys, TSAs).
    #[arg(long)]
    trusted_root: Option<PathBuf>,
    /// Extra CA certificates (PEM), trusted as anchors.
    #[arg(long)]
    ca_roots: Option<PathBuf>,
    /// Extra Rekor public key (PEM).
    #[arg(long)]
    rekor_key: Option<PathBuf>,
    /// Extra CT log public key (PEM).
    #[arg(long)]
    ctlog_key: Option<PathBuf>,
    /// Certificate subject (email or URI SAN), exact.
    #[arg(long)]
    certificate_identity: Option<String>,
    /// Certificate subject, regular expression (anchored).
    #[arg(long)]
    certificate_identity_regexp: Option<String>,
    /// OIDC issuer in the certificate, exact.
    #[arg(long)]
    certificate_oidc_issuer: Option<String>,
    /// OIDC issuer, regular expression (anchored).
    #[arg(long)]
    certificate_oidc_issuer_regexp: Option<String>,
    /// Print the result as JSON.
    #[arg(long, value_enum, default_value = "text")]
    output: super::Output,
}

/// `verify-signature` inputs.
#[derive(Args)]
pub struct SignatureArgs {
    /// The manifest digest the signature must cover (`sha256:HEX`).
    #[arg(long)]
    digest: String,
    /// The simple-signing payload file.
    #[arg(long)]
    payload: PathBuf,
    /// The signature, base64 as cosign stores it.
    #[arg(long)]
    signature: PathBuf,
    /// The signing certificate (PEM), for keyless signatures.
    #[arg(long)]
    certificate: Option<PathBuf>,
    /// Its chain (PEM).
    #[arg(long)]
    certificate_chain: Option<PathBuf>,
    /// The `dev.sigstore.cosign/bundle` annotation value (Rekor SET).
    #[arg(long)]
    rekor_bundle: Option<PathBuf>,
    /// Do not require a transparency log entry (as cosign's flag).
    #[arg(long)]
    insecure_ignore_tlog: bool,
    /// Do not require a signed certificate timestamp (as cosign's flag).
    #[arg(long)]
    insecure_ignore_sct: bool,
    #[command(flatten)]
    signer: SignerArgs,
}

/// `verify-bundle` inputs. Either `--digest` (an image manifest digest, cosign's image signature
/// predicate by default) or the sigstore client protocol's last argument `FILE_OR_DIGEST` (an
/// artifact: a file, hashed, or `sha256:HEX`; any in-toto predicate unless `--type`).
#[derive(Args)]
pub struct BundleArgs {
    /// The image manifest digest the bundle must cover (`sha256:HEX`).
    #[arg(long, conflicts_with = "file_or_digest")]
    digest: Option<String>,
    /// The sigstore bundle (JSON).
    #[arg(long)]
    bundle: PathBuf,
    /// Expected in-toto predicate type (default: cosign's image signature predicate with
    /// `--digest`, any with FILE_OR_DIGEST).
    #[arg(long = "type")]
    predicate_type: Option<String>,
    /// Do not require a transparency log entry (as cosign's flag).
    #[arg(long)]
    insecure_ignore_tlog: bool,
    /// Do not require a signed certificate timestamp (as cosign's flag).
    #[arg(long)]
    insecure_ignore_sct: bool,
    #[command(flatten)]
    signer: SignerArgs,
    /// The signed artifact: a file (its SHA-256 is verified) or `sha256:HEX`.
    #[arg(value_name = "FILE_OR_DIGEST")]
    file_or_digest: Option<String>,
}

/// A well-formed `sha256:` digest, normalised to lowercase hex; `None` for anything else.
fn parse_digest(text: &str) -> Option<String> {
    let hex = text.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The digest the bundle must cover, from `--digest` or `FILE_OR_DIGEST`, and whether it names
/// an artifact. Anything malformed is a usage error (exit 2), never a verdict.
fn subject(args: &BundleArgs) -> Result<(String, bool)> {
    match (&args.digest, &args.file_or_digest) {
        (Some(d), None) => parse_digest(d)
            .map(|d| (d, false))
            .with_context(|| format!("--digest {d:?} is not sha256: followed by 64 hex digits")),
        (None, Some(arg)) if arg.starts_with("sha256:") => parse_digest(arg)
            .map(|d| (d, true))
            .with_context(|| format!("{arg:?} is not sha256: followed by 64 hex digits")),
        (None, Some(arg)) => {
            let path = Path::new(arg);
            let meta = std::fs::metadata(path).with_context(|| {
                format!("FILE_OR_DIGEST {arg:?} is neither a file nor sha256:HEX")
            })?;
            if !meta.is_file() {
                bail!("FILE_OR_DIGEST {arg:?} is not a regular file");
            }
            let mut file =
                std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            std::io::copy(&mut file, &mut hasher)
                .with_context(|| format!("reading {}", path.display()))?;
            let digest = sha2::Digest::finalize(hasher);
            Ok((format!("sha256:{}", hex::encode(digest)), true))
        }
        (None, None) => bail!("give the artifact (FILE_OR_DIGEST) or --digest"),
        (Some(_), Some(_)) => bail!("give FILE_OR_DIGEST or --digest, not both"),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn matcher(
    exact: Option<&String>,
    regexp: Option<&String>,
    what: &str,
) -> Result<Option<StringMatcher>> {
    match (exact, regexp) {
        (Some(_), Some(_)) => bail!("give --{what} or --{what}-regexp, not both"),
        (Some(exact), None) => Ok(Some(StringMatcher::Exact(exact.clone()))),
        (None, Some(pattern)) => Ok(Some(
            StringMatcher::regex(pattern).with_context(|| format!("--{what}-regexp"))?,
        )),
        (None, None) => Ok(None),
    }
}

impl SignerArgs {
    fn signer(&self) -> Result<DetachedSigner> {
        let subject = matcher(
            self.certificate_identity.as_ref(),
            self.certificate_identity_regexp.as_ref(),
            "certificate-identity",
        )?;
        let issuer = matcher(
            self.certificate_oidc_issuer.as_ref(),
            self.certificate_oidc_issuer_regexp.as_ref(),
            "certificate-oidc-issuer",
        )?;
        match (&self.key, subject) {
            (Some(_), Some(_)) => bail!("give --key or a certificate identity, not both"),
            (Some(key), None) => Ok(DetachedSigner::Key(read_text(key)?)),
            (None, Some(subject)) => {
                let Some(issuer) = issuer else {
                    bail!("a certificate identity needs --certificate-oidc-issuer[-regexp]");
                };
                Ok(DetachedSigner::Identity(IdentityMatcher {
                    san: None,
                    subject,
                    issuer: Some(issuer),
                    extensions: Vec::new(),
                }))
            }
            (None, None) => bail!("give --key, or --certificate-identity[-regexp] with --certificate-oidc-issuer[-regexp]"),
        }
    }

    /// The trust material given; with none at all and `public_good_default`, the built-in
    /// Sigstore public-good root.
    fn trust(&self, public_good_default: bool) -> Result<TrustMaterial> {
        let none_given = self.trusted_root.is_none()
            && self.ca_roots.is_none()
            && self.rekor_key.is_none()
            && self.ctlog_key.is_none();
        let mut trust = match &self.trusted_root {
            Some(path) => TrustMaterial::from_trusted_root_json(
                &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("parsing {}", path.display()))?,
            None if none_given && public_good_default => {
                imagegate::verify::public_good::trust_material()
                    .context("the built-in Sigstore public-good trusted root")?
            }
            None => TrustMaterial::default(),
        };
        if let Some(path) = &self.ca_roots {
            trust
                .add_ca_pem(&read_text(path)?)
                .with_context(|| format!("{}", path.display()))?;
        }
        if let Some(path) = &self.rekor_key {
            trust
                .add_rekor_key_pem(&read_text(path)?)
                .with_context(|| format!("{}", path.display()))?;
        }
        if let Some(path) = &self.ctlog_key {
            trust
                .add_ctlog_key_pem(&read_text(path)?)
                .with_context(|| format!("{}", path.display()))?;
        }
        // Entries the root lists but imagegate cannot use: evidence from them is refused.
        for (what, u) in trust
            .unusable_tlogs
            .iter()
            .map(|u| ("transparency", u))
            .chain(trust.unusable_ctlogs.iter().map(|u| ("CT", u)))
        {
            eprintln!("imagegate: warning: trusted root: {what} {u}");
        }
        Ok(trust)
    }
}

/// Prints the outcome and returns the exit code.
fn report(
    result: Result<imagegate::verify::Verified, imagegate::verify::VerifyError>,
    output: super::Output,
) -> Result<i32> {
    let (code, value) = match &result {
        Ok(verified) => (
            0,
            serde_json::json!({"verified": true, "authority": verified.authority, "digest": verified.digest,
                "signed_at": verified.signed_at, "tlog_index": verified.tlog_index}),
        ),
        Err(error) => (
            1,
            serde_json::json!({"verified": false, "error_kind": error.kind(),
                "error": imagegate::telemetry::error_chain(error)}),
        ),
    };
    match output {
        super::Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        super::Output::Text => match &result {
            Ok(verified) => println!(
                "verified: signature over {} by {}",
                verified.digest, verified.authority
            ),
            Err(error) => println!(
                "NOT verified ({}): {}",
                serde_json::to_value(error.kind())?.as_str().unwrap_or("?"),
                imagegate::telemetry::error_chain(error)
            ),
        },
    }
    Ok(code)
}

/// `imagegate verify-signature`.
pub fn signature(args: &SignatureArgs) -> Result<i32> {
    let detached = DetachedSignature {
        digest: args.digest.clone(),
        payload: std::fs::read(&args.payload)
            .with_context(|| format!("reading {}", args.payload.display()))?,
        signature_b64: read_text(&args.signature)?,
        certificate_pem: args.certificate.as_deref().map(read_text).transpose()?,
        chain_pem: args
            .certificate_chain
            .as_deref()
            .map(read_text)
            .transpose()?,
        rekor_bundle: args.rekor_bundle.as_deref().map(read_text).transpose()?,
        signer: args.signer.signer()?,
        trust: args.signer.trust(false)?,
        insecure_ignore_tlog: args.insecure_ignore_tlog,
        insecure_ignore_sct: args.insecure_ignore_sct,
    };
    report(verify_detached_signature(&detached), args.signer.output)
}

/// `imagegate verify-bundle`.
pub fn bundle(args: &BundleArgs) -> Result<i32> {
    let (digest, artifact) = subject(args)?;
    let signer = args.signer.signer()?;
    let trust = args.signer.trust(true)?;
    let bundle = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    report(
        verify_detached_bundle(
            &digest,
            &bundle,
            &signer,
            trust,
            args.predicate_type.as_deref(),
            BundleOptions {
                artifact,
                insecure_ignore_tlog: args.insecure_ignore_tlog,
                insecure_ignore_sct: args.insecure_ignore_sct,
            },
        ),
        args.signer.output,
    )
}
