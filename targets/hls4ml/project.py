"""Write an hls4ml project deterministically and build its C-simulation library.

hls4ml's writer puts a random stamp (the library's file name) and absolute paths (the output
folder, the Keras model) into ``build_lib.sh`` and ``hls4ml_config.yml``; they are replaced by
fixed, relative values so two builds of the same model are byte-identical and the folder can be
moved. ``tapeout_csim.json`` tells the C-simulation runner what the library computes.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tapeout.compiler.cache import HLS4ML_PCH
from tapeout.compiler.errors import InternalError, MissingToolError, UsageError
from tapeout.compiler.quiet import captured_output
from tapeout.targets.hls4ml.config import BACKENDS, PROJECT

STAMP = "tapeout"
MANIFEST = "tapeout_csim.json"


def convert(keras_model: Any, config: dict[str, Any], outdir: Path, *, variant: str, part: str,
            clock_period: float, io_type: str, trace: bool = True) -> Any:
    """hls4ml's ModelGraph for ``keras_model`` (its printing captured), written into ``outdir``."""
    with captured_output():
        import hls4ml

        model = hls4ml.converters.convert_from_keras_model(
            keras_model, hls_config=config, output_dir=str(outdir), project_name=PROJECT,
            backend=BACKENDS[variant], part=part, clock_period=clock_period, io_type=f"io_{io_type}",
            bit_exact=False)  # every type is tapeout's (a FixedPointQuantizer would switch hls4ml's own flow on)
        # Trace hooks are compiled in only when the model-level flag is set (it is not read from
        # hls_config); they sit behind #ifndef __SYNTHESIS__ and cost nothing in hardware.
        model.config.trace_output = trace
        model.write()
    make_deterministic(outdir)
    make_relocatable(outdir)
    faster_build(outdir, variant)
    return model


def make_deterministic(outdir: Path) -> None:
    """Replace the random stamp and absolute paths hls4ml writes with fixed, relative ones."""
    for path in sorted(p for p in outdir.rglob("*") if p.is_file() and p.suffix in ("", ".sh", ".yml", ".tcl", ".cpp", ".hpp",
                                                                                      ".h", ".txt", ".json", ".py")):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        new = re.sub(r"(LIB_STAMP=)\w+", rf"\g<1>{STAMP}", text)
        new = re.sub(r"(set\(LIB_STAMP )\w+\)", rf"\g<1>{STAMP})", new)  # oneAPI's CMakeLists.txt
        new = re.sub(r"(Myproject\w*Class\w*?_)[0-9a-f]{8}\b", rf"\g<1>{STAMP}", new)  # oneAPI's bridge kernel names
        # YAML quotes a stamp that is all digits ('61316341'), about one build in 40.
        new = re.sub(r"(?m)^Stamp: (\w+|'\w+')$", f"Stamp: {STAMP}", new)
        new = re.sub(r"(?m)^OutputDir: .*$", "OutputDir: .", new)
        new = re.sub(r"(?m)^(KerasModel: !keras_model )'.*?([^/']+)'$", r"\1'\2'", new)
        new = new.replace(str(outdir.resolve()), ".").replace(str(outdir), ".")
        if new != text:
            path.write_text(new)
    for path in sorted(outdir.rglob("*.keras")):
        _fix_keras_archive(path)


# hls4ml's build_lib.sh (Vivado, Vitis) bakes the project's absolute path into the C-simulation
# library as WEIGHTS_DIR, where the bridge reads firmware/weights/*.txt on its first call: a
# moved project (every tapeout project is built in a temporary folder, then moved into place)
# exits the host process with "file ... does not exist", and the library differs per folder.
# Instead the library finds the weights next to itself (dladdr), like hls4ml's Catapult
# templates call get_weights_dir(). Synthesis never sees this (__SYNTHESIS__).
_ABSOLUTE_WEIGHTS_DIR = 'WEIGHTS_DIR="\\"${BASEDIR}/firmware/weights\\""'
WEIGHTS_DIR_HEADER = "tapeout_weights_dir.h"
_WEIGHTS_DIR_SOURCE = """\
// Written by tapeout: the C-simulation library reads firmware/weights/*.txt from the folder
// it was loaded from (dladdr), so the project can be moved and the library holds no absolute
// path. build_lib.sh force-includes this file (-include); synthesis does not use it.
#ifndef TAPEOUT_WEIGHTS_DIR_H_
#define TAPEOUT_WEIGHTS_DIR_H_
#ifndef __SYNTHESIS__
#include <dlfcn.h>
#include <string>

static inline std::string tapeout_weights_dir() {
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(&tapeout_weights_dir), &info) != 0 && info.dli_fname != nullptr) {
        std::string lib(info.dli_fname);
        std::string::size_type slash = lib.rfind('/');
        return (slash == std::string::npos ? std::string(".") : lib.substr(0, slash)) + "/weights";
    }
    return "firmware/weights";
}
#endif
#endif
"""


