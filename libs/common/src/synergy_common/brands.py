"""Brands (tenants): write keys stored as hashes, Customer.io credentials encrypted at rest."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Literal

import asyncpg
from cryptography.fernet import Fernet, InvalidToken

WRITE_KEY_PREFIX = "swk_"
Region = Literal["us", "eu"]


class EncryptionKeyMissing(RuntimeError):
    pass


def new_write_key() -> str:
    return WRITE_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_write_key(write_key: str) -> str:
    # Write keys carry 256 random bits, so a fast unsalted hash is enough to make the stored
    # value useless to a reader of the database, and it keeps the per-request lookup cheap.
    return hashlib.sha256(write_key.encode()).hexdigest()


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "brand"


class CredentialCipher:
    """Fernet (AES-128-CBC + HMAC-SHA256) with the key from SYNERGY_ENCRYPTION_KEY."""

    def __init__(self, key: str | None) -> None:
        self._fernet = Fernet(key.encode()) if key else None

    def encrypt(self, plaintext: str) -> str:
        if self._fernet is None:
            raise EncryptionKeyMissing(
                "SYNERGY_ENCRYPTION_KEY is not set; generate one with `synergy keys generate`"
            )
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        if self._fernet is None:
            raise EncryptionKeyMissing("SYNERGY_ENCRYPTION_KEY is not set; cannot read credentials")
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise EncryptionKeyMissing(
                "SYNERGY_ENCRYPTION_KEY does not match the stored credentials"
            ) from exc

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()


@dataclass(frozen=True)
class CreatedBrand:
    brand_id: str
    slug: str
    write_key: str


@dataclass(frozen=True)
class CustomerIoCredentials:
    site_id: str
    api_key: str
    region: Region


async def create_brand(
    pool: asyncpg.Pool,
    name: str,
    cipher: CredentialCipher,
    cio_site_id: str | None = None,
    cio_api_key: str | None = None,
    cio_region: Region = "us",
    settings: dict[str, object] | None = None,
) -> CreatedBrand:
    """Insert a brand and its first write key. The key is returned here and never again."""
    if bool(cio_site_id) != bool(cio_api_key):
        raise ValueError("give both --cio-site-id and --cio-api-key, or neither")
    encrypted_key = cipher.encrypt(cio_api_key) if cio_api_key else None
    write_key = new_write_key()
    base_slug = slugify(name)
    async with pool.acquire() as connection, connection.transaction():
        taken = await connection.fetchval(
            "SELECT count(*) FROM brands WHERE slug = $1 OR slug LIKE $1 || '-%'", base_slug
        )
        slug = base_slug if not taken else f"{base_slug}-{secrets.token_hex(3)}"
        brand_id = await connection.fetchval(
            """INSERT INTO brands (name, slug, customer_io_site_id, customer_io_api_key,
                                   customer_io_region, settings)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            name,
            slug,
            cio_site_id,
            encrypted_key,
            cio_region,
            settings or {},
        )
        await connection.execute(
            "INSERT INTO brand_write_keys (brand_id, key_hash, key_prefix) VALUES ($1, $2, $3)",
            brand_id,
            hash_write_key(write_key),
            write_key[:10],
        )
    return CreatedBrand(brand_id=str(brand_id), slug=slug, write_key=write_key)


async def brand_id_for_write_key(pool: asyncpg.Pool, write_key: str) -> str | None:
    brand_id = await pool.fetchval(
        """SELECT k.brand_id FROM brand_write_keys k JOIN brands b ON b.id = k.brand_id
           WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND b.is_active""",
        hash_write_key(write_key),
    )
    return None if brand_id is None else str(brand_id)


async def customer_io_credentials(
    pool: asyncpg.Pool, brand_id: str, cipher: CredentialCipher
) -> CustomerIoCredentials | None:
    row = await pool.fetchrow(
        "SELECT customer_io_site_id, customer_io_api_key, customer_io_region FROM brands WHERE id = $1",
        int(brand_id),
    )
    if row is None or not row["customer_io_site_id"] or not row["customer_io_api_key"]:
        return None
    return CustomerIoCredentials(
        site_id=row["customer_io_site_id"],
        api_key=cipher.decrypt(row["customer_io_api_key"]),
        region=row["customer_io_region"],
    )
