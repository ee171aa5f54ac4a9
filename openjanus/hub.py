"""Models by hub id: `--model owner/name[@revision]` through `huggingface_hub`.

`huggingface_hub` does everything a transformers user expects of it: its cache (`HF_HOME`,
`HF_HUB_CACHE`), revisions (a branch, tag or commit), the token (`HF_TOKEN` or `hf auth
login`), `HF_ENDPOINT` for mirrors, `HF_HUB_OFFLINE=1` for the cache alone, and a progress
bar per file. This module only decides what to fetch (the configs, the tokenizer and one
weight format: safetensors where the repository has them, else the `.bin` files) and turns
the library's errors into one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

from openjanus.errors import UserError

__all__ = ["parse_hub_id", "download"]

# owner/name[@revision]: the hub's own rules for names (letters, digits, - _ .), one slash.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<rev>[^\s@]+))?$")

# Everything a model folder holds besides weights (the sidecars that load_model and the
# processor read, and the model card).
_SIDECARS = ["*.json", "*.jinja", "*.txt", "*.model"]
_SAFETENSORS = ["*.safetensors"]
_BIN = ["*.bin"]


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """("owner/name", revision or None) when `name` has the form of a hub id, else None."""
    m = _HUB_ID.match(name)
    if m is None or name.startswith((".", "/", "~")):
        return None
    return m["repo"], m["rev"]


def download(name: str, cache_dir: str | Path | None = None) -> Path:
    """The local folder of hub model `name` ("owner/name[@revision]"): fetched into the hub
    cache (with progress bars), or found there when offline. Raises UserError, one line."""
    parsed = parse_hub_id(name)
    if parsed is None:
        raise UserError(f"{name!r} is not a hub id (owner/name or owner/name@revision)")
    repo, revision = parsed
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError:  # a core dependency (tokenizers needs it too); only a broken install lacks it
        raise UserError(f"--model {name} names a hub model; pip install huggingface_hub") from None
    at = f"{repo}@{revision}" if revision else repo
    # The library logs each failed connection attempt; the one-line error below says what matters.
    quiet = _quiet_hub_logs()
    try:
        # Offline (or unreachable) the cache decides; a snapshot fetched here holds one format, and
        # huggingface_hub checks a cached snapshot against these patterns, so name only safetensors
        # (a .bin-only snapshot has none to miss).
        patterns = _SIDECARS + _SAFETENSORS
        if not huggingface_hub.is_offline_mode():
            try:
                files = huggingface_hub.HfApi().list_repo_files(repo, revision=revision)
            except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError):
                raise
            except Exception:  # unreachable: snapshot_download looks in the cache and says what failed
                files = None
            if files is not None:
                has_safetensors = any(fnmatch(f, p) for f in files for p in _SAFETENSORS)
                patterns = _SIDECARS + (_SAFETENSORS if has_safetensors else _BIN)
        folder = huggingface_hub.snapshot_download(repo, revision=revision, cache_dir=cache_dir,
                                                   allow_patterns=patterns)
    except hub_errors.RevisionNotFoundError:
        raise UserError(f"hub model {repo} has no revision {revision!r}") from None
    except hub_errors.GatedRepoError:
        raise UserError(f"hub model {repo} is gated: accept its terms on the hub and log in "
                        "(hf auth login, or HF_TOKEN)") from None
    except hub_errors.RepositoryNotFoundError:
        raise UserError(f"no hub model {repo} (or it is private: log in with hf auth login, or set HF_TOKEN); "
                        "a local folder needs a path that exists") from None
    except hub_errors.IncompleteSnapshotError:
        raise UserError(f"hub model {at}: the cached copy is incomplete and the hub cannot be reached; "
                        "run once online to finish it") from None
    except hub_errors.LocalEntryNotFoundError:
        raise UserError(f"hub model {at} is not in the local cache and the hub cannot be reached"
                        + (" (HF_HUB_OFFLINE=1)" if huggingface_hub.is_offline_mode() else "")) from None
    except hub_errors.HfHubHTTPError as e:
        raise UserError(f"hub model {at}: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise UserError(f"hub model {at}: {e}") from None
    finally:
        quiet()
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise UserError(f"hub model {at} has no config.json: not a model folder openjanus can load")
    return path


def _quiet_hub_logs() -> Callable[[], None]:
    """Lower huggingface_hub's logging to errors; returns the function that restores it."""
    from huggingface_hub.utils import logging as hub_logging

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    return lambda: hub_logging.set_verbosity(level)