def make_relocatable(outdir: Path) -> None:
    """Point build_lib.sh's WEIGHTS_DIR at ``tapeout_weights_dir()`` (see above); no-op for the
    back ends whose build has no WEIGHTS_DIR."""
    script = outdir / "build_lib.sh"
    text = script.read_text() if script.is_file() else ""
    if _ABSOLUTE_WEIGHTS_DIR not in text:
        return
    text = text.replace(_ABSOLUTE_WEIGHTS_DIR, 'WEIGHTS_DIR="tapeout_weights_dir()"')
    text = re.sub(r'(?m)^INCFLAGS="(.*)"$', rf'INCFLAGS="\1 -include firmware/{WEIGHTS_DIR_HEADER}"', text, count=1)
    text = re.sub(r"(?m)^(BASEDIR=.*\n)", "", text)
    script.write_text(text)
    (outdir / "firmware" / WEIGHTS_DIR_HEADER).write_text(_WEIGHTS_DIR_SOURCE)


# The C-simulation build (docs/hls4ml.md#build-time). On the digits CNN (Vitis, 2 shared cores)
# g++ spent ~36 s at -O3 on firmware/myproject.cpp and ~3 s on the bridge, one after the other;
# at -O1 it spends ~31 s, and the library ran 400 samples in the same 3.2 s with identical
# outputs (-O0 builds in ~13 s but runs ~30x slower). The two translation units compile at once.
# TAPEOUT_HLS4ML_BUILD=legacy keeps hls4ml's script as written (the benchmark's "before").
LEGACY_BUILD_ENV = "TAPEOUT_HLS4ML_BUILD"
O1_VARIANTS = ("vivado", "vitis")  # measured on ap_fixed; Quartus/Catapult keep hls4ml's -O3
_COMPILE_LINE = re.compile(r"(?m)^(\$\{CC\} [^\n]* -c \S+ -o \S+\.o)$")
_LINK_LINE = re.compile(r"(?m)^(\$\{CC\} [^\n]* -shared [^\n]*)$")


def faster_build(outdir: Path, variant: str) -> None:
    """Rewrite build_lib.sh: -O1 for Vivado/Vitis, and every ``-c`` compile in the background,
    waited for (each exit status checked) before the link."""
    import os

    script = outdir / "build_lib.sh"
    if os.environ.get(LEGACY_BUILD_ENV, "").lower() == "legacy" or not script.is_file():
        return
    text = script.read_text()
    if variant in O1_VARIANTS:
        text = re.sub(r'(?m)^CFLAGS="-O3 ', 'CFLAGS="-O1 ', text, count=1)
    compiles = _COMPILE_LINE.findall(text)
    if len(compiles) > 1 and len(_LINK_LINE.findall(text)) == 1:
        cached = variant in O1_VARIANTS  # the PCH and object-cache blocks
        text = _COMPILE_LINE.sub(r"tapeout_obj \1 &\npids+=($!)" if cached else r"\1 &\npids+=($!)", text)
        text = _LINK_LINE.sub(lambda m: 'for pid in "${pids[@]}"; do wait "$pid"; done\n' + m.group(1), text)
        if cached:
            first = text.index("tapeout_obj " + compiles[0])
            text = text[:first] + _pch_block(compiles[0]) + _OBJ_BLOCK + text[first:]
    script.write_text(text)


