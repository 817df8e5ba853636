"""A distribution's kernel, installed or unpacked from its packages, read into ORIG_CONFIG:
the job of `git ksplice import-kernel`.

A distribution scatters what describes its kernel over several packages and paths, and hides
traps in them: Debian's `/boot/config-R` is not the build configuration (the headers
package's `.config` is: it alone has BUILD_SALT and the signing options, which change
objects), Debian's `/boot/System.map-R` is a one-line stub pointing at the 859 MB debug
package, Fedora keeps everything under `/lib/modules/R/`. So each part of ORIG_CONFIG has a
list of places to look, in order, each tagged with the layout it belongs to (`PARTS`):
supporting another distribution is rows in that table, not code.

What is imported, into ORIG_CONFIG:
- `.config`: the build configuration (the headers package's first);
- `System.map`: the shipped one when it is real, otherwise written from the kallsyms tables
  of `vmlinuz` (git_ksplice.kernel_image): the very list, in the very order, livepatch's
  `sympos` counts in;
- `vmlinuz`, `Module.symvers`, the debug `vmlinux` when there is one, and `modules/` (the
  shipped `lib/modules/R/`, for module targets and `try`), hard-linked where the file system
  allows, copied otherwise;
- `kernel.json`, written last (an interrupted import leaves none, and the next import starts
  afresh): the release, banner, compiler and module vermagic that the build pins and checks
  (git_ksplice.toolchain), and where every part came from.

Every part is checked against the others before anything is written: the image's banner
names the release asked for, the configuration's compiler is the banner's, the modules'
vermagic carries the release, a real System.map agrees with the image's own symbols.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from git_ksplice.errors import InputError
from git_ksplice.kernel_image import (
    Banner,
    banner,
    banner_in_file,
    read_kallsyms,
    system_map,
    unpack_bzimage,
)
from git_ksplice.origconfig import INCOMPLETE, KERNEL_JSON, read_config
from git_ksplice.shipped_modules import modinfo


@dataclass(frozen=True)
class Place:
    """One place a part may be found: a path under ROOT, `{R}` standing for the release."""

    layout: str
    template: str
    #: said when the part is found here (what is second-best about this place)
    caveat: str = ""

    def path(self, root: Path, release: str) -> Path:
        return root / self.template.format(R=release)


@dataclass(frozen=True)
class Part:
    """A part of ORIG_CONFIG, where to find it and what its absence costs."""

    name: str  # its name in ORIG_CONFIG
    what: str
    places: tuple[Place, ...]
    #: what the update loses without it ("" for a part import cannot do without)
    cost: str


_DEBIAN, _FEDORA = "Debian/Ubuntu", "Fedora/RHEL"
_BOOT_CONFIG_CAVEAT = ("not always the build configuration (Debian's lacks BUILD_SALT and the "
                       "signing options, so every object would differ): install or unpack "
                       "the kernel's headers package")
PARTS = (
    Part(".config", "the build configuration", (
        Place(_DEBIAN, "usr/src/linux-headers-{R}/.config"),
        Place(_FEDORA, "usr/src/kernels/{R}/.config"),
        Place(_FEDORA, "lib/modules/{R}/config"),
        Place(_DEBIAN, "boot/config-{R}", _BOOT_CONFIG_CAVEAT)), ""),
    Part("vmlinuz", "the kernel image", (
        Place(_DEBIAN, "boot/vmlinuz-{R}"),
        Place(_FEDORA, "lib/modules/{R}/vmlinuz")),
        "the symbols need a real System.map, the run-pre check the debug vmlinux, and "
        "`git ksplice try` an image given with --kernel"),
    Part("System.map", "the symbol map", (
        Place(_DEBIAN, "boot/System.map-{R}"),
        Place(_FEDORA, "lib/modules/{R}/System.map")), ""),
    Part("vmlinux", "the debug vmlinux", (
        Place(_DEBIAN, "usr/lib/debug/boot/vmlinux-{R}"),
        Place(_DEBIAN, "usr/lib/debug/vmlinux-{R}"),
        Place(_FEDORA, "usr/lib/debug/lib/modules/{R}/vmlinux")),
        "symbols and the run-pre check use the running code itself (vmlinuz unpacked, its "
        "kallsyms), which is enough; the debug package (linux-image-{R}-dbg) adds the "
        "source file of every local symbol"),
    Part("Module.symvers", "the exports' CRCs", (
        Place(_DEBIAN, "usr/src/linux-headers-{R}/Module.symvers"),
        Place(_FEDORA, "usr/src/kernels/{R}/Module.symvers"),
        Place(_FEDORA, "lib/modules/{R}/symvers.gz"),
        Place(_FEDORA, "boot/symvers-{R}.gz")),
        "the CRCs of the kernel's exports are not checked before packaging: a changed "
        "export is found only when the module loads"),
    Part("modules", "the shipped modules", (
        Place(_DEBIAN, "lib/modules/{R}"),
        Place(_DEBIAN, "usr/lib/modules/{R}")),
        "updates to modules cannot be checked against the shipped .ko, and `git ksplice try` "
        "loads no module an update needs"),
)
#: kbuild's links from lib/modules/R back into the headers: not part of what was shipped
_MODULE_DIR_LINKS = ("build", "source")
#: Files at least this large are hard-linked rather than copied (read-only images)
_LINK_ABOVE = 64 << 20
_KERNELVARIABLES = "usr/src/linux-headers-{R}/.kernelvariables"


@dataclass
class Found:
    """A part found: where, and what was said about it."""

    part: Part
    path: Path
    place: Place
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What `import-kernel` found and wrote, for the command to show."""

    release: str
    destination: Path
    found: list[Found]
    #: part -> what its absence costs
    missing: dict[str, str]
    banner: Banner | None
    vermagic: str | None
    #: System.map written from the image's kallsyms: how many symbols
    synthesized_symbols: int | None = None
    notes: list[str] = field(default_factory=list)


