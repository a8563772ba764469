#!/usr/bin/env bash
# Installs the Debian 12 packages npusim needs (when missing) and builds it into build/.
# Safe to run repeatedly; as root it uses apt-get, otherwise it only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ make cmake git python3 pkg-config libyaml-cpp-dev libcli11-dev libfmt-dev
          nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libtbb-dev libhdf5-dev libsqlite3-dev python3-h5py python3-pandas
          openmpi-bin libopenmpi-dev chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build_type=${NPUSIM_BUILD_TYPE:-Release}
cmake -S . -B build -DCMAKE_BUILD_TYPE="$build_type" >/dev/null
cmake --build build -j"$(nproc)"
