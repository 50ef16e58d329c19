"""`slimkit push DIR REPO_ID`: upload a compressed output to the Hub with its model card.

Only a slimkit output is pushed (a `compression.json` and nothing but slimkit's own files), and only into a
repo that does not exist yet — or, with `overwrite`, one that already holds a slimkit output: a push never
writes over someone else's model. The card (README.md) is rendered again for the repo it goes to, so its
title and loading snippet name that repo. One commit: the Hub never shows half an output. The token is the
client's own (`HF_TOKEN` or `huggingface-cli login`); the Hub decides where it may write.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimkit import card
from slimkit.errors import GatedOrUnauthorized, HubUnavailable, InvalidArgument
from slimkit.outdir import RECIPE_FILE, is_slimkit_output


def push_output(folder: Path, repo_id: str, *, private: bool = True, overwrite: bool = False) -> str:
    """Create `repo_id` (private by default) and upload `folder` into it; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    folder = Path(folder)
    if not folder.is_dir() or not is_slimkit_output(folder):
        raise InvalidArgument(f"{folder.name} is not a slimkit output (no compression.json, or foreign files)")
    if repo_id.count("/") != 1:
        raise InvalidArgument(f"repo id {repo_id!r}: give <namespace>/<name>")
    record = json.loads((folder / RECIPE_FILE).read_text())
    api = HfApi()
    try:
        try:
            files = set(api.list_repo_files(repo_id))
        except RepositoryNotFoundError:
            files = None
        if files is not None and RECIPE_FILE not in files:
            raise InvalidArgument(f"{repo_id} exists and is not a slimkit output: never written over; pick a new name")
        if files is not None and not overwrite:
            raise InvalidArgument(f"{repo_id} already holds a slimkit output: pass --overwrite to update it")
        source = record.get("source", {})
        text = card.render(record, source.get("model", "?"), source.get("revision"), repo_id, hub_url=api.endpoint)
        (folder / "README.md").write_text(text)
        api.create_repo(repo_id, private=private, exist_ok=True)
        method = record.get("recipe", {}).get("method", "slimkit")
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            commit_message=f"{method} output of {source.get('model', '?')} (slimkit {record.get('slimkit_version')})",
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise GatedOrUnauthorized(f"the Hub refused to let this token write {repo_id}") from err
        raise HubUnavailable(f"the Hub did not accept the upload of {repo_id}: {status or err}") from err
    return commit.commit_url
