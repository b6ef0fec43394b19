"""The model registry: every artifact under `models_dir`, verified, one ONNX Runtime session per version.

    models_dir/<name>/<version>/{manifest.json, model.onnx, vocab.txt?}  ->  LoadedModel

Verification refuses an artifact (ArtifactError, logged, the others still load) when the manifest does
not parse, a hash does not match, the manifest disagrees with its own architecture (state shapes, the
task's tensors), or the ONNX graph's actual inputs, outputs, dtypes and ranks differ from the manifest
(contract.py: declare the contract, check it at load). A new version can be loaded while the others
serve; the default version of a name is the pinned one (`pin_default`) if any, else the highest one
not draining, compared numeric-aware ("10" > "9" > "1.2").

Runtime changes (service/model_control.py drives them, for the admin routes, Triton's repository API
and the directory watcher alike): `scan` finds the version directories not loaded yet, skipping those
whose files have not changed since they were refused (a half-written artifact fails its hash check and
is retried once its files change) and those unloaded on purpose; `add` registers a loaded version;
`drain` keeps a version serving its sessions but out of reach of new ones; `remove` forgets it. A
version is immutable: once served in this process, a different artifact under the same name and
version is refused (publish a new version instead).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import schemas
from service.anomaly import aux_tensors, stats_floats
from service.contract import check_contract, check_graph
from service.errors import ModelNotFound
from service.manifest import ArtifactError, Manifest, read_manifest, read_vocab, verify_files
from service.settings import Settings

log = logging.getLogger(__name__)

_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the manifest's pattern: no path tricks


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Numeric-aware ordering key: "2" < "10", "1.2" < "1.10", numbers before words in one position."""
    parts = re.findall(r"\d+|[^\d.\-_]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


@dataclass(eq=False)
class LoadedModel:
    """One served model version: its manifest, vocabulary and ONNX Runtime session."""

    manifest: Manifest
    path: Path
    session: ort.InferenceSession
    vocab: list[str] | None = None
    vocab_index: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def key(self) -> str:
        """`name/version`: how stores, batchers and snapshot files name this version."""
        return f"{self.name}/{self.version}"

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def state_count(self) -> int:
        """Stored state tensors per session: the graph's, then `aux_states` (service.anomaly)."""
        return len(self.manifest.onnx.states) + self.aux_states

    @property
    def aux_states(self) -> int:
        """Extra [L, N, H] tensors holding a sensor session's statistics (never fed to the graph)."""
        if self.manifest.sensor is None:
            return 0
        return aux_tensors(stats_floats(self.features), *self.manifest.state_shape)

    @property
    def state_names(self) -> tuple[list[str], list[str]]:
        """(input names, output names) of the state tensors, in manifest order."""
        states = self.manifest.onnx.states
        return [s.input for s in states], [s.output for s in states]

    @property
    def state_floats(self) -> int:
        """float32 values of one session's state: state tensors x layers x hidden."""
        layers, hidden = self.manifest.state_shape
        return self.state_count * layers * hidden

    @property
    def features(self) -> int:
        return self.manifest.architecture.input_size

    def info(self, default: bool, state: schemas.ModelState = "ready") -> schemas.ModelInfo:
        m, arch = self.manifest, self.manifest.architecture
        return schemas.ModelInfo(
            name=m.name,
            version=m.version,
            task=m.task,
            cell=arch.cell,
            layers=arch.layers,
            hidden=arch.hidden,
            features=list(m.sensor.features) if m.sensor is not None else None,
            vocab_size=m.lm.vocab_size if m.lm is not None else None,
            default=default,
            state=state,
        )

    def run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """One ONNX Runtime call; thread-safe (ORT sessions allow concurrent `run`)."""
        result: list[np.ndarray] = self.session.run(outputs, feed)
        return result


def _providers(requested: list[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = []
    for name in requested:
        provider = _ORT_PROVIDERS[name]
        if provider in available:
            chosen.append(provider)
        else:
            log.warning("ONNX Runtime provider %s was requested but is not available; using CPU", provider)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def load_artifact(path: Path, settings: Settings) -> LoadedModel:
    """Verify one artifact directory and build its ONNX Runtime session; ArtifactError if it cannot serve."""
    manifest = read_manifest(path)
    if (path.parent.name, path.name) != (manifest.name, manifest.version):
        raise ArtifactError(
            f"{path}: manifest says {manifest.name}/{manifest.version}, the directory differs"
        )
    verify_files(path, manifest)
    try:
        check_contract(manifest)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    try:
        session = ort.InferenceSession(
            str(path / manifest.onnx.file), options, providers=_providers(list(settings.providers))
        )
    except Exception as exc:  # ORT raises its own exception types for unreadable graphs
        raise ArtifactError(f"{path}: ONNX Runtime cannot load the graph ({exc})") from exc
    try:
        check_graph(manifest, session)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    model = LoadedModel(manifest=manifest, path=path, session=session)
    if manifest.lm is not None:
        model.vocab = read_vocab(path, manifest.lm)
        model.vocab_index = {token: i for i, token in enumerate(model.vocab)}
    return model


Signature = tuple[tuple[str, int, int], ...]


def signature(path: Path) -> Signature:
    """(file name, size, mtime ns) of every file of an artifact directory: what changes when a copy
    into it goes on or a new artifact replaces it."""
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return ()
    files = []
    for entry in entries:
        try:
            info = entry.stat()
        except OSError:  # removed while we looked
            continue
        files.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(files)


class Registry:
    """All served model versions, by name and version."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self.errors: dict[str, str] = {}  # "name/version" -> why it was refused
        self._refused: dict[str, Signature] = {}  # "name/version" -> its files when refused
        self._pinned: dict[str, str] = {}  # name -> the version pinned as default
        self._draining: set[str] = set()  # "name/version" serving its sessions, closed to new ones
        self._unloaded: set[str] = set()  # "name/version" unloaded on purpose: `scan` skips them
        self._hashes: dict[str, str] = {}  # "name/version" -> graph sha256 of every version served

    def load_all(self) -> list[LoadedModel]:
        """Load every `<name>/<version>/` under models_dir; a refused artifact is logged and skipped."""
        if not self.settings.models_dir.is_dir():
            log.warning("models directory %s does not exist; serving no models", self.settings.models_dir)
        loaded: list[LoadedModel] = []
        for name, version in self.scan():
            try:
                loaded.append(self.load(name, version))
            except ArtifactError as exc:
                log.error("refusing artifact %s/%s: %s", name, version, exc)
        return loaded

    def scan(self) -> list[tuple[str, str]]:
        """(name, version) of every version directory worth loading now: not loaded, not unloaded on
        purpose, not refused with the files it still has. Hidden directories (`.name`) are skipped:
        publish by writing `models/<name>/.<version>.tmp/` and renaming it to `<version>`."""
        root = self.settings.models_dir
        found: list[tuple[str, str]] = []
        if not root.is_dir():
            return found
        for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(
                p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                name, version = name_dir.name, version_dir.name
                key = f"{name}/{version}"
                if version in self._models.get(name, {}) or key in self._unloaded:
                    continue
                if self._refused.get(key) == signature(version_dir):
                    continue
                found.append((name, version))
        return found

    def load(self, name: str, version: str) -> LoadedModel:
        """Load one artifact; a version already loaded is returned as it is (its sessions belong to it).
        Runs ONNX Runtime's graph load: call it from a worker thread while serving, then `add`."""
        if version in self._models.get(name, {}):
            return self._models[name][version]
        return self.add(self.read(name, version))

    def read(self, name: str, version: str) -> LoadedModel:
        """Verify and open one artifact without registering it (thread-safe: touches no registry state
        but the refusal record). ArtifactError if it cannot serve."""
        key = f"{name}/{version}"
        if not (NAME_PATTERN.match(name) and NAME_PATTERN.match(version)):
            raise ArtifactError(f"{key!r} is not a model name and version")
        path = self.settings.models_dir / name / version
        files = signature(path)
        try:
            model = load_artifact(path, self.settings)
            served = self._hashes.get(key)
            if served is not None and served != model.manifest.onnx.sha256:
                raise ArtifactError(
                    f"{path}: {key} was served with another graph in this process; a version is "
                    "immutable, publish the change as a new version"
                )
        except ArtifactError as exc:
            self.errors[key] = str(exc)
            self._refused[key] = files
            raise
        return model

    def add(self, model: LoadedModel) -> LoadedModel:
        """Register a version `read` returned (on the event loop: readers see it at once)."""
        name, version, key = model.name, model.version, model.key
        if version in self._models.get(name, {}):
            return self._models[name][version]
        self.errors.pop(key, None)
        self._refused.pop(key, None)
        self._unloaded.discard(key)
        self._hashes[key] = model.manifest.onnx.sha256
        self._models.setdefault(name, {})[version] = model
        log.info(
            "loaded model %s (%s, %s, %d state floats per session)",
            key,
            model.task,
            model.manifest.architecture.cell,
            model.state_floats,
        )
        return model

    def default_version(self, name: str) -> str:
        """The pinned version, else the highest one not draining (else the highest one)."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"no model named {name!r}", model=name)
        pinned = self._pinned.get(name)
        if pinned in versions and f"{name}/{pinned}" not in self._draining:
            return pinned
        open_ = [v for v in versions if f"{name}/{v}" not in self._draining]
        return max(open_ or versions, key=version_key)

    def pin_default(self, name: str, version: str | None) -> None:
        """Make `version` the default of `name` (None: back to the highest one)."""
        if version is None:
            self._pinned.pop(name, None)
            return
        model = self.get(name, version)
        if self.draining(model.key):
            raise ModelNotFound(f"model {model.key} is being unloaded", model=name, version=version)
        self._pinned[name] = version

    def pinned(self, name: str) -> str | None:
        return self._pinned.get(name)

    def draining(self, key: str) -> bool:
        return key in self._draining

    def drain(self, model: LoadedModel) -> None:
        """Keep `model` serving its sessions, closed to new ones (a pin on it is dropped)."""
        self._draining.add(model.key)
        if self._pinned.get(model.name) == model.version:
            del self._pinned[model.name]

    def undrain(self, model: LoadedModel) -> None:
        self._draining.discard(model.key)

    def draining_models(self) -> list[LoadedModel]:
        return [m for m in self.all() if m.key in self._draining]

    def remove(self, model: LoadedModel) -> None:
        """Forget a version (unloaded on purpose: `scan` skips it until it is loaded again)."""
        versions = self._models.get(model.name, {})
        if versions.get(model.version) is model:
            del versions[model.version]
            if not versions:
                del self._models[model.name]
        self._draining.discard(model.key)
        self._unloaded.add(model.key)
        if self._pinned.get(model.name) == model.version:
            del self._pinned[model.name]

    def unloaded(self, key: str) -> bool:
        """True for a version unloaded on purpose in this process (its sessions answer 410)."""
        return key in self._unloaded

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"no model named {name!r}", model=name)
        if version is None:
            version = self.default_version(name)
        model = versions.get(version)
        if model is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}",
                model=name,
                version=version,
                available=sorted(versions, key=version_key),
            )
        return model

    def find(self, key: str) -> LoadedModel | None:
        """The model version named `name/version`, or None."""
        name, _, version = key.partition("/")
        return self._models.get(name, {}).get(version)

    def all(self) -> list[LoadedModel]:
        return [m for name in sorted(self._models) for m in self._models[name].values()]

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())

    def models(self) -> schemas.ModelList:
        infos = []
        for name in sorted(self._models):
            default = self.default_version(name)
            for version in sorted(self._models[name], key=version_key):
                model = self._models[name][version]
                state: schemas.ModelState = "draining" if model.key in self._draining else "ready"
                infos.append(model.info(default=version == default, state=state))
        return schemas.ModelList(models=infos)
