"""Hugging Face Hub ids as model sources: "hf://ORG/NAME[@REVISION]" -> a local snapshot folder.

Where there is network, `huggingface_hub` downloads the files a run reads (config,
safetensors, tokenizer) into its cache once; without it (or with HF_HUB_OFFLINE=1)
the cached snapshot is used; with neither, the error says so. A plain path is
returned as it is: only the explicit prefix reaches the Hub, so a workdir that does
not exist yet ("workdirs/base") is never mistaken for a Hub id.
"""

import functools

PREFIX = "hf://"
# What a run reads from a checkpoint folder (research.models.hf.io, research.tokenizers.pretrained).
FILES = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def is_hub_id(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


@functools.cache
def resolve(source):
    """The local folder `source` names: itself, or the snapshot of a "hf://ORG/NAME[@REVISION]" id."""
    if not is_hub_id(source):
        return source
    repo, _, revision = source[len(PREFIX) :].partition("@")
    if repo.count("/") > 1 or not repo.strip("/"):
        raise ValueError(f"{source!r}: a Hub id is hf://NAME or hf://ORG/NAME, optionally @REVISION")
    try:
        from huggingface_hub import constants, errors, snapshot_download
    except ImportError as e:
        raise ImportError(f"{source!r} is a Hub id: reading it needs huggingface_hub (pip install -e '.[hub]')") from e
    try:
        return snapshot_download(repo, revision=revision or None, allow_patterns=list(FILES))
    except (errors.LocalEntryNotFoundError, errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
        raise ValueError(
            f"{source!r}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
            f"cannot provide it: {type(e).__name__}: {e}"
        ) from None