# A precompiled header (docs/hls4ml.md#build-time): hls4ml's headers that every project of one
# hls4ml version and back end shares (ap_types, nnet_utils but the generated nnet_code_gen.h)
# are parsed once into a .gch, not again in each translation unit. The .gch lives outside the
# project, in a folder the caller names in TAPEOUT_HLS4ML_PCH (build_csim: under the build
# cache's root), so build_lib.sh holds no path and run by hand is hls4ml's plain build. The
# script builds the .gch there on first use with its own compile flags (g++ ignores, with
# -Winvalid-pch's warning, a .gch built with others), writing a temporary file then renaming it.
PCH_ENV = "TAPEOUT_HLS4ML_PCH"
PCH_DIR_ENV = HLS4ML_PCH.env  # where the .gch folders go; "off" turns the PCH off
PCH_HEADER = "tapeout_pch.h"
_GENERATED_HEADERS = ("nnet_code_gen.h",)
_PCH_FORMAT = "1"  # bump when the header list or the script block changes


def _pch_block(compile_line: str) -> str:
    pch = re.sub(r" -c \S+ -o \S+\.o$", f' -x c++-header "$PCH/{PCH_HEADER}" -o "$tmp"', compile_line)
    return (f'# tapeout: a precompiled header of hls4ml\'s fixed headers when {PCH_ENV} names its folder\n'
            f'PCH="${{{PCH_ENV}:-}}"\n'
            f'if [ -n "$PCH" ] && [ -f "$PCH/{PCH_HEADER}" ]; then\n'
            f'  INCFLAGS="-iquote firmware ${{INCFLAGS}}"\n'
            f'  if [ ! -f "$PCH/{PCH_HEADER}.gch" ]; then\n'
            f'    tmp="$PCH/{PCH_HEADER}.gch.$$.$RANDOM"\n'
            f'    if {pch} 2>/dev/null; then mv -f "$tmp" "$PCH/{PCH_HEADER}.gch"; else rm -f "$tmp"; fi\n'
            f'  fi\n'
            f'  if [ -f "$PCH/{PCH_HEADER}.gch" ]; then INCFLAGS="-include $PCH/{PCH_HEADER} -Winvalid-pch ${{INCFLAGS}}"; fi\n'
            f'fi\n')


# An object cache, ccache's preprocessor mode in a dozen lines of the script (written here, not
# ccache or sccache: ccache is no PyPI package, and sccache runs a server daemon per user). When
# TAPEOUT_HLS4ML_OBJ names a folder (build_csim: <PCH folder>/objects), each translation unit's
# object is kept there under the hash of its compile command and its preprocessed text (-E -P: no
# line markers, so no project path), and a unit whose hash is there is copied, not compiled. In
# a sweep the bridge is the same for every point with the same I/O types (32 of 36 jet points);
# myproject.cpp, which holds the layers' configurations, differs per point. The preprocessing
# costs ~0.12 s a unit. Without the variable the function just runs the compile.
OBJ_ENV = "TAPEOUT_HLS4ML_OBJ"
OBJ_FOLDER = "objects"
OBJ_CACHE_BYTES = 256 * 2**20  # build_csim drops the least recently used objects past this
_OBJ_BLOCK = f"""# tapeout: compiled objects reused from the folder {OBJ_ENV} names (see tapeout's project.py)
tapeout_obj() {{
  local dir="${{{OBJ_ENV}:-}}" out="" prev="" a key tmp
  local pre=()
  if [ -z "$dir" ]; then "$@"; return; fi
  for a in "$@"; do
    if [ "$prev" = "-o" ]; then out="$a"
    elif [ "$a" = "-c" ]; then pre+=(-E -P)
    elif [ "$a" != "-o" ]; then pre+=("$a"); fi
    prev="$a"
  done
  # A unit that does not preprocess is compiled as written, neither looked up nor kept.
  if [ -z "$out" ] || ! "${{pre[@]}}" -o "$out.i" 2>/dev/null; then rm -f "$out.i"; "$@"; return; fi
  key=$( {{ printf '%s\\n' "$@"; cat "$out.i"; }} | sha256sum )
  rm -f "$out.i"
  key="${{key%% *}}"
  if [ -f "$dir/$key.o" ] && cp "$dir/$key.o" "$out" 2>/dev/null; then
    touch "$dir/$key.o" 2>/dev/null || true
    return 0
  fi
  "$@" || return
  tmp="$dir/.$key.$$.$RANDOM"
  {{ cp "$out" "$tmp" && mv -f "$tmp" "$dir/$key.o"; }} 2>/dev/null || rm -f "$tmp"
}}
"""


