"""Model directories as Hugging Face hub repositories: `from_pretrained` and `push_to_hub`.

A resnets model directory (`config.json`, `model.safetensors`, class names inside the
config) already has the layout the hub uses for PyTorch models, so a repository is a model
directory that happens to live online. Everything works offline on local directories;
`huggingface_hub` is needed only to download or upload, and is imported only then.
"""

import logging
from pathlib import Path
from typing import Any

from .errors import DataError, UsageError
from .models.resnet import ResNet
from .weights import CONFIG_FILE, WEIGHTS_FILE, count_parameters, load_model_dir, read_model_config

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
# What a hub repository must hold, and all that push_to_hub uploads: no stray files.
REPO_FILES = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]


def from_pretrained(
    path_or_repo_id: str | Path,
    *,
    revision: str | None = None,
    **options: Any,
) -> ResNet:
    """Load a saved model from a local directory, or from a Hugging Face hub repository.

    A local run directory (its `model/` folder) or model directory is loaded offline. Any
    other name is taken as a hub repository id such as `"user/resnet20-digits"` and
    downloaded with `huggingface_hub.snapshot_download`, which reads the local cache first
    and honours `HF_HUB_OFFLINE=1`.

    Args:
        path_or_repo_id: a run directory, a model directory, or a hub repository id.
        revision: the hub branch, tag or commit to download (the default branch if None).
        **options: any `ResNetConfig` field to override, as for `resnets.create_model`.

    Returns:
        The model in training mode; call `.eval()` before predicting.
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        directory = _local_model_dir(path)
    elif path.exists():
        raise NotADirectoryError(
            f"{path} is a file; from_pretrained expects a model directory (config.json and "
            "model.safetensors) or a Hugging Face hub repository id such as 'user/resnet20'. "
            "For a weights file use resnets.create_model(name, weights=file)."
        )
    else:
        directory = _download(str(path_or_repo_id), revision)
    _check_is_resnets_model(directory, str(path_or_repo_id))
    return load_model_dir(directory, **options)


def _local_model_dir(path: Path) -> Path:
    from .inference.predictor import model_dir_of  # inference imports data: load it lazily

    return model_dir_of(path)


def _download(repo_id: str, revision: str | None) -> Path:
    """Download (or find in the cache) the files of a hub repository; their local folder."""
    from .models.registry import list_models

    if repo_id in list_models():
        raise UsageError(
            f"{repo_id!r} is an architecture, not a saved model, and resnets ships no weights "
            f"for it. Build it with resnets.create_model({repo_id!r}), or pass a model "
            "directory or a hub repository id such as 'user/resnet20-digits'."
        )
    hub = _import_hub(f"no model directory at {repo_id}, and to download it as a hub repository")
    from huggingface_hub.utils import (  # where every version since 0.23 has them
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]
        )
    except HFValidationError as error:
        raise FileNotFoundError(
            f"no model directory at {repo_id}, and it is not a hub repository id either "
            f"({error}). Check the path, or name a repository as 'user/name'."
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise FileNotFoundError(
            f"no model directory at {repo_id}, and the Hugging Face hub has no repository "
            f"{repo_id!r}{f' at revision {revision!r}' if revision else ''} that you can "
            "read. Check the path or the id; private repositories need `hf auth login`."
        ) from error
    except LocalEntryNotFoundError as error:
        # Raised both with HF_HUB_OFFLINE=1 and when the hub cannot be reached.
        raise DataError(
            f"no model directory at {repo_id}, and hub repository {repo_id!r} is not in the "
            "local cache and cannot be downloaded (offline, or HF_HUB_OFFLINE=1). Connect "
            "and unset HF_HUB_OFFLINE to download it once, or pass a local model directory."
        ) from error
    except HfHubHTTPError as error:
        raise DataError(
            f"downloading {repo_id!r} from the Hugging Face hub failed: {error}"
        ) from error
    return Path(folder)


def _check_is_resnets_model(directory: Path, name: str) -> None:
    config = read_model_config(directory)
    if not (directory / WEIGHTS_FILE).is_file() or not isinstance(config.get("model"), dict):
        raise DataError(
            f"{name} is not a resnets model: expected {CONFIG_FILE} with a 'model' entry and "
            f"{WEIGHTS_FILE}, found config keys {sorted(config)} in {directory}. Save models "
            "with resnets.save_model_dir, or train one with `resnets train`."
        )


def push_to_hub(
    run_or_model_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Upload a trained model to a Hugging Face hub repository, creating it if needed.

    Writes a short model card (`README.md`: architecture, classes, preprocessing) into the
    model directory first, unless one is already there, then uploads the config, weights
    and card. Needs network access and a token (`hf auth login`, or `token=`).

    Args:
        run_or_model_dir: a run directory (its `model/` folder is uploaded) or a model
            directory.
        repo_id: the repository, as `"user/name"` or `"organisation/name"`.
        token: a hub access token with write permission; None uses the stored login.
        private: create the repository private. An existing repository keeps its
            visibility.

    Returns:
        The URL of the commit on the hub.
    """
    directory = _local_model_dir(Path(run_or_model_dir).expanduser())
    hub = _import_hub(f"to upload {directory} to the Hugging Face hub")
    card = directory / CARD_FILE
    if not card.exists():
        card.write_text(model_card(directory, repo_id))
        log.info("wrote a model card to %s", card)
    hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
    commit = hub.upload_folder(
        repo_id=repo_id,
        folder_path=directory,
        allow_patterns=REPO_FILES,
        commit_message="Upload resnets model",
        token=token,
    )
    log.info("uploaded %s to https://huggingface.co/%s", directory, repo_id)
    return str(getattr(commit, "commit_url", commit))