def _releases_under(root: Path) -> set[str]:
    """The releases of the kernel images and module directories under ROOT."""
    releases = {p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*")
                if p.is_file()}
    for modules in (root / "lib/modules", root / "usr/lib/modules"):
        releases |= {p.name for p in modules.glob("*") if (p / "kernel").is_dir()}
    return releases


def find_release(root: Path) -> str:
    """The one release installed under ROOT."""
    releases = _releases_under(root)
    if len(releases) == 1:
        return releases.pop()
    if not releases:
        raise InputError(f"no kernel under {root}: no boot/vmlinuz-RELEASE and no "
                         "lib/modules/RELEASE/kernel",
                         hint="unpack the kernel's packages there (Debian: apt-get download "
                              "linux-image-RELEASE-unsigned linux-headers-RELEASE "
                              "linux-headers-RELEASE-common linux-kbuild-VERSION; dpkg-deb -x "
                              "each into ROOT), or name another --root")
    raise InputError(f"{root} holds {len(releases)} kernels: {', '.join(sorted(releases))}",
                     hint="name the one to import: git ksplice import-kernel --root "
                          f"{root} RELEASE")


def locate(root: Path, release: str) -> tuple[list[Found], dict[str, str]]:
    """Each part's first place that exists; the parts found nowhere, with their cost."""
    found, missing = [], {}
    for part in PARTS:
        hit = next(((place, place.path(root, release)) for place in part.places
                    if place.path(root, release).exists()), None)
        if hit is None:
            missing[part.name] = part.cost.format(R=release)
            continue
        place, path = hit
        found.append(Found(part, path, place, [place.caveat] if place.caveat else []))
    return found, missing


