"""Primitives of an independent test sigstore, written from the specs (simple signing, Rekor SETs
and entry bodies v1 and v2, RFC 6962 SCTs, DSSE, bundle v0.3, RFC 9162 Merkle proofs, C2SP
signed-note checkpoints, RFC 3161 timestamp tokens) with Python `cryptography` (Debian's
python3-cryptography), sharing no code with imagegate's Rust verifier.

Used by tests/fixtures/generated/gen.py (the committed fixtures) and by sign_rekor_v2.py (the
signer the daemon's end-to-end tests run at test time). Every function takes its keys, names and
times as arguments: no module state, no randomness beyond the keys callers make.
"""
import base64, datetime, hashlib, json
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID, ObjectIdentifier
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, ed25519, padding

SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
IN_TOTO = "application/vnd.in-toto+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"

def b64(b): return base64.b64encode(b).decode()
def sha256(b): return hashlib.sha256(b).digest()

def pem_pub(k):
    return k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
def spki_der(k):
    return k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
def cert_pem(c):
    return c.public_bytes(serialization.Encoding.PEM).decode()
def cert_der(c):
    return c.public_bytes(serialization.Encoding.DER)
def der_utf8(s):
    b = s.encode(); assert len(b) < 128
    return bytes([0x0c, len(b)]) + b
def der_octets(b):
    n = len(b)
    if n < 128: return bytes([0x04, n]) + b
    if n < 256: return bytes([0x04, 0x81, n]) + b
    return bytes([0x04, 0x82, n >> 8, n & 0xff]) + b

def payload(digest, ref, typ="cosign container image signature"):
    """cosign's simple-signing payload."""
    return json.dumps({"critical": {"identity": {"docker-reference": ref}, "image": {"docker-manifest-digest": digest}, "type": typ},
                       "optional": None}, separators=(",", ":")).encode()

def sign(key, msg, h=hashes.SHA256()):
    if isinstance(key, ec.EllipticCurvePrivateKey): return key.sign(msg, ec.ECDSA(h))
    if isinstance(key, rsa.RSAPrivateKey): return key.sign(msg, padding.PKCS1v15(), h)
    if isinstance(key, ed25519.Ed25519PrivateKey): return key.sign(msg)
    raise ValueError(key)

# --- Ed25519ph (RFC 8032 5.1, phflag=1, empty context); cryptography has no ph variant ---
P = 2**255 - 19; L = 2**252 + 27742317777372353535851937790883648493
def _inv(x): return pow(x, P - 2, P)
D = -121665 * _inv(121666) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
def _add(a, b):
    A = (a[1] - a[0]) * (b[1] - b[0]) % P; B = (a[1] + a[0]) * (b[1] + b[0]) % P
    C = 2 * a[3] * b[3] * D % P; Dd = 2 * a[2] * b[2] % P
    E, F, G, H = B - A, Dd - C, Dd + C, B + A
    return (E * F % P, G * H % P, F * G % P, E * H % P)
def _mul(s, pt):
    q = (0, 1, 1, 0)
    while s:
        if s & 1: q = _add(q, pt)
        pt = _add(pt, pt); s >>= 1
    return q
def _x(y, sign):
    x2 = (y * y - 1) * _inv(D * y * y + 1) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P: x = x * SQRT_M1 % P
    if x & 1 != sign: x = P - x
    return x
_GY = 4 * _inv(5) % P; _GX = _x(_GY, 0); _G = (_GX, _GY, 1, _GX * _GY % P)
def _enc(pt):
    zi = _inv(pt[2]); x = pt[0] * zi % P; y = pt[1] * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")
def ed25519_sign(seed, msg, ph):
    """Ed25519 (ph=False) or Ed25519ph (ph=True) over `msg` with the 32-byte `seed`."""
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    dom = b"SigEd25519 no Ed25519 collisions\x01\x00" if ph else b""
    m = hashlib.sha512(msg).digest() if ph else msg
    A = _enc(_mul(a, _G))
    r = int.from_bytes(hashlib.sha512(dom + h[32:] + m).digest(), "little") % L
    R = _enc(_mul(r, _G))
    k = int.from_bytes(hashlib.sha512(dom + R + A + m).digest(), "little") % L
    return R + ((r + k * a) % L).to_bytes(32, "little")

# --- certificate authorities ---
def name(org, cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])

