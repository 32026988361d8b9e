"""The device identity: one Ed25519 key pair per database file, sealed under the password."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import p2pdb
from p2pdb.errors import EncryptionError, ValidationError
from p2pdb.identity import (
    IDENTITY_INFO_KEY,
    key_fingerprint,
    parse_public_key,
    verify_signature,
)
from p2pdb.plugins.encryption import PREFIX

PASSWORD = "correct horse battery staple"
SECRET_SCHEMA = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 50}, "secret": {"type": "string"}},
    "encrypted": ["secret"],
}


async def test_created_with_the_file_and_kept_in_it(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    async with p2pdb.create_database(path) as db:
        assert db.storage.get_info(IDENTITY_INFO_KEY) is not None  # made when it opened
        identity = db.identity
        assert db.identity is identity
        assert len(identity.public_key) == 32
        assert parse_public_key(identity.public_key_text) == identity.public_key
        assert parse_public_key(identity.public_key.hex()) == identity.public_key
        assert identity.fingerprint == key_fingerprint(identity.public_key)
        assert len(identity.fingerprint.split("-")) == 8
        signature = identity.sign(b"hello")
        assert verify_signature(identity.public_key, signature, b"hello")
        assert not verify_signature(identity.public_key, signature, b"hellO")
    async with p2pdb.create_database(path) as db:
        assert db.identity.public_key == identity.public_key
    async with p2pdb.create_database(tmp_path / "b.db") as other:
        assert other.identity.public_key != identity.public_key


async def test_sealed_under_the_password_and_resealed_on_change(tmp_path: Path) -> None:
    path = tmp_path / "secret.db"
    async with p2pdb.create_database(path, password=PASSWORD) as db:
        await db.add_collection("notes", schema=SECRET_SCHEMA)
        identity = db.identity
        record = db.storage.get_info(IDENTITY_INFO_KEY)
        assert record is not None and json.loads(record)["sealed"] is True
        assert json.loads(record)["private_key"].startswith(PREFIX)  # not the raw key
        await db.change_password(PASSWORD, "another long password")
        resealed = db.storage.get_info(IDENTITY_INFO_KEY)
        assert resealed is not None and resealed != record
    async with p2pdb.create_database(path, password="another long password") as db:
        assert db.identity.public_key == identity.public_key
    with pytest.raises(EncryptionError) as caught:
        async with p2pdb.create_database(path, password=PASSWORD):
            pass
    assert caught.value.code == "ENCRYPTION_WRONG_PASSWORD"


async def test_a_sealed_key_needs_the_password(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with p2pdb.create_database(path, password=PASSWORD) as db:
        assert db.identity.fingerprint
    async with p2pdb.create_database(path) as db:  # no encrypted collection: it opens
        with pytest.raises(EncryptionError) as caught:
            _ = db.identity
    assert caught.value.code == "IDENTITY_LOCKED"


def test_bad_public_keys_are_refused() -> None:
    for bad in ("", "abc", b"\x00" * 31, "zz" * 32, 42):
        with pytest.raises(ValidationError) as caught:
            parse_public_key(bad)  # type: ignore[arg-type]
        assert caught.value.code == "IDENTITY_KEY_INVALID"


def test_import_p2pdb_does_not_load_cryptography() -> None:
    code = "import sys, p2pdb; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_rotation_replaces_the_key(tmp_path: Path) -> None:
    path = tmp_path / "rotate.db"
    async with p2pdb.create_database(path, password=PASSWORD) as db:
        old = db.identity
        new = await db.rotate_identity()
        assert new.public_key != old.public_key and db.identity is new
    async with p2pdb.create_database(path, password=PASSWORD) as db:
        assert db.identity.public_key == new.public_key
