"""Run the native MoE kernel's AMX path on real AMX instructions without an AMX CPU: Bochs 3.0's
Sapphire Rapids model (an instruction-set emulator we did not write) boots a Linux whose /init is
guest.cpp, which runs the kernel built -march=sapphirerapids on random MoE cases, AMX path on and
off, against torch's float32 `moe_reference` computed here.

What it checks that the tests here cannot (they run the tiles' software model, amx_tiles.h): the
tile configuration (LDTILECFG's 64-byte block), the instructions' operand order and strides
(TILELOADD / TDPBF16PS / TILESTORED) as another implementation reads them, that Linux grants the
permission request (arch_prctl ARCH_REQ_XCOMP_PERM), and per-thread tile configuration and state
with 4 OpenMP threads on 2 emulated cores (tiles in use side by side, and saved and restored by
Linux). Not checked: that the request is needed (this kernel enables the tiles for every task, see
XSTATE_EDITS), and speed (Bochs interprets every instruction).

    sudo .venv/bin/python scripts/amx_bochs/run.py         # 4-8 minutes the first time, ~40 s after
    .venv/bin/python scripts/amx_bochs/run.py --dry-run    # the same cases and guest here, on the
                                                           # tiles' software model (no root; a test)

Steps (each cached under --work): a Debian 13 root with Bochs 3.0 (debootstrap; Debian 12's Bochs
2.7 has no AMX); a small Linux 6.12 built from Debian 13's linux-source with the tile data made a
static feature (XSTATE_EDITS: Bochs has AMX but not XFD, which Linux's on-demand tile state needs);
the cases, written again every run; the guest built static; an initramfs with the guest as /init
and the cases; a bootable ISO (isolinux); then Bochs, its serial console read for the verdict. Needs root (debootstrap, chroot), Debian's
debootstrap, genisoimage, isolinux, syslinux-common and a kernel build's tools (make, flex, bison,
bc, libelf-dev), and ~2.5 GB free under --work while Linux builds (0.7 GB kept). Exit status 0:
every case passed; the console is saved as serial.txt under --work.
"""

from __future__ import annotations

import argparse
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "kernels"))
import gptoss_kernels as gk  # noqa: E402
from gptoss_kernels.reference import SWIGLU_ALPHA, SWIGLU_LIMIT  # noqa: E402
from gptoss_kernels import cpu as native_cpu  # noqa: E402

HERE = Path(__file__).resolve().parent
MIRROR = "http://deb.debian.org/debian"
SUITE = "trixie"  # Debian 13: Bochs 3.0 (Sapphire Rapids model with AMX), Linux 6.12
BOCHS_PACKAGES = "bochs,bochsbios,vgabios"
HOST_TOOLS = {"debootstrap": "debootstrap", "genisoimage": "genisoimage", "dpkg-deb": "dpkg", "make": "make",
              "flex": "flex", "bison": "bison", "bc": "bc"}
ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
MODE_BF16 = native_cpu.MODE_BF16
THREADS = 4  # OpenMP threads in the guest: on 2 emulated cores, so tiles are used side by side and swapped out