def make_ca(key, subject, t0, path_length=1):
    """A self-signed CA valid from a year before `t0` to ten years after."""
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(t0 - datetime.timedelta(days=365))
            .not_valid_after(t0 + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA384()))

def make_tsa_leaf(key, issuer_key, issuer_name, t0):
    """A timestamping leaf (EKU timeStamping, critical) valid from 30 days before `t0` for a year."""
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagegate-test-tsa-leaf")]))
            .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(t0 - datetime.timedelta(days=30)).not_valid_after(t0 + datetime.timedelta(days=365))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .sign(issuer_key, hashes.SHA384()))

# --- minimal DER encoder for the timestamp token (cryptography cannot build RFC 3161 tokens) ---
def der_len(n):
    if n < 128: return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big"); return bytes([0x80 | len(b)]) + b
def tlv(tag, content): return bytes([tag]) + der_len(len(content)) + content
def d_seq(*items): return tlv(0x30, b"".join(items))
def d_set(*items): return tlv(0x31, b"".join(sorted(items)))
def d_int(v):
    b = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True); return tlv(0x02, b)
def d_oid(dotted):
    parts = [int(x) for x in dotted.split(".")]; out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        enc = [p & 0x7f]; p >>= 7
        while p: enc.insert(0, 0x80 | (p & 0x7f)); p >>= 7
        out += bytes(enc)
    return tlv(0x06, out)
def d_octets(b): return tlv(0x04, b)
SHA256_ALG = d_seq(d_oid("2.16.840.1.101.3.4.2.1"))

def timestamp_token(signature, *, at, key, cert, imprint_over=None, corrupt=False):
    """An RFC 3161 TimeStampResp over SHA-256(`signature`) at `at` (whole seconds), signed by the
    TSA `key` (ECDSA P-256) whose certificate `cert` is embedded."""
    gen = tlv(0x18, at.strftime("%Y%m%d%H%M%SZ").encode())
    imprint = d_seq(SHA256_ALG, d_octets(sha256(imprint_over if imprint_over is not None else signature)))
    tst = d_seq(d_int(1), d_oid("1.2.3.4.5"), imprint, d_int(4242), gen)
    econtent = d_seq(d_oid("1.2.840.113549.1.9.16.1.4"), tlv(0xa0, d_octets(tst)))
    attrs = [d_seq(d_oid("1.2.840.113549.1.9.3"), d_set(d_oid("1.2.840.113549.1.9.16.1.4"))),
             d_seq(d_oid("1.2.840.113549.1.9.4"), d_set(d_octets(sha256(tst))))]
    signed_attrs = d_set(*attrs)
    sig = key.sign(signed_attrs + (b"x" if corrupt else b""), ec.ECDSA(hashes.SHA256()))
    sid = d_seq(cert.issuer.public_bytes(), d_int(cert.serial_number))
    signer_info = d_seq(d_int(1), sid, SHA256_ALG, b"\xa0" + signed_attrs[1:], d_seq(d_oid("1.2.840.10045.4.3.2")), d_octets(sig))
    certs = tlv(0xa0, cert.public_bytes(serialization.Encoding.DER))
    signed_data = d_seq(d_int(3), d_set(SHA256_ALG), econtent, certs, d_set(signer_info))
    content_info = d_seq(d_oid("1.2.840.113549.1.7.2"), tlv(0xa0, signed_data))
    return d_seq(d_seq(d_int(0)), content_info)

# --- Fulcio-style certificates with embedded SCTs ---
def sct_list(tbs, ts_ms, log_key, issuer_pub_der, corrupt=False):
    """An RFC 6962 SignedCertificateTimestampList with one precertificate SCT by `log_key`."""
    ext = b""
    signed = (b"\x00\x00" + ts_ms.to_bytes(8, "big") + b"\x00\x01" + sha256(issuer_pub_der)
              + len(tbs).to_bytes(3, "big") + tbs + len(ext).to_bytes(2, "big") + ext)
    sig = log_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    if corrupt: sig = log_key.sign(signed + b"x", ec.ECDSA(hashes.SHA256()))
    sct = (b"\x00" + sha256(spki_der(log_key)) + ts_ms.to_bytes(8, "big") + len(ext).to_bytes(2, "big") + ext
           + b"\x04\x03" + len(sig).to_bytes(2, "big") + sig)
    lst = len(sct).to_bytes(2, "big") + sct
    return len(lst).to_bytes(2, "big") + lst