def import_kernel(root: Path, release: str | None, destination: Path) -> ImportReport:
    """Read the kernel RELEASE under ROOT, check its parts against each other, and write
    them into the ORIG_CONFIG directory `destination` (see the module doc)."""
    release = release or find_release(root)
    found, missing = locate(root, release)
    parts = {f.part.name: f for f in found}
    if ".config" not in parts:
        others = _releases_under(root) - {release}
        raise InputError(f"no configuration of kernel {release} under {root}: looked for "
                         + ", ".join(p.template.format(R=release) for p in PARTS[0].places)
                         + (f" (it holds {', '.join(sorted(others))})" if others else ""),
                         hint=_packages_hint(release))
    report = ImportReport(release, destination, found, missing, None, None)
    image = _read_image(parts.get("vmlinuz"))
    report.banner = _banner_of(image, parts.get("vmlinux"))
    _check_banner(report, parts)
    map_text = _system_map(report, parts, image)
    report.vermagic = _vermagic(parts.get("modules"), release)
    report.notes += _kernelvariables(root, release)
    _check_destination(destination, report)
    _write(report, map_text)
    return report


def _packages_hint(release: str) -> str:
    return (f"install the kernel's headers (apt-get install linux-headers-{release}), or "
            f"unpack its packages under a directory and pass it as --root (apt-get download "
            f"linux-image-{release}-unsigned linux-headers-{release} ...; dpkg-deb -x)")


def _read_image(found: Found | None) -> bytes | None:
    """The unpacked kernel image, or None without a vmlinuz."""
    if found is None:
        return None
    try:
        data = found.path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {found.path}: {e.strerror}",
                         hint="Ubuntu's /boot files are root's: copy them readable to a "
                              "ROOT of yours (sudo install -m 644 -D FILE ROOT/boot/NAME) "
                              "and import from there, as yourself") from None
    return unpack_bzimage(data, str(found.path))


def _banner_of(image: bytes | None, vmlinux: Found | None) -> Banner | None:
    if image is not None:
        return banner(image)
    if vmlinux is not None:
        return banner_in_file(vmlinux.path)
    return None


def _check_banner(report: ImportReport, parts: dict[str, Found]) -> None:
    """The image is the release asked for, built with the configuration's compiler."""
    b, release = report.banner, report.release
    config = read_config(parts[".config"].path)
    if b is None:
        report.notes.append("no kernel image to read the banner from: the release and "
                            "compiler are taken on trust")
        return
    if b.release != release:
        where = parts["vmlinuz"].path if "vmlinuz" in parts else parts["vmlinux"].path
        raise InputError(f"{where} is kernel {b.release}, not {release}",
                         hint="the files under ROOT mix two kernels: unpack one kernel's "
                              "packages, matching versions")
    if "vmlinuz" in parts and "vmlinux" in parts:
        # Two uploads of one ABI release share the release; the banner names the build.
        debug = banner_in_file(parts["vmlinux"].path)
        if debug is None or debug.text != b.text:
            raise InputError(f"{parts['vmlinux'].path} is not the build of "
                             f"{parts['vmlinuz'].path}: its banner is "
                             f"{debug.text if debug else 'missing'!r}, the image's {b.text!r}",
                             hint="unpack the debug package of the same upload as the image")
    wanted = config.get("CONFIG_CC_VERSION_TEXT", "").strip('"')
    if wanted and wanted != b.compiler:
        raise InputError(f"{parts['.config'].path} was made with '{wanted}', but the kernel "
                         f"image was built with '{b.compiler}': the configuration is not "
                         "this kernel's", hint="unpack the headers package of the same "
                                               "kernel version as the image")


