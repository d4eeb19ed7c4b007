#!/usr/bin/env bash
# Puts into .whl/ (ignored by git) what benchmarks/gpu_check.sh needs on the GPU machine
# beyond what its CUDA image already holds. Run it here, where PyPI can be reached; the GPU
# machine reaches nothing, so the folder travels with the tree (the device call's carry: [".whl"]).
#
#   bash benchmarks/gpu_wheels.sh                       # for the GPU image: CPython 3.12, x86-64
#   bash benchmarks/gpu_wheels.sh --python-version 3.11 --dest /tmp/whl311   # the CPU rehearsal here
#   bash benchmarks/gpu_wheels.sh --no-mnist            # wheels only (gpu_check.sh then trains on digits)
#
# The image (KINDS.md's package list for nvidia-h200: Python 3.12.3, torch 2.11, numpy, scipy,
# pandas, xarray, h5py, matplotlib, scikit-learn, torchvision, tqdm, safetensors, opt-einsum,
# packaging, setuptools, typing-extensions, numpyro, jax) lacks six packages that pyro-vae
# imports or that those import: pyro-ppl and its pyro-api; arviz and three of its needs
# (h5netcdf, xarray-einstats, platformdirs). PINS below are the versions the project's tests
# run with. Each is a pure-Python wheel (py3-none-any), so the files for 3.12 and for this
# machine's 3.11 are the same ones; --python-version still asks pip for that interpreter, and
# the script refuses a wheel that is not pure (it would not be the same file on both).
#
# pyro-vae itself is not a wheel: it travels as source, and gpu_check.sh copies pyro_vae/,
# models/ and guides/ into its install folder as pyro_vae, pyro_vae.models and pyro_vae.guides
# (what setuptools' package-dir does), so the GPU runs the tree it was sent, never a stale build.
#
# MNIST: where ../shared/data/MNIST/raw holds the four IDX files, they are gzipped into
# DEST/mnist/ with the SHA-256 of each uncompressed file (SHA256SUMS), about 11 MB; gpu_check.sh
# unpacks and checks them there. They stay out of git (DEST is ignored).
#
# Writes DEST/MANIFEST (every file with its version, size and SHA-256) and prints the total.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=3.12
DEST=.whl
MNIST=1
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PY_VERSION=$2; shift 2 ;;
        --dest) DEST=$2; shift 2 ;;
        --no-mnist) MNIST=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

PINS=(pyro-ppl==1.9.2 pyro-api==0.1.2 arviz==0.23.4 h5netcdf==1.8.3 xarray-einstats==0.9.1
      platformdirs==4.14.9)
# What the wheels' requirements may leave to the image (normalized names, from KINDS.md's list).
IMAGE_HAS="torch numpy scipy pandas xarray h5py matplotlib packaging setuptools typing-extensions
           opt-einsum tqdm"

rm -rf "$DEST"
mkdir -p "$DEST"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${PINS[@]}"

if [ "$MNIST" = 1 ] && [ -e ../shared/data/MNIST/raw/train-images-idx3-ubyte ]; then
    mkdir -p "$DEST/mnist"
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
             t10k-labels-idx1-ubyte; do
        gzip -c -6 "../shared/data/MNIST/raw/$f" >"$DEST/mnist/$f.gz"
    done
    (cd ../shared/data/MNIST/raw && sha256sum train-images-idx3-ubyte train-labels-idx1-ubyte \
        t10k-images-idx3-ubyte t10k-labels-idx1-ubyte) >"$DEST/mnist/SHA256SUMS"
elif [ "$MNIST" = 1 ]; then
    echo "no MNIST at ../shared/data/MNIST/raw: gpu_check.sh will train on the bundled digits"
fi

# One version of each, pure Python, and every requirement met by a wheel here or by the image.
python3 - "$DEST" "$PY_VERSION" "$IMAGE_HAS" <<'EOF'
import hashlib, pathlib, re, sys, zipfile

dest, py_version, image_has = pathlib.Path(sys.argv[1]), sys.argv[2], set(sys.argv[3].split())
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
wheels = sorted(dest.glob("*.whl"))
names = {}
for w in wheels:
    parts = w.stem.split("-")  # name-version[-build]-python-abi-platform
    name, version, tag = parts[0], parts[1], "-".join(parts[-3:])
    if tag != "py3-none-any":
        sys.exit(f"{w.name} is not a pure-Python wheel: it would differ between 3.11 and 3.12")
    if norm(name) in names:
        sys.exit(f"two versions of {name}: {names[norm(name)]} and {version}")
    names[norm(name)] = version
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                need = norm(re.match(r"Requires-Dist:\s*([A-Za-z0-9_.-]+)", line).group(1))
                if need not in names and need not in image_has:
                    missing.append(f"{w.name} needs {need}")
if missing:
    sys.exit("not in the wheels nor in the image:\n  " + "\n  ".join(missing))
rows, total = [], 0
for f in sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "MANIFEST"):
    data = f.read_bytes()
    total += len(data)
    version = names.get(norm(f.name.split("-")[0]), "-") if f.suffix == ".whl" else "-"
    rows.append(f"{str(f.relative_to(dest)):50s} {version:10s} {len(data):10d} "
                f"{hashlib.sha256(data).hexdigest()}")
head = (f"# made by benchmarks/gpu_wheels.sh for CPython {py_version} x86-64; "
        f"file, version, bytes, SHA-256; total {total} bytes ({total / 2**20:.1f} MiB)\n")
(dest / "MANIFEST").write_text(head + "\n".join(rows) + "\n")
print(head + "\n".join(rows))
print(f"{len(wheels)} wheels; {dest}/ holds {total / 2**20:.1f} MiB (the tree and carry may "
      f"send 64 MiB in all)")
EOF