def leaf_cert(leaf_key, *, signer, issuer_name, issuer_spki, sct_key, not_before, minutes=10, email=None, uri=None,
              issuer_v1=None, issuer_v2=None, sct="valid", extra=()):
    """A short-lived code-signing leaf issued by `signer` (named `issuer_name`): SANs, the OIDC
    issuer extensions (.1.1 and/or .1.8), `extra` (oid, value) extensions, and unless `sct` is
    "none" an embedded SCT by `sct_key` over the precertificate ("invalid": a bad signature)."""
    b = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(issuer_name).public_key(leaf_key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(not_before)
         .not_valid_after(not_before + datetime.timedelta(minutes=minutes))
         .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False))
    sans = ([x509.RFC822Name(email)] if email else []) + ([x509.UniformResourceIdentifier(uri)] if uri else [])
    b = b.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    if issuer_v1: b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), issuer_v1.encode()), critical=False)
    if issuer_v2: b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.57264.1.8"), der_utf8(issuer_v2)), critical=False)
    for oid, val in extra:
        b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier(oid), der_utf8(val)), critical=False)
    pre = b.sign(signer, hashes.SHA384())
    if sct == "none": return pre
    lst = sct_list(pre.tbs_certificate_bytes, int(not_before.timestamp() * 1000) + 1000, sct_key, issuer_spki,
                   corrupt=(sct == "invalid"))
    b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2"), der_octets(lst)), critical=False)
    return b.sign(signer, hashes.SHA384())

# --- Rekor v1 ---
def set_for(body_b64, *, key, log_id, integrated, index):
    """A Rekor v1 signed entry timestamp over the canonical JSON of the entry."""
    canon = json.dumps({"body": body_b64, "integratedTime": integrated, "logID": log_id.hex(), "logIndex": index},
                       sort_keys=True, separators=(",", ":")).encode()
    return b64(key.sign(canon, ec.ECDSA(hashes.SHA256())))

def hashedrekord(payload_hash_hex, sig, signer_pem):
    """A Rekor v1 hashedrekord 0.0.1 body (base64)."""
    return b64(json.dumps({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
        "data": {"hash": {"algorithm": "sha256", "value": payload_hash_hex}},
        "signature": {"content": b64(sig), "publicKey": {"content": b64(signer_pem.encode())}}}}, separators=(",", ":")).encode())

# --- Rekor v2 (rekor-tiles) entry bodies ---
def key_details(key):
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "PKIX_ECDSA_P256_SHA_256", 384: "PKIX_ECDSA_P384_SHA_384"}[key.curve.key_size]
    if isinstance(key, ed25519.Ed25519PrivateKey): return "PKIX_ED25519"
    raise ValueError(key)

def v2_verifier(signer_key, cert):
    """A Rekor v2 `Verifier`: the leaf certificate's DER (keyless) or the key's SPKI."""
    v = {"keyDetails": key_details(signer_key)}
    if cert is not None: v["x509Certificate"] = {"rawBytes": b64(cert_der(cert))}
    else: v["publicKey"] = {"rawBytes": b64(spki_der(signer_key))}
    return v

def dsse_v002(payload_bytes, sig, signer_key, cert):
    """A Rekor v2 dsse 0.0.2 body (JSON bytes): the payload's digest and the one signature."""
    return json.dumps({"apiVersion": "0.0.2", "kind": "dsse", "spec": {"dsseV002": {
        "payloadHash": {"algorithm": "SHA2_256", "digest": b64(sha256(payload_bytes))},
        "signatures": [{"content": b64(sig), "verifier": v2_verifier(signer_key, cert)}]}}}, separators=(",", ":")).encode()

def hashedrekord_v002(digest, sig, signer_key, cert):
    """A Rekor v2 hashedrekord 0.0.2 body (JSON bytes): `digest` is what was signed (for DSSE,
    SHA-256 of the PAE)."""
    return json.dumps({"apiVersion": "0.0.2", "kind": "hashedrekord", "spec": {"hashedRekordV002": {
        "data": {"algorithm": "SHA2_256", "digest": b64(digest)},
        "signature": {"content": b64(sig), "verifier": v2_verifier(signer_key, cert)}}}}, separators=(",", ":")).encode()

