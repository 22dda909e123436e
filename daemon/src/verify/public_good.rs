//! The Sigstore public-good production trust root, compiled in (`daemon/trust/sigstore-public-good`,
//! from github.com/sigstore/root-signing `targets/trusted_root.json`; its README names the commit
//! and sha256). `verify-bundle` uses it when given no trust material, as other Sigstore clients
//! use their built-in production root. This copy is not refreshed; the daemon's TUF client
//! (`crate::tuf`, a policy's `trusted_root = "public-good"`) keeps a current one.

use super::error::VerifyError;
use super::trust::TrustMaterial;

/// The file's bytes, exactly as published.
pub const TRUSTED_ROOT_JSON: &[u8] =
    include_bytes!("../../trust/sigstore-public-good/trusted_root.json");

/// sha256 of [`TRUSTED_ROOT_JSON`], as its README records it.
pub const TRUSTED_ROOT_SHA256: &str =
    "6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66";

/// Parse the built-in root.
pub fn trust_material() -> Result<TrustMaterial, VerifyError> {
    TrustMaterial::from_trusted_root_json(TRUSTED_ROOT_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_built_in_root_is_the_recorded_file_and_fully_usable() {
        assert_eq!(
            hex::encode(Sha256::digest(TRUSTED_ROOT_JSON)),
            TRUSTED_ROOT_SHA256
        );
        let tm = trust_material().expect("built-in root parses");
        assert_eq!(tm.tlogs.len(), 2, "Rekor v1 and v2");
        assert_eq!(tm.ctlogs.len(), 2);
        assert!(tm.unusable_tlogs.is_empty() && tm.unusable_ctlogs.is_empty());
        assert!(!tm.cas.is_empty() && !tm.tsas.is_empty());
    }
}