def _system_map(report: ImportReport, parts: dict[str, Found], image: bytes | None) -> str:
    """System.map's text: the shipped one if real (checked against the image's symbols),
    otherwise the image's kallsyms."""
    shipped = parts.get("System.map")
    text = _real_system_map(shipped)
    if text is not None and shipped is not None:
        if image is not None:
            _check_map_against_image(shipped, text, image)
        return text
    if image is None:
        why = (f"{shipped.path} is a stub" if shipped is not None else "no System.map")
        raise InputError(f"{why}, and no kernel image to read the symbols from",
                         hint="unpack the kernel image package (boot/vmlinuz-RELEASE) or the "
                              "debug package's System.map")
    entries = read_kallsyms(image)
    report.missing.pop("System.map", None)
    report.synthesized_symbols = len(entries)
    return system_map(entries)


def _real_system_map(found: Found | None) -> str | None:
    """The shipped System.map's text, or None for none or a stub (Debian's one line)."""
    if found is None:
        return None
    try:
        text = found.path.read_text(errors="replace")
    except OSError as e:
        found.notes.append(f"unreadable ({e.strerror}): written from vmlinuz's kallsyms")
        return None
    lines = text.splitlines()
    return text if len(lines) > 100 else None


def _check_map_against_image(shipped: Found, text: str, image: bytes) -> None:
    """A System.map of another build than the image would misplace every symbol."""
    try:
        entries = read_kallsyms(image)
    except InputError:
        shipped.notes.append("not checked against the image (no kallsyms tables read)")
        return
    addresses: dict[str, set[int]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3:
            try:
                addresses.setdefault(words[2], set()).add(int(words[0], 16))
            except ValueError:
                continue
    wrong = [e.name for e in entries if e.name in addresses
             and e.address not in addresses[e.name]]
    if len(wrong) > len(entries) // 100:
        raise InputError(f"{shipped.path} is not the kernel image's: {len(wrong)} of its "
                         f"{len(entries)} symbols are elsewhere (such as {wrong[0]})",
                         hint="the files under ROOT mix two builds: use the System.map of "
                              "the same package as vmlinuz")


def _vermagic(modules: Found | None, release: str) -> str | None:
    """The vermagic of the shipped modules (the first one readable), which a livepatch
    module must carry exactly."""
    if modules is None:
        return None
    for ko in sorted((modules.path / "kernel").rglob("*.ko*")):
        if not ko.name.endswith((".ko", ".ko.xz")):
            continue  # zstd-compressed (Fedora's newer): not read
        try:
            vermagic = modinfo(ko).get("vermagic")
        except InputError:
            continue
        if vermagic is None:
            continue
        if not vermagic.startswith(release + " "):
            raise InputError(f"{ko} is a module of kernel '{vermagic.split()[0]}', not "
                             f"{release}", hint="the modules under ROOT are another "
                                                "kernel's: unpack the matching image package")
        return vermagic
    modules.notes.append("no module with a vermagic: the livepatch module's vermagic is "
                         "checked against the release only")
    return None


def _kernelvariables(root: Path, release: str) -> list[str]:
    """Debian's `.kernelvariables` (what its build overrode): its release must be ours."""
    path = root / _KERNELVARIABLES.format(R=release)
    if not path.is_file():
        return []
    for line in path.read_text(errors="replace").splitlines():
        words = line.split("=", 1)
        if (len(words) == 2 and words[0].split()[-1:] == ["KERNELRELEASE"]
                and words[1].strip() != release):
            raise InputError(f"{path} sets KERNELRELEASE={words[1].strip()}, not "
                                 f"{release}", hint="unpack one kernel's headers packages")
    return [f"{path.name}: release and compiler are pinned from the banner instead "
            "(git ksplice needs no .kernelvariables)"]


def _check_destination(destination: Path, report: ImportReport) -> None:
    """Nothing in ORIG_CONFIG that import does not replace may belong to another kernel."""
    if destination.exists() and not destination.is_dir():
        raise InputError(f"ORIG_CONFIG {destination} is a file, not a directory",
                         hint="name a directory: git ksplice import-kernel [RELEASE] DIR")
    ours = (destination / KERNEL_JSON).exists() or (destination / INCOMPLETE).exists()
    theirs = sorted(p.name for p in destination.iterdir()) if destination.is_dir() else []
    if theirs and not ours:
        raise InputError(f"{destination} holds files import-kernel did not write "
                         f"({', '.join(theirs[:5])}{', ...' if len(theirs) > 5 else ''}): "
                         "importing would replace them",
                         hint="import into an empty directory (git ksplice import-kernel "
                              "[RELEASE] DIR), or move those files away first")
    imported = {f.part.name for f in report.found} | {"System.map"}
    stale = destination / "vmlinux"
    if "vmlinux" not in imported and stale.exists() and report.banner is not None:
        other = banner_in_file(stale)
        if other is not None and other.text != report.banner.text:
            raise InputError(f"{stale} is another build's ({other.text!r}), not "
                             f"{report.release}'s, and this import has no debug vmlinux to "
                             "replace it",
                             hint=f"remove it (rm {stale}) or import into another directory")


def _write(report: ImportReport, map_text: str) -> None:
    """The parts into ORIG_CONFIG; until kernel.json is written at the end, a marker says
    the import is incomplete (OrigConfig.check refuses such a directory), and the parts a
    previous import left that this one did not find are removed (another kernel's)."""
    dest = report.destination
    dest.mkdir(parents=True, exist_ok=True)
    _write_text(dest / INCOMPLETE, "git ksplice import-kernel did not finish\n")
    (dest / KERNEL_JSON).unlink(missing_ok=True)
    found = {f.part.name for f in report.found} | {"System.map"}
    for part in PARTS:
        if part.name not in found:
            stale = dest / part.name
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    for f in report.found:
        if f.part.name == "System.map":
            continue
        if f.part.name == "modules":
            _place_tree(f.path, dest / "modules")
        else:
            _place_file(f.path, dest / f.part.name)
    _write_text(dest / "System.map", map_text)
    info = {
        "release": report.release,
        "banner": report.banner.text if report.banner else None,
        "compiler": report.banner.compiler if report.banner else None,
        "vermagic": report.vermagic,
        "imported": {f.part.name: {"from": str(f.path), "layout": f.place.layout}
                     for f in report.found},
        "system_map_from_kallsyms": report.synthesized_symbols is not None,
        "missing": sorted(report.missing),
    }
    _write_text(dest / KERNEL_JSON, json.dumps(info, indent=2) + "\n")
    (dest / INCOMPLETE).unlink()
    if (dest / "flags").exists():
        report.notes.append(f"{dest / 'flags'} (extra make arguments) is kept and applies to "
                            "this kernel's builds: remove it unless it is meant for them")


def _write_text(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def _place_file(source: Path, target: Path) -> None:
    """`target` becomes `source`'s contents: a copy, but for the large images (the debug
    vmlinux: 633 MB) a hard link where the file system allows (a small file is copied, so
    that editing ORIG_CONFIG's .config never edits the package's); `.gz` sources (Fedora's
    symvers) unpacked."""
    part = target.with_name(target.name + ".part")
    part.unlink(missing_ok=True)
    try:
        if source.name.endswith(".gz"):
            with gzip.open(source, "rb") as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
        elif source.stat().st_size >= _LINK_ABOVE:
            _link_or_copy(str(source), str(part))
        else:
            shutil.copy2(source, part)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        part.unlink(missing_ok=True)
        raise InputError(f"cannot copy {source} into {target.parent}: {e}") from None
    os.replace(part, target)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _place_tree(source: Path, target: Path) -> None:
    """The module directory, hard-linked file by file where possible; the old one replaced
    only once the new one is whole."""
    part = target.with_name(target.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    shutil.copytree(source, part, symlinks=True, copy_function=_link_or_copy,
                    ignore=lambda d, names: [n for n in names if Path(d) == source
                                             and n in _MODULE_DIR_LINKS])
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(part, target)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["PARTS", "Found", "ImportReport", "Part", "Place", "find_release",
           "import_kernel", "locate"]
