#!/usr/bin/python3
"""Signs image manifest digests as cosign 3.1+ does with Rekor v2 (rekor-tiles) and a TSA, for
imagegate's end-to-end tests; independent of imagegate's Rust verifier (tests/signer/testsigstore.py).

One run makes one private sigstore with fresh keys: a Fulcio-style CA (P-384), a CT log (P-256),
a Rekor v2 log (Ed25519, checkpoint origin = its name, log id = the C2SP key id) and a TSA
(P-384 root, P-256 leaf). For each `--sign STEM DIGEST REPOSITORY` it writes OUT/STEM.sigstore.json:
a bundle v0.3 with

- a short-lived leaf certificate (email SAN, OIDC issuer extension .1.8, embedded SCT),
- a DSSE envelope over an in-toto v1 statement, predicate https://sigstore.dev/cosign/sign/v1,
  subject REPOSITORY with the digest (what cosign signs for an image with the new bundle format),
- one tlog entry, `dsse` 0.0.2 (default) or `hashedrekord` 0.0.2 over the PAE's SHA-256
  (`--entry STEM=hashedrekord`), with an inclusion proof in a tree of a few other leaves and a
  checkpoint signed by the log key and cosigned by a witness (C2SP tlog-cosignature, Ed25519
  cosignature/v1); no integratedTime, no inclusionPromise,
- one RFC 3161 timestamp over the signature in timestampVerificationData.

`--tamper STEM=WHAT` spoils one thing only Rekor v2 verification catches:
  checkpoint-other-key       the checkpoint signed by another Ed25519 key under the log's name and hint
  timestamp-after-certificate  the TSA's genTime an hour after the leaf certificate expired
                                (the timestamp is the only signing time a v2 entry has)

Also OUT/trusted_root.json (CA, tlog, ctlog, TSA) and OUT/signer.json (identity, issuer, log
origin and id, the witness's verifier key, and the verifier key of another witness that
cosigned nothing). Usage:
  sign_rekor_v2.py --out DIR --identity EMAIL --issuer URL --sign STEM sha256:HEX REPO [...]
"""
import argparse, datetime, json, os, sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testsigstore as ts
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

