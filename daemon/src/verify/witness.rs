//! Transparency-log witnesses (C2SP tlog-cosignature): parties that check a log stays
//! append-only and cosign its checkpoints. A log that shows one client a different tree than
//! everyone else (a split view) cannot get that tree cosigned by witnesses that compare notes, so
//! requiring their cosignatures closes what a log key alone cannot. Witnesses are configured per
//! trust entry (`witnesses`, `witness_threshold`); with none configured, cosignature lines are
//! ignored, as the signed-note format says of signatures by unknown keys.

use base64::Engine;
use sha2::{Digest, Sha256};

use super::error::VerifyError;

/// Signed-note signature type of a plain Ed25519 note signature (the message is the note text).
const TYPE_ED25519: u8 = 0x01;
/// Signed-note signature type of an Ed25519 `cosignature/v1` (timestamp, then the signature over
/// `cosignature/v1\ntime <t>\n` followed by the note text).
const TYPE_COSIGNATURE_V1: u8 = 0x04;
/// ML-DSA-44 cosignatures: named so the refusal can say what it is.
const TYPE_ML_DSA_44: u8 = 0x06;

/// How a witness signs a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Ed25519Note,
    CosignatureV1,
}

/// One witness: its name, the 4-byte key id signature lines carry, and its Ed25519 key.
#[derive(Debug, Clone)]
pub struct Witness {
    pub name: String,
    key_id: [u8; 4],
    scheme: Scheme,
    key: ed25519_dalek::VerifyingKey,
}

fn vkey_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::KeyParse {
        detail: format!("witness verifier key: {detail}"),
    }
}