def log(msg: str) -> None:
    print(f"[amx-bochs {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ cases (host side, torch)
# (name, T, E, H, I, K, scale range, tokens per expert or None for random top-K routing): experts
# of 8+ tokens take the AMX path; f puts experts at its edges (7: the AVX-512 path; 8 and 16: one B
# tile, partial and full; 17 and 32: two; 33: two tiles, then one of 1 token); e is gpt-oss's
# hidden size and expert width (2880 = 90 blocks of 32) with ~20 tokens an expert.
CASES = [
    ("a_t17_k4", 17, 5, 128, 96, 4, (118, 124), None),
    ("b_t64_k4", 64, 5, 128, 96, 4, (118, 124), None),
    ("c_t257_k1", 257, 5, 128, 96, 1, (118, 124), None),
    ("d_t48_wide_scales", 48, 3, 192, 128, 2, (100, 140), None),
    ("e_t40_gptoss_width", 40, 2, 2880, 2880, 1, (118, 124), None),
    ("f_t113_edges", 113, 6, 128, 64, 1, (118, 124), (7, 8, 16, 17, 32, 33)),
]


def write_case(path: Path, native, name, T, E, H, I, K, scales, counts, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    lo, hi = scales
    w13 = torch.randint(0, 256, (E, 2 * I, H // 2), dtype=torch.uint8, generator=g)
    w2 = torch.randint(0, 256, (E, H, I // 2), dtype=torch.uint8, generator=g)
    s13 = torch.randint(lo, hi, (E, 2 * I, H // 32), dtype=torch.uint8, generator=g)
    s2 = torch.randint(lo, hi, (E, H, I // 32), dtype=torch.uint8, generator=g)
    b13, b2 = torch.randn(E, 2 * I, generator=g) * 0.3, torch.randn(E, H, generator=g) * 0.3
    x = (torch.randn(T, H, generator=g) * 4).to(torch.bfloat16)
    tw, ids = gk.route_reference(torch.randn(T, E, generator=g), K)
    ids = torch.where(torch.rand(T, K, generator=g) < 0.2, torch.full_like(ids, -1), ids).to(torch.int32)
    if counts is not None:  # top-1, expert e on counts[e] tokens, in shuffled order
        assert K == 1 and sum(counts) == T, (name, K, sum(counts), T)
        ids = torch.repeat_interleave(torch.arange(E), torch.tensor(counts))[torch.randperm(T, generator=g)]
        ids, tw = ids.view(T, 1).to(torch.int32), torch.rand(T, 1, generator=g) + 0.5
    counts = torch.bincount(ids[ids >= 0].long(), minlength=E)
    if not (counts >= 8).any():
        raise AssertionError(f"case {name}: no expert has the 8+ tokens of the AMX path ({counts.tolist()})")
    ref = gk.moe_reference(x.float(), tw, ids, w13, s13, b13, w2, s2, b2).float()
    p13, p2 = native.pack_experts(w13), native.pack_experts(w2)
    native.disable_amx()
    host = native.moe(x, tw, ids, p13, s13, b13, p2, s2, b2, SWIGLU_ALPHA, SWIGLU_LIMIT,
                      act_mode=MODE_BF16)
    raw = lambda t: t.contiguous().view(torch.uint8).numpy().tobytes()  # noqa: E731
    path.write_bytes(b"GKAMXC01" + struct.pack("<5q2f", T, H, I, E, K, SWIGLU_ALPHA, SWIGLU_LIMIT)
                     + b"".join(raw(t) for t in (x, tw.float(), ids, p13, s13, b13.float(), p2, s2, b2.float(),
                                                 ref, host)))


def write_cases(folder: Path) -> None:
    native = native_cpu.load()
    if not native.features & native_cpu.FEATURE_BF16:
        raise SystemExit("the cases' host outputs need this CPU's AVX512_BF16 path (gptoss_cpu_features bit 1)")
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, T, E, H, I, K, scales, counts) in enumerate(CASES):
        write_case(folder / f"{name}.bin", native, name, T, E, H, I, K, scales, counts, seed=20261207 + i)
    log(f"wrote {len(CASES)} cases to {folder}")


# ------------------------------------------------------------------ the guest program
def guest_command(out: Path, march: str, emulate: bool) -> list[str]:
    """The library's own compile command (gptoss_kernels.cpu.build_command: same flags), made a
    static program with guest.cpp's main instead of a shared library."""
    cmd = native_cpu.build_command([native_cpu.SOURCES[0], HERE / "guest.cpp"], out, march=march,
                                   emulate_amx=emulate)
    drop = {"-shared", "-fPIC"}
    cmd = [a for a in cmd if a not in drop and not a.startswith(("-L", "-Wl,-rpath"))]
    return [*cmd, "-static", f"-I{native_cpu.SOURCES[0].parent}"]


def build_guest(out: Path, march: str, emulate: bool) -> None:
    cmd = guest_command(out, march, emulate)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"building the guest failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    log(f"built {out.name} (-march={march}{', tiles software model' if emulate else ''})")


# ------------------------------------------------------------------ the emulated machine
def check_host_tools() -> None:
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    missing += ["isolinux"] * (not ISOLINUX.exists()) + ["syslinux-common"] * (not LDLINUX.exists())
    missing += ["libelf-dev"] * (not Path("/usr/include/libelf.h").exists())  # Linux's objtool
    if missing:
        raise SystemExit(f"missing host packages: apt-get install {' '.join(sorted(set(missing)))}")
    if os.geteuid() != 0:
        raise SystemExit("debootstrap and chroot need root (or run with --dry-run)")


def bochs_root(work: Path) -> Path:
    root = work / "debian13"
    bochs = root / "usr/bin/bochs-bin"
    if bochs.exists():
        return root
    log(f"debootstrap {SUITE} with {BOCHS_PACKAGES} into {root} (a few minutes)")
    # Bochs's GUI plugins pull in GTK, whose configuration wants a D-Bus session bus that minbase
    # lacks: debootstrap then leaves them unconfigured (exit 1); apt-get -f completes the set.
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={BOCHS_PACKAGES}", SUITE, str(root), MIRROR],
                   stdout=subprocess.DEVNULL)
    proc = subprocess.run(["chroot", str(root), "apt-get", "-f", "install", "-y", "-q"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"apt-get -f install in {root} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if not bochs.exists():
        raise SystemExit(f"debootstrap did not install Bochs ({bochs} missing): see {root}/debootstrap/")
    return root


def debian13_package(name_re: str) -> str:
    """The pool path of the newest Debian 13 binary package whose name matches name_re (groups:
    the version numbers to compare)."""
    index = lzma.decompress(urllib.request.urlopen(f"{MIRROR}/dists/{SUITE}/main/binary-amd64/Packages.xz").read())
    best = None
    for block in index.decode().split("\n\n"):
        m = re.search(rf"^Package: {name_re}$", block, re.M)
        v = re.search(r"^Version: (\d+)\.(\d+)\.(\d+)", block, re.M)
        if m and v:
            key = tuple(int(g) for g in v.groups())
            if best is None or key > best[0]:
                best = (key, re.search(r"^Filename: (\S+)$", block, re.M).group(1))
    if best is None:
        raise SystemExit(f"no package {name_re} in {SUITE}'s package index")
    return best[1]


# Linux clears XTILE_DATA (bit 18) from its xfeatures where the CPU has no XFD (Extended Feature
# Disable, which real AMX CPUs all have and Bochs 3.0 does not), keeps XTILE_CFG (bit 17), and its
# XSETBV of that XCR0 faults at boot. The check's kernel makes the tile data a static feature there
# instead (saved with every task's state, so threads sharing a core keep their tiles): these edits of
# arch/x86/kernel/fpu/xstate.c (Linux 6.12), each expected exactly once.
XSTATE_EDITS = [
    ("\tu64 xfeatures;\n", "\tu64 xfeatures, dynamic;\n"),
    ("\tif (!cpu_feature_enabled(X86_FEATURE_XFD))\n\t\tfpu_kernel_cfg.max_features &= ~XFEATURE_MASK_USER_DYNAMIC;\n",
     "\tdynamic = cpu_feature_enabled(X86_FEATURE_XFD) ? XFEATURE_MASK_USER_DYNAMIC : 0;\n"),
    ("\tfpu_kernel_cfg.default_features &= ~XFEATURE_MASK_USER_DYNAMIC;\n",
     "\tfpu_kernel_cfg.default_features &= ~dynamic;\n"),
    ("\tfpu_user_cfg.default_features &= ~XFEATURE_MASK_USER_DYNAMIC;\n", "\tfpu_user_cfg.default_features &= ~dynamic;\n"),
    ("\tinit_fpstate.xfd = fpu_user_cfg.max_features & XFEATURE_MASK_USER_DYNAMIC;\n",
     "\tinit_fpstate.xfd = fpu_user_cfg.max_features & dynamic;\n"),
]
# ... and the statically allocated initial state (init_fpstate, one page) must then hold the tile
# data too (10.7 KB of xstate in all): arch/x86/include/asm/fpu/types.h
TYPES_EDIT = ("\tu8 __padding[PAGE_SIZE];\n", "\tu8 __padding[3 * PAGE_SIZE];\n")
# tinyconfig plus what the guest needs: 64-bit, a serial console, an initramfs, static ELF
# programs, /proc, futexes (OpenMP's threads), SMP (2 cores); without 5-level paging, which Bochs's SMM return
# refuses (its BIOS enters SMM when Linux switches ACPI on)
KERNEL_OPTIONS = ["64BIT", "PRINTK", "TTY", "SERIAL_8250", "SERIAL_8250_CONSOLE", "BLK_DEV_INITRD", "BINFMT_ELF",
                  "PROC_FS", "FUTEX", "EARLY_PRINTK", "ACPI", "CPU_SUP_INTEL", "MULTIUSER", "POSIX_TIMERS", "RSEQ",
                  "SMP"]
KERNEL_OPTIONS_OFF = ["X86_5LEVEL"]


def kernel(work: Path) -> Path:
    """A small Linux 6.12 (Debian 13's linux-source) with XSTATE_EDITS, built here (1.5 minutes on 2 cores)."""
    bz = work / "bzImage"
    if bz.exists():
        return bz
    src = work / "linux"
    if not (src / "Makefile").exists():
        deb = work / "linux-source.deb"
        pool = debian13_package(r"linux-source-6\.12")
        log(f"fetching {pool}")
        urllib.request.urlretrieve(f"{MIRROR}/{pool}", deb)
        tree = work / "linux-source"
        subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -x -C {work} --wildcards './usr/src/linux-source-*.tar.xz'",
                       shell=True, check=True)
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        tarball = next((work / "usr/src").glob("linux-source-*.tar.xz"))
        subprocess.run(["tar", "-xJf", str(tarball), "-C", str(tree)], check=True)
        shutil.rmtree(work / "usr")
        deb.unlink()
        shutil.rmtree(src, ignore_errors=True)
        next(tree.iterdir()).rename(src)
        tree.rmdir()
    for path, edits in (("arch/x86/kernel/fpu/xstate.c", XSTATE_EDITS), ("arch/x86/include/asm/fpu/types.h", [TYPES_EDIT])):
        path = src / path
        text = path.read_text()
        if all(new in text for _, new in edits):
            continue  # edited by an earlier run
        for old, new in edits:
            if text.count(old) != 1:
                raise SystemExit(f"{path}: expected {old!r} once, found it {text.count(old)} times")
            text = text.replace(old, new)
        path.write_text(text)
    log("building Linux (tinyconfig + the guest's options)")
    make = ["make", "-C", str(src), f"-j{os.cpu_count()}"]
    subprocess.run([*make, "tinyconfig"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(src / "scripts/config"), "--file", str(src / ".config"),
                    *[a for o in KERNEL_OPTIONS for a in ("--enable", o)],
                    *[a for o in KERNEL_OPTIONS_OFF for a in ("--disable", o)]], check=True)
    subprocess.run([*make, "olddefconfig"], check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.run([*make, "bzImage"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"building Linux failed:\n{proc.stderr[-3000:]}")
    shutil.copy(src / "arch/x86/boot/bzImage", bz)
    shutil.rmtree(src)  # 1.5 GB; bzImage is what later runs use
    return bz


def cpio_newc(entries) -> bytes:
    """An initramfs archive: entries of (name, mode, data, rdev major, rdev minor)."""
    out = bytearray()

    def header(ino, name, mode, size, major=0, minor=0):
        fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, major, minor, len(name) + 1, 0]
        return b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"

    def pad(n):
        out.extend(b"\0" * (-n % 4))

    for ino, (name, mode, data, major, minor) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0, 0)], start=1):
        h = header(ino, name, mode, len(data), major, minor)
        out.extend(h)
        pad(len(h))
        out.extend(data)
        pad(len(data))
    return bytes(out)


def initramfs(guest: Path, cases: Path, out: Path) -> None:
    entries = [("dev", stat.S_IFDIR | 0o755, b"", 0, 0), ("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1),
               ("proc", stat.S_IFDIR | 0o755, b"", 0, 0), ("cases", stat.S_IFDIR | 0o755, b"", 0, 0),
               ("init", stat.S_IFREG | 0o755, guest.read_bytes(), 0, 0)]
    entries += [(f"cases/{p.name}", stat.S_IFREG | 0o644, p.read_bytes(), 0, 0) for p in sorted(cases.glob("*.bin"))]
    out.write_bytes(cpio_newc(entries))


def iso(vmlinuz: Path, initrd: Path, out: Path) -> None:
    tree = out.with_suffix(".tree")
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "isolinux").mkdir(parents=True)
    shutil.copy(ISOLINUX, tree / "isolinux")
    shutil.copy(LDLINUX, tree / "isolinux")
    shutil.copy(vmlinuz, tree / "vmlinuz")
    shutil.copy(initrd, tree / "initrd")
    # OMP_NUM_THREADS=...: parameters the kernel does not know reach /init as environment variables
    (tree / "isolinux/isolinux.cfg").write_text(
        "DEFAULT check\nLABEL check\n  KERNEL /vmlinuz\n"
        f"  APPEND initrd=/initrd console=ttyS0,115200 panic=-1 OMP_NUM_THREADS={THREADS}\n")
    subprocess.run(["genisoimage", "-quiet", "-o", str(out), "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
                    "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", "-J", "-R", str(tree)], check=True)
    shutil.rmtree(tree)


BOCHSRC = """\
megs: 1024
cpu: model=sapphire_rapids, count=2, ips=100000000, reset_on_triple_fault=0
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path={iso}, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev={serial}
display_library: rfb, options="timeout=0"
clock: sync=none, time0=local
log: {log}
panic: action=fatal
error: action=report
info: action=ignore
"""


def boot(root: Path, iso_path: Path, timeout: float) -> str:
    """Boot the ISO in Bochs inside the Debian 13 root; returns the serial console's text."""
    inside = root / "amx-check"
    inside.mkdir(exist_ok=True)
    shutil.copy(iso_path, inside / "boot.iso")
    serial = inside / "serial.txt"
    serial.unlink(missing_ok=True)
    (inside / "bochsrc").write_text(BOCHSRC.format(iso="/amx-check/boot.iso", serial="/amx-check/serial.txt",
                                                   log="/amx-check/bochs.log"))
    log(f"booting in Bochs (Sapphire Rapids model); serial console: {serial}")
    proc = subprocess.Popen(["chroot", str(root), "/usr/bin/bochs-bin", "-q", "-f", "/amx-check/bochsrc"],
                            stdin=subprocess.DEVNULL, stdout=open(inside / "bochs.out", "w"), stderr=subprocess.STDOUT)
    t0, seen = time.monotonic(), 0
    try:
        while True:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            for line in text[seen:].splitlines(keepends=True):
                if line.endswith("\n") and ("GUEST" in line or "CASE" in line or "Kernel panic" in line):
                    log("guest: " + line.strip())
            seen = text.rfind("\n") + 1 if "\n" in text else 0
            if "GUEST RESULT" in text or "Kernel panic" in text:
                time.sleep(2)  # the power-off
                return serial.read_text(errors="replace")
            if proc.poll() is not None:
                raise SystemExit(f"Bochs exited ({proc.returncode}) before the guest's verdict: see {inside}/bochs.log, "
                                 f"bochs.out and serial.txt")
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"no verdict after {timeout:.0f} s: see {serial}")
            time.sleep(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def verdict(text: str, instructions: bool = True) -> int:
    """0 when every case passed (on the AMX instructions themselves, unless `instructions` is False:
    the dry run's software model), else 1."""
    cases = [ln for ln in text.splitlines() if ln.startswith("CASE ")]
    passed = sum(ln.endswith(" PASS") for ln in cases)
    ok = "GUEST RESULT PASS" in text and passed == len(CASES) == len(cases)
    ok &= "(AMX instructions: 1)" in text or not instructions
    log(f"{passed}/{len(CASES)} cases passed; {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/vllm-gptoss/amx-bochs",
                    help="folder for the Debian 13 root, the kernel, the cases and the boot image (0.7 GB; 2.5 GB while "
                         "Linux builds)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the guest's verdict")
    ap.add_argument("--dry-run", action="store_true",
                    help="build the guest with the tiles' software model and run it here (no Bochs, no root)")
    args = ap.parse_args()
    work = args.work.resolve()
    cases = work / "cases"
    shutil.rmtree(cases, ignore_errors=True)  # written again by this checkout (its packing, its host outputs)
    write_cases(cases)
    if args.dry_run:
        guest = work / "guest-emulated"
        build_guest(guest, "native", emulate=True)
        proc = subprocess.run([str(guest), str(cases)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
        print(proc.stdout, end="")
        if proc.returncode not in (0, 1):  # 1: a case failed; else it crashed
            print(f"the guest exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
        return verdict(proc.stdout, instructions=False)
    check_host_tools()
    root = bochs_root(work)
    vmlinuz = kernel(work)
    guest = work / "guest-sapphirerapids"
    build_guest(guest, "sapphirerapids", emulate=False)
    initramfs(guest, cases, work / "initrd")
    iso(vmlinuz, work / "initrd", work / "boot.iso")
    t0 = time.monotonic()
    text = boot(root, work / "boot.iso", args.timeout)
    (work / "serial.txt").write_text(text)
    log(f"guest ran {time.monotonic() - t0:.0f} s; console saved to {work / 'serial.txt'}")
    return verdict(text)


if __name__ == "__main__":
    sys.exit(main())
