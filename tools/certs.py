"""Certificates for TLS and keys for device authentication, for a lab or a small fleet.

    python3 -m tools.certs ca --out certs/                       # certs/ca.pem, certs/ca.der, certs/ca.key
    python3 -m tools.certs server --ca certs/ --name hb.lan --out certs/   # certs/server.pem, server.key
    python3 -m tools.certs device-key --id dev-1 --keys keys.json --config config.json

`ca` makes a certificate authority (an EC P-256 key, ten years); `server` a server certificate signed by
it for one or more names (DNS names or IP addresses, first one also the common name); `device-key` a
random HMAC key for one device, added to the server's key file (`--auth-keys`) and to the device's
config.json as {"auth": {"id", "key"}}. Keys are written to files only (mode 0600), never printed.

Needs the `cryptography` package (pinned in requirements-dev.txt). The same files can be made with the
openssl command line; docs/SECURITY.md shows how.
"""
import argparse
import datetime
import ipaddress
import json
import os
import secrets
import sys

DAY = datetime.timedelta(days=1)


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise SystemExit("tools.certs: the 'cryptography' package is needed (pip install -r requirements-dev.txt)")
    return x509, hashes, serialization, ec, NameOID


def _write_private(path, data):
    # Created 0600 from the start: a key must never be readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _key_pem(key):
    _, _, serialization, _, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(out_dir, name="hb-keepalive test CA", days=3650, now=None):
    """Write ca.pem, ca.der and ca.key into out_dir; return the paths (pem, der, key)."""
    x509, hashes, serialization, ec, NameOID = _crypto()
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + days * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    os.makedirs(out_dir, exist_ok=True)
    pem, der, kpath = (os.path.join(out_dir, n) for n in ("ca.pem", "ca.der", "ca.key"))
    _write(pem, cert.public_bytes(serialization.Encoding.PEM))
    _write(der, cert.public_bytes(serialization.Encoding.DER))
    _write_private(kpath, _key_pem(key))
    return pem, der, kpath


def make_server(ca_dir, names, out_dir, days=825, expired=False, stem="server", now=None):
    """Write <stem>.pem and <stem>.key signed by the CA in ca_dir, valid for `names` (DNS names or IP
    addresses). expired=True makes one whose validity ended yesterday (for tests). Returns (pem, key)."""
    x509, hashes, serialization, ec, NameOID = _crypto()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    now = now or datetime.datetime.now(datetime.timezone.utc)
    with open(os.path.join(ca_dir, "ca.pem"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(ca_dir, "ca.key"), "rb") as f:
        ca_key = load_pem_private_key(f.read(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    alt = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    if expired:
        start, end = now - 30 * DAY, now - DAY
    else:
        start, end = now - DAY, now + days * DAY
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    os.makedirs(out_dir, exist_ok=True)
    pem, kpath = os.path.join(out_dir, stem + ".pem"), os.path.join(out_dir, stem + ".key")
    _write(pem, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(kpath, _key_pem(key))
    return pem, kpath


def add_device_key(device_id, keys_path, config_path=None, nbytes=32):
    """A fresh random key for device_id: into the server's key file (created if missing) and, when
    config_path is given, into that device config as {"auth": {"id", "key"}}. Returns nothing: the key
    stays in the files."""
    from firmware.hbkeep.auth import check_id

    check_id(device_id)
    key = secrets.token_hex(nbytes)
    keys = {}
    if os.path.exists(keys_path):
        with open(keys_path) as f:
            keys = json.load(f)
        if not isinstance(keys, dict):
            raise ValueError("%s: expected a JSON object of id -> hex key" % keys_path)
    keys[device_id] = key
    _write_private(keys_path, (json.dumps(keys, indent=1, sort_keys=True) + "\n").encode())
    if config_path:
        cfg = {}
        if os.path.exists(config_path):
            with open(config_path) as f:
                cfg = json.load(f)
        cfg["auth"] = {"id": device_id, "key": key}
        _write_private(config_path, (json.dumps(cfg, indent=1) + "\n").encode())


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.certs", description=__doc__.split("\n\n")[0],
                                 epilog="See docs/SECURITY.md.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ca", help="make a certificate authority: ca.pem, ca.der (for boards) and ca.key")
    p.add_argument("--out", required=True, help="directory to write into (created if missing)")
    p.add_argument("--name", default="hb-keepalive test CA", help="the CA's common name")
    p.add_argument("--days", type=int, default=3650, help="validity in days (default %(default)s)")
    p = sub.add_parser("server", help="make a server certificate signed by the CA")
    p.add_argument("--ca", required=True, help="directory holding ca.pem and ca.key")
    p.add_argument("--name", required=True, action="append",
                   help="DNS name or IP address the devices connect to (repeat for more)")
    p.add_argument("--out", required=True, help="directory to write server.pem and server.key into")
    p.add_argument("--days", type=int, default=825, help="validity in days (default %(default)s)")
    p.add_argument("--expired", action="store_true", help="make one that has already expired (testing)")
    p.add_argument("--stem", default="server", help="file name stem (default %(default)s)")
    p = sub.add_parser("device-key", help="a random HMAC key for one device, into the server's key file")
    p.add_argument("--id", required=True, help="the device's id (UTF-8, 1 to 64 bytes)")
    p.add_argument("--keys", required=True, help="the server's --auth-keys JSON file (created if missing)")
    p.add_argument("--config", help="also put {\"auth\": {...}} into this device config.json")
    p.add_argument("--bytes", type=int, default=32, choices=range(16, 65), metavar="16..64",
                   help="key length in bytes (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "ca":
            if args.days < 1:
                ap.error("--days must be at least 1, got %d" % args.days)
            for path in make_ca(args.out, args.name, args.days):
                print("wrote %s" % path)
        elif args.cmd == "server":
            if not os.path.exists(os.path.join(args.ca, "ca.key")):
                ap.error("--ca %s: no ca.key there (make one with: python3 -m tools.certs ca --out %s)"
                         % (args.ca, args.ca))
            for path in make_server(args.ca, args.name, args.out, args.days, args.expired, args.stem):
                print("wrote %s" % path)
        else:
            add_device_key(args.id, args.keys, args.config, args.bytes)
            print("wrote a key for %s into %s%s" % (args.id, args.keys,
                                                    " and " + args.config if args.config else ""))
    except (OSError, ValueError) as e:
        print("tools.certs: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