def _pch_headers(project: Path) -> list[Path]:
    """The project's headers the PCH stands for, relative to firmware/, sorted."""
    fw = project / "firmware"
    found = [p for p in (fw / "ap_types").rglob("*") if p.is_file()]
    found += [p for p in (fw / "nnet_utils").glob("*.h") if p.name not in _GENERATED_HEADERS]
    if (fw / WEIGHTS_DIR_HEADER).is_file():
        found.append(fw / WEIGHTS_DIR_HEADER)
    return sorted(p.relative_to(fw) for p in found)


def pch_folder(project: Path) -> Path | None:
    """The cache folder of this project's PCH (made if new), or None where it has no PCH block,
    the PCH is off, or the folder cannot be made. Keyed by g++, hls4ml, the script's flags and
    every shared header's bytes. Its tapeout_pch.h names the headers as the project's sources
    do, found through -iquote firmware, so that __FILE__ (assert) spells the same path with the
    PCH, without it, and where g++ rejects the .gch and parses the text instead."""
    import hashlib
    import os
    import tempfile

    script = project / "build_lib.sh"
    text = script.read_text() if script.is_file() else ""
    from tapeout.compiler.cache import cache_dir, tool_versions

    root = HLS4ML_PCH.folder(cache_dir())
    if f"{PCH_ENV}:-" not in text or root is None:
        return None
    headers = _pch_headers(project)
    h = hashlib.sha256()
    versions = tool_versions(["g++", "hls4ml"])
    for part in (_PCH_FORMAT, versions.get("g++", ""), versions.get("hls4ml", ""),
                 text[:text.index("# tapeout: a precompiled header")]):
        h.update(part.encode() + b"\0")
    fw = project / "firmware"
    for rel in headers:
        h.update(str(rel).encode() + b"\0" + (fw / rel).read_bytes() + b"\0")
    folder = root / h.hexdigest()[:32]
    if re.search(r"[^\w/.+-]", str(folder)):  # the script splits INCFLAGS on spaces
        return None
    if (folder / PCH_HEADER).is_file():
        with contextlib.suppress(OSError):  # its last use: `tapeout cache prune` evicts the oldest first
            os.utime(folder)
        return folder
    # tapeout_weights_dir.h first: nnet_helpers.h's WEIGHTS_DIR calls it
    lines = [f'#include "{WEIGHTS_DIR_HEADER}"'] if Path(WEIGHTS_DIR_HEADER) in headers else []
    lines += ['#include "ap_fixed.h"', '#include "ap_int.h"', '#include "hls_stream.h"']
    lines += [f'#include "{rel.as_posix()}"' for rel in headers if rel.parts[0] == "nnet_utils"]
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        tmp.chmod(0o755)
        (tmp / PCH_HEADER).write_text("// Written by tapeout: hls4ml's shared headers, precompiled by build_lib.sh.\n"
                                      + "\n".join(lines) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another compile made it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return None
    return folder if (folder / PCH_HEADER).is_file() else None


def _fix_keras_archive(path: Path) -> None:
    """hls4ml's copy of the Keras model: a zip with file dates, a save date and, in config.json,
    ``shared_object_id``s that are Python ``id()``s (they differ per process); fix all three,
    numbering the ids in order of first appearance (only their equality matters to Keras)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i.filename)) for i in sorted(z.infolist(), key=lambda i: i.filename)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            if name == "metadata.json":
                data = re.sub(rb'"date_saved":\s*"[^"]*"', b'"date_saved": "1980-01-01@00:00:00"', data)
            elif name == "config.json":
                data = _renumber_shared_ids(data)
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def _renumber_shared_ids(config: bytes) -> bytes:
    ids: dict[bytes, bytes] = {}

    def number(m: re.Match[bytes]) -> bytes:
        return m.group(1) + ids.setdefault(m.group(2), str(len(ids)).encode())

    return re.sub(rb'("shared_object_id":\s*)(\d+)', number, config)


def library_path(project: Path) -> Path:
    return project / "firmware" / f"{PROJECT}-{STAMP}.so"


def build_csim(project: Path) -> Path:
    """Compile the C-simulation bridge library with the project's own build_lib.sh (g++)."""
    script = project / "build_lib.sh"
    if not script.is_file():
        raise UsageError(f"{project}: no build_lib.sh; this back end has no g++ C simulation")
    if shutil.which("bash") is None or shutil.which(BUILD_COMPILER) is None:
        raise MissingToolError(f"hls4ml's C simulation needs bash and {BUILD_COMPILER} on PATH")
    import os

    env = {k: v for k, v in os.environ.items() if k not in (PCH_ENV, OBJ_ENV)}
    pch = pch_folder(project)
    objects = _object_folder(pch) if pch else None
    try:
        fast = {**env, PCH_ENV: str(pch), **({OBJ_ENV: str(objects)} if objects else {})} if pch else env
        proc = subprocess.run(["bash", "build_lib.sh"], cwd=project, capture_output=True, text=True, env=fast)
        if pch and proc.returncode != 0:
            # A .gch g++ cannot read (truncated, say) or a damaged object fails the build: build
            # plainly, and if that passes drop both so the next build makes them anew.
            proc = subprocess.run(["bash", "build_lib.sh"], cwd=project, capture_output=True, text=True, env=env)
            if proc.returncode == 0:
                (pch / f"{PCH_HEADER}.gch").unlink(missing_ok=True)
                if objects:
                    shutil.rmtree(objects, ignore_errors=True)
        elif pch and "[-Winvalid-pch]" in proc.stderr:  # g++ parsed the text instead: rebuild next time
            (pch / f"{PCH_HEADER}.gch").unlink(missing_ok=True)
    except FileNotFoundError as e:  # pragma: no cover - checked above
        raise MissingToolError(f"cannot run build_lib.sh: {e}") from None
    log = proc.stdout + proc.stderr
    if proc.returncode == 127 or re.search(rf"\b{BUILD_COMPILER}: (command )?not found", log):
        raise MissingToolError(f"hls4ml's C simulation: build_lib.sh could not run {BUILD_COMPILER}")
    # Anything else is C++ that tapeout generated and that does not compile: tapeout's bug (exit 4).
    if proc.returncode != 0:
        raise InternalError(f"the generated hls4ml project does not compile (a bug in tapeout): "
                            f"{first_compiler_error(log)} (build_lib.sh in {project.name})")
    lib = library_path(project)
    if not lib.is_file():
        raise InternalError(f"the hls4ml C-simulation build wrote no {lib.name} (a bug in tapeout)")
    if objects:
        prune_objects(objects)
    return lib


def _object_folder(pch: Path) -> Path | None:
    folder = pch / OBJ_FOLDER
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return folder


def prune_objects(folder: Path, limit: int = OBJ_CACHE_BYTES) -> None:
    """Drop the least recently used objects (a hit touches its file) past ``limit`` bytes, and
    temporary copies an hour old (a build killed between its copy and its rename)."""
    import os
    import time

    try:
        found = [(e.stat().st_mtime, e.stat().st_size, e.path, e.name) for e in os.scandir(folder)]
    except OSError:
        return
    stale = time.time() - 3600
    for mtime, _, path, name in found:
        if name.startswith(".") and mtime < stale:
            Path(path).unlink(missing_ok=True)
    entries = sorted(((m, size, path) for m, size, path, name in found if name.endswith(".o")), reverse=True)
    total = 0
    for _, size, path in entries:
        total += size
        if total > limit:
            Path(path).unlink(missing_ok=True)


BUILD_COMPILER = "g++"  # what hls4ml's build_lib.sh calls (CC=g++)


def first_compiler_error(log: str) -> str:
    """The compiler's first error line (later ones are mostly its consequences), else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\b(fatal )?error\b:", line):
            return line
    return lines[-1] if lines else "no output"


def write_manifest(project: Path, *, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                   trace: list[dict[str, Any]]) -> None:
    """What the runner needs without hls4ml: the library, I/O names and shapes, traced layers."""
    data = {"project": PROJECT, "library": str(library_path(project).relative_to(project)), "build": "build_lib.sh",
            "inputs": inputs, "outputs": outputs, "trace": trace}
    (project / MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
