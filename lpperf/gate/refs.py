"""Where each side of a gate comes from: the working tree, another checkout's folder, or a git ref
exported with `git archive` into a scratch folder (the checkout itself is never touched). Every way a
ref or folder can fail to hold a measurable lpperf is a GateError naming it."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from lpperf.gate.controller import Side
from lpperf.gate.workers import GateError


def _git(repo: Path, *args: str, binary: bool = False, check: bool = True):
    """git's output in `repo`; with check=False, None where git fails (a probe)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GateError(f"git {' '.join(args)} failed: {error}") from None
    if done.returncode != 0:
        if not check:
            return None
        raise GateError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip() or 'failed'}")
    return done.stdout if binary else done.stdout.decode().strip()


def _is_checkout(folder: Path) -> bool:
    return (folder / "lpperf" / "__init__.py").is_file()


def repository() -> Path:
    top = _git(Path.cwd(), "rev-parse", "--show-toplevel", check=False)
    if top is None:
        raise GateError(f"{Path.cwd()} is not inside a git checkout; run the gate from an lpperf checkout")
    root = Path(top).resolve()
    if not _is_checkout(root):
        raise GateError(f"{root} is not an lpperf checkout (no lpperf/__init__.py); run the gate from one")
    return root


def side(ref: str | None, repo: Path, scratch: Path) -> Side:
    if ref is None:
        return Side(f"working tree {repo}", repo)
    sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    folder = Path(ref).expanduser()
    if folder.is_dir():
        if sha:
            raise GateError(f"{ref!r} is both a folder and a git ref; write ./{ref} for the folder or the commit "
                            f"{sha[:10]} for the ref")
        return _folder_side(folder)
    if not sha:
        kind = _git(repo, "cat-file", "-t", ref, check=False)
        if kind:
            raise GateError(f"{ref!r} names a {kind}, not a commit; give a branch, a tag or a commit hash")
        if folder.exists():
            raise GateError(f"{ref} is a file; give a git ref or a folder holding an lpperf checkout")
        raise GateError(f"git ref {ref!r} does not exist in {repo}; fetch it first (e.g. git fetch origin main) "
                        "or name another")
    folder = scratch / sha[:12]
    if not folder.exists():
        _export(ref, sha, repo, folder)
    if not _is_checkout(folder):
        raise GateError(f"{ref} ({sha[:10]}) has no lpperf package at its top level; it cannot be measured")
    return Side(f"{ref} {sha[:10]}", folder)


def _folder_side(folder: Path) -> Side:
    """Another checkout as it is. A sub-folder stands for its checkout, as in git (`.` from tests/)."""
    root = folder.resolve()
    if not _is_checkout(root):
        top = _git(root, "rev-parse", "--show-toplevel", check=False)
        if not top or not _is_checkout(Path(top)):
            raise GateError(f"folder {root} is not an lpperf checkout (no lpperf/__init__.py in it"
                            f"{f' or in {top}, its git top level' if top else ''}); give a checkout or a git ref")
        root = Path(top).resolve()
    return Side(f"folder {root}", root)


def _export(ref: str, sha: str, repo: Path, folder: Path) -> None:
    """The commit's files into `folder` with `git archive`, refusing any member that would land outside it
    or is not a plain file, folder or link within the tree."""
    archive = _git(repo, "archive", "--format=tar", sha, binary=True)
    folder.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    except tarfile.FilterError as refused:
        raise GateError(f"{ref} ({sha[:10]}) holds {refused.tarinfo.name!r}, {_unsafe(refused)}; the gate exports "
                        "only files, folders and links within the tree, so it cannot measure this commit") from None
    except tarfile.TarError as error:
        raise GateError(f"{ref} ({sha[:10]}): git archive gave an archive that cannot be read ({error})") from None


def _unsafe(refused: tarfile.FilterError) -> str:
    member = refused.tarinfo
    if isinstance(refused, tarfile.AbsoluteLinkError):
        return f"a link to the absolute path {member.linkname}"
    if isinstance(refused, tarfile.LinkOutsideDestinationError):
        return f"a link to {member.linkname}, outside the tree"
    if isinstance(refused, tarfile.SpecialFileError):
        return "a device or other special file"
    if isinstance(refused, (tarfile.AbsolutePathError, tarfile.OutsideDestinationError)):
        return "a path outside the tree"
    return str(refused)