# --- RFC 9162 Merkle trees ---
def node(l, r): return sha256(b"\x01" + l + r)
def leaf(b): return sha256(b"\x00" + b)
def _split(n):
    k = 1
    while k * 2 < n: k *= 2
    return k
def merkle_root(leaves):
    """MTH over leaf hashes."""
    if len(leaves) == 1: return leaves[0]
    k = _split(len(leaves))
    return node(merkle_root(leaves[:k]), merkle_root(leaves[k:]))
def inclusion_path(index, leaves):
    """The audit path of leaf `index` (leaf hashes), bottom up."""
    if len(leaves) == 1: return []
    k = _split(len(leaves))
    if index < k: return inclusion_path(index, leaves[:k]) + [merkle_root(leaves[k:])]
    return inclusion_path(index - k, leaves[k:]) + [merkle_root(leaves[:k])]

# --- C2SP signed notes ---
def c2sp_key_id(name, key):
    """The C2SP signed-note key ID of an Ed25519 key: SHA-256(name, newline, 0x01, key)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256(name.encode() + b"\n" + b"\x01" + raw)

def vkey(name, key, sig_type):
    """A C2SP signed-note verifier key: name+hex(key id)+base64(type || Ed25519 key)."""
    raw = bytes([sig_type]) + key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = sha256(name.encode() + b"\n" + raw)[:4]
    return f"{name}+{key_id.hex()}+{b64(raw)}"

def cosign_checkpoint(envelope, *, key, name, time):
    """Append a C2SP tlog-cosignature (Ed25519 cosignature/v1, type 0x04) line by `key` as `name`
    to a signed checkpoint: the signed message is "cosignature/v1", "time T", then the note text."""
    text = envelope[: envelope.rindex("\n\n") + 1]
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = sha256(name.encode() + b"\n\x04" + raw)[:4]
    sig = key.sign(f"cosignature/v1\ntime {time}\n".encode() + text.encode())
    return envelope + "\u2014 " + name + " " + b64(key_id + time.to_bytes(8, "big") + sig) + "\n"

def checkpoint(size, root, *, key, name, origin, hint, extra_lines=()):
    """A tlog-checkpoint note (origin, size, root) signed by `key` as `name` with key hint `hint`."""
    text = f"{origin}\n{size}\n{b64(root)}\n" + "".join(f"{l}\n" for l in extra_lines)
    sig = sign(key, text.encode())
    return text + "\n\u2014 " + name + " " + b64(hint[:4] + sig) + "\n"

# --- DSSE and in-toto ---
def statement(digest, ref, pred=SIGN_PREDICATE, typ="https://in-toto.io/Statement/v1"):
    return json.dumps({"_type": typ, "subject": [{"name": ref, "digest": {"sha256": digest.split(":")[1]}}],
                       "predicateType": pred, "predicate": {}}, separators=(",", ":")).encode()
def pae(t, p): return b"DSSEv1 %d %s %d " % (len(t), t.encode(), len(p)) + p

# --- trusted_root.json ---
def log_entry(key, log_id, *, base_url, key_details_name="PKIX_ECDSA_P256_SHA_256", start="2025-01-01T00:00:00Z"):
    """One `tlogs`/`ctlogs` entry of a trusted root."""
    return {"baseUrl": base_url, "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": b64(spki_der(key)), "keyDetails": key_details_name, "validFor": {"start": start}},
            "logId": {"keyId": b64(log_id)}}

def trusted_root(*, tlogs, ca_certs, ctlogs, tsa_chain, org="imagegate.test", start="2025-01-01T00:00:00Z"):
    """A sigstore TrustedRoot (dict): the given log entries, one certificate authority whose chain
    is `ca_certs`, one timestamping authority whose chain is `tsa_chain` (leaf first)."""
    return {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": tlogs,
            "certificateAuthorities": [{"subject": {"organization": org, "commonName": "imagegate-test-fulcio"},
                                        "uri": "https://fulcio.imagegate.test",
                                        "certChain": {"certificates": [{"rawBytes": b64(cert_der(c))} for c in ca_certs]},
                                        "validFor": {"start": start}}],
            "ctlogs": ctlogs,
            "timestampAuthorities": [{"subject": {"organization": org, "commonName": "imagegate-test-tsa"},
                                      "uri": "https://tsa.imagegate.test",
                                      "certChain": {"certificates": [{"rawBytes": b64(cert_der(c))} for c in tsa_chain]},
                                      "validFor": {"start": start}}]}