def _import_hub(purpose: str) -> Any:
    try:
        import huggingface_hub
    except ImportError as error:
        raise UsageError(
            f"huggingface_hub is needed {purpose}, and it is not installed. Install it with "
            "`pip install huggingface_hub`, or work with local model directories."
        ) from error
    return huggingface_hub


def model_card(directory: str | Path, repo_id: str) -> str:
    """A short hub model card for a model directory: architecture, classes, preprocessing."""
    config = read_model_config(directory)
    model = load_model_dir(directory)
    spec = model.config
    class_names = config.get("class_names") or [str(i) for i in range(spec.num_classes)]
    prep = config.get("preprocessing") or {}
    architecture = config.get("architecture", "resnet")
    lines = [
        "---",
        "library_name: resnets",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- resnet",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A {architecture} image classifier ({spec.depth} weighted layers, "
        f"{count_parameters(model):,} parameters), saved by resnets.",
        "",
        "## Architecture",
        "",
        f"- blocks: {spec.block}, {list(spec.blocks_per_stage)} per stage, "
        f"stage widths {list(spec.stage_channels)}",
        f"- stem: {spec.stem}{' (deep)' if spec.deep_stem else ''}; shortcut option "
        f"{spec.shortcut}; {'pre' if spec.preactivation else 'post'}-activation"
        f"{'' if spec.residual else '; plain (no shortcuts)'}",
        f"- input: {spec.in_channels} channels; output: {spec.num_classes} classes",
        "",
        "## Classes",
        "",
        "In output order: " + ", ".join(f"`{name}`" for name in class_names) + ".",
        "",
        "## Preprocessing",
        "",
        f"- image size (height, width): {prep.get('image_size', 'not recorded')}",
        f"- resize: {prep.get('resize', 'not recorded')}",
        f"- pixels scaled to [0, 1], then normalised with mean {prep.get('mean', 'not recorded')}"
        f" and std {prep.get('std', 'not recorded')}",
        "",
        "## Use",
        "",
        "```python",
        "import resnets",
        "",
        f"model = resnets.from_pretrained({repo_id!r}).eval()",
        "```",
        "",
        "Every setting of the architecture is in `config.json`.",
        "",
    ]
    return "\n".join(lines)
