#!/bin/bash
# Builds dist/ovs-ipsec_<version>_all.deb with Debian's own tooling (debhelper 13, dh-python's
# pybuild), as root on a Debian machine: installs the build dependencies that are missing,
# fetches the vici sdist the package vendors (pinned by hash), then runs
# `dpkg-buildpackage -b` in a copy of the checkout so that no build product lands in the work tree
# or beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

# strongSwan's own Python binding; Debian does not package it. The .deb ships it privately.
VICI_VERSION=6.0.3
VICI_SHA256=ec926e7a29b6ea9112fe406d1851c3c46143ac625e28089e3d4efce4eac88e56

BUILD_DEPS=(
  build-essential debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject
  python3-pip
)

missing=()
for pkg in "${BUILD_DEPS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "build-deb: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "build-deb: root is needed to install Debian packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
fi

version=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
deb_version=$(dpkg-parsechangelog -S Version)
if [ "$version" != "$deb_version" ]; then
  echo "build-deb: pyproject.toml says $version, debian/changelog says $deb_version" >&2
  exit 1
fi

work=build/deb
mkdir -p "$work/vendor" dist
sdist=$work/vendor/vici-$VICI_VERSION.tar.gz
if ! { [ -f "$sdist" ] && echo "$VICI_SHA256  $sdist" | sha256sum -c --quiet; }; then
  rm -f "$sdist"
  /usr/bin/python3 -m pip download -q --no-deps --no-binary :all: --dest "$work/vendor" \
    "vici==$VICI_VERSION"
  echo "$VICI_SHA256  $sdist" | sha256sum -c --quiet
fi

src=$work/ovs-ipsec-$version
rm -rf "$src" "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes
mkdir -p "$src"
# Tracked files plus new ones not ignored: what the checkout holds now, not a build tree.
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src"
mkdir -p "$src/debian/vendor"
tar -xzf "$sdist" -C "$src/debian/vendor"
mv "$src/debian/vendor/vici-$VICI_VERSION" "$src/debian/vendor/vici"

start=$(date +%s)
# Debian's interpreters and tools only (a python3 earlier on PATH, e.g. pyenv's, lacks dh-python's
# modules and would build against the wrong Python).
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc --no-sign) > "$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (full log: $work/build.log)" >&2
  exit 1
}
deb=ovs-ipsec_${version}_all.deb
cp "$work/$deb" "dist/$deb"
echo "build-deb: dist/$deb ($(($(date +%s) - start)) s)"
