"""Signing the livepatch module, for kernels that check module signatures.

A kernel with `CONFIG_MODULE_SIG_FORCE`, booted with `module.sig_enforce=1`, or locked down
by Secure Boot refuses an unsigned module; Debian's kernel without lockdown loads one and
taints itself. The signature is what kbuild's `modules_sign` appends: the kernel's own
`scripts/sign-file` with the hash of `CONFIG_MODULE_SIG_HASH` (default sha256), key and
certificate given by the user (`--sign-key`, `--sign-cert`). The running kernel must trust
the certificate (a built-in key, or one enrolled in MOK) for the signature to count; that
is the machine's business, not the build's. A tree whose configuration does not build
`sign-file` (no `CONFIG_MODULE_SIG`) gets it compiled from the same source, with OpenSSL.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from git_ksplice.errors import BuildError, InputError
from git_ksplice.kbuild import make_environment
from git_ksplice.origconfig import read_config

#: What sign-file appends last (include/linux/module_signature.h's MODULE_SIG_STRING).
SIGNATURE_MARKER = b"~Module signature appended~\n"


def signature_hash(dot_config: Path) -> str:
    """CONFIG_MODULE_SIG_HASH of the running kernel's configuration, or sha256."""
    return read_config(dot_config).get("CONFIG_MODULE_SIG_HASH", "").strip('"') or "sha256"


def sign_file_tool(tree: Path, work: Path) -> Path:
    """The tree's scripts/sign-file, or one compiled from its source into `work`."""
    built = tree / "scripts" / "sign-file"
    if built.is_file():
        return built
    source = tree / "scripts" / "sign-file.c"
    if not source.is_file():
        raise InputError(f"{tree} has no scripts/sign-file.c to sign the module with")
    work.mkdir(parents=True, exist_ok=True)
    tool = work / "sign-file"
    cc = shutil.which("gcc") or "cc"
    r = subprocess.run([cc, "-O2", "-o", str(tool), str(source), "-lcrypto"],
                       capture_output=True, text=True, env=make_environment())
    if r.returncode != 0:
        raise BuildError(f"cannot build scripts/sign-file: {r.stderr.strip()[-600:]}",
                         hint="install OpenSSL's headers (Debian: apt-get install libssl-dev)")
    return tool


def sign_module(ko: Path, tree: Path, dot_config: Path, key: Path, cert: Path,
                work: Path) -> str:
    """Append the module signature to `ko`; returns the hash used."""
    algorithm = signature_hash(dot_config)
    tool = sign_file_tool(tree, work)
    r = subprocess.run([str(tool), algorithm, str(key), str(cert), str(ko)],
                       capture_output=True, text=True, env=make_environment())
    if r.returncode != 0 or not ko.read_bytes().endswith(SIGNATURE_MARKER):
        raise InputError(f"scripts/sign-file could not sign {ko.name} with {key} and {cert}: "
                         f"{(r.stderr or r.stdout).strip()[-600:]}",
                         hint="--sign-key takes the private key (PEM), --sign-cert its X.509 "
                              "certificate; openssl req -new -x509 -newkey rsa:2048 -nodes "
                              "-keyout KEY -outform DER -out CERT makes a pair")
    return algorithm


__all__ = ["SIGNATURE_MARKER", "sign_module", "signature_hash"]