LOG_NAME = "rekor-v2.imagegate.test"
WITNESS_NAME = "witness.imagegate.test/w1"
TAMPERS = ("checkpoint-other-key", "timestamp-after-certificate")

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--identity", default="dev@imagegate.test")
    ap.add_argument("--issuer", default="https://issuer.imagegate.test")
    ap.add_argument("--sign", nargs=3, action="append", metavar=("STEM", "DIGEST", "REPOSITORY"), required=True)
    ap.add_argument("--entry", action="append", default=[], metavar="STEM=dsse|hashedrekord")
    ap.add_argument("--tamper", action="append", default=[], metavar="STEM=" + "|".join(TAMPERS))
    args = ap.parse_args()
    entries = dict(e.split("=", 1) for e in args.entry)
    tampers = dict(t.split("=", 1) for t in args.tamper)
    stems = {s for s, _, _ in args.sign}
    for what, table, allowed in (("entry", entries, ("dsse", "hashedrekord")), ("tamper", tampers, TAMPERS)):
        for stem, value in table.items():
            if stem not in stems or value not in allowed:
                ap.error(f"--{what} {stem}={value}: no such --sign STEM or value (one of {', '.join(allowed)})")

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = ts.name("imagegate.test", "imagegate-test-fulcio")
    ca = ts.make_ca(ca_key, ca_name, now)
    ct_key = ec.generate_private_key(ec.SECP256R1())
    log_key = ed25519.Ed25519PrivateKey.generate()
    log_id = ts.c2sp_key_id(LOG_NAME, log_key)
    witness_key = ed25519.Ed25519PrivateKey.generate()
    absent_witness_key = ed25519.Ed25519PrivateKey.generate()
    tsa_root_key = ec.generate_private_key(ec.SECP384R1())
    tsa_name = ts.name("imagegate.test", "imagegate-test-tsa")
    tsa_root = ts.make_ca(tsa_root_key, tsa_name, now, path_length=0)
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa_leaf = ts.make_tsa_leaf(tsa_key, tsa_root_key, tsa_name, now)

    os.makedirs(args.out, exist_ok=True)
    # The log holds a few entries of other signers before ours; each bundle is entry N of it.
    others = [ts.leaf(f"another entry {i}".encode()) for i in range(len(args.sign) + 5)]
    for i, (stem, digest, repo) in enumerate(args.sign):
        key = ec.generate_private_key(ec.SECP256R1())
        not_before = now - datetime.timedelta(minutes=1)
        cert = ts.leaf_cert(key, signer=ca_key, issuer_name=ca_name, issuer_spki=ts.spki_der(ca_key), sct_key=ct_key,
                            not_before=not_before, minutes=10, email=args.identity, issuer_v2=args.issuer)
        statement = ts.statement(digest, repo)
        pae = ts.pae(ts.IN_TOTO, statement)
        sig = ts.sign(key, pae)
        if entries.get(stem, "dsse") == "dsse":
            kind, body = "dsse", ts.dsse_v002(statement, sig, key, cert)
        else:
            kind, body = "hashedrekord", ts.hashedrekord_v002(ts.sha256(pae), sig, key, cert)
        leaves = others[: 3 + i] + [ts.leaf(body)] + others[3 + i:]
        index = 3 + i
        root = ts.merkle_root(leaves)
        signer = log_key
        if tampers.get(stem) == "checkpoint-other-key":
            signer = ed25519.Ed25519PrivateKey.generate()
        envelope = ts.checkpoint(len(leaves), root, key=signer, name=LOG_NAME, origin=LOG_NAME, hint=log_id)
        envelope = ts.cosign_checkpoint(envelope, key=witness_key, name=WITNESS_NAME, time=int(now.timestamp()))
        at = now
        if tampers.get(stem) == "timestamp-after-certificate":
            at = not_before + datetime.timedelta(minutes=10, hours=1)
        token = ts.timestamp_token(sig, at=at, key=tsa_key, cert=tsa_leaf)
        bundle = {
            "mediaType": ts.BUNDLE_V03,
            "verificationMaterial": {
                "certificate": {"rawBytes": ts.b64(ts.cert_der(cert))},
                "tlogEntries": [{
                    "logIndex": str(index),
                    "logId": {"keyId": ts.b64(log_id)},
                    "kindVersion": {"kind": kind, "version": "0.0.2"},
                    "inclusionProof": {"logIndex": str(index), "rootHash": ts.b64(root), "treeSize": str(len(leaves)),
                                       "hashes": [ts.b64(h) for h in ts.inclusion_path(index, leaves)],
                                       "checkpoint": {"envelope": envelope}},
                    "canonicalizedBody": ts.b64(body),
                }],
                "timestampVerificationData": {"rfc3161Timestamps": [{"signedTimestamp": ts.b64(token)}]},
            },
            "dsseEnvelope": {"payload": ts.b64(statement), "payloadType": ts.IN_TOTO,
                             "signatures": [{"sig": ts.b64(sig), "keyid": ""}]},
        }
        with open(os.path.join(args.out, f"{stem}.sigstore.json"), "w") as f:
            json.dump(bundle, f, indent=1)

    root = ts.trusted_root(
        tlogs=[ts.log_entry(log_key, log_id, base_url="https://" + LOG_NAME, key_details_name="PKIX_ED25519")],
        ca_certs=[ca],
        ctlogs=[ts.log_entry(ct_key, ts.sha256(ts.spki_der(ct_key)), base_url="https://ctfe.imagegate.test")],
        tsa_chain=[tsa_leaf, tsa_root])
    with open(os.path.join(args.out, "trusted_root.json"), "w") as f:
        json.dump(root, f, indent=2)
    with open(os.path.join(args.out, "signer.json"), "w") as f:
        json.dump({"identity": args.identity, "issuer": args.issuer, "log_origin": LOG_NAME, "log_id": ts.b64(log_id),
                   "witness_vkey": ts.vkey(WITNESS_NAME, witness_key, 4),
                   "absent_witness_vkey": ts.vkey("witness.imagegate.test/w2", absent_witness_key, 4),
                   "signed": [{"stem": s, "digest": d, "repository": r, "entry": entries.get(s, "dsse"),
                               "tamper": tampers.get(s)} for s, d, r in args.sign]}, f, indent=1)

if __name__ == "__main__":
    main()
