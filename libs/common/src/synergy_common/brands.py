"""Brands (tenants): write keys stored as hashes, Customer.io credentials encrypted at rest."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg
from cryptography.fernet import Fernet, InvalidToken

WRITE_KEY_PREFIX = "swk_"
# What new_write_key makes: anything else is refused without asking Postgres.
WRITE_KEY_SHAPE = re.compile(r"swk_[A-Za-z0-9_-]{43}")
KEY_PREFIX_LENGTH = 10  # stored beside the hash, so a key can be named (revoked) without its secret
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
            write_key[:KEY_PREFIX_LENGTH],
        )
    return CreatedBrand(brand_id=str(brand_id), slug=slug, write_key=write_key)


@dataclass(frozen=True)
class WriteKeyStatus:
    brand_id: str
    revoked: bool
    brand_active: bool


async def write_key_status(pool: asyncpg.Pool, key_hash: str) -> WriteKeyStatus | None:
    """What Postgres knows of the key with this hash; None when no brand ever had it."""
    row = await pool.fetchrow(
        """SELECT k.brand_id, k.revoked_at IS NOT NULL AS revoked, b.is_active
           FROM brand_write_keys k JOIN brands b ON b.id = k.brand_id WHERE k.key_hash = $1""",
        key_hash,
    )
    if row is None:
        return None
    return WriteKeyStatus(str(row["brand_id"]), bool(row["revoked"]), bool(row["is_active"]))


async def brand_id_for_write_key(pool: asyncpg.Pool, write_key: str) -> str | None:
    status = await write_key_status(pool, hash_write_key(write_key))
    if status is None or status.revoked or not status.brand_active:
        return None
    return status.brand_id


class BrandNotFound(LookupError):
    def __init__(self, brand: str) -> None:
        super().__init__(f"no brand {brand!r} (give its id or slug)")


async def resolve_brand(connection: asyncpg.Pool | asyncpg.Connection, brand: str) -> int:
    """A brand's id from its id or slug. Raises BrandNotFound."""
    brand_id = await connection.fetchval(
        "SELECT id FROM brands WHERE slug = $1 OR id::text = $1 ORDER BY slug = $1 DESC LIMIT 1", brand
    )
    if brand_id is None:
        raise BrandNotFound(brand)
    return int(brand_id)


@dataclass(frozen=True)
class WriteKeyInfo:
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


async def rotate_write_key(pool: asyncpg.Pool, brand: str) -> str:
    """A new write key for the brand, returned once; its other keys keep working until revoked."""
    write_key = new_write_key()
    async with pool.acquire() as connection:
        brand_id = await resolve_brand(connection, brand)
        await connection.execute(
            "INSERT INTO brand_write_keys (brand_id, key_hash, key_prefix) VALUES ($1, $2, $3)",
            brand_id,
            hash_write_key(write_key),
            write_key[:KEY_PREFIX_LENGTH],
        )
    return write_key


async def list_write_keys(pool: asyncpg.Pool, brand: str) -> list[WriteKeyInfo]:
    async with pool.acquire() as connection:
        brand_id = await resolve_brand(connection, brand)
        rows = await connection.fetch(
            """SELECT key_prefix, created_at, revoked_at FROM brand_write_keys
               WHERE brand_id = $1 ORDER BY created_at, id""",
            brand_id,
        )
    return [WriteKeyInfo(row["key_prefix"], row["created_at"], row["revoked_at"]) for row in rows]


async def revoke_write_key(pool: asyncpg.Pool, brand: str, prefix: str) -> WriteKeyInfo:
    """Revoke the one active key of the brand that starts with `prefix`. Raises ValueError when
    none or several do. Every replica refuses it once its key cache entry expires (seconds)."""
    prefix = prefix.strip()[:KEY_PREFIX_LENGTH]
    if len(prefix) <= len(WRITE_KEY_PREFIX):
        raise ValueError(f"give more of the key than {WRITE_KEY_PREFIX!r}: its prefix, e.g. swk_AbC123")
    async with pool.acquire() as connection, connection.transaction():
        brand_id = await resolve_brand(connection, brand)
        matching = await connection.fetch(
            """SELECT id FROM brand_write_keys
               WHERE brand_id = $1 AND revoked_at IS NULL AND starts_with(key_prefix, $2)
               FOR UPDATE""",
            brand_id,
            prefix,
        )
        if not matching:
            raise ValueError(f"brand {brand!r} has no active write key starting with {prefix!r}")
        if len(matching) > 1:
            raise ValueError(f"{len(matching)} active keys start with {prefix!r}: give more of the prefix")
        row = await connection.fetchrow(
            """UPDATE brand_write_keys SET revoked_at = now() WHERE id = $1
               RETURNING key_prefix, created_at, revoked_at""",
            matching[0]["id"],
        )
    assert row is not None
    return WriteKeyInfo(row["key_prefix"], row["created_at"], row["revoked_at"])


async def set_webhook_signing_key(pool: asyncpg.Pool, brand: str, key: str, cipher: CredentialCipher) -> int:
    """Make `key` the brand's Customer.io webhook signing key, stored encrypted. The key it replaces
    stays accepted beside it (a rotation) until drop_previous_webhook_signing_key."""
    if not key.strip():
        raise ValueError("the webhook signing key is empty")
    encrypted = cipher.encrypt(key.strip())
    async with pool.acquire() as connection, connection.transaction():
        brand_id = await resolve_brand(connection, brand)
        current = await connection.fetchval(
            "SELECT cio_webhook_signing_key FROM brands WHERE id = $1 FOR UPDATE", brand_id
        )
        if current is not None and cipher.decrypt(current) == key.strip():
            return brand_id
        await connection.execute(
            """UPDATE brands SET cio_webhook_signing_key_previous = cio_webhook_signing_key,
                                 cio_webhook_signing_key = $2
               WHERE id = $1""",
            brand_id,
            encrypted,
        )
    return brand_id


async def drop_previous_webhook_signing_key(pool: asyncpg.Pool, brand: str) -> int:
    """End a rotation: only the current signing key is accepted from now on."""
    async with pool.acquire() as connection:
        brand_id = await resolve_brand(connection, brand)
        await connection.execute(
            "UPDATE brands SET cio_webhook_signing_key_previous = NULL WHERE id = $1", brand_id
        )
    return brand_id


async def webhook_signing_keys(
    pool: asyncpg.Pool | asyncpg.Connection, brand_id: int, cipher: CredentialCipher
) -> list[str]:
    """The brand's own webhook signing keys, current first; empty when it has none (the
    deployment's CIO_WEBHOOK_SIGNING_KEY then serves it)."""
    row = await pool.fetchrow(
        "SELECT cio_webhook_signing_key, cio_webhook_signing_key_previous FROM brands WHERE id = $1",
        brand_id,
    )
    if row is None:
        return []
    return [cipher.decrypt(value) for value in row.values() if value is not None]


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