impl Witness {
    /// Parse a signed-note verifier key, `<name>+<key id, 8 hex digits>+<base64(type || key)>`,
    /// of type 0x04 (Ed25519 `cosignature/v1`) or 0x01 (Ed25519 note signature). The key id
    /// must be the one the name and key imply (SHA-256(name || "\n" || type || key)[:4]).
    pub fn from_vkey(vkey: &str) -> Result<Self, VerifyError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(vkey_err("expected <name>+<key id>+<base64 key>"));
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
            return Err(vkey_err(format!("invalid name {name:?}")));
        }
        let id: [u8; 4] = hex::decode(id_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| vkey_err(format!("key id {id_hex:?} is not 8 hex digits")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key_b64)
            .map_err(|_| vkey_err("key is not base64"))?;
        let (&kind, key) = raw.split_first().ok_or_else(|| vkey_err("key is empty"))?;
        let scheme = match kind {
            TYPE_COSIGNATURE_V1 => Scheme::CosignatureV1,
            TYPE_ED25519 => Scheme::Ed25519Note,
            TYPE_ML_DSA_44 => return Err(vkey_err("ML-DSA-44 cosignatures are not supported")),
            other => return Err(vkey_err(format!("unsupported signature type {other:#04x}"))),
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| vkey_err("an Ed25519 key is 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(vkey_err)?;
        if key_id(name, kind, key.as_bytes()) != id {
            return Err(vkey_err(format!(
                "key id {id_hex} is not the one {name:?} and its key give"
            )));
        }
        Ok(Witness {
            name: name.to_owned(),
            key_id: id,
            scheme,
            key,
        })
    }

    /// Whether a signature line's `raw` (key id, then the signature) by this witness verifies
    /// over the note `text`. A line for another key id is not this witness's (`None`).
    fn cosigned(&self, name: &str, raw: &[u8], text: &str) -> Option<bool> {
        if name != self.name || raw.get(..4) != Some(self.key_id.as_slice()) {
            return None;
        }
        let body = &raw[4..];
        let (message, sig) = match self.scheme {
            Scheme::Ed25519Note => (text.as_bytes().to_vec(), body),
            Scheme::CosignatureV1 => {
                let Some((time, sig)) = body.split_first_chunk::<8>() else {
                    return Some(false);
                };
                let time = u64::from_be_bytes(*time);
                if time > i64::MAX as u64 {
                    return Some(false);
                }
                (
                    format!("cosignature/v1\ntime {time}\n{text}").into_bytes(),
                    sig,
                )
            }
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return Some(false);
        };
        Some(self.key.verify_strict(&message, &sig).is_ok())
    }
}

/// SHA-256(name || "\n" || type || key)[:4], the signed-note key id.
fn key_id(name: &str, kind: u8, key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', kind]);
    h.update(key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The witnesses a trust entry requires, and how many of them must cosign each checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Witnesses {
    pub keys: Vec<Witness>,
    /// At least 1 and at most `keys.len()` when `keys` is not empty.
    pub threshold: usize,
}

impl Witnesses {
    /// `keys` (distinct names), of which `threshold` must cosign; all of them if `None`.
    pub fn new(keys: Vec<Witness>, threshold: Option<usize>) -> Result<Self, VerifyError> {
        let threshold = threshold.unwrap_or(keys.len());
        if keys.is_empty() && threshold > 0 {
            return Err(vkey_err("a witness threshold needs witnesses"));
        }
        if !keys.is_empty() && !(1..=keys.len()).contains(&threshold) {
            return Err(vkey_err(format!(
                "witness threshold {threshold} is not between 1 and the {} witnesses named",
                keys.len()
            )));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.name == k.name) {
                return Err(vkey_err(format!("witness {} is named twice", k.name)));
            }
        }
        Ok(Witnesses { keys, threshold })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Check a checkpoint's signature lines (`name`, decoded key id and signature) over its
    /// `text`: the names of the configured witnesses that cosigned it, at least `threshold` of
    /// them. A line carrying a configured witness's name and key id that does not verify refuses
    /// the checkpoint (it claims a cosignature it does not have).
    pub fn check(&self, text: &str, lines: &[(&str, Vec<u8>)]) -> Result<Vec<String>, VerifyError> {
        let mut cosigned = Vec::new();
        for w in &self.keys {
            for (name, raw) in lines {
                match w.cosigned(name, raw, text) {
                    None => continue,
                    Some(false) => {
                        return Err(VerifyError::TlogProof {
                            detail: format!(
                                "checkpoint cosignature by witness {} does not verify",
                                w.name
                            ),
                        })
                    }
                    Some(true) => {
                        cosigned.push(w.name.clone());
                        break;
                    }
                }
            }
        }
        if cosigned.len() < self.threshold {
            let missing: Vec<&str> = self
                .keys
                .iter()
                .map(|w| w.name.as_str())
                .filter(|n| !cosigned.iter().any(|c| c == n))
                .collect();
            return Err(VerifyError::TlogProof {
                detail: format!(
                    "checkpoint cosigned by {} of the witnesses, {} required (no cosignature by {})",
                    cosigned.len(),
                    self.threshold,
                    missing.join(", ")
                ),
            });
        }
        Ok(cosigned)
    }
}

/// Test support: a witness from a fixed seed, its vkey and cosignature lines.
#[cfg(test)]
pub(crate) mod testing {
    use base64::Engine;
    use ed25519_dalek::Signer;

    pub struct TestWitness {
        pub name: String,
        pub sk: ed25519_dalek::SigningKey,
    }

    impl TestWitness {
        pub fn new(name: &str, seed: u8) -> Self {
            TestWitness {
                name: name.to_owned(),
                sk: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
            }
        }
        pub fn vkey(&self, kind: u8) -> String {
            let key = self.sk.verifying_key();
            let id = super::key_id(&self.name, kind, key.as_bytes());
            let mut raw = vec![kind];
            raw.extend_from_slice(key.as_bytes());
            format!(
                "{}+{}+{}",
                self.name,
                hex::encode(id),
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        }
        /// A `cosignature/v1` line over `text` at `time`.
        pub fn cosign(&self, text: &str, time: u64) -> String {
            let id = super::key_id(&self.name, 4, self.sk.verifying_key().as_bytes());
            let sig = self
                .sk
                .sign(format!("cosignature/v1\ntime {time}\n{text}").as_bytes());
            let mut raw = id.to_vec();
            raw.extend_from_slice(&time.to_be_bytes());
            raw.extend_from_slice(&sig.to_bytes());
            format!(
                "\u{2014} {} {}\n",
                self.name,
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        }
        /// A plain Ed25519 note signature line over `text`.
        pub fn note_sign(&self, text: &str) -> String {
            let id = super::key_id(&self.name, 1, self.sk.verifying_key().as_bytes());
            let mut raw = id.to_vec();
            raw.extend_from_slice(&self.sk.sign(text.as_bytes()).to_bytes());
            format!(
                "\u{2014} {} {}\n",
                self.name,
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::TestWitness;
    use super::*;

    #[test]
    fn verifier_keys_are_read_as_signed_note_vkeys() {
        let w = TestWitness::new("witness.example/w1", 3);
        let parsed = Witness::from_vkey(&w.vkey(4)).unwrap();
        assert_eq!(parsed.name, "witness.example/w1");
        assert_eq!(parsed.scheme, Scheme::CosignatureV1);
        assert_eq!(
            Witness::from_vkey(&w.vkey(1)).unwrap().scheme,
            Scheme::Ed25519Note
        );
        // The key id must match; the type must be one imagegate verifies.
        let vkey = w.vkey(4);
        let (name, rest) = vkey.split_once('+').unwrap();
        let (_, key) = rest.split_once('+').unwrap();
        for (bad, why) in [
            (format!("{name}+00000000+{key}"), "is not the one"),
            (format!("{name}+0000+{key}"), "8 hex digits"),
            (name.to_owned(), "expected"),
            (w.vkey(6), "ML-DSA-44"),
            (w.vkey(2), "unsupported signature type 0x02"),
            (format!("+00000000+{key}"), "invalid name"),
        ] {
            let e = Witness::from_vkey(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn thresholds_are_between_one_and_the_witnesses_named() {
        let a = Witness::from_vkey(&TestWitness::new("a", 1).vkey(4)).unwrap();
        let b = Witness::from_vkey(&TestWitness::new("b", 2).vkey(4)).unwrap();
        assert_eq!(
            Witnesses::new(vec![a.clone(), b.clone()], None)
                .unwrap()
                .threshold,
            2
        );
        assert!(Witnesses::new(vec![a.clone(), b.clone()], Some(1)).is_ok());
        assert!(Witnesses::new(vec![a.clone(), b], Some(3)).is_err());
        assert!(Witnesses::new(vec![a.clone()], Some(0)).is_err());
        assert!(Witnesses::new(vec![], Some(1)).is_err());
        assert!(Witnesses::new(vec![a.clone(), a], Some(1)).is_err());
        assert!(Witnesses::new(vec![], None).unwrap().is_empty());
    }
}
