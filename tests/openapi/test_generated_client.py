"""A client generated from keygate's served /openapi.json manages keys.

openapi-python-client generates a package from the document at test time; the tests use
only that package (no hand-written HTTP) to create, list, read, change, rotate and delete
keys on the native admin API, and to list keys on the Venice-compatible surface. Run by
tests/openapi_client.rs with KEYGATE_BASE_URL and KEYGATE_ADMIN_KEY set.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE_URL = os.environ["KEYGATE_BASE_URL"]
ADMIN_KEY = os.environ["KEYGATE_ADMIN_KEY"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    config = out / "config.yaml"
    # No formatter run afterwards: the package is imported, never read.
    config.write_text("post_hooks: []\n")
    tool = Path(sys.executable).parent / "openapi-python-client"
    subprocess.run(
        [
            str(tool),
            "generate",
            "--url",
            f"{BASE_URL}/openapi.json",
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(out / "keygate_client"),
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    return importlib.import_module("keygate_client")


@pytest.fixture(scope="module")
def api(generated):
    return {
        name: importlib.import_module(f"keygate_client.{name}")
        for name in [
            "api.keys.create_key",
            "api.keys.list_keys",
            "api.keys.get_key",
            "api.keys.update_key",
            "api.keys.rotate_key",
            "api.keys.delete_key",
            "api.inference.key_info",
            "api.venice.list_keys",
            "models",
        ]
    }


def admin(generated):
    return generated.AuthenticatedClient(base_url=BASE_URL, token=ADMIN_KEY)


def test_create_list_update_rotate_delete(generated, api):
    models = api["models"]
    client = admin(generated)

    created = api["api.keys.create_key"].sync(
        client=client,
        body=models.NewKey(
            name="generated client",
            limits=models.Limits(rpm=5),
            allowed_models=["gpt-4o-mini"],
        ),
    )
    assert isinstance(created, models.KeyWithSecretView), created
    assert created.secret.startswith("kg_")
    assert created.name == "generated client"
    assert created.limits.rpm == 5
    key_id = created.id

    listed = api["api.keys.list_keys"].sync(client=client, page=1, limit=500)
    assert isinstance(listed, models.KeyList), listed
    assert key_id in [key.id for key in listed.data]
    assert listed.total >= 2

    changed = api["api.keys.update_key"].sync(
        client=client,
        id=key_id,
        body=models.KeyPatch(name="renamed", limits=models.Limits(rpm=10)),
    )
    assert isinstance(changed, models.KeyView), changed
    assert changed.name == "renamed"
    assert changed.limits.rpm == 10
    fetched = api["api.keys.get_key"].sync(client=client, id=key_id)
    assert fetched.name == "renamed"

    rotated = api["api.keys.rotate_key"].sync(
        client=client, id=key_id, body=models.RotateRequest(grace_seconds=0)
    )
    assert isinstance(rotated, models.KeyWithSecretView), rotated
    assert rotated.secret != created.secret
    # The new secret works, as the generated client's own bearer token.
    own = generated.AuthenticatedClient(base_url=BASE_URL, token=rotated.secret)
    info = api["api.inference.key_info"].sync(client=own)
    assert isinstance(info, models.KeyInfo), info
    assert info.id == key_id

    deleted = api["api.keys.delete_key"].sync_detailed(client=client, id=key_id)
    assert deleted.status_code == 204
    gone = api["api.keys.get_key"].sync_detailed(client=client, id=key_id)
    assert gone.status_code == 404
    assert isinstance(gone.parsed, models.ErrorBody), gone.parsed
    assert gone.parsed.error.code == "not_found"


def test_refusals_parse_as_documented(generated, api):
    models = api["models"]
    client = admin(generated)
    refused = api["api.keys.create_key"].sync_detailed(
        client=client, body=models.NewKey(name="x", limits=models.Limits(rpm=10**16))
    )
    assert refused.status_code == 422
    assert isinstance(refused.parsed, models.ErrorBody), refused.parsed
    assert refused.parsed.error.field == "limits.rpm"

    anonymous = generated.Client(base_url=BASE_URL)
    response = api["api.keys.list_keys"].sync_detailed(client=anonymous)
    assert response.status_code == 401
    assert isinstance(response.parsed, models.ErrorBody), response.parsed


def test_venice_surface_lists_keys(generated, api):
    listed = api["api.venice.list_keys"].sync(client=admin(generated), page=1, limit=10)
    assert listed is not None
    assert listed.object_ == "list"
    assert all(key.id for key in listed.data)
