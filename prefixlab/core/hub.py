"""Where an adapter's files come from: a local folder, or a Hugging Face Hub repository.

Shared by the core (`PrefixTuningModel.from_pretrained` / `load_adapter`) and the engine's model zoo,
so that both use one rule for "is this a path", one reachability probe and one cache-only fallback:
huggingface_hub retries a dead connection for half a minute per file (minutes when packets are
dropped), so before touching the Hub we check in a few seconds that it answers at all, and when it
does not, only the local cache is tried. Also PEFT's loading keywords, which mean little for a
prefix, accepted in this one place (`load_options`).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Optional

from huggingface_hub import constants as hub_constants

from .config import CONFIG_NAME, LEGACY_WEIGHTS_NAME, SAVED_KEY, WEIGHTS_NAME, AdapterFileError

HUB_CHECK_TIMEOUT_S = 3.0
_HUB_CHECK_TTL_S = 60.0  # re-check reachability at most once a minute
_HUB_KWARGS = ("revision", "token", "cache_dir")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: only cached Hub files load."""
    return bool(hub_constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float, _epoch: int) -> str | None:
    import httpx  # huggingface_hub's own HTTP client; honours proxy environment variables

    try:
        httpx.head(endpoint, timeout=timeout)
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return None


def hub_unreachable_reason(endpoint: str | None = None, timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """None if the Hub answers an HTTP request within `timeout` seconds, else why not.

    Any HTTP answer counts as reachable; the result is cached for a minute.
    """
    epoch = int(time.monotonic() // _HUB_CHECK_TTL_S)
    return _probe(endpoint or hub_constants.ENDPOINT, timeout, epoch)


def local_folder(name: str) -> Path | None:
    """The folder `name` points at, if it is meant as a path (exists, or starts like one)."""
    path = Path(name).expanduser()
    if path.is_dir() or name.startswith(("/", "./", "../", "~", ".\\")):
        return path
    return None


def cache_only(name: str) -> tuple[bool, str | None]:
    """(local_files_only, why): use only the local cache when offline or the Hub does not answer."""
    if local_folder(name) is not None:
        return True, None
    if hub_offline():
        return True, "HF_HUB_OFFLINE is set"
    reason = hub_unreachable_reason()
    return reason is not None, (f"the Hub at {hub_constants.ENDPOINT} does not answer ({reason})" if reason else None)


def load_options(torch_device: Optional[str] = None, autocast_adapter_dtype: bool = True,
                 ephemeral_gpu_offload: bool = False, low_cpu_mem_usage: bool = False,
                 key_mapping: Optional[dict[str, str]] = None, **hub_kwargs) -> tuple["torch.device", dict]:
    """PEFT's keywords for loading an adapter, so that code written for PeftModel runs unchanged:
    (the device the weights file is read onto, the Hub keywords left over). As in PEFT, the prefix
    ends on the base model's device whatever `torch_device` is, and autocast_adapter_dtype,
    ephemeral_gpu_offload and low_cpu_mem_usage act on adapter layers, which a prefix has none of,
    so they change nothing. key_mapping renames layer keys; a prefix adapter's one tensor has none."""
    import torch

    del autocast_adapter_dtype, ephemeral_gpu_offload, low_cpu_mem_usage
    if key_mapping:
        raise ValueError(
            f"key_mapping={key_mapping!r}: it renames the base model's layer keys in an adapter file, and a "
            f"prefix-tuning adapter holds one tensor, {SAVED_KEY!r}, with no layer keys (PEFT fails on it too); "
            "leave key_mapping None")
    return (torch.device("cpu") if torch_device is None else _device_or_raise(torch_device)), hub_kwargs


def _device_or_raise(name) -> "torch.device":
    import torch

    try:
        device = torch.device(name)
        torch.empty(0, device=device)  # a device torch knows but this machine lacks fails here
    except (RuntimeError, TypeError, AssertionError) as err:
        why = str(err).splitlines()[0].split(". ")[0]
        raise ValueError(f"torch_device={name!r} cannot be used here ({why}); pass 'cpu', a device this machine has "
                         "(for example 'cuda:0'), or leave it None") from None
    return device


def adapter_folder(model_id: str, subfolder: Optional[str] = None, **hub_kwargs) -> str:
    """The local folder of adapter `model_id`: a folder as given (joined with `subfolder`), or the
    files of Hub repository `model_id` downloaded to the Hugging Face cache (only the cache when
    offline or the Hub does not answer). AdapterFileError says what failed and what to do."""
    unknown = sorted(set(hub_kwargs) - set(_HUB_KWARGS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; the Hub ones are subfolder, {', '.join(_HUB_KWARGS)}")
    model_id = os.fspath(model_id)
    if local_folder(model_id) is not None:  # an existing folder, or a string written like a path
        return os.path.join(model_id, subfolder) if subfolder else model_id
    from huggingface_hub import snapshot_download

    local_only, why = cache_only(model_id)
    inside = f"{subfolder}/" if subfolder else ""
    try:
        root = snapshot_download(model_id, allow_patterns=[inside + CONFIG_NAME, inside + WEIGHTS_NAME,
                                                           inside + LEGACY_WEIGHTS_NAME],
                                 local_files_only=local_only, **hub_kwargs)
    except Exception as err:  # noqa: BLE001 - HTTP, repo-not-found, offline-cache misses: all "cannot get it"
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        cause = f"; {why} and it is not in the local cache" if why else ""
        raise AdapterFileError(
            f"adapter {model_id!r} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(err).__name__}: {detail}){cause}. Pass the folder save_pretrained wrote (a relative one "
            "as ./name), or check the repo id, its access rights and your network") from err
    return os.path.join(root, subfolder) if subfolder else root
