"""Fetches what a run names on the Hugging Face hub before anything is built.

A run may name its model (and tokenizer) by hub id and its data as `hf:<hub id>`. Each one is
fetched into the local cache (or found there) first, so that offline, behind a firewall or
with a typo the run stops in one line naming everything it could not get and the config key
that points at a local copy — not with a traceback after the data was read.
"""

import dataclasses

import huggingface_hub

from g2rpo_jax.config import BYTES_TOKENIZER, ConfigError
from g2rpo_jax.data import hub_id
from g2rpo_jax.data.sources import load_hub_dataset
from g2rpo_jax.experiment import Experiment
from g2rpo_jax.models.hf import is_hub_id, resolve_model_dir

_OFFLINE_ENV = "HF_HUB_OFFLINE"
_REASON_CHARS = 160  # a hub error's first line can be a paragraph; the key matters more
# A tokenizer named apart from the model needs its files only, not the model's weights.
_TOKENIZER_FILES = ["*.json", "*.txt", "*.jinja", "*.model"]


class HubError(ConfigError):
    """A hub source could not be fetched; the message names the key for a local copy."""


@dataclasses.dataclass(frozen=True)
class HubSource:
    what: str  # "model", "tokenizer", "data", "eval data"
    name: str  # the hub id, or the `hf:` path
    key: str  # the config key (or flag) that points at a local copy instead
    split: str = ""  # data only


def run_sources(exp: Experiment, *, needs_weights: bool) -> list[HubSource]:
    """The hub sources of a run; the model and tokenizer only when `needs_weights` (a resumed
    run reads both from its workdir)."""
    sources = []
    if needs_weights and is_hub_id(exp.model.path):
        sources.append(HubSource("model", exp.model.path, "--config.model.path"))
    named_apart = exp.tokenizer not in (exp.model.path, BYTES_TOKENIZER)
    if needs_weights and named_apart and is_hub_id(exp.tokenizer):
        sources.append(HubSource("tokenizer", exp.tokenizer, "--config.tokenizer"))
    if hub_id(exp.data.path) is not None:
        sources.append(HubSource("data", exp.data.path, "--config.data.path", exp.data.split))
    if exp.train.eval_every and hub_id(exp.eval.path) is not None:
        sources.append(HubSource("eval data", exp.eval.path, "--config.eval.path", exp.eval.split))
    return sources


def fetch(sources: list[HubSource]) -> None:
    """Downloads each source into the local cache (a no-op for what is cached); raises one
    HubError naming every source that failed."""
    failed = []
    for source in sources:
        try:
            _fetch(source)
        except (OSError, huggingface_hub.errors.HfHubHTTPError) as e:
            failed.append(f"{source.what} {source.name} ({_reason(e)}; {source.key}=LOCAL_COPY)")
    if failed:
        offline = f" with {_OFFLINE_ENV}=1" if huggingface_hub.constants.HF_HUB_OFFLINE else ""
        raise HubError(
            f"could not fetch from the Hugging Face hub{offline}: "
            + "; ".join(failed)
            + ". Point each key at a local copy (a model folder; a data file, or hf:FOLDER "
            "for a downloaded dataset repo), or fetch them where the hub is reachable first"
        )


def _fetch(source: HubSource) -> None:
    match source.what:
        case "model":
            resolve_model_dir(source.name)
        case "tokenizer":
            huggingface_hub.snapshot_download(source.name, allow_patterns=_TOKENIZER_FILES)
        case _:
            load_hub_dataset(source.name, source.split)


def _reason(error: BaseException) -> str:
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "not in the local cache"
    # huggingface_hub's and datasets' words for "no network and nothing cached".
    if isinstance(error, (huggingface_hub.errors.LocalEntryNotFoundError, ConnectionError)):
        return "the hub is unreachable and it is not in the local cache"
    first = " ".join(str(error).split()) or type(error).__name__
    return first if len(first) <= _REASON_CHARS else first[: _REASON_CHARS - 1] + "…"
