"""Where Ray Tune keeps a study: a local folder, or a URI (s3://, gs://, file://, ...) handed to Ray as it is,
which reads and writes it through its pyarrow file systems."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from cytotune.config import default_cache_dir

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
DEFAULT_STORAGE = "ray_results"


def is_uri(text: str | Path) -> bool:
    """Whether a storage is a URI (scheme://...) rather than a local path."""
    return isinstance(text, str) and bool(_URI.match(text))


@dataclass(frozen=True)
class StudyStorage:
    """A study's Ray storage: `root` is what Ray Tune gets as storage_path (an absolute local path or a URI),
    the experiment lives at root/name."""

    root: str
    name: str

    @property
    def experiment(self) -> str:
        """The experiment's location as Ray Tune takes it (Tuner.restore, ExperimentAnalysis)."""
        if is_uri(self.root):
            return f"{self.root.rstrip('/')}/{self.name}"
        return str(Path(self.root) / self.name)

    @property
    def local(self) -> Path | None:
        """The experiment as a folder of this machine (a local path or a file:// URI), None when remote."""
        if not is_uri(self.root):
            return Path(self.root) / self.name
        parsed = urlparse(self.root)
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
            return Path(unquote(parsed.path)) / self.name
        return None

    @property
    def driver_dir(self) -> Path:
        """Where the driver keeps what Ray does not (the Optuna journal): the experiment folder when it is on
        this machine, else a folder under the cache named after the URI."""
        if self.local is not None:
            return self.local
        key = hashlib.sha1(self.experiment.encode()).hexdigest()[:12]
        return default_cache_dir() / "studies" / f"{self.name}-{key}"

    def exists(self, relative: str) -> bool:
        """Whether root/name/relative exists, asked of the storage's own file system."""
        if self.local is not None:
            return (self.local / relative).exists()
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(f"{self.experiment}/{relative}")
        return filesystem.get_file_info(path).type != fs.FileType.NotFound

    def __str__(self) -> str:
        return self.experiment


def study_storage(name: str, given: str | Path | None, from_yaml: str | Path | None = None) -> StudyStorage:
    """The storage of study `name`: `given` (the command's), else the YAML's, else ./ray_results; local paths
    made absolute, URIs kept as they are."""
    given = given or from_yaml or DEFAULT_STORAGE
    if is_uri(given):
        return StudyStorage(str(given), name)
    return StudyStorage(str(Path(given).expanduser().resolve()), name)
