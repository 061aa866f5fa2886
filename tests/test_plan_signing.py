"""Plan keys as users make them (openssl) and the refusals of keys that cannot sign or verify a plan, each one
line naming its flag; the plan endpoint's signature over the node, the agent's nonce and the body."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cluster_fixtures import NODE, PLAN_KEY, agent_token, key_files, plan_server, start
from conftest import ROOT, free_port
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kube_emulator import KubeEmulator

from actuators.kubernetes import api_client
from controller.cli import main
from controller.cluster.plan_signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    load_signing_key,
    load_verify_keys,
    new_nonce,
    sign,
    verify,
)


def pem(key: rsa.RSAPrivateKey | Ed25519PrivateKey, password: bytes | None = None) -> bytes:
    crypt = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, crypt)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl here")
def test_keys_made_as_the_docs_say_sign_and_verify(tmp_path: Path) -> None:
    """docs/cluster.md's openssl commands (the Secret's key from `genpkey`, its public half from `pkey -pubout`)
    make the operator's key and the agents' public key."""
    key, pub = tmp_path / "plan.key", tmp_path / "plan.pub"
    made = subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519"], check=True, timeout=30, capture_output=True)
    key.write_bytes(made.stdout)
    public = subprocess.run(["openssl", "pkey", "-pubout"], input=made.stdout, check=True, timeout=30,
                            capture_output=True)
    pub.write_bytes(public.stdout)
    signing, keys = load_signing_key(str(key)), load_verify_keys(str(pub))
    verify(keys, NODE, "ab" * 16, b"{}", sign(signing, NODE, "ab" * 16, b"{}"))
    with pytest.raises(ValueError, match="does not verify"):
        verify(keys, "gpu-b", "ab" * 16, b"{}", sign(signing, NODE, "ab" * 16, b"{}"))


def test_keys_that_cannot_sign_or_verify_a_plan_are_refused_by_what_is_wrong(tmp_path: Path) -> None:
    """An RSA key, an encrypted one, a private key handed to the agents, a file of no key, one too big, a
    missing file and a FIFO (which would wait for ever): each a ValueError naming the flag and the file."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {"rsa.key": pem(rsa_key), "locked.key": pem(PLAN_KEY, b"secret"), "empty": b"",
             "big": b"x" * (65 * 1024),
             "rsa.pub": rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    os.mkfifo(tmp_path / "fifo")
    signing = {"rsa.key": "RSAPrivateKey; plans are signed with Ed25519", "locked.key": "not an unencrypted PEM",
               "empty": "not an unencrypted PEM", "big": "over 64 KiB", "missing": "No such file",
               "fifo": "not a regular file"}
    for name, why in signing.items():
        with pytest.raises(ValueError, match=why) as refused:
            load_signing_key(str(tmp_path / name))
        assert str(refused.value).startswith(f"--plan-signing-key {tmp_path / name}: "), refused.value
    private, _ = key_files(tmp_path)
    verifying = {private: "holds a private key", str(tmp_path / "rsa.pub"): "RSAPublicKey; plans are signed",
                 str(tmp_path / "empty"): "holds no PEM public key", str(tmp_path / "fifo"): "not a regular file"}
    for path, why in verifying.items():
        with pytest.raises(ValueError, match=why) as refused:
            load_verify_keys(path)
        assert str(refused.value).startswith(f"--plan-verify-key {path}: "), refused.value


def test_a_verify_key_file_may_hold_the_keys_of_a_rotation(tmp_path: Path) -> None:
    """The old key and the new, one after the other in one file (a ConfigMap's key): both are read."""
    new = Ed25519PrivateKey.generate()
    both = tmp_path / "both.pub"
    both.write_bytes(b"".join(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
                              for key in (PLAN_KEY, new)))
    keys = load_verify_keys(str(both))
    for key in (PLAN_KEY, new):
        verify(keys, NODE, "ab" * 16, b"{}", sign(key, NODE, "ab" * 16, b"{}"))


def test_the_endpoint_signs_each_answer_for_the_nonce_it_was_asked_with(tmp_path: Path) -> None:
    """A nonce that is not 32-128 lowercase hex digits: 400, before any TokenReview. A plan's signature, and a
    404's, verifies over the node, the nonce asked with and the exact body, and over nothing else. No nonce (an
    agent from before plans were signed, during a rolling upgrade): the plan unsigned, so it keeps following."""
    emu = KubeEmulator(watch_s=1.0)
    start(emu)
    try:
        path = tmp_path / "operator-kubeconfig"
        path.write_text(yaml.safe_dump(emu.kubeconfig("operator")))
        token = Path(agent_token(emu, tmp_path / "token")).read_text()
        with plan_server(api_client(str(path))) as server:
            plans = {NODE: {"sequence": 1, "limits_w": {"0": 500.0}}}
            server.attach(plans.get, lambda: True)
            url = f"http://127.0.0.1:{server.port}/v1/nodes/{NODE}/plan"

            def get(nonce: str | None) -> tuple[int, bytes, str | None]:
                headers = {"Authorization": f"Bearer {token}"} | ({NONCE_HEADER: nonce} if nonce is not None else {})
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2.0) as answer:
                        return answer.status, answer.read(), answer.headers[SIGNATURE_HEADER]
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read(), exc.headers[SIGNATURE_HEADER]

            assert [get(nonce)[0] for nonce in ("", "ab" * 15, "AB" * 16, "zz" * 16, "ab" * 65)] == [400] * 5
            assert not [p for t, m, p in emu.requests if p.endswith("/tokenreviews")]
            nonce = new_nonce()
            status, body, signature = get(nonce)
            old_status, old_body, unsigned = get(None)
            del plans[NODE]
            none_status, none_body, none_signature = get(nonce)
    finally:
        emu.close()
    keys = (PLAN_KEY.public_key(),)
    assert status == 200 and b'"limits_w"' in body
    verify(keys, NODE, nonce, body, signature)
    for node, asked, data in ((NODE, new_nonce(), body), ("gpu-b", nonce, body), (NODE, nonce, body + b" ")):
        with pytest.raises(ValueError, match="does not verify"):
            verify(keys, node, asked, data, signature)
    assert (old_status, old_body, unsigned) == (200, body, None)
    assert none_status == 404
    verify(keys, NODE, nonce, none_body, none_signature)


def test_an_operator_without_its_plan_key_is_one_line_naming_the_flag(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before the API server is reached: with a plan port it signs every answer, and cannot without its key (its
    agents, unanswered, go to their safe caps in the plan's TTL)."""
    missing = tmp_path / "nothing"
    assert main(["operator", "--metrics-port", "0", "--kubeconfig", str(tmp_path / "kc"), "--plan-port",
                 str(free_port()), "--plan-signing-key", str(missing)]) == 2
    assert capsys.readouterr().err == f"wattscale: --plan-signing-key: {missing}: No such file or directory\n"


def test_an_agent_without_the_cluster_extra_says_what_to_install() -> None:
    """cryptography comes with the cluster extra, not the kubernetes one: its absence was a traceback."""
    script = """
import sys
sys.modules["cryptography"] = None
from controller.cli import main
sys.exit(main(["agent", "--node", "n1", "--metrics-port", "0"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stderr) == (2, "wattscale: agent: needs: pip install 'wattscale[cluster]'\n")
