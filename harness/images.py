"""The stack's container images, built by the project itself (no registry needed).

Every component has a Dockerfile in ``compose/images/<component>/``, all
``FROM`` one base image given as the build argument ``BASE_IMAGE``:

- ``postgres``, ``redis``, ``haproxy``, ``prometheus`` (with promtool),
  ``postgres-exporter``, ``redis-exporter``: Debian's packages;
- ``platform``: the four services (the service is the command's first word),
  with its Python dependencies downloaded as wheels on the host (the host's
  pip configuration reaches the package index; a container may not) and
  installed offline inside.

The base image is ``debian:bookworm-slim`` where it is present or can be
pulled; where no registry is reachable it is made here, once, with
``debootstrap --variant=minbase bookworm`` and ``docker import``
(``atendeai/debian-base:bookworm``, rebuilt only when missing).

``ensure_images(config)`` builds what is missing or stale: each image carries
a label with the SHA-256 of its build context (Dockerfile, files, base image),
and of the base image's id, so editing a Dockerfile or the platform's code
rebuilds exactly that image, and a new base rebuilds them all.
Image names are configuration (``ImageConfig``): point ``image_overrides`` (or
``ATENDEAI_IMAGE_<COMPONENT>``) at your own images and they are used as they
are, never built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.docker_engine import docker_client
from harness.exceptions import ConfigurationError, ImageBuildError
from harness.progress import Progress

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO_ROOT / "compose" / "images"
COMPONENTS = (
    "postgres",
    "redis",
    "haproxy",
    "prometheus",
    "postgres-exporter",
    "redis-exporter",
    "platform",
)
REGISTRY_BASE = "debian:bookworm-slim"
LOCAL_BASE = "atendeai/debian-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CONTEXT_LABEL = "org.atendeai.context-sha256"
AUTO = "auto"


def _env_name(component: str) -> str:
    return "ATENDEAI_IMAGE_" + component.upper().replace("-", "_")


@dataclass(frozen=True)
class ImageConfig:
    """Which images the stack runs, resolved once.

    - ``prefix`` / ``tag``: the project's own images are ``<prefix>/<component>:<tag>``.
    - ``base_image``: the ``FROM`` of every Dockerfile; ``"auto"`` picks
      ``debian:bookworm-slim`` when it is present or pullable, else the local
      debootstrap base.
    - ``image_overrides``: ``(component, image)`` pairs for images of your own;
      those are used as they are and never built.
    """

    prefix: str = "atendeai"
    tag: str = "0.1.0"
    base_image: str = AUTO
    image_overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_overrides", tuple(tuple(p) for p in self.image_overrides))
        for component, image in self.image_overrides:
            if component not in COMPONENTS:
                raise ConfigurationError(
                    f"image override for unknown component {component!r} "
                    f"(components: {', '.join(COMPONENTS)})"
                )
            if not image or " " in image:
                raise ConfigurationError(f"image override for {component}: {image!r} is no name")
        for what, value in (("prefix", self.prefix), ("tag", self.tag)):
            if not value or any(c in value for c in " :@"):
                raise ConfigurationError(f"image {what} {value!r} is not valid in an image name")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: str) -> ImageConfig:
        """Arguments first, then ``ATENDEAI_IMAGE_PREFIX`` / ``_TAG``, ``ATENDEAI_BASE_IMAGE``
        and ``ATENDEAI_IMAGE_<COMPONENT>``, then the defaults."""
        env = os.environ if env is None else env
        values = {
            "prefix": given.get("prefix") or env.get("ATENDEAI_IMAGE_PREFIX") or cls.prefix,
            "tag": given.get("tag") or env.get("ATENDEAI_IMAGE_TAG") or cls.tag,
            "base_image": given.get("base_image") or env.get("ATENDEAI_BASE_IMAGE") or AUTO,
        }
        overrides = tuple(
            (component, env[_env_name(component)])
            for component in COMPONENTS
            if env.get(_env_name(component))
        )
        return cls(**values, image_overrides=overrides)

    def name(self, component: str) -> str:
        """The image the stack runs for ``component``."""
        if component not in COMPONENTS:
            raise ConfigurationError(f"no image for {component!r} (known: {', '.join(COMPONENTS)})")
        return dict(self.image_overrides).get(component, f"{self.prefix}/{component}:{self.tag}")

    def is_ours(self, component: str) -> bool:
        return component not in dict(self.image_overrides)


@dataclass(frozen=True)
class ImageReport:
    """What ``ensure_images`` did: per image ``built``, ``present`` or ``given``."""

    base_image: str
    actions: tuple[tuple[str, str, str], ...] = field(default=())  # (component, image, action)
    seconds: float = 0.0

    @property
    def built(self) -> tuple[str, ...]:
        return tuple(component for component, _, action in self.actions if action == "built")


def ensure_images(
    config: ImageConfig | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> ImageReport:
    """Build every image of ours that is missing or stale (all of them with ``force``)."""
    config = ImageConfig.from_env() if config is None else config
    say = progress or (lambda line: None)
    started = time.monotonic()
    client = docker_client()
    try:
        actions: list[tuple[str, str, str]] = []
        base: str | None = None
        for component in COMPONENTS:
            image = config.name(component)
            if not config.is_ours(component):
                _require_present(client, component, image)
                actions.append((component, image, "given"))
                continue
            if base is None:
                base = resolve_base_image(config.base_image, progress=say)
                base_id = client.images.get(base).id
            with _build_context(component) as context:
                digest = _context_digest(context, base_id)
                if not force and _label(client, image) == digest:
                    actions.append((component, image, "present"))
                    continue
                _build(client, component, image, context, base=base, digest=digest, say=say)
                actions.append((component, image, "built"))
    finally:
        client.close()
    report = ImageReport(
        base_image=base or "(none: every image given)",
        actions=tuple(actions),
        seconds=time.monotonic() - started,
    )
    built = report.built
    say(
        f"images: {len(built)} built ({', '.join(built) or 'none'}), "
        f"{len(COMPONENTS) - len(built)} up to date, in {report.seconds:.1f} s "
        f"(base {report.base_image})"
    )
    return report


def resolve_base_image(base_image: str = AUTO, *, progress: Progress | None = None) -> str:
    """The base image to build from, made here with debootstrap when no registry has one."""
    say = progress or (lambda line: None)
    client = docker_client()
    try:
        if base_image != AUTO:
            _require_present(client, "base", base_image)
            return base_image
        for candidate in (REGISTRY_BASE, LOCAL_BASE):
            if _exists(client, candidate):
                return candidate
        try:
            say(f"images: pulling {REGISTRY_BASE}")
            client.images.pull(REGISTRY_BASE)
            return REGISTRY_BASE
        except Exception as error:  # no registry here: make the base ourselves
            say(f"images: cannot pull {REGISTRY_BASE} ({type(error).__name__}); making it locally")
        build_local_base(progress=say)
        return LOCAL_BASE
    finally:
        client.close()


def build_local_base(*, name: str = LOCAL_BASE, progress: Progress | None = None) -> None:
    """``debootstrap --variant=minbase bookworm`` into a temporary directory, then
    ``docker import`` it as ``name`` (about 35 s; needs root and debootstrap)."""
    say = progress or (lambda line: None)
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise ImageBuildError(
            name,
            "debootstrap is not installed and no registry has a Debian base image",
            hint="apt-get install debootstrap (scripts/bootstrap.sh does it when root), "
            "or set ATENDEAI_BASE_IMAGE to a Debian 12 image you have",
        )
    if os.geteuid() != 0:
        raise ImageBuildError(name, "debootstrap needs root", hint="run it as root once")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="atendeai-base-") as tmp:
        root = Path(tmp) / "rootfs"
        say(f"images: debootstrap --variant=minbase bookworm (about 35 s) into {root}")
        result = subprocess.run(
            [debootstrap, "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise ImageBuildError(name, f"debootstrap exited {result.returncode}", log_tail=tail)
        (root / "etc" / "apt" / "sources.list").write_text(
            f"deb {DEBIAN_MIRROR} bookworm main\n"
            f"deb {DEBIAN_MIRROR} bookworm-updates main\n"
            "deb http://deb.debian.org/debian-security bookworm-security main\n"
        )
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        repository, tag = name.rsplit(":", 1)
        client = docker_client()
        try:
            client.api.import_image_from_file(str(tarball), repository=repository, tag=tag)
        finally:
            client.close()
    say(f"images: base {name} made in {time.monotonic() - started:.1f} s")


def _exists(client: object, image: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)  # type: ignore[attr-defined]
    except ImageNotFound:
        return False
    return True


def _require_present(client: object, component: str, image: str) -> None:
    if _exists(client, image):
        return
    try:
        client.images.pull(image)  # type: ignore[attr-defined]
    except Exception as error:
        fix = (
            "drop --base-image / ATENDEAI_BASE_IMAGE to use debian:bookworm-slim or a "
            "debootstrap base"
            if component == "base"
            else f"unset {_env_name(component)} to build the project's own"
        )
        raise ConfigurationError(
            f"{component}: image {image} is neither here nor pullable ({error}); {fix}"
        ) from None


def _label(client: object, image: str) -> str | None:
    from docker.errors import ImageNotFound

    try:
        labels = client.images.get(image).labels or {}  # type: ignore[attr-defined]
    except ImageNotFound:
        return None
    return labels.get(CONTEXT_LABEL)


@contextmanager
def _build_context(component: str) -> Iterator[Path]:
    """A temporary build context: the component's folder (and, for the platform,
    the service code and the wheels of its dependencies)."""
    source = IMAGES_DIR / component
    if not (source / "Dockerfile").is_file():
        raise ConfigurationError(f"no Dockerfile for {component} in {source}")
    with tempfile.TemporaryDirectory(prefix=f"atendeai-image-{component}-") as tmp:
        context = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source, context, dirs_exist_ok=True, ignore=ignore)
        if component == "platform":
            shutil.copytree(
                REPO_ROOT / "system_under_test", context / "system_under_test", ignore=ignore
            )
            shutil.copy2(
                REPO_ROOT / "compose" / "platform" / "bootstrap_database.py",
                context / "bootstrap_database.py",
            )
            _download_wheels(source / "requirements.txt", context / "wheels")
        yield context


def _download_wheels(requirements: Path, target: Path) -> None:
    """The platform's dependencies as wheels, downloaded once per requirements file."""
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "atendeai" / "wheels" / key
    if not (cache / "complete").exists():
        _pip_download(requirements, cache)
        (cache / "complete").touch()
    target.mkdir()
    for wheel in cache.glob("*.whl"):
        shutil.copy2(wheel, target / wheel.name)
    shutil.copy2(requirements, target / "requirements.txt")


