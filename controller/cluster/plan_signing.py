"""Signed plans: the node agents fetch their plans over the cluster network, where a pod that spoofs the
operator's Service (DNS or ARP from a pod with NET_RAW) could serve a plan that lifts a node's limits. So the
acting operator signs every answer it gives an agent (a plan, or that there is none) with an Ed25519 key only it
holds, over the node's name, a nonce the agent drew for that one request, and the answer's exact bytes; the
agents hold public keys only. An answer that verifies is the operator's, for this node and this request: an
old answer replayed, however well signed, and one node's handed to another, fail. Whatever fails is an
unreadable plan, as an unreachable operator is: the agent keeps its last plan, which goes stale in its TTL and
leaves the GPUs at their safe caps. No clock is compared, so no skew between nodes matters.

Keys are PEM files as `openssl genpkey -algorithm ed25519` writes them (docs/cluster.md, "Plan keys"). An
agent's file may hold several public keys, any of which verifies, and is read again when it changes: a key is
rotated by adding the new one beside the old, then switching the operator's, then removing the old."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from tuner.own_files import open_plain

log = logging.getLogger("wattscale.agent")
CONTEXT = b"wattscale-plan-v1\n"
"""What a plan's signature signs first: no signature made for anything else reads as a plan's."""
NONCE_HEADER = "Wattscale-Nonce"
SIGNATURE_HEADER = "Wattscale-Signature"
NONCE = re.compile(r"[0-9a-f]{32,128}")
"""A nonce as the agent draws one (128 random bits in hex), with room for longer."""
MAX_KEY_FILE = 64 * 1024
PUBLIC_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def signed_bytes(node: str, nonce: str, body: bytes) -> bytes:
    """What is signed: each part after its length, so no two (node, nonce, body) sign the same bytes."""
    parts = (node.encode(), nonce.encode(), body)
    return CONTEXT + b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign(key: Ed25519PrivateKey, node: str, nonce: str, body: bytes) -> str:
    """The signature header's value for `body` served to `node` in answer to `nonce`."""
    return base64.b64encode(key.sign(signed_bytes(node, nonce, body))).decode()


def verify(keys: tuple[Ed25519PublicKey, ...], node: str, nonce: str, body: bytes, signature: str | None) -> None:
    """ValueError unless `signature` is one of `keys`' over `body` served to `node` for `nonce`."""
    if not keys:
        raise ValueError("no plan key is read (--plan-verify-key), so no answer verifies")
    if not signature:
        raise ValueError("the answer is not signed (an operator that signs no plans, or not the operator)")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise ValueError("the answer's signature is not base64") from None
    message = signed_bytes(node, nonce, body)
    for key in keys:
        try:
            key.verify(raw, message)
            return
        except InvalidSignature:
            continue
    raise ValueError("the answer's signature does not verify with the plan keys (not the operator, a replayed "
                     "answer, or the operator's key is not among --plan-verify-key's)")


def _read(path: str, flag: str) -> bytes:
    try:
        with open_plain(path) as f:  # a FIFO waited for ever
            data: bytes = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"{flag} {path}: over {MAX_KEY_FILE // 1024} KiB, not a key file")
    return data


def load_signing_key(path: str) -> Ed25519PrivateKey:
    """The operator's private key (PEM, unencrypted); ValueError naming its flag and what is wrong."""
    flag = "--plan-signing-key"
    data = _read(path, flag)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{flag} {path}: not an unencrypted PEM private key ({exc}); make one with "
                         "`openssl genpkey -algorithm ed25519`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{flag} {path}: a {type(key).__name__.removeprefix('_')}; plans are signed with Ed25519 "
                         "(`openssl genpkey -algorithm ed25519`)")
    return key


def load_verify_keys(path: str) -> tuple[Ed25519PublicKey, ...]:
    """The agents' public keys (one or more PEM blocks); ValueError naming its flag and what is wrong."""
    flag = "--plan-verify-key"
    data = _read(path, flag)
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{flag} {path}: holds a private key; give the agents the public key only "
                         "(`openssl pkey -in plan.key -pubout`)")
    blocks = PUBLIC_PEM.findall(data)
    if data.count(b"-----BEGIN") != len(blocks):  # a pasted block cut short read as one key fewer
        raise ValueError(f"{flag} {path}: {data.count(b'-----BEGIN')} PEM blocks begin, {len(blocks)} public keys "
                         "end: a block is cut short or not a public key")
    keys = []
    for block in blocks:
        try:
            key = load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{flag} {path}: a public key block that does not read ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{flag} {path}: a {type(key).__name__.removeprefix('_')}; plans are signed with "
                             "Ed25519")
        keys.append(key)
    if not keys:
        raise ValueError(f"{flag} {path}: holds no PEM public key (`openssl pkey -in plan.key -pubout`)")
    return tuple(keys)


def fingerprint(key: Ed25519PublicKey) -> str:
    """A public key's short name in logs: the first 16 hex digits of the SHA-256 of its raw 32 bytes."""
    return hashlib.sha256(key.public_bytes_raw()).hexdigest()[:16]


class PlanKeys:
    """The agent's public keys, read again whenever their file changes (a ConfigMap's update reaches a running
    pod's file within a minute or two), so a rotation needs no restart. A file that stops reading keeps the keys
    read before; one that never read leaves none, so no plan verifies and the GPUs hold their safe caps."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys: tuple[Ed25519PublicKey, ...] = ()
        self.seen: tuple[int, int, int, int] | None = None
        """The file's (device, inode, mtime, size) as last read: a ConfigMap's update swaps a link, a new inode."""
        self.refused: tuple[tuple[int, int, int, int], str] | None = None
        """The file as last found unreadable, and why: read again only once it changes, not at every step."""

    def refresh(self) -> str | None:
        """Read the file again if it changed; what is wrong with it (None: the keys in force are its own)."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return f"--plan-verify-key {self.path}: {exc.strerror or exc}{self._kept()}"
        seen = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self.seen:
            return None
        if self.refused is not None and self.refused[0] == seen:
            return self.refused[1]
        try:
            keys = load_verify_keys(self.path)
        except ValueError as exc:
            self.refused = seen, f"{exc}{self._kept()}"
            return self.refused[1]
        self.keys, self.seen, self.refused = keys, seen, None
        log.info("plan keys from %s: %s", self.path, ", ".join(fingerprint(k) for k in keys))
        return None

    def _kept(self) -> str:
        return (f" (the {len(self.keys)} key(s) read before are kept)" if self.keys
                else " (no plan verifies: the GPUs hold their safe caps)")
