"""Build the Docker sandbox image, with or without a registry.

The image is the ``sandbox`` target of the repository's Dockerfile: a Python
interpreter and the runner's folder, ``sandbox/runner``. Its base is ``python:3.11-slim`` from a
registry, or, where none is reachable, a root filesystem made from this
machine's own Python (the interpreter, its standard library without installed
packages, and the shared libraries they load), imported with ``docker import``.

    python -m sandbox.image build                   # offline: import this machine's Python, build the target
    python -m sandbox.image build --base python:3.11-slim   # from a registry
    python -m sandbox.image rootfs python-rootfs.tar        # only write the root filesystem tarball
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from sandbox.config import SandboxConfig
from sandbox.interpreter import SKIP_DIRS, extension_modules, interpreter, libpython, shared_libraries
from sandbox.runner.wire import RUNNER_DIR

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TAG = SandboxConfig.image  # the image the docker backend runs
BASE_REPOSITORY = "sca-python-base"
PYTHON_IN_IMAGE = "/opt/sca/python"
def write_rootfs(out: str | Path, python: str = sys.executable) -> str:
    """Write a root filesystem tarball holding `python` and what it needs; return its version."""
    interp = interpreter(python)
    prefix, exe = interp.prefix, interp.exe
    relocate = interp.relocated
    mount = PYTHON_IN_IMAGE if relocate else prefix

    def inside(path: str) -> str:
        return mount + path[len(prefix):] if relocate and path.startswith(prefix + "/") else path

    files: dict[str, str] = {}  # path in the image -> host file
    files[inside(exe)] = exe
    for root, dirs, names in os.walk(interp.stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-")]
        for n in names:
            if n.startswith("_tkinter") or n.endswith((".opt-1.pyc", ".opt-2.pyc")):
                continue
            host = os.path.join(root, n)
            files[inside(host)] = host
    libs = shared_libraries([exe, *extension_modules(interp), *libpython(interp)])
    libc_dir = next((os.path.dirname(p) for p in libs if os.path.basename(p).startswith("libc.so")), "/usr/lib")
    for lib in libs:
        real = os.path.realpath(lib)
        if real.startswith(prefix + "/") and relocate:
            # a relocated libpython: its RPATH names the host tree, so put it where the loader looks anyway
            files[f"{libc_dir}/{os.path.basename(lib)}"] = real
        else:
            files[os.path.realpath(os.path.dirname(lib)) + "/" + os.path.basename(lib)] = real
    version = interp.version
    short = ".".join(version.split(".")[:2])
    links = {"/usr/local/bin/python3": inside(exe), f"/usr/local/bin/python{short}": inside(exe)}
    for top in ("/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):
            links[top] = os.readlink(top)
    dirs = {"/tmp": 0o1777, "/etc": 0o755, "/opt/sca": 0o755, "/proc": 0o555, "/dev": 0o755, "/sys": 0o555}
    etc = {"/etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/sbin/nologin\n",
           "/etc/group": "root:x:0:\nnogroup:x:65534:\n"}

    with tarfile.open(out, "w") as tar:
        made: set[str] = set()

        def add_dir(path: str, mode: int = 0o755) -> None:
            parts = Path(path).parts[1:]
            for i in range(1, len(parts) + 1):
                p = "/" + "/".join(parts[:i])
                if p in made or p in links:
                    continue
                made.add(p)
                info = tarfile.TarInfo(p.lstrip("/"))
                info.type, info.mode = tarfile.DIRTYPE, (mode if i == len(parts) else 0o755)
                tar.addfile(info)

        for link, target in sorted(links.items()):
            add_dir(os.path.dirname(link))
            info = tarfile.TarInfo(link.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
            made.add(link)
        for d, mode in dirs.items():
            add_dir(d, mode)
        for path, text in etc.items():
            data = text.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for path in sorted(files):
            host = files[path]
            real_dir = _resolve_links(os.path.dirname(path), links)
            add_dir(real_dir)
            st = os.stat(host)
            info = tarfile.TarInfo(f"{real_dir}/{os.path.basename(path)}".lstrip("/"))
            info.size, info.mode, info.mtime = st.st_size, (0o755 if st.st_mode & 0o111 else 0o644), int(st.st_mtime)
            with open(host, "rb") as f:
                tar.addfile(info, f)
    return version


def _resolve_links(path: str, links: dict[str, str]) -> str:
    """`path` with a leading top-level symlink of the image (/lib -> usr/lib) resolved."""
    for link, target in links.items():
        if path == link or path.startswith(link + "/"):
            base = target if target.startswith("/") else os.path.join(os.path.dirname(link), target)
            return os.path.normpath(base + path[len(link):])
    return path


def _client():
    import docker

    return docker.from_env(timeout=600)


def build(tag: str = DEFAULT_TAG, base: str | None = None, python: str = sys.executable,
          log=print) -> str:
    """Build the sandbox image; without `base`, from an imported root filesystem of this machine."""
    import docker.errors

    client = _client()
    try:
        if base is None:
            version = interpreter(python).version
            base = f"{BASE_REPOSITORY}:{version}"
            try:
                client.images.get(base)
                log(f"base image {base} already present")
            except docker.errors.ImageNotFound:
                with tempfile.TemporaryDirectory() as tmp:
                    tarball = Path(tmp, "rootfs.tar")
                    write_rootfs(tarball, python)
                    log(f"importing {tarball.stat().st_size >> 20} MiB root filesystem as {base}")
                    repo, _, version_tag = base.partition(":")
                    client.api.import_image_from_file(str(tarball), repository=repo, tag=version_tag)
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            tar.add(REPO / "Dockerfile", arcname="Dockerfile")
            for runner_file in sorted(Path(RUNNER_DIR).iterdir()):  # every file runner_digest covers
                if runner_file.is_file():
                    tar.add(runner_file, arcname=f"sandbox/runner/{runner_file.name}")
        context.seek(0)
        log(f"building {tag} (Dockerfile target 'sandbox', base {base})")
        try:
            image, _ = client.images.build(fileobj=context, custom_context=True, target="sandbox", tag=tag,
                                           buildargs={"PYTHON_BASE": base}, pull=False, rm=True, forcerm=True)
        except docker.errors.BuildError as e:
            lines = "".join(str(x.get("stream") or x.get("error") or "") for x in e.build_log)
            raise RuntimeError(f"docker build failed: {e}\n{lines[-2000:]}") from None
        log(f"built {tag} ({image.short_id})")
        return image.id
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.image", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the sandbox image")
    b.add_argument("--tag", default=DEFAULT_TAG)
    b.add_argument("--base", default=None, help="base image with python3 (default: import this machine's Python)")
    b.add_argument("--python", default=sys.executable, help="interpreter to put in the imported base")
    r = sub.add_parser("rootfs", help="write the root filesystem tarball only (for `docker import`)")
    r.add_argument("out")
    r.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.command == "rootfs":
        version = write_rootfs(args.out, args.python)
        print(f"wrote {args.out} (Python {version}); then: docker import {args.out} {BASE_REPOSITORY}:{version}")
        return 0
    build(args.tag, args.base, args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