def _pip_download(requirements: Path, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--dest",
        str(cache),
        "-r",
        str(requirements),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise ImageBuildError(
            "platform",
            "pip could not download the platform's dependencies",
            log_tail=tail,
            hint="the host needs the package index (PyPI) for the first build",
        )


def _context_digest(context: Path, base_id: str) -> str:
    """What decides an image: its build context and the very base image (by id)."""
    digest = hashlib.sha256(f"base={base_id}\n".encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        relative = path.relative_to(context)
        if relative.parts[0] == "wheels" and path.suffix == ".whl":
            continue  # the requirements decide; wheel files differ by download date
        digest.update(f"{relative}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _build(
    client: object,
    component: str,
    image: str,
    context: Path,
    *,
    base: str,
    digest: str,
    say: Progress,
) -> None:
    started = time.monotonic()
    say(f"images: building {image} from {base}")
    log: list[str] = []
    stream = client.api.build(  # type: ignore[attr-defined]
        path=str(context),
        tag=image,
        buildargs={"BASE_IMAGE": base},
        labels={CONTEXT_LABEL: digest},
        rm=True,
        forcerm=True,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            raise ImageBuildError(
                image,
                str(chunk["error"]).strip(),
                log_tail="\n".join(log[-25:]),
                hint=f"the Dockerfile is compose/images/{component}/Dockerfile",
            )
        text = str(chunk.get("stream", "")).rstrip()
        if not text:
            continue
        log.extend(text.splitlines())
        if text.startswith("Step "):
            say(f"images: {component}: {text[:110]}")
    seconds = time.monotonic() - started
    size = client.images.get(image).attrs.get("Size", 0) / 1e6  # type: ignore[attr-defined]
    say(f"images: built {image} in {seconds:.1f} s ({size:.0f} MB)")


__all__ = [
    "COMPONENTS",
    "ImageConfig",
    "ImageReport",
    "build_local_base",
    "ensure_images",
    "resolve_base_image",
]
