"""The RSA key pair the auth service signs JWTs with (RS256).

Only the auth service is given the private key file; every service gets the
public one. The private key file is readable by its owner only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.private_files import PRIVATE, write_private

PRIVATE_KEY_NAME = "jwt-private.pem"
PUBLIC_KEY_NAME = "jwt-public.pem"


@dataclass(frozen=True)
class JwtKeyFiles:
    private_key_path: Path
    public_key_path: Path


def generate_jwt_keys(
    directory: Path, *, key_size: int = 2048, private_key_mode: int = PRIVATE
) -> JwtKeyFiles:
    """Write a fresh RSA key pair as PEM files (PKCS#8 private, SPKI public).

    The private key file is created with ``private_key_mode`` (0600: its owner
    only; the compose deployment asks for 0644, its services' container user
    must read the mounted file); the public one is 0644."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    private_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    write_private(private_path, private_pem, mode=private_key_mode)
    write_private(public_path, public_pem, mode=0o644)
    return JwtKeyFiles(private_key_path=private_path, public_key_path=public_path)


__all__ = ["JwtKeyFiles", "generate_jwt_keys"]
